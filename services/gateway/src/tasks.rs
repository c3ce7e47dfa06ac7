//! `taskwire.v1.Tasks` and `taskwire.v1.Admin`.

use std::sync::Arc;
use std::time::Duration;

use async_nats::connection::State;
use async_nats::jetstream::context::PublishErrorKind;
use bytes::Bytes;
use futures::StreamExt as _;
use prost_reflect::{DynamicMessage, SerializeOptions};
use taskwire::broker::{self, subject};
use taskwire::task::{Id, Name};
use taskwire::v1::{self, TaskState};
use tonic::{Request, Response, Status};

use crate::waiters::Waiting;
use crate::{Error, Gateway, MAX_WAIT, payload};

const DEFAULT_WAIT: Duration = Duration::from_secs(30);

/// A checked submission, ready to publish.
struct Prepared {
    name: Name,
    id: Id,
    args: Bytes,
    key: Option<String>,
    overrides: broker::Overrides,
}

/// Longest idempotency key accepted, in bytes.
const MAX_KEY_LEN: usize = 256;
/// Most attempts a submitter may ask for.
const MAX_ATTEMPTS: u32 = 100;
/// Longest time limit or retry delay a submitter may ask for.
const MAX_OVERRIDE: Duration = Duration::from_secs(24 * 3600);

/// The submitter's changes to the task's options, checked.
fn overrides(options: &v1::SubmitOptions) -> Result<broker::Overrides, Error> {
    if options.max_attempts > MAX_ATTEMPTS {
        return Err(Error::BadRequest(format!(
            "max_attempts is {}; it must be 1 to {MAX_ATTEMPTS} (0 keeps the task's own)",
            options.max_attempts
        )));
    }
    let duration =
        |what: &str, value: &Option<prost_types::Duration>| -> Result<Option<Duration>, Error> {
            let Some(value) = value else { return Ok(None) };
            let bad = |why: &str| {
                Error::BadRequest(format!(
                    "{what} {why}; give a positive duration of at most 24h"
                ))
            };
            let d = Duration::try_from(*value).map_err(|_| bad("is negative"))?;
            if d.is_zero() {
                return Err(bad("is zero"));
            }
            if d > MAX_OVERRIDE {
                return Err(bad("is longer than 24h"));
            }
            Ok(Some(d))
        };
    Ok(broker::Overrides {
        max_attempts: (options.max_attempts > 0).then_some(options.max_attempts),
        timeout: duration("timeout", &options.timeout)?,
        backoff_initial: duration("backoff_initial", &options.backoff_initial)?,
        backoff_max: duration("backoff_max", &options.backoff_max)?,
    })
}

/// The idempotency key a task option takes from a field of the arguments.
fn key_from_field(field: &str, message: &prost_reflect::DynamicMessage) -> Option<String> {
    if field.is_empty() {
        return None;
    }
    let value = message.get_field_by_name(field)?;
    let key = match value.as_ref() {
        prost_reflect::Value::String(s) => s.clone(),
        prost_reflect::Value::I32(n) => n.to_string(),
        prost_reflect::Value::I64(n) => n.to_string(),
        prost_reflect::Value::U32(n) => n.to_string(),
        prost_reflect::Value::U64(n) => n.to_string(),
        other => format!("{other:?}"),
    };
    (!key.is_empty()).then_some(key)
}

#[derive(Debug, Clone)]
pub(crate) struct TasksService {
    gateway: Arc<Gateway>,
}

impl TasksService {
    pub(crate) fn new(gateway: Arc<Gateway>) -> Self {
        Self { gateway }
    }
}

impl Gateway {
    /// Answers UNAVAILABLE at once while NATS is down, rather than queueing the call behind a
    /// reconnect.
    pub(crate) fn check_connected(&self) -> Result<(), Error> {
        match self.client.connection_state() {
            State::Connected => Ok(()),
            state => Err(Error::BrokerDown(format!("connection is {state}"))),
        }
    }

    /// Checks a submission: the task exists, the arguments fit its input message.
    async fn prepare(&self, req: v1::SubmitRequest) -> Result<Prepared, Error> {
        let name = Name::parse(&req.task).map_err(Error::InvalidName)?;
        let task_type = self.registry.get(&name).await?;
        let (args, message) = match req.args {
            Some(v1::submit_request::Args::ArgsProto(bytes)) => {
                payload::from_proto(&task_type.input, Bytes::from(bytes), self.max_payload)?
            }
            Some(v1::submit_request::Args::ArgsJson(json)) => {
                payload::from_json(&task_type.input, &json, self.max_payload)?
            }
            None => return Err(Error::MissingArgs),
        };
        let options = req.options.unwrap_or_default();
        let key = if !options.idempotency_key.is_empty() {
            Some(options.idempotency_key.clone())
        } else {
            key_from_field(&task_type.declared.idempotency_key_field, &message)
        };
        if let Some(key) = &key
            && key.len() > MAX_KEY_LEN
        {
            return Err(Error::BadRequest(format!(
                "the idempotency key is {} bytes; the limit is {MAX_KEY_LEN}",
                key.len()
            )));
        }
        let id = match &key {
            Some(key) => Id::from_idempotency_key(&name, key),
            None => Id::generate(),
        };
        let overrides = overrides(&options)?;
        self.check_connected()?;
        Ok(Prepared {
            name,
            id,
            args,
            key,
            overrides,
        })
    }

    /// Stores the task; returns once JetStream has acknowledged it.
    async fn publish(&self, task: Prepared) -> Result<v1::SubmitResponse, Error> {
        let Prepared {
            name,
            id,
            args,
            key,
            overrides,
        } = task;
        let ack = self
            .store_task(
                &name,
                &id,
                broker::task_headers(&name, &id, key.as_deref(), &overrides),
                args,
            )
            .await?;
        Ok(v1::SubmitResponse {
            task_id: id.to_string(),
            duplicate: ack.duplicate,
        })
    }

    /// Stores a task and its queued event. The event goes first on the same connection, so that
    /// it is stored before any event of the worker that runs the task; both acks are awaited
    /// together, so when this returns, Get and Wait find the task.
    pub(crate) async fn store_task(
        &self,
        name: &Name,
        id: &Id,
        headers: async_nats::HeaderMap,
        args: Bytes,
    ) -> Result<async_nats::jetstream::publish::PublishAck, Error> {
        let queued = self
            .broker
            .jetstream
            .publish_with_headers(
                subject::event(name, id),
                broker::event_headers(name, id, TaskState::Queued, 0),
                Bytes::new(),
            )
            .await
            .map_err(publish_error)?;
        let stored = self
            .broker
            .jetstream
            .publish_with_headers(subject::task(name), headers, args)
            .await
            .map_err(publish_error)?;
        let (queued, stored) = tokio::join!(queued.into_future(), stored.into_future());
        let ack = match stored {
            Ok(ack) => ack,
            Err(e) => {
                // The task was refused (a full queue, say): take its queued event back, so that
                // nothing of it remains.
                if let Ok(event) = queued {
                    let _ = self.broker.events.delete_message(event.sequence).await;
                }
                return Err(publish_error(e));
            }
        };
        queued.map_err(publish_error)?;
        Ok(ack)
    }

    async fn submit(&self, req: v1::SubmitRequest) -> Result<v1::SubmitResponse, Error> {
        let task = self.prepare(req).await?;
        self.publish(task).await
    }

    /// Submits and subscribes to the result before the task is stored, so no result can slip
    /// by: returns the queued state and the subscription to wait on.
    async fn submit_subscribed(
        &self,
        req: v1::SubmitRequest,
    ) -> Result<(v1::TaskInfo, Waiting), Error> {
        let task = self.prepare(req).await?;
        let (id, name) = (task.id.clone(), task.name.clone());
        let results = self.waiters.register(&id);
        let response = self.publish(task).await?;
        let queued = v1::TaskInfo {
            task_id: id.to_string(),
            task: name.to_string(),
            state: TaskState::Queued as i32,
            ..Default::default()
        };
        if response.duplicate
            && let Some(info) = self.result(&id).await?
        {
            // The same idempotency key was used before and that task has finished.
            return Ok((info, results));
        }
        Ok((queued, results))
    }

    /// The stored result of a task, if it has one.
    async fn result(&self, id: &Id) -> Result<Option<v1::TaskInfo>, Error> {
        self.lookup(broker::RESULTS_STREAM, &subject::result(id), id)
            .await
    }

    /// The last state change of a task, if any.
    async fn last_event(&self, id: &Id) -> Result<Option<v1::TaskInfo>, Error> {
        self.lookup(broker::EVENTS_STREAM, &subject::events_of(id), id)
            .await
    }

    pub(crate) async fn lookup(
        &self,
        stream: &str,
        filter: &str,
        id: &Id,
    ) -> Result<Option<v1::TaskInfo>, Error> {
        match broker::last_message(&self.client, stream, filter).await {
            Ok(found) => Ok(found.map(|m| broker::task_info(id, &m.headers, &m.payload, m.time))),
            Err(e) => Err(self.broker_error(e)),
        }
    }

    pub(crate) fn broker_error(&self, err: impl std::fmt::Display) -> Error {
        match self.check_connected() {
            Err(down) => down,
            Ok(()) => Error::Broker(err.to_string()),
        }
    }

    async fn state(&self, id: &Id) -> Result<v1::TaskInfo, Error> {
        if let Some(info) = self.result(id).await? {
            return Ok(info);
        }
        self.last_event(id)
            .await?
            .ok_or_else(|| Error::NotFound(id.to_string()))
    }

    async fn wait(&self, id: &Id, timeout: Duration) -> Result<v1::TaskInfo, Error> {
        self.check_connected()?;
        // Register before looking, so a result stored in between is not missed.
        let results = self.waiters.register(id);
        if let Some(info) = self.result(id).await? {
            return Ok(info);
        }
        // A result published just before our subscription can still be on its way into the
        // stream when we looked: look again soon.
        self.wait_on(results, id, timeout, Duration::from_millis(20))
            .await
    }

    /// Waits for the result on a subscription to its subject, looking at the stream now and
    /// then (first after `recheck`) in case a message was missed.
    async fn wait_on(
        &self,
        mut results: Waiting,
        id: &Id,
        timeout: Duration,
        mut recheck: Duration,
    ) -> Result<v1::TaskInfo, Error> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let until = (tokio::time::Instant::now() + recheck).min(deadline);
            match tokio::time::timeout_at(until, results.next()).await {
                Ok(Some(msg)) => {
                    return Ok(broker::task_info(
                        id,
                        &msg.headers.unwrap_or_default(),
                        &msg.payload,
                        Some(std::time::SystemTime::now()),
                    ));
                }
                Ok(None) => return Err(Error::BrokerDown("the result subscription ended".into())),
                Err(_) => {
                    if let Some(info) = self.result(id).await? {
                        return Ok(info);
                    }
                    // Most waits end before the first look again; only a task that takes longer
                    // pays for checking that it exists at all.
                    let pending = self
                        .last_event(id)
                        .await?
                        .ok_or_else(|| Error::NotFound(id.to_string()))?;
                    if tokio::time::Instant::now() >= deadline {
                        return Err(Error::StillRunning {
                            id: id.to_string(),
                            state: broker::state_name(pending.state()),
                            waited: timeout,
                        });
                    }
                    recheck = (recheck * 2).min(Duration::from_secs(1));
                }
            }
        }
    }

    async fn cancel(&self, id: &Id) -> Result<v1::TaskInfo, Error> {
        self.check_connected()?;
        if let Some(info) = self.result(id).await? {
            return Err(Error::Finished {
                id: id.to_string(),
                state: broker::state_name(info.state()),
            });
        }
        let last = self
            .last_event(id)
            .await?
            .ok_or_else(|| Error::NotFound(id.to_string()))?;
        let name = Name::parse(&last.task).map_err(Error::InvalidName)?;
        // The cancelled result takes the task's one result slot; a worker that finishes the
        // task later finds the slot taken and drops its own.
        let published = self
            .broker
            .jetstream
            .publish_with_headers(
                subject::result(id),
                broker::result_headers(
                    &name,
                    id,
                    TaskState::Cancelled,
                    last.attempt,
                    &format!("cancel.{}", broker::now_micros()),
                ),
                broker::failure_body("cancelled on request", false),
            )
            .await
            .map_err(publish_error)?
            .await;
        match published {
            Ok(_) => {}
            Err(e) if broker::is_wrong_last_sequence(&e) => {
                let state = match self.result(id).await? {
                    Some(info) => broker::state_name(info.state()),
                    None => "finished",
                };
                return Err(Error::Finished {
                    id: id.to_string(),
                    state,
                });
            }
            Err(e) => return Err(publish_error(e)),
        }
        self.result(id)
            .await?
            .ok_or_else(|| Error::Broker("the cancelled result was not stored".into()))
    }

    /// Renders the result as JSON when asked, with 64-bit integers as numbers.
    async fn with_json(
        &self,
        mut info: v1::TaskInfo,
        include: bool,
    ) -> Result<v1::TaskInfo, Error> {
        if !include || info.state() != TaskState::Succeeded {
            return Ok(info);
        }
        let Ok(name) = Name::parse(&info.task) else {
            return Ok(info);
        };
        let Ok(task_type) = self.registry.get(&name).await else {
            return Ok(info);
        };
        let message = DynamicMessage::decode(task_type.output.clone(), info.result.as_slice())
            .map_err(|e| Error::BadResult(info.task_id.clone(), e.to_string()))?;
        let options = SerializeOptions::new()
            .stringify_64_bit_integers(false)
            .skip_default_fields(false);
        let mut out = serde_json::Serializer::new(Vec::new());
        message
            .serialize_with_options(&mut out, &options)
            .map_err(|e| Error::BadResult(info.task_id.clone(), e.to_string()))?;
        info.result_json = String::from_utf8_lossy(&out.into_inner()).into_owned();
        Ok(info)
    }
}

pub(crate) fn publish_error(err: async_nats::jetstream::context::PublishError) -> Error {
    match err.kind() {
        PublishErrorKind::TimedOut | PublishErrorKind::BrokenPipe => {
            Error::BrokerDown(err.to_string())
        }
        // No stream answered: in a cluster, a leader election; else a deleted stream.
        PublishErrorKind::StreamNotFound => Error::BrokerDown(format!(
            "{err} (a stream leader election, or a deleted stream that a gateway restart recreates)"
        )),
        PublishErrorKind::MaxPayloadExceeded => Error::Broker(err.to_string()),
        _ => {
            let text = err.to_string();
            if text.contains("maximum") || text.contains("limit") || text.contains("resources") {
                Error::QueueFull(text)
            } else {
                Error::Broker(text)
            }
        }
    }
}

fn parse_id(id: &str) -> Result<Id, Error> {
    Id::parse(id).map_err(Error::InvalidId)
}

fn wait_timeout(timeout: Option<prost_types::Duration>) -> Duration {
    timeout
        .and_then(|d| Duration::try_from(d).ok())
        .unwrap_or(DEFAULT_WAIT)
        .min(MAX_WAIT)
}

type TaskInfoStream =
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<v1::TaskInfo, Status>> + Send>>;

#[tonic::async_trait]
impl v1::tasks_server::Tasks for TasksService {
    async fn submit(
        &self,
        request: Request<v1::SubmitRequest>,
    ) -> Result<Response<v1::SubmitResponse>, Status> {
        let req = request.into_inner();
        let task = req.task.clone();
        match self.gateway.submit(req).await {
            Ok(resp) => {
                tracing::debug!(task, task_id = resp.task_id, "submitted");
                Ok(Response::new(resp))
            }
            Err(e) => {
                tracing::debug!(task, error = %e, "submit refused");
                Err(e.into())
            }
        }
    }

    type SubmitAndWaitStream = TaskInfoStream;

    async fn submit_and_wait(
        &self,
        request: Request<v1::SubmitAndWaitRequest>,
    ) -> Result<Response<Self::SubmitAndWaitStream>, Status> {
        let req = request.into_inner();
        let timeout = wait_timeout(req.timeout);
        let json = req.include_json;
        let gateway = Arc::clone(&self.gateway);
        let (first, results) = gateway
            .submit_subscribed(req.submit.unwrap_or_default())
            .await?;
        let first = gateway.with_json(first, json).await?;
        if first.state() != TaskState::Queued {
            return Ok(Response::new(Box::pin(futures::stream::iter([Ok(first)]))));
        }
        let id = parse_id(&first.task_id)?;
        let last = futures::stream::once(async move {
            // Subscribed before the task was stored: nothing can have been missed, so the
            // stream is only looked at again for long tasks.
            let info = gateway
                .wait_on(results, &id, timeout, Duration::from_secs(1))
                .await?;
            Ok(gateway.with_json(info, json).await?)
        });
        Ok(Response::new(Box::pin(
            futures::stream::iter([Ok(first)]).chain(last),
        )))
    }

    async fn get(
        &self,
        request: Request<v1::GetRequest>,
    ) -> Result<Response<v1::TaskInfo>, Status> {
        let req = request.into_inner();
        let id = parse_id(&req.task_id)?;
        let info = self.gateway.state(&id).await?;
        Ok(Response::new(
            self.gateway.with_json(info, req.include_json).await?,
        ))
    }

    async fn wait(
        &self,
        request: Request<v1::WaitRequest>,
    ) -> Result<Response<v1::TaskInfo>, Status> {
        let req = request.into_inner();
        let id = parse_id(&req.task_id)?;
        let timeout = wait_timeout(req.timeout);
        let info = self.gateway.wait(&id, timeout).await?;
        Ok(Response::new(
            self.gateway.with_json(info, req.include_json).await?,
        ))
    }

    async fn cancel(
        &self,
        request: Request<v1::CancelRequest>,
    ) -> Result<Response<v1::TaskInfo>, Status> {
        let id = parse_id(&request.into_inner().task_id)?;
        Ok(Response::new(self.gateway.cancel(&id).await?))
    }
}

#[tonic::async_trait]
impl v1::admin_server::Admin for TasksService {
    async fn list_dead_letters(
        &self,
        request: Request<v1::ListDeadLettersRequest>,
    ) -> Result<Response<v1::ListDeadLettersResponse>, Status> {
        let req = request.into_inner();
        let dead_letters = self.gateway.list_dead(&req.task, req.limit).await?;
        Ok(Response::new(v1::ListDeadLettersResponse { dead_letters }))
    }

    async fn replay_dead_letters(
        &self,
        request: Request<v1::ReplayDeadLettersRequest>,
    ) -> Result<Response<v1::ReplayDeadLettersResponse>, Status> {
        let task_ids = self.gateway.replay_dead(request.into_inner()).await?;
        Ok(Response::new(v1::ReplayDeadLettersResponse { task_ids }))
    }

    async fn purge_dead_letters(
        &self,
        request: Request<v1::PurgeDeadLettersRequest>,
    ) -> Result<Response<v1::PurgeDeadLettersResponse>, Status> {
        let purged = self.gateway.purge_dead(&request.into_inner().task).await?;
        Ok(Response::new(v1::PurgeDeadLettersResponse { purged }))
    }

    async fn list_task_types(
        &self,
        _request: Request<v1::ListTaskTypesRequest>,
    ) -> Result<Response<v1::ListTaskTypesResponse>, Status> {
        let task_types = self
            .gateway
            .registry
            .list()
            .iter()
            .map(|t| v1::TaskType {
                name: t.name.to_string(),
                input_type: t.input.full_name().to_owned(),
                output_type: t.output.full_name().to_owned(),
                file_descriptor_set: Vec::new(),
                options: Some(t.declared.clone()),
            })
            .collect();
        Ok(Response::new(v1::ListTaskTypesResponse { task_types }))
    }
}
