//! Submitting tasks: arguments and options checked, the task stored (queued, delayed, or
//! answered by the task its idempotency key names), one or many at a time.

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use taskwire::task::{Id, Name};
use taskwire::v1::{self, TaskState};
use taskwire_protocol::{self as broker, subject};
use tracing::Instrument as _;

use crate::auth::Op;
use crate::tasks::parse_id;
use crate::waiters::Waiting;
use crate::{Error, Gateway, payload};

mod options;
mod refusal;

pub(crate) use options::*;
pub(crate) use refusal::*;

/// A checked submission, ready to publish.
pub(crate) struct Prepared {
    name: Name,
    id: Id,
    args: Bytes,
    key: Option<String>,
    overrides: broker::Overrides,
    placement: Placement,
    /// The trace the task continues, when not the caller's (a workflow's step).
    traceparent: Option<String>,
}

impl Prepared {
    /// A workflow's step: its id is its place in the workflow, so it is checked like a keyed
    /// task (one submitted before is not stored again); it continues the workflow's trace.
    pub(crate) fn step(
        name: Name,
        id: Id,
        args: Bytes,
        overrides: broker::Overrides,
        placement: Placement,
        traceparent: &str,
    ) -> Self {
        Self {
            key: Some(id.to_string()),
            name,
            id,
            args,
            overrides,
            placement,
            traceparent: Some(traceparent.to_owned()),
        }
    }
}

impl Gateway {
    /// Publishes a message whose headers say which sequence its subject must be at
    /// (`Nats-Expected-Last-Subject-Sequence`): true when the broker stored it, false when the
    /// subject had moved on (another took the place first).
    pub(crate) async fn publish_if_last(
        &self,
        subject: String,
        headers: async_nats::HeaderMap,
        body: Bytes,
    ) -> Result<bool, Error> {
        let published = self
            .broker
            .jetstream
            .publish_with_headers(subject, headers, body)
            .await
            .map_err(publish_error)?
            .await;
        match published {
            Ok(_) => Ok(true),
            Err(e) if broker::is_wrong_last_sequence(&e) => Ok(false),
            Err(e) => Err(publish_error(e)),
        }
    }
}

impl Prepared {
    /// The task's id.
    pub(crate) fn id(&self) -> &Id {
        &self.id
    }

    /// The task's type.
    pub(crate) fn name(&self) -> &Name {
        &self.name
    }

    /// Stores the task under this id (a child's, made from its parent and key).
    pub(crate) fn with_id(mut self, id: Id) -> Self {
        self.id = id;
        self
    }

    /// Continues the trace `traceparent` (a child's parent's) rather than the caller's.
    pub(crate) fn in_trace(mut self, traceparent: Option<String>) -> Self {
        if traceparent.is_some() {
            self.traceparent = traceparent;
        }
        self
    }
}

/// A task sent to the broker whose acks are still on their way.
pub(crate) struct Sending {
    id: Id,
    name: Name,
    /// None when the task was known already: nothing was sent.
    acks: Option<TaskAcks>,
}

pub(crate) struct TaskAcks {
    queued: async_nats::jetstream::context::PublishAckFuture,
    stored: async_nats::jetstream::context::PublishAckFuture,
}

impl Gateway {
    /// Checks a submission: the task exists, the arguments fit its input message, the options
    /// are sound.
    pub(crate) async fn prepare(
        &self,
        req: v1::SubmitRequest,
        scope: Option<&str>,
    ) -> Result<Prepared, Error> {
        let name = Name::parse(&req.task).map_err(Error::InvalidName)?;
        let task_type = self.registry.get(&name).await?;
        self.registry
            .check_schema(&task_type, &req.descriptor_hash)
            .await?;
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
        if let Some(key) = &key {
            check_key(key)?;
        }
        let id = match (&key, scope) {
            (Some(key), None) => Id::from_idempotency_key(&name, key),
            (Some(key), Some(scope)) => Id::from_idempotency_key(&name, &format!("{scope}\0{key}")),
            (None, _) => self.waiters.new_id(),
        };
        let overrides = overrides(&options, self.broker.result_ttl)?;
        let placement = placement(&options, SystemTime::now())?;
        if placement.not_before.is_some() && !self.broker.message_schedules {
            return Err(Error::NoSchedules);
        }
        self.check_connected()?;
        Ok(Prepared {
            name,
            id,
            args,
            key,
            overrides,
            placement,
            traceparent: None,
        })
    }

    /// Stores the task; returns once JetStream has acknowledged it.
    pub(crate) async fn publish(&self, task: Prepared) -> Result<v1::SubmitResponse, Error> {
        let sending = self.send(task).await?;
        self.confirm(sending).await
    }

    /// Sends a checked task to the broker without waiting for its acks: [`Self::confirm`]
    /// waits. Many sends in a row travel as one batch.
    pub(crate) async fn send(&self, task: Prepared) -> Result<Sending, Error> {
        let Prepared {
            name,
            id,
            args,
            key,
            overrides,
            placement,
            traceparent,
        } = task;
        // A keyed task is known for as long as its state or outcome is kept, not only within
        // the broker's duplicate window (which a restart of a single server also forgets once
        // the task was consumed): a known key answers the existing task.
        if key.is_some() && self.known(&id).await? {
            return Ok(Sending {
                id,
                name,
                acks: None,
            });
        }
        let task = broker::TaskMessage::submitted(&name, &id, overrides, placement.expires_at);
        let acks = self
            .send_task(task, args, &placement, traceparent.as_deref())
            .await?;
        Ok(Sending {
            id,
            name,
            acks: Some(acks),
        })
    }

    /// Whether the broker holds the task `id`: a result, a run that started, a delayed task
    /// (held, or fired: a fired copy carries no de-duplication id), or a task queued longer ago
    /// than the stream's duplicate window. A task queued within the window is stored again:
    /// the window answers for a copy stored moments ago, and one whose first submit failed
    /// after its queued event (the broker down when that event was to be taken back) is stored
    /// now.
    pub(crate) async fn known(&self, id: &Id) -> Result<bool, Error> {
        let (result_subject, events_subject) = (subject::result_of(id), subject::events_of(id));
        let (result, event) = tokio::join!(
            self.broker
                .last_message(broker::RESULTS_STREAM, &result_subject),
            self.broker
                .last_message(broker::EVENTS_STREAM, &events_subject),
        );
        if result.map_err(|e| self.read_error(e))?.is_some() {
            return Ok(true);
        }
        if let Some(e) = event.map_err(|e| self.read_error(e))? {
            let window = self.broker.tasks.cached_info().config.duplicate_window;
            let started_or_delayed = matches!(
                e.headers.get(broker::header::STATE).map(|v| v.as_str()),
                Some("running" | "retrying" | "scheduled" | "waiting")
            );
            let replayed = e.headers.get(broker::header::REPLAY).is_some();
            let queued_long_ago = e
                .time
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age >= window);
            if started_or_delayed || replayed || queued_long_ago {
                return Ok(true);
            }
        }
        Ok(self.delayed(id).await?.is_some())
    }

    /// Waits until the broker has stored a task sent by [`Self::send`].
    pub(crate) async fn confirm(&self, sending: Sending) -> Result<v1::SubmitResponse, Error> {
        let Some(acks) = sending.acks else {
            return Ok(v1::SubmitResponse {
                task_id: sending.id.to_string(),
                duplicate: true,
            });
        };
        let ack = self.confirm_task(acks).await?;
        if !ack.duplicate {
            self.metrics.submitted(sending.name.as_str(), 1);
        }
        Ok(v1::SubmitResponse {
            task_id: sending.id.to_string(),
            duplicate: ack.duplicate,
        })
    }

    /// Stores a task and its queued (or scheduled) event; returns once both are stored.
    pub(crate) async fn store_task(
        &self,
        task: broker::TaskMessage,
        args: Bytes,
        placement: &Placement,
    ) -> Result<async_nats::jetstream::publish::PublishAck, Error> {
        let acks = self.send_task(task, args, placement, None).await?;
        self.confirm_task(acks).await
    }

    /// Sends a task and its first event. The event goes first on the same connection, so that
    /// it is stored before any event of the worker that runs the task; both acks are awaited
    /// together by [`Self::confirm_task`], so when that returns, Get and Wait find the task.
    pub(crate) async fn send_task(
        &self,
        mut task: broker::TaskMessage,
        args: Bytes,
        placement: &Placement,
        traceparent: Option<&str>,
    ) -> Result<TaskAcks, Error> {
        let (name, id) = (&task.name.clone(), &task.id.clone());
        self.submitted.add(name.as_str());
        let (state, subject) = match placement.not_before {
            Some(_) => (TaskState::Scheduled, subject::delayed(id)),
            None => (
                TaskState::Queued,
                subject::task_at(name, placement.priority),
            ),
        };
        task.priority = placement.priority;
        let mut event = broker::Event::new(name, id, state, 0);
        // A replay's queued event says so: such a task was stored before, whatever the
        // duplicate window remembers (see `known`).
        event.replay = task.replay;
        event.not_before = placement.not_before.map(micros);
        event.expires_at = placement.expires_at;
        let mut event = event.to_headers();
        let mut headers = task.to_headers();
        if let Some(at) = placement.not_before {
            headers =
                broker::delayed_headers(headers, &subject::task_at(name, placement.priority), at);
        }
        let destination = subject::task_at(name, placement.priority);
        let span = tracing::info_span!(
            "publish",
            otel.name = %format!("publish {destination}"),
            otel.kind = "producer",
            messaging.system = "nats",
            messaging.destination.name = %destination,
            messaging.operation.type = "publish",
            messaging.operation.name = "publish",
            messaging.message.id = %id,
            taskwire.task.name = %name,
        );
        async {
            // The worker's span continues from this one; the dashboard links to the trace.
            taskwire_protocol::trace::inject_nats(&mut headers);
            taskwire_protocol::trace::inject_nats(&mut event);
            if let Some(parent) = traceparent {
                for headers in [&mut headers, &mut event] {
                    if headers.get("traceparent").is_none() {
                        headers.insert("traceparent", parent);
                    }
                }
            }
            // The first event keeps the arguments, for the dashboard.
            let queued = self
                .broker
                .jetstream
                .publish_with_headers(subject::event(name, id), event, args.clone())
                .await
                .map_err(publish_error)?;
            let stored = self
                .broker
                .jetstream
                .publish_with_headers(subject, headers, args)
                .await
                .map_err(publish_error)?;
            Ok(TaskAcks { queued, stored })
        }
        .instrument(span)
        .await
    }

    pub(crate) async fn confirm_task(
        &self,
        acks: TaskAcks,
    ) -> Result<async_nats::jetstream::publish::PublishAck, Error> {
        let TaskAcks { queued, stored } = acks;
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
        let queued = queued.map_err(publish_error)?;
        if ack.duplicate {
            // The task was stored before (the same key within the duplicate window): the
            // queued event just stored would say it waits when it may be running or done.
            if let Err(e) = self.broker.events.delete_message(queued.sequence).await {
                tracing::debug!(error = %e, "could not take back the queued event of a duplicate");
            }
        }
        Ok(ack)
    }

    /// Stores many tasks: sends them in windows and waits for each window's acks together.
    pub(crate) async fn submit_many(
        &self,
        mut requests: tonic::Streaming<v1::SubmitRequest>,
        caller: &crate::auth::Caller,
    ) -> Result<v1::SubmitManyResponse, Error> {
        /// Tasks sent before their acks are awaited.
        const WINDOW: usize = 512;
        let mut response = v1::SubmitManyResponse::default();
        let mut window: Vec<(usize, Sending)> = Vec::with_capacity(WINDOW);
        let scope = caller.key_scope();
        let refuse = |response: &mut v1::SubmitManyResponse, index: usize, err: Error| {
            response.results[index] = v1::SubmitManyResult {
                code: err.code() as i32,
                error: err.to_string(),
                ..Default::default()
            };
            response.refused += 1;
        };
        loop {
            // A call takes a bounded number of tasks, so that its answer stays well within any
            // client's message limit: past the bound nothing more is read (nor stored), and the
            // answer, one result per task read, says how far it got.
            let next = if response.results.len() >= MAX_SUBMIT_MANY {
                None
            } else {
                requests
                    .message()
                    .await
                    .map_err(|e| Error::BadRequest(format!("the request stream broke: {e}")))?
            };
            let done = next.is_none();
            if let Some(req) = next {
                let index = response.results.len();
                response.results.push(v1::SubmitManyResult::default());
                if let Err(denied) = caller.check(Op::Submit, Some(&req.task)) {
                    refuse(
                        &mut response,
                        index,
                        Error::PermissionDenied(denied.message().to_owned()),
                    );
                    continue;
                }
                match self.prepare(req, scope.as_deref()).await {
                    Ok(task) => match self.send(task).await {
                        Ok(sending) => window.push((index, sending)),
                        Err(e) => refuse(&mut response, index, e),
                    },
                    Err(e) => refuse(&mut response, index, e),
                }
            }
            if window.len() >= WINDOW || (done && !window.is_empty()) {
                let confirmed =
                    futures::future::join_all(window.drain(..).map(
                        |(index, sending)| async move { (index, self.confirm(sending).await) },
                    ))
                    .await;
                for (index, outcome) in confirmed {
                    match outcome {
                        Ok(stored) => {
                            response.results[index] = v1::SubmitManyResult {
                                task_id: stored.task_id,
                                duplicate: stored.duplicate,
                                ..Default::default()
                            };
                            response.submitted += 1;
                        }
                        Err(e) => refuse(&mut response, index, e),
                    }
                }
            }
            if done {
                return Ok(response);
            }
        }
    }

    /// Submits and waits up to `timeout` for the final state.
    pub(crate) async fn submit_and_finish(
        &self,
        req: v1::SubmitRequest,
        scope: Option<&str>,
        timeout: Duration,
    ) -> Result<v1::TaskInfo, Error> {
        let (first, results) = self.submit_subscribed(req, scope).await?;
        if !matches!(first.state(), TaskState::Queued | TaskState::Scheduled) {
            return Ok(first);
        }
        let id = parse_id(&first.task_id)?;
        self.wait_on(results, &id, timeout, Duration::from_secs(1))
            .await
    }

    pub(crate) async fn submit(
        &self,
        req: v1::SubmitRequest,
        scope: Option<&str>,
    ) -> Result<v1::SubmitResponse, Error> {
        let task = self.prepare(req, scope).await?;
        self.publish(task).await
    }

    /// Submits and subscribes to the result before the task is stored, so no result can slip
    /// by: returns the queued state and the subscription to wait on.
    pub(crate) async fn submit_subscribed(
        &self,
        req: v1::SubmitRequest,
        scope: Option<&str>,
    ) -> Result<(v1::TaskInfo, Waiting), Error> {
        let task = self.prepare(req, scope).await?;
        let (id, name) = (task.id.clone(), task.name.clone());
        let state = if task.placement.not_before.is_some() {
            TaskState::Scheduled
        } else {
            TaskState::Queued
        };
        let results = self.waiters.register(&id).await?;
        let response = self.publish(task).await?;
        let queued = v1::TaskInfo {
            task_id: id.to_string(),
            task: name.to_string(),
            state: state as i32,
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
}
