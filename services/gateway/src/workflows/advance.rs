//! Advancing workflows: every gateway pulls from the durable consumers of new workflows, step
//! results and child results; whichever takes a message starts what comes next (or resumes
//! a parent waiting for its children), then acks. A gateway that
//! dies midway leaves the message unacked, so another takes it again: every step it submits
//! has the id of its place in the workflow, every join is a compare-and-set, the end is stored
//! once, so doing it again changes nothing.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_nats::jetstream::{self, AckKind, consumer::PullConsumer};
use bytes::Bytes;
use futures::StreamExt as _;
use prost::Message as _;
use taskwire::task::{Id, Name};
use taskwire::v1::{self, TaskState, WorkflowState};
use taskwire_protocol::{self as broker, header, workflow};
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use super::{Loaded, plan};
use crate::submit::{Prepared, overrides, placement, publish_error};
use crate::{Error, Gateway};

/// How long a message may be held before another gateway takes it again.
pub(crate) const ACK_WAIT: Duration = Duration::from_secs(30);

/// Messages handled at once by one gateway.
const CONCURRENCY: usize = 64;

/// Pulls from the three consumers until `stop`.
pub(crate) fn start(
    gateway: Arc<Gateway>,
    [starts, steps, ended]: [PullConsumer; 3],
    stop: CancellationToken,
) {
    for (consumer, kind) in [
        (starts, Kind::Start),
        (steps, Kind::Step),
        (ended, Kind::ChildEnded),
    ] {
        let gateway = Arc::clone(&gateway);
        let stop = stop.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = pull(&gateway, &consumer, kind) => {}
                }
                // The stream of messages broke (the broker out of reach): again, soon.
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
    }
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    Start,
    Step,
    /// A child task's result: its waiting parent may resume.
    ChildEnded,
}

async fn pull(gateway: &Arc<Gateway>, consumer: &PullConsumer, kind: Kind) {
    let messages = match consumer
        .stream()
        .max_messages_per_batch(CONCURRENCY)
        .heartbeat(Duration::from_secs(10))
        .expires(Duration::from_secs(30))
        .messages()
        .await
    {
        Ok(messages) => messages,
        Err(e) => {
            tracing::warn!(error = %e, "cannot pull from the workflows' consumer; trying again");
            return;
        }
    };
    messages
        .take_while(|m| {
            if let Err(e) = m {
                tracing::debug!(error = %e, "the workflows' consumer stream broke");
            }
            std::future::ready(m.is_ok())
        })
        .filter_map(|m| std::future::ready(m.ok()))
        .for_each_concurrent(CONCURRENCY, |message| async move {
            let done = match kind {
                Kind::Start => gateway.start_workflow(&message).await,
                Kind::Step => gateway.step_ended(&message).await,
                Kind::ChildEnded => gateway.child_ended(&message).await,
            };
            match done {
                Ok(()) => {
                    if let Err(e) = message.ack().await {
                        tracing::debug!(error = %e, "ack of a workflow message failed; it comes back and is handled again");
                    }
                }
                Err(e) => {
                    tracing::warn!(subject = %message.subject, error = %e, "cannot advance the workflow now; trying again");
                    let _ = message.ack_with(AckKind::Nak(Some(Duration::from_secs(1)))).await;
                }
            }
        })
        .await;
}

impl Gateway {
    /// A new workflow: its first steps are submitted.
    async fn start_workflow(&self, message: &jetstream::Message) -> Result<(), Error> {
        // taskwire.workflows.<w>.spec
        let Some(id) = message
            .subject
            .split('.')
            .nth(2)
            .and_then(|w| Id::parse(w).ok())
        else {
            return Ok(());
        };
        let loaded = match self.load_workflow(&id).await {
            Ok(loaded) => loaded,
            Err(Error::NotFound(_)) => return Ok(()),
            Err(e) => return Err(e),
        };
        if self.workflow_end(&id).await?.is_some() {
            return Ok(());
        }
        let roots: Vec<usize> = (0..loaded.plan.after.len())
            .filter(|&i| loaded.plan.after[i].is_empty())
            .collect();
        for i in roots {
            let args = plan::args_of(loaded.step(i).expect("a step"));
            let id = workflow::step_id(&loaded.id, i);
            self.submit_tasks(&loaded, i, vec![(id, args)]).await?;
        }
        Ok(())
    }

    /// A step's result was stored: what takes it starts, or the workflow ends.
    async fn step_ended(&self, message: &jetstream::Message) -> Result<(), Error> {
        // taskwire.results.<w>-<n>[-<j>].workflow-step.<task>
        let Some(task_id) = message.subject.split('.').nth(2) else {
            return Ok(());
        };
        let Some(task) = workflow::task_of(task_id) else {
            return Ok(());
        };
        let (id, n) = (task.workflow.clone(), task.step);
        let task_id = match task.element {
            Some(j) => workflow::element_id(&id, n, j),
            None => workflow::step_id(&id, n),
        };
        let loaded = match self.load_workflow(&id).await {
            Ok(loaded) => loaded,
            Err(Error::NotFound(_)) => {
                tracing::warn!(workflow = %id, "a step's result for a workflow that is no longer kept");
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        if n >= loaded.on_failure() {
            // The on_failure step's own outcome: the workflow had ended already.
            return Ok(());
        }
        let empty = async_nats::HeaderMap::new();
        let headers = message.headers.as_ref().unwrap_or(&empty);
        let info = broker::task_info(&task_id, headers, &message.payload, None);
        let state = if broker::is_expiry_marker(headers) {
            TaskState::Expired
        } else {
            info.state()
        };
        match (state, task.element) {
            (TaskState::Succeeded, None) => {
                self.step_succeeded(&loaded, n, Own::One(message.payload.clone()))
                    .await
            }
            (TaskState::Succeeded, Some(j)) => {
                if self.workflow_end(&loaded.id).await?.is_some() {
                    return Ok(());
                }
                let (full, count) = self.join(&loaded.id, &n.to_string(), j, None).await?;
                if full {
                    self.step_succeeded(&loaded, n, Own::Map(count)).await
                } else {
                    Ok(())
                }
            }
            (TaskState::Failed | TaskState::Cancelled | TaskState::Expired, _) => {
                self.step_failed(&loaded, n, &task_id, state, info.error)
                    .await
            }
            _ => Ok(()),
        }
    }

    /// Step `n` succeeded (a map step: all its elements): the steps that take its result start
    /// once all they take is in, and the workflow ends when its last steps are done.
    async fn step_succeeded(&self, loaded: &Loaded, n: usize, own: Own) -> Result<(), Error> {
        if self.workflow_end(&loaded.id).await?.is_some() {
            return Ok(());
        }
        let mut submitted = Vec::new();
        for &m in &loaded.plan.dependents[n] {
            let step = loaded.step(m).expect("a step");
            if !step.for_each.is_empty() {
                let Own::One(output) = &own else {
                    return Err(Error::Broker(format!(
                        "map step {m} of workflow {} comes after a map",
                        loaded.id
                    )));
                };
                if self.start_map(loaded, n, m, output.clone()).await? {
                    submitted.push(m);
                }
                continue;
            }
            let deps = &loaded.plan.after[m];
            let outputs = if deps.len() == 1 {
                self.outputs_of(loaded, n, &own).await?
            } else {
                let position = deps.iter().position(|&d| d == n).expect("a dependency");
                let (full, _) = self
                    .join(&loaded.id, &m.to_string(), position, Some(deps.len()))
                    .await?;
                if !full {
                    continue;
                }
                let mut outputs = Vec::with_capacity(deps.len());
                for &d in deps {
                    let result = self.result(&workflow::step_id(&loaded.id, d)).await?;
                    let Some(result) = result.filter(|r| r.state() == TaskState::Succeeded) else {
                        return Err(Error::Broker(format!(
                            "step {d} of workflow {} counted as succeeded has no result",
                            loaded.id
                        )));
                    };
                    outputs.push((self.output_of(loaded, d).await?, Bytes::from(result.result)));
                }
                outputs
            };
            let input = self.input_type(step).await?;
            match plan::build_input(step, &input, &outputs) {
                Ok(args) => {
                    let id = workflow::step_id(&loaded.id, m);
                    self.submit_tasks(loaded, m, vec![(id, args)]).await?;
                    submitted.push(m);
                }
                Err(why) => {
                    // The task types changed since the workflow was checked.
                    let error =
                        format!("the input of step {:?} could not be made: {why}", step.name);
                    return self.cannot_start(loaded, m, error).await;
                }
            }
        }
        // A step submitted while the workflow ended (failed elsewhere, or cancelled) does not run.
        if !submitted.is_empty() && self.workflow_end(&loaded.id).await?.is_some() {
            let all: Vec<usize> = loaded
                .all_steps()
                .filter(|i| !submitted.contains(i))
                .collect();
            self.cancel_steps(loaded, &all).await?;
            return Ok(());
        }
        let last = &loaded.plan.last;
        if let Some(position) = last.iter().position(|&l| l == n) {
            let all_done = last.len() == 1
                || self
                    .join(&loaded.id, "end", position, Some(last.len()))
                    .await?
                    .0;
            if all_done {
                let end = v1::WorkflowEnd {
                    state: WorkflowState::Succeeded as i32,
                    ended_at: Some(SystemTime::now().into()),
                    ..Default::default()
                };
                self.store_workflow_end(&loaded.id, &end).await?;
            }
        }
        Ok(())
    }

    /// A step whose task cannot be submitted fails the workflow.
    async fn cannot_start(&self, loaded: &Loaded, m: usize, error: String) -> Result<(), Error> {
        let task_id = workflow::step_id(&loaded.id, m);
        let failure = v1::TaskFailure {
            message: error,
            retryable: false,
        };
        self.step_failed(loaded, m, &task_id, TaskState::Failed, Some(failure))
            .await
    }

    /// Map step `m` after step `n`: its join, which knows how many elements there are, then
    /// one task per element. False when the map could not start (the workflow failed).
    async fn start_map(
        &self,
        loaded: &Loaded,
        n: usize,
        m: usize,
        output: Bytes,
    ) -> Result<bool, Error> {
        let step = loaded.step(m).expect("a step");
        let descriptor = self.output_of(loaded, n).await?;
        let elements = match plan::elements(step, &descriptor, output) {
            Ok(elements) if elements.len() <= workflow::MAX_ELEMENTS => elements,
            Ok(elements) => {
                let error = format!(
                    "map step {:?} has {} elements, more than {}",
                    step.name,
                    elements.len(),
                    workflow::MAX_ELEMENTS
                );
                self.cannot_start(loaded, m, error).await?;
                return Ok(false);
            }
            Err(why) => {
                let error = format!("the elements of map step {:?}: {why}", step.name);
                self.cannot_start(loaded, m, error).await?;
                return Ok(false);
            }
        };
        let count = elements.len();
        // The join first: whoever takes an element's result knows how many there are.
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(header::EXPECTED_LAST_SUBJECT_SEQUENCE, "0");
        headers.insert(workflow::JOIN_COUNT, count.to_string().as_str());
        self.publish_if_last(
            workflow::join(&loaded.id, &m.to_string()),
            headers,
            Bytes::new(),
        )
        .await?;
        if count == 0 {
            Box::pin(self.step_succeeded(loaded, m, Own::Map(0))).await?;
            return Ok(true);
        }
        let tasks = elements
            .into_iter()
            .enumerate()
            .map(|(j, args)| (workflow::element_id(&loaded.id, m, j), args))
            .collect();
        self.submit_tasks(loaded, m, tasks).await?;
        Ok(true)
    }

    /// The outputs step `n` gives the step after it: its result, or every element's.
    async fn outputs_of(
        &self,
        loaded: &Loaded,
        n: usize,
        own: &Own,
    ) -> Result<Vec<(prost_reflect::MessageDescriptor, Bytes)>, Error> {
        let descriptor = self.output_of(loaded, n).await?;
        match own {
            Own::One(output) => Ok(vec![(descriptor, output.clone())]),
            Own::Map(count) => {
                let results: Vec<Result<Option<v1::TaskInfo>, Error>> =
                    futures::stream::iter(0..*count)
                        .map(|j| async move {
                            self.result(&workflow::element_id(&loaded.id, n, j)).await
                        })
                        .buffered(64)
                        .collect()
                        .await;
                let mut outputs = Vec::with_capacity(*count);
                for (j, result) in results.into_iter().enumerate() {
                    let Some(result) = result?.filter(|r| r.state() == TaskState::Succeeded) else {
                        return Err(Error::Broker(format!(
                            "element {j} of map step {n} of workflow {} counted as succeeded has no result",
                            loaded.id
                        )));
                    };
                    outputs.push((descriptor.clone(), Bytes::from(result.result)));
                }
                Ok(outputs)
            }
        }
    }

    /// A step failed for good, expired, or was cancelled on its own: the workflow ends, the
    /// other steps are cancelled (unless it lets them finish), and the on_failure step runs.
    async fn step_failed(
        &self,
        loaded: &Loaded,
        n: usize,
        task_id: &Id,
        state: TaskState,
        error: Option<v1::TaskFailure>,
    ) -> Result<(), Error> {
        let name = loaded.step(n).expect("a step").name.clone();
        let end = v1::WorkflowEnd {
            state: if state == TaskState::Cancelled {
                WorkflowState::Cancelled
            } else {
                WorkflowState::Failed
            } as i32,
            failed_step: name.clone(),
            task_id: task_id.to_string(),
            step_state: state as i32,
            error: error.clone().or_else(|| {
                Some(v1::TaskFailure {
                    message: format!("the step ended {}", broker::state_name(state)),
                    retryable: false,
                })
            }),
            ended_at: Some(SystemTime::now().into()),
        };
        if !self.store_workflow_end(&loaded.id, &end).await? {
            // Ended already: by this step (a gateway that stopped midway), which goes on
            // below, or by something else, which did what follows itself.
            let ended = self.workflow_end(&loaded.id).await?.unwrap_or_default();
            if ended.failed_step != name {
                return Ok(());
            }
        }
        if !loaded.workflow().let_running_finish {
            // The other elements of a map step that failed are cancelled too.
            let except = [n, loaded.on_failure()];
            let except: &[usize] =
                if workflow::task_of(task_id.as_str()).is_some_and(|t| t.element.is_some()) {
                    &except[1..]
                } else {
                    &except
                };
            self.cancel_steps(loaded, except).await?;
        }
        if loaded.workflow().on_failure.is_some() {
            let failure = v1::WorkflowFailure {
                workflow_id: loaded.id.to_string(),
                step: name,
                task_id: task_id.to_string(),
                state: state as i32,
                error: end.error,
            };
            let i = loaded.on_failure();
            let id = workflow::step_id(&loaded.id, i);
            self.submit_tasks(loaded, i, vec![(id, failure.encode_to_vec().into())])
                .await?;
        }
        Ok(())
    }

    /// Marks `position` in a join of `count` (a map's join: the count it holds); whether all
    /// are marked now, and the count. A compare-and-set on the join's subject, tried again
    /// when another gateway changed it first.
    pub(crate) async fn join(
        &self,
        id: &Id,
        step: &str,
        position: usize,
        count: Option<usize>,
    ) -> Result<(bool, usize), Error> {
        let subject = workflow::join(id, step);
        let mut conflicts = 0u32;
        loop {
            let found = self
                .broker
                .last_message_on(broker::WORKFLOWS_STREAM, &subject)
                .await
                .map_err(|e| self.read_error(e))?;
            let (sequence, mut join, held) = match &found {
                Some(m) => (
                    m.sequence,
                    workflow::Join::from_bytes(&m.payload),
                    m.headers
                        .get(workflow::JOIN_COUNT)
                        .and_then(|v| v.as_str().parse::<usize>().ok()),
                ),
                None => (0, workflow::Join::default(), None),
            };
            let Some(count) = count.or(held) else {
                return Err(Error::Broker(format!(
                    "the join {subject} says not how many it waits for"
                )));
            };
            if !join.set(position) {
                return Ok((join.full(count), count));
            }
            let mut headers = async_nats::HeaderMap::new();
            headers.insert(
                header::EXPECTED_LAST_SUBJECT_SEQUENCE,
                sequence.to_string().as_str(),
            );
            headers.insert(workflow::JOIN_COUNT, count.to_string().as_str());
            let body = Bytes::copy_from_slice(join.as_bytes());
            let published = self
                .broker
                .jetstream
                .publish_with_headers(subject.clone(), headers, body)
                .await
                .map_err(publish_error)?
                .await;
            match published {
                Ok(_) => return Ok((join.full(count), count)),
                Err(e) if broker::is_wrong_last_sequence(&e) => {
                    // Many gateways (or handlers) marking one join: spread the next tries.
                    conflicts += 1;
                    let spread = u64::from(conflicts.min(8)) * 2;
                    let nanos = u64::from(
                        SystemTime::now()
                            .duration_since(SystemTime::UNIX_EPOCH)
                            .unwrap_or_default()
                            .subsec_nanos(),
                    );
                    tokio::time::sleep(Duration::from_millis(nanos % (spread + 1))).await;
                }
                Err(e) => return Err(publish_error(e)),
            }
        }
    }

    async fn output_of(
        &self,
        loaded: &Loaded,
        i: usize,
    ) -> Result<prost_reflect::MessageDescriptor, Error> {
        let step = loaded.step(i).expect("a step");
        let name = Name::parse(&step.task).map_err(Error::InvalidName)?;
        Ok(self.registry.get(&name).await?.output.clone())
    }

    async fn input_type(&self, step: &v1::Step) -> Result<prost_reflect::MessageDescriptor, Error> {
        let name = Name::parse(&step.task).map_err(Error::InvalidName)?;
        Ok(self.registry.get(&name).await?.input.clone())
    }

    /// Submits tasks of step `i` (its task, or a map's elements) with their ids and
    /// arguments: one submitted before is not stored again. Sent in windows, each window's
    /// acks awaited together. The tasks continue the workflow's trace.
    async fn submit_tasks(
        &self,
        loaded: &Loaded,
        i: usize,
        tasks: Vec<(Id, Bytes)>,
    ) -> Result<(), Error> {
        /// Tasks sent before their acks are awaited.
        const WINDOW: usize = 256;
        let step = loaded.step(i).expect("a step");
        let name = Name::parse(&step.task).map_err(Error::InvalidName)?;
        let options = step.options.clone().unwrap_or_default();
        let overrides = overrides(&options, self.broker.result_ttl)?;
        let mut carrier = async_nats::HeaderMap::new();
        carrier.insert("traceparent", loaded.stored.traceparent.as_str());
        let span = tracing::info_span!("workflow step", workflow = %loaded.id, step = %step.name);
        let _ = span.set_parent(broker::trace::extract_nats(Some(&carrier)));
        async {
            let mut tasks = tasks.into_iter().peekable();
            while tasks.peek().is_some() {
                let mut sending = Vec::with_capacity(WINDOW);
                for (id, args) in tasks.by_ref().take(WINDOW) {
                    let placement = placement(&options, SystemTime::now())?;
                    let task = Prepared::step(
                        name.clone(),
                        id,
                        args,
                        overrides,
                        placement,
                        &loaded.stored.traceparent,
                    );
                    sending.push(self.send(task).await?);
                }
                for sent in
                    futures::future::join_all(sending.into_iter().map(|s| self.confirm(s))).await
                {
                    sent?;
                }
            }
            Ok::<(), Error>(())
        }
        .instrument(span)
        .await
    }
}

/// What a step that succeeded gives: its result, or (a map step) the count of its elements,
/// whose results are read when a step takes them.
enum Own {
    One(Bytes),
    Map(usize),
}
