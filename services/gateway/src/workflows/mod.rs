//! `taskwire.v1.Workflows`: chains, groups and chords of tasks, kept in the broker.
//!
//! Submit checks the steps against the task types' contracts and stores the workflow once
//! (`taskwire.workflows.<w>.spec`). Nothing else holds it: a durable consumer hands each new
//! workflow to one gateway, which submits its first steps, and another hands each step's
//! result to one gateway, which submits the steps that take it ([`advance`]). Step `n`'s task
//! has the id `<w>-<n>`, so a step submitted again after a crash is the same task; a step that
//! takes several results counts them in a join replaced by compare-and-set; the end is stored
//! once (`taskwire.workflows.<w>.end`), and no step is submitted after it.

use std::sync::Arc;

use bytes::Bytes;
use prost::Message as _;
use taskwire::task::{Id, Name};
use taskwire::v1::{self, StepState, TaskState, WorkflowState};
use taskwire_protocol::{self as broker, header, workflow};
use tonic::{Request, Response, Status};

use crate::auth::{self, Op};
use crate::submit::publish_error;
use crate::tasks::parse_id;
use crate::{Error, Gateway};

pub(crate) mod advance;
mod plan;

pub(crate) use plan::Plan;

/// The task name that scopes workflow idempotency keys.
const KEY_SCOPE: &str = "taskwire.v1.Workflows/Submit";

/// How many workflows a gateway keeps planned.
const CACHED: usize = 4096;
/// How long a planned workflow is kept: a definition that ran out of the broker (after the
/// result TTL) is answered for at most this long after.
const CACHED_FOR: std::time::Duration = std::time::Duration::from_secs(300);

/// Workflows read lately, by id, with when they were read.
#[derive(Debug, Default)]
pub(crate) struct Cache(
    std::sync::Mutex<std::collections::HashMap<Id, (std::time::Instant, Arc<Loaded>)>>,
);

impl Cache {
    fn get(&self, id: &Id) -> Option<Arc<Loaded>> {
        let cache = self.0.lock().unwrap_or_else(|e| e.into_inner());
        cache
            .get(id)
            .filter(|(at, _)| at.elapsed() < CACHED_FOR)
            .map(|(_, loaded)| Arc::clone(loaded))
    }

    fn put(&self, loaded: Arc<Loaded>) {
        let mut cache = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= CACHED {
            // Every one past its time goes; when that is not enough, the oldest half.
            cache.retain(|_, (at, _)| at.elapsed() < CACHED_FOR);
            if cache.len() >= CACHED {
                let mut ages: Vec<std::time::Instant> = cache.values().map(|(at, _)| *at).collect();
                ages.sort();
                let cut = ages[ages.len() / 2];
                cache.retain(|_, (at, _)| *at > cut);
            }
        }
        cache.insert(loaded.id.clone(), (std::time::Instant::now(), loaded));
    }
}

/// A workflow as the broker keeps it, with its graph.
#[derive(Debug)]
pub(crate) struct Loaded {
    pub(crate) id: Id,
    pub(crate) stored: v1::StoredWorkflow,
    pub(crate) plan: Plan,
}

impl Loaded {
    pub(crate) fn workflow(&self) -> &v1::Workflow {
        self.stored
            .workflow
            .as_ref()
            .expect("a loaded workflow has its definition")
    }

    /// The index of the on_failure step (when there is one).
    pub(crate) fn on_failure(&self) -> usize {
        self.workflow().steps.len()
    }

    pub(crate) fn step(&self, i: usize) -> Option<&v1::Step> {
        plan::step(self.workflow(), i)
    }

    /// Every step's index, the on_failure step's last.
    pub(crate) fn all_steps(&self) -> impl Iterator<Item = usize> + '_ {
        let count = self.workflow().steps.len() + usize::from(self.workflow().on_failure.is_some());
        0..count
    }
}

fn workflow_time(time: std::time::SystemTime) -> prost_types::Timestamp {
    prost_types::Timestamp::from(time)
}

impl Gateway {
    /// Checks and stores a workflow; its first steps start when a gateway takes it from the
    /// consumer of new workflows.
    pub(crate) async fn submit_workflow(
        &self,
        req: v1::SubmitWorkflowRequest,
        scope: Option<&str>,
    ) -> Result<v1::SubmitWorkflowResponse, Error> {
        let workflow = req
            .workflow
            .ok_or_else(|| Error::BadRequest("the request has no workflow".into()))?;
        self.workflows_open()?;
        let (workflow, _) = self.check_workflow(workflow).await?;
        self.check_connected()?;
        let id = if req.idempotency_key.is_empty() {
            Id::generate()
        } else {
            crate::submit::check_key(&req.idempotency_key)?;
            let scope_name = Name::parse(KEY_SCOPE).map_err(Error::InvalidName)?;
            let key = match scope {
                Some(scope) => format!("{scope}\0{}", req.idempotency_key),
                None => req.idempotency_key.clone(),
            };
            Id::from_idempotency_key(&scope_name, &key)
        };
        // The steps' tasks continue the submitter's trace; without one, a trace of the
        // workflow's own, named by its id.
        let mut carrier = async_nats::HeaderMap::new();
        broker::trace::inject_nats(&mut carrier);
        let traceparent = carrier
            .get("traceparent")
            .map(|v| v.as_str().to_owned())
            .unwrap_or_else(|| format!("00-{id}-{}-01", &id.as_str()[16..]));
        let stored = v1::StoredWorkflow {
            workflow: Some(workflow),
            created_at: Some(workflow_time(std::time::SystemTime::now())),
            traceparent,
        };
        let body: Bytes = stored.encode_to_vec().into();
        if body.len() > self.max_payload {
            return Err(Error::BadRequest(format!(
                "the workflow is {} bytes encoded, more than the {} a message may hold: give its steps smaller arguments",
                body.len(),
                self.max_payload
            )));
        }
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(header::MSG_ID, id.as_str());
        headers.insert(header::EXPECTED_LAST_SUBJECT_SEQUENCE, "0");
        let published = self
            .broker
            .jetstream
            .publish_with_headers(workflow::spec(&id), headers, body)
            .await
            .map_err(publish_error)?
            .await;
        let duplicate = match published {
            Ok(ack) => ack.duplicate,
            Err(e) if broker::is_wrong_last_sequence(&e) => true,
            Err(e) => return Err(publish_error(e)),
        };
        Ok(v1::SubmitWorkflowResponse {
            workflow_id: id.to_string(),
            duplicate,
        })
    }

    pub(crate) fn workflows_open(&self) -> Result<(), Error> {
        if self.workflows {
            return Ok(());
        }
        Err(Error::BrokerDown(format!(
            "workflows are not available on this gateway: it could not open stream {} or its consumers (see its log; its NATS user may lack the permissions)",
            broker::WORKFLOWS_STREAM
        )))
    }

    /// The workflow as stored, with its graph; NOT_FOUND when there is none (or it ran out).
    pub(crate) async fn load_workflow(&self, id: &Id) -> Result<Arc<Loaded>, Error> {
        self.workflows_open()?;
        if let Some(loaded) = self.loaded.get(id) {
            return Ok(loaded);
        }
        let found = self
            .broker
            .last_message_on(broker::WORKFLOWS_STREAM, &workflow::spec(id))
            .await
            .map_err(|e| self.read_error(e))?
            .ok_or_else(|| Error::NotFound(format!("workflow {id}")))?;
        let stored = v1::StoredWorkflow::decode(found.payload.as_ref())
            .map_err(|e| Error::Broker(format!("workflow {id} does not decode: {e}")))?;
        let plan = Plan::of(
            stored
                .workflow
                .as_ref()
                .ok_or_else(|| Error::Broker(format!("workflow {id} has no definition")))?,
        )?;
        let loaded = Arc::new(Loaded {
            id: id.clone(),
            stored,
            plan,
        });
        self.loaded.put(Arc::clone(&loaded));
        Ok(loaded)
    }

    /// How the workflow ended, once it did.
    pub(crate) async fn workflow_end(&self, id: &Id) -> Result<Option<v1::WorkflowEnd>, Error> {
        let found = self
            .broker
            .last_message_on(broker::WORKFLOWS_STREAM, &workflow::end(id))
            .await
            .map_err(|e| self.read_error(e))?;
        found
            .map(|m| {
                v1::WorkflowEnd::decode(m.payload.as_ref()).map_err(|e| {
                    Error::Broker(format!("the end of workflow {id} does not decode: {e}"))
                })
            })
            .transpose()
    }

    /// Stores the workflow's end, once: false when it had ended already.
    pub(crate) async fn store_workflow_end(
        &self,
        id: &Id,
        end: &v1::WorkflowEnd,
    ) -> Result<bool, Error> {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(header::EXPECTED_LAST_SUBJECT_SEQUENCE, "0");
        headers.insert(
            header::STATE,
            match end.state() {
                WorkflowState::Succeeded => "succeeded",
                WorkflowState::Failed => "failed",
                WorkflowState::Cancelled => "cancelled",
                _ => "running",
            },
        );
        self.publish_if_last(workflow::end(id), headers, end.encode_to_vec().into())
            .await
    }

    /// The workflow and every step's state.
    pub(crate) async fn get_workflow(
        &self,
        id: &Id,
        include_json: bool,
    ) -> Result<v1::WorkflowInfo, Error> {
        let loaded = self.load_workflow(id).await?;
        let end = self.workflow_end(id).await?;
        let mut steps = Vec::new();
        for i in loaded.all_steps() {
            let step = loaded.step(i).expect("a step of the workflow");
            let task_id = workflow::step_id(id, i);
            if !step.for_each.is_empty() {
                // A map step has no task of its own: its elements have.
                let progress = self.map_progress(id, i).await?;
                let state = match (&progress, &end) {
                    (Some(_), _) => StepState::Submitted,
                    (None, Some(_)) => StepState::Skipped,
                    (None, None) => StepState::Waiting,
                };
                let (elements, succeeded) = progress.unwrap_or_default();
                steps.push(v1::StepInfo {
                    name: step.name.clone(),
                    task: step.task.clone(),
                    task_id: task_id.to_string(),
                    state: state as i32,
                    info: None,
                    on_failure: false,
                    elements: elements as u32,
                    elements_succeeded: succeeded as u32,
                });
                continue;
            }
            let info = match self.state(&task_id).await {
                Ok(info) => Some(self.with_json(info, include_json).await?),
                Err(Error::NotFound(_)) => None,
                Err(Error::Expired(_)) => Some(v1::TaskInfo {
                    task_id: task_id.to_string(),
                    task: step.task.clone(),
                    state: TaskState::Expired as i32,
                    ..Default::default()
                }),
                Err(e) => return Err(e),
            };
            let state = match (&info, &end) {
                (Some(_), _) => StepState::Submitted,
                (None, Some(_)) => StepState::Skipped,
                (None, None) => StepState::Waiting,
            };
            steps.push(v1::StepInfo {
                name: step.name.clone(),
                task: step.task.clone(),
                task_id: task_id.to_string(),
                state: state as i32,
                info,
                on_failure: i == loaded.on_failure(),
                elements: 0,
                elements_succeeded: 0,
            });
        }
        let trace_id = loaded
            .stored
            .traceparent
            .split('-')
            .nth(1)
            .unwrap_or_default()
            .to_owned();
        let end = end.unwrap_or_default();
        Ok(v1::WorkflowInfo {
            workflow_id: id.to_string(),
            state: if end.state() == WorkflowState::Unspecified {
                WorkflowState::Running as i32
            } else {
                end.state
            },
            steps,
            failed_step: end.failed_step,
            error: end.error,
            created_at: loaded.stored.created_at,
            ended_at: end.ended_at,
            trace_id,
        })
    }

    /// Waits up to `timeout` for the workflow's end: a consumer of its end subject, made
    /// before looking, so an end stored in between is not missed.
    pub(crate) async fn wait_workflow(
        &self,
        id: &Id,
        timeout: std::time::Duration,
        include_json: bool,
    ) -> Result<v1::WorkflowInfo, Error> {
        use async_nats::jetstream::consumer;
        use futures::StreamExt as _;
        self.check_connected()?;
        self.load_workflow(id).await?;
        let stream = self
            .broker
            .jetstream
            .get_stream(broker::WORKFLOWS_STREAM)
            .await
            .map_err(|e| self.broker_error(e))?;
        let ends = stream
            .create_consumer(consumer::pull::OrderedConfig {
                filter_subject: workflow::end(id),
                ..Default::default()
            })
            .await
            .map_err(|e| self.broker_error(e))?;
        let mut ends = ends.messages().await.map_err(|e| self.broker_error(e))?;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if self.workflow_end(id).await?.is_some() {
                return self.get_workflow(id, include_json).await;
            }
            let until =
                (tokio::time::Instant::now() + std::time::Duration::from_secs(1)).min(deadline);
            match tokio::time::timeout_at(until, ends.next()).await {
                Ok(Some(Ok(_))) => return self.get_workflow(id, include_json).await,
                Ok(Some(Err(e))) => {
                    tracing::debug!(workflow = %id, error = %e, "waiting for a workflow's end: the consumer broke; looking again");
                }
                Ok(None) => {
                    return Err(Error::BrokerDown(
                        "the consumer of the workflow's end stopped".into(),
                    ));
                }
                Err(_) if tokio::time::Instant::now() >= deadline => {
                    return Err(Error::StillRunning {
                        id: format!("workflow {id}"),
                        state: "running",
                        waited: timeout,
                    });
                }
                Err(_) => {}
            }
        }
    }

    /// The workflow now, then on every change until it ended. Its records (joins, the end)
    /// are followed with an ordered consumer; its steps' tasks are looked at again every
    /// second meanwhile.
    pub(crate) async fn watch_workflow(
        self: Arc<Self>,
        id: Id,
        include_json: bool,
    ) -> Result<WorkflowInfoStream, Error> {
        use async_nats::jetstream::consumer;
        use futures::StreamExt as _;
        self.check_connected()?;
        self.load_workflow(&id).await?;
        let stream = self
            .broker
            .jetstream
            .get_stream(broker::WORKFLOWS_STREAM)
            .await
            .map_err(|e| self.broker_error(e))?;
        let records = stream
            .create_consumer(consumer::pull::OrderedConfig {
                filter_subject: format!("taskwire.workflows.{id}.>"),
                deliver_policy: consumer::DeliverPolicy::New,
                ..Default::default()
            })
            .await
            .map_err(|e| self.broker_error(e))?;
        let mut records = records.messages().await.map_err(|e| self.broker_error(e))?;
        let first = self.get_workflow(&id, include_json).await?;
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        tokio::spawn(async move {
            let mut last = first.encode_to_vec();
            let mut ended = first.state() != WorkflowState::Running;
            if tx.send(Ok(first)).await.is_err() || ended {
                return;
            }
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
            tick.reset();
            while !ended {
                tokio::select! {
                    () = tx.closed() => return,
                    _ = records.next() => {}
                    _ = tick.tick() => {}
                }
                let info = match self.get_workflow(&id, include_json).await {
                    Ok(info) => info,
                    Err(e) if e.code() == tonic::Code::Unavailable => continue,
                    Err(e) => {
                        let _ = tx.send(Err(e.into())).await;
                        return;
                    }
                };
                ended = info.state() != WorkflowState::Running;
                let now = info.encode_to_vec();
                if now != last {
                    last = now;
                    if tx.send(Ok(info)).await.is_err() {
                        return;
                    }
                }
            }
        });
        Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)))
    }

    /// Ends the workflow as cancelled and cancels the steps submitted so far; those not
    /// submitted never are.
    pub(crate) async fn cancel_workflow(&self, id: &Id) -> Result<v1::WorkflowInfo, Error> {
        self.check_connected()?;
        let loaded = self.load_workflow(id).await?;
        let end = v1::WorkflowEnd {
            state: WorkflowState::Cancelled as i32,
            error: Some(v1::TaskFailure {
                message: "cancelled on request".into(),
                retryable: false,
            }),
            ended_at: Some(workflow_time(std::time::SystemTime::now())),
            ..Default::default()
        };
        if !self.store_workflow_end(id, &end).await? {
            let ended = self.workflow_end(id).await?.unwrap_or_default();
            if !(ended.state() == WorkflowState::Cancelled && ended.failed_step.is_empty()) {
                return Err(Error::Finished {
                    id: format!("workflow {id}"),
                    state: match ended.state() {
                        WorkflowState::Succeeded => "succeeded",
                        WorkflowState::Failed => "failed",
                        _ => "cancelled",
                    },
                });
            }
        }
        // Steps submitted before the end was stored are cancelled here; one submitted after
        // is cancelled by the gateway that submitted it, which looks for the end again.
        self.cancel_steps(&loaded, &[]).await?;
        self.get_workflow(id, false).await
    }

    /// Cancels the submitted steps of a workflow that ended, `except` those (a map step's
    /// elements, all of them).
    pub(crate) async fn cancel_steps(
        &self,
        loaded: &Loaded,
        except: &[usize],
    ) -> Result<(), Error> {
        use futures::StreamExt as _;
        let mut ids = Vec::new();
        for i in loaded.all_steps().filter(|i| !except.contains(i)) {
            let is_map = loaded.step(i).is_some_and(|s| !s.for_each.is_empty());
            if !is_map {
                ids.push(workflow::step_id(&loaded.id, i));
            } else if let Some((count, _)) = self.map_progress(&loaded.id, i).await? {
                ids.extend((0..count).map(|j| workflow::element_id(&loaded.id, i, j)));
            }
        }
        let cancelled: Vec<Result<(), Error>> = futures::stream::iter(ids)
            .map(|id| async move {
                match self.cancel(&id).await {
                    Ok(_)
                    | Err(Error::NotFound(_) | Error::Finished { .. } | Error::Expired(_)) => {
                        Ok(())
                    }
                    Err(e) => Err(e),
                }
            })
            .buffer_unordered(32)
            .collect()
            .await;
        cancelled.into_iter().collect()
    }

    /// A map step's elements and how many of them succeeded, once it started.
    pub(crate) async fn map_progress(
        &self,
        id: &Id,
        step: usize,
    ) -> Result<Option<(usize, usize)>, Error> {
        let found = self
            .broker
            .last_message_on(
                broker::WORKFLOWS_STREAM,
                &workflow::join(id, &step.to_string()),
            )
            .await
            .map_err(|e| self.read_error(e))?;
        Ok(found.and_then(|m| {
            let count = m
                .headers
                .get(workflow::JOIN_COUNT)?
                .as_str()
                .parse::<usize>()
                .ok()?;
            Some((count, workflow::Join::from_bytes(&m.payload).count(count)))
        }))
    }
}

/// What Watch streams.
pub(crate) type WorkflowInfoStream = std::pin::Pin<
    Box<dyn futures::Stream<Item = Result<v1::WorkflowInfo, Status>> + Send + 'static>,
>;

#[derive(Debug, Clone)]
pub(crate) struct WorkflowsService {
    gateway: Arc<Gateway>,
}

impl WorkflowsService {
    pub(crate) fn new(gateway: Arc<Gateway>) -> Self {
        Self { gateway }
    }

    /// A workflow the caller may see: every step's task readable by its token, or NOT_FOUND.
    async fn visible(&self, request: &Request<impl Sized>, id: &Id, op: Op) -> Result<(), Status> {
        if !auth::restricted(request) {
            return Ok(());
        }
        let loaded = self.gateway.load_workflow(id).await?;
        for i in loaded.all_steps() {
            let task = &loaded.step(i).expect("a step").task;
            auth::check_known(request, op, &format!("workflow {id}"), task)?;
        }
        Ok(())
    }
}

#[tonic::async_trait]
impl v1::workflows_server::Workflows for WorkflowsService {
    async fn submit(
        &self,
        request: Request<v1::SubmitWorkflowRequest>,
    ) -> Result<Response<v1::SubmitWorkflowResponse>, Status> {
        let caller = auth::caller(&request);
        if let Some(workflow) = &request.get_ref().workflow {
            for step in workflow.steps.iter().chain(workflow.on_failure.iter()) {
                caller.check(Op::Submit, Some(&step.task))?;
            }
        }
        let scope = caller.key_scope();
        let response = self
            .gateway
            .submit_workflow(request.into_inner(), scope.as_deref())
            .await?;
        Ok(Response::new(response))
    }

    async fn get(
        &self,
        request: Request<v1::GetWorkflowRequest>,
    ) -> Result<Response<v1::WorkflowInfo>, Status> {
        let id = parse_id(&request.get_ref().workflow_id)?;
        self.visible(&request, &id, Op::Read).await?;
        let json = request.get_ref().include_json;
        Ok(Response::new(self.gateway.get_workflow(&id, json).await?))
    }

    async fn wait(
        &self,
        request: Request<v1::WaitWorkflowRequest>,
    ) -> Result<Response<v1::WorkflowInfo>, Status> {
        let id = parse_id(&request.get_ref().workflow_id)?;
        self.visible(&request, &id, Op::Read).await?;
        let timeout = crate::reads::wait_timeout(request.get_ref().timeout);
        let json = request.get_ref().include_json;
        Ok(Response::new(
            self.gateway.wait_workflow(&id, timeout, json).await?,
        ))
    }

    type WatchStream = WorkflowInfoStream;

    async fn watch(
        &self,
        request: Request<v1::WatchWorkflowRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let id = parse_id(&request.get_ref().workflow_id)?;
        self.visible(&request, &id, Op::Read).await?;
        let json = request.get_ref().include_json;
        let stream = Arc::clone(&self.gateway).watch_workflow(id, json).await?;
        Ok(Response::new(stream))
    }

    async fn cancel(
        &self,
        request: Request<v1::CancelWorkflowRequest>,
    ) -> Result<Response<v1::WorkflowInfo>, Status> {
        let id = parse_id(&request.get_ref().workflow_id)?;
        self.visible(&request, &id, Op::Cancel).await?;
        Ok(Response::new(self.gateway.cancel_workflow(&id).await?))
    }
}
