//! `taskwire.v1.Tasks` and `taskwire.v1.Admin`.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::connection::State;

use crate::auth::{self, Op};
use async_nats::jetstream::consumer;
use async_nats::jetstream::context::PublishErrorKind;
use bytes::Bytes;
use futures::StreamExt as _;
use prost_reflect::{DynamicMessage, SerializeOptions};
use taskwire::broker::{self, subject};
use taskwire::task::{Id, Name};
use taskwire::v1::{self, TaskState};
use tonic::{Request, Response, Status};
use tracing::Instrument as _;

use crate::waiters::Waiting;
use crate::{Error, Gateway, MAX_WAIT, payload};

const DEFAULT_WAIT: Duration = Duration::from_secs(30);

/// A checked submission, ready to publish.
pub(crate) struct Prepared {
    name: Name,
    id: Id,
    args: Bytes,
    key: Option<String>,
    overrides: broker::Overrides,
    placement: Placement,
}

/// Where and when a task waits for a worker.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Placement {
    pub(crate) priority: v1::Priority,
    /// Held by the broker until then.
    pub(crate) not_before: Option<SystemTime>,
    /// Not started after then, in microseconds since the Unix epoch.
    pub(crate) expires_at: Option<u64>,
}

/// Furthest ahead a task may be delayed.
const MAX_DELAY: Duration = Duration::from_secs(30 * 24 * 3600);
/// How far in the past a not_before time may be (clock skew between machines); it then runs at
/// once.
const PAST_TOLERANCE: Duration = Duration::from_secs(60);

fn micros(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or_default()
}

/// Checks when, at which priority and until when the task may run.
fn placement(options: &v1::SubmitOptions, now: SystemTime) -> Result<Placement, Error> {
    let bad = |text: String| Error::BadRequest(text);
    let priority = v1::Priority::try_from(options.priority).map_err(|_| {
        bad(format!(
            "priority {} is not a priority; use 1 (high), 2 (normal) or 3 (low), or leave it unset for normal",
            options.priority
        ))
    })?;
    let time = |what: &str, ts: &prost_types::Timestamp| -> Result<SystemTime, Error> {
        SystemTime::try_from(*ts).map_err(|_| bad(format!("{what} is not a valid time: {ts:?}")))
    };
    let duration = |what: &str, d: &prost_types::Duration| -> Result<Duration, Error> {
        let d = Duration::try_from(*d).map_err(|_| {
            bad(format!(
                "{what} is negative; give a positive duration of at most 30 days"
            ))
        })?;
        if d > MAX_DELAY {
            return Err(bad(format!(
                "{what} is {}; the most is 30 days",
                humantime::format_duration(d)
            )));
        }
        Ok(d)
    };
    let not_before = match (&options.not_before, &options.countdown) {
        (Some(_), Some(_)) => {
            return Err(bad("give not_before or countdown, not both".into()));
        }
        (Some(ts), None) => {
            let at = time("not_before", ts)?;
            if at + PAST_TOLERANCE < now {
                return Err(bad(format!(
                    "not_before is {} in the past; give a time from now on (a minute of clock skew is tolerated)",
                    humantime::format_duration(Duration::from_secs(
                        now.duration_since(at).unwrap_or_default().as_secs()
                    ))
                )));
            }
            if at > now + MAX_DELAY {
                return Err(bad("not_before is more than 30 days ahead".into()));
            }
            (at > now).then_some(at)
        }
        (None, Some(d)) => {
            let d = duration("countdown", d)?;
            (!d.is_zero()).then(|| now + d)
        }
        (None, None) => None,
    };
    let start = not_before.unwrap_or(now);
    let expires_at = match (&options.expires_at, &options.ttl) {
        (Some(_), Some(_)) => return Err(bad("give expires_at or ttl, not both".into())),
        (Some(ts), None) => {
            let at = time("expires_at", ts)?;
            if at <= now {
                return Err(bad(
                    "expires_at is in the past; the task could never run".into()
                ));
            }
            if at <= start {
                return Err(bad(
                    "expires_at is before the task's not_before time; the task could never run"
                        .into(),
                ));
            }
            Some(at)
        }
        (None, Some(d)) => {
            let d = duration("ttl", d)?;
            if d.is_zero() {
                return Err(bad("ttl is zero; give a positive duration".into()));
            }
            Some(start + d)
        }
        (None, None) => None,
    };
    Ok(Placement {
        priority: if priority == v1::Priority::Unspecified {
            v1::Priority::Normal
        } else {
            priority
        },
        not_before,
        expires_at: expires_at.map(micros),
    })
}

/// Most tasks one SubmitMany call takes (its answer then stays under 1 MiB).
pub const MAX_SUBMIT_MANY: usize = 10_000;

/// Longest idempotency key accepted, in bytes.
const MAX_KEY_LEN: usize = 256;
/// Most attempts a submitter may ask for.
const MAX_ATTEMPTS: u32 = 100;
/// Longest time limit or retry delay a submitter may ask for.
const MAX_OVERRIDE: Duration = Duration::from_secs(24 * 3600);

/// The submitter's changes to the task's options, checked. Results are kept at most
/// `max_result_ttl`.
pub(crate) fn overrides(
    options: &v1::SubmitOptions,
    max_result_ttl: Duration,
) -> Result<broker::Overrides, Error> {
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
    let result_ttl = match &options.result_ttl {
        None => None,
        Some(value) => {
            let bad = |why: String| {
                Error::BadRequest(format!(
                    "result_ttl {why}; give a positive duration of at most {} (TASKWIRE_RESULT_TTL)",
                    humantime::format_duration(max_result_ttl)
                ))
            };
            let d = Duration::try_from(*value).map_err(|_| bad("is negative".into()))?;
            if d < Duration::from_secs(1) {
                return Err(bad("is less than a second".into()));
            }
            if d > max_result_ttl {
                return Err(bad(format!(
                    "is {}, longer than the broker keeps results",
                    humantime::format_duration(d)
                )));
            }
            Some(d)
        }
    };
    Ok(broker::Overrides {
        max_attempts: (options.max_attempts > 0).then_some(options.max_attempts),
        timeout: duration("timeout", &options.timeout)?,
        backoff_initial: duration("backoff_initial", &options.backoff_initial)?,
        backoff_max: duration("backoff_max", &options.backoff_max)?,
        result_ttl,
    })
}

/// Checks an idempotency key: it becomes part of the task's id, and is echoed in errors.
fn check_key(key: &str) -> Result<(), Error> {
    if key.len() > MAX_KEY_LEN {
        return Err(Error::BadRequest(format!(
            "the idempotency key is {} bytes; the limit is {MAX_KEY_LEN}",
            key.len()
        )));
    }
    if let Some(c) = key.chars().find(|c| c.is_control()) {
        return Err(Error::BadRequest(format!(
            "the idempotency key holds the control character {c:?}; use printable characters only"
        )));
    }
    Ok(())
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
            (None, _) => Id::generate(),
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
        })
    }

    /// Stores the task; returns once JetStream has acknowledged it.
    async fn publish(&self, task: Prepared) -> Result<v1::SubmitResponse, Error> {
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
        let headers = broker::task_headers(&name, &id, &overrides, placement.expires_at);
        let acks = self
            .send_task(&name, &id, headers, args, &placement)
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
    async fn known(&self, id: &Id) -> Result<bool, Error> {
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
                Some("running" | "retrying" | "scheduled")
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
        name: &Name,
        id: &Id,
        headers: async_nats::HeaderMap,
        args: Bytes,
        placement: &Placement,
    ) -> Result<async_nats::jetstream::publish::PublishAck, Error> {
        let acks = self.send_task(name, id, headers, args, placement).await?;
        self.confirm_task(acks).await
    }

    /// Sends a task and its first event. The event goes first on the same connection, so that
    /// it is stored before any event of the worker that runs the task; both acks are awaited
    /// together by [`Self::confirm_task`], so when that returns, Get and Wait find the task.
    async fn send_task(
        &self,
        name: &Name,
        id: &Id,
        mut headers: async_nats::HeaderMap,
        args: Bytes,
        placement: &Placement,
    ) -> Result<TaskAcks, Error> {
        let (state, subject) = match placement.not_before {
            Some(_) => (TaskState::Scheduled, subject::delayed(id)),
            None => (
                TaskState::Queued,
                subject::task_at(name, placement.priority),
            ),
        };
        let mut event = broker::event_headers(name, id, state, 0);
        // A replay's queued event says so: such a task was stored before, whatever the
        // duplicate window remembers (see `known`).
        if let Some(replay) = headers.get(broker::header::REPLAY) {
            event.insert(broker::header::REPLAY, replay.as_str());
        }
        if let Some(at) = placement.not_before {
            event.insert(broker::header::NOT_BEFORE, micros(at).to_string().as_str());
            headers =
                broker::delayed_headers(headers, &subject::task_at(name, placement.priority), at);
        }
        if let Some(at) = placement.expires_at {
            event.insert(broker::header::EXPIRES_AT, at.to_string().as_str());
        }
        if placement.priority != v1::Priority::Normal {
            headers.insert(
                broker::header::PRIORITY,
                broker::priority_name(placement.priority),
            );
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
            taskwire::propagation::inject_nats(&mut headers);
            taskwire::propagation::inject_nats(&mut event);
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

    async fn confirm_task(
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
    async fn submit_many(
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
    async fn submit_subscribed(
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
        let results = self.waiters.register(&id);
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

    /// The stored result of a task, if it has one; EXPIRED when it had one that ran out.
    pub(crate) async fn result(&self, id: &Id) -> Result<Option<v1::TaskInfo>, Error> {
        match self
            .broker
            .last_message(broker::RESULTS_STREAM, &subject::result_of(id))
            .await
        {
            Ok(Some(m)) if broker::is_expiry_marker(&m.headers) => {
                Err(Error::Expired(id.to_string()))
            }
            Ok(found) => Ok(found.map(|m| broker::task_info(id, &m.headers, &m.payload, m.time))),
            Err(e) => Err(self.read_error(e)),
        }
    }

    /// The last state change of a task, if any; for a delayed task whose events ran out before
    /// its time (a delay longer than the events are kept), the broker's schedule of it.
    async fn last_event(&self, id: &Id) -> Result<Option<v1::TaskInfo>, Error> {
        match self
            .lookup(broker::EVENTS_STREAM, &subject::events_of(id), id)
            .await?
        {
            Some(info) => Ok(Some(info)),
            None => self.delayed(id).await,
        }
    }

    /// A delayed task the broker still holds: scheduled until its time.
    async fn delayed(&self, id: &Id) -> Result<Option<v1::TaskInfo>, Error> {
        use async_nats::jetstream::stream::LastRawMessageErrorKind;
        let held = match self
            .broker
            .tasks
            .get_last_raw_message_by_subject(&subject::delayed(id))
            .await
        {
            Ok(held) => held,
            Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => return Ok(None),
            // No answer from the leader (one is being elected): try again.
            Err(e) if e.kind() == LastRawMessageErrorKind::Other => {
                return Err(Error::BrokerDown(format!(
                    "{e} (a stream leader election?)"
                )));
            }
            Err(e) => return Err(self.broker_error(e)),
        };
        let mut headers = held.headers;
        headers.insert(
            broker::header::STATE,
            broker::state_name(TaskState::Scheduled),
        );
        if let Some(at) = broker::scheduled_at(&headers) {
            headers.insert(broker::header::NOT_BEFORE, micros(at).to_string().as_str());
        }
        headers.insert(broker::header::ATTEMPT, "0");
        Ok(Some(broker::task_info(
            id,
            &headers,
            &held.payload,
            Some(held.time.into()),
        )))
    }

    pub(crate) async fn lookup(
        &self,
        stream: &str,
        filter: &str,
        id: &Id,
    ) -> Result<Option<v1::TaskInfo>, Error> {
        match self.broker.last_message(stream, filter).await {
            Ok(found) => Ok(found.map(|m| broker::task_info(id, &m.headers, &m.payload, m.time))),
            Err(e) => Err(self.read_error(e)),
        }
    }

    /// A read that found no answer: a time-out (no stream leader while one is elected, or the
    /// broker out of reach) is UNAVAILABLE, which clients try again.
    pub(crate) fn read_error(&self, err: async_nats::RequestError) -> Error {
        match err.kind() {
            async_nats::RequestErrorKind::TimedOut | async_nats::RequestErrorKind::NoResponders => {
                Error::BrokerDown(format!("{err} (a stream leader election?)"))
            }
            _ => self.broker_error(err),
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

    /// The task's current state, then each change (running, progress, retrying) until the final
    /// state, which ends the stream. A watcher that joins late starts from the last change.
    async fn watch(self: Arc<Self>, id: Id, json: bool) -> Result<TaskInfoStream, Error> {
        self.check_connected()?;
        // Register before looking, so a result stored in between is not missed.
        let mut results = self.waiters.register(&id);
        if let Some(info) = self.result(&id).await? {
            let info = self.with_json(info, json).await?;
            return Ok(Box::pin(futures::stream::iter([Ok(info)])));
        }
        if self.last_event(&id).await?.is_none() {
            return Err(Error::NotFound(id.to_string()));
        }
        let consumer = self
            .broker
            .events
            .create_consumer(consumer::pull::OrderedConfig {
                filter_subject: subject::events_of(&id),
                deliver_policy: consumer::DeliverPolicy::LastPerSubject,
                ..Default::default()
            })
            .await
            .map_err(|e| self.broker_error(e))?;
        let mut events = consumer
            .messages()
            .await
            .map_err(|e| self.broker_error(e))?;
        let (tx, rx) = tokio::sync::mpsc::channel(32);
        tokio::spawn(async move {
            let mut recheck = tokio::time::interval(Duration::from_secs(1));
            recheck.reset();
            let mut delivered = 0;
            loop {
                let last = tokio::select! {
                    () = tx.closed() => return,
                    event = events.next() => match event {
                        Some(Ok(m)) => {
                            delivered = m.info().map_or(delivered, |i| i.stream_sequence);
                            let info = broker::task_info(
                                &id,
                                &m.headers.clone().unwrap_or_default(),
                                &m.payload,
                                Some(SystemTime::now()),
                            );
                            if tx.send(Ok(info)).await.is_err() {
                                return;
                            }
                            continue;
                        }
                        Some(Err(e)) => {
                            tracing::debug!(task_id = %id, error = %e, "watch interrupted; resuming");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        }
                        None => return,
                    },
                    result = results.next() => match result {
                        Some(m) => Ok(broker::task_info(
                            &id,
                            &m.headers.unwrap_or_default(),
                            &m.payload,
                            Some(SystemTime::now()),
                        )),
                        None => Err(Error::BrokerDown("the result subscription ended".into())),
                    },
                    _ = recheck.tick() => match self.result(&id).await {
                        Ok(Some(info)) => Ok(info),
                        Ok(None) => continue,
                        Err(e) => Err(e),
                    },
                };
                // Changes stored before the end go out before it.
                let newest = self
                    .broker
                    .last_message(broker::EVENTS_STREAM, &subject::events_of(&id))
                    .await
                    .ok()
                    .flatten()
                    .map_or(0, |m| m.sequence);
                while delivered < newest {
                    let Ok(Some(Ok(m))) =
                        tokio::time::timeout(Duration::from_secs(1), events.next()).await
                    else {
                        break;
                    };
                    delivered = m.info().map_or(newest, |i| i.stream_sequence);
                    let info = broker::task_info(
                        &id,
                        &m.headers.clone().unwrap_or_default(),
                        &m.payload,
                        Some(SystemTime::now()),
                    );
                    if tx.send(Ok(info)).await.is_err() {
                        return;
                    }
                }
                let last = match last {
                    Ok(info) => self.with_json(info, json).await.map_err(Status::from),
                    Err(e) => Err(e.into()),
                };
                let _ = tx.send(last).await;
                return;
            }
        });
        Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)))
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
        // First the durable mark that workers watch: a queued task is then never started, a
        // running one is told to stop, across restarts and redeliveries.
        self.broker
            .cancelled
            .put(id.as_str(), Bytes::from_static(b"cancelled on request"))
            .await
            .map_err(|e| self.broker_error(e))?;
        // A delayed task the broker still holds is taken out: it never fires, however long
        // before its time the cancel came (longer than the mark and the result are kept).
        if last.state() == TaskState::Scheduled {
            self.broker
                .tasks
                .purge()
                .filter(subject::delayed(id))
                .await
                .map_err(|e| self.broker_error(e))?;
        }
        // Then the cancelled result takes the task's one result slot; a worker that finishes
        // the task later finds the slot taken and drops its own.
        let published = self
            .broker
            .jetstream
            .publish_with_headers(
                subject::result(&name, id),
                broker::result_headers(
                    &name,
                    id,
                    TaskState::Cancelled,
                    last.attempt,
                    &format!("cancel.{}", broker::now_micros()),
                    None,
                ),
                broker::failure_body("cancelled on request", false),
            )
            .await
            .map_err(publish_error)?
            .await;
        match published {
            Ok(_) => {}
            Err(e) if broker::is_wrong_last_sequence(&e) => {
                let stored = self.result(id).await?;
                // A worker saw the mark first and stored the cancelled result itself.
                if let Some(info) = stored.as_ref()
                    && info.state() == TaskState::Cancelled
                {
                    return Ok(info.clone());
                }
                // Finished first: the mark is not needed.
                let _ = self.broker.cancelled.delete(id.as_str()).await;
                return Err(Error::Finished {
                    id: id.to_string(),
                    state: stored.map_or("finished", |info| broker::state_name(info.state())),
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

impl Gateway {
    /// The limits in force for a task type: the Admin override, else the declared ones.
    async fn task_limits(&self, name: &Name) -> Result<v1::TaskLimitsResponse, Error> {
        let task_type = self.registry.get(name).await?;
        self.check_connected()?;
        let overridden = self
            .broker
            .limits
            .entry(name.token())
            .await
            .map_err(|e| self.broker_error(e))?
            .filter(|e| e.operation == async_nats::jetstream::kv::Operation::Put)
            .and_then(|e| <v1::TaskLimits as prost::Message>::decode(e.value).ok());
        let declared = v1::TaskLimits {
            max_concurrency: task_type.declared.max_concurrency,
            rate_limit: task_type.declared.rate_limit.clone(),
        };
        Ok(v1::TaskLimitsResponse {
            task: name.to_string(),
            overridden: overridden.is_some(),
            limits: Some(overridden.unwrap_or(declared)),
        })
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
        PublishErrorKind::MaxPayloadExceeded => Error::TooLarge(err.to_string()),
        _ => match broker::publish_error_code(&err) {
            // Over the stream's largest message.
            Some(MESSAGE_TOO_LARGE) => Error::TooLarge(err.to_string()),
            // The same task's publish is still being stored (a retry during an election).
            Some(IN_PROCESS) => Error::BrokerDown(err.to_string()),
            // A full queue (messages per subject, with discard new), or full storage.
            Some(STORE_FAILED | STORAGE_EXHAUSTED | ACCOUNT_EXHAUSTED | INSUFFICIENT_RESOURCES) => {
                Error::QueueFull(err.to_string())
            }
            _ => Error::Broker(err.to_string()),
        },
    }
}

/// JetStream error codes the gateway tells apart.
const MESSAGE_TOO_LARGE: u64 = 10054;
const STORE_FAILED: u64 = 10077;
const STORAGE_EXHAUSTED: u64 = 10047;
const ACCOUNT_EXHAUSTED: u64 = 10002;
const INSUFFICIENT_RESOURCES: u64 = 10023;
const IN_PROCESS: u64 = 10158;

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
        auth::check(&request, Op::Submit, Some(&request.get_ref().task))?;
        let scope = auth::caller(&request).key_scope();
        let req = request.into_inner();
        let task = req.task.clone();
        match self.gateway.submit(req, scope.as_deref()).await {
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

    async fn submit_many(
        &self,
        request: Request<tonic::Streaming<v1::SubmitRequest>>,
    ) -> Result<Response<v1::SubmitManyResponse>, Status> {
        let caller = auth::caller(&request);
        let response = self
            .gateway
            .submit_many(request.into_inner(), &caller)
            .await?;
        tracing::debug!(
            submitted = response.submitted,
            refused = response.refused,
            "submitted many"
        );
        Ok(Response::new(response))
    }

    type WatchStream = TaskInfoStream;

    async fn watch(
        &self,
        request: Request<v1::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let id = parse_id(&request.get_ref().task_id)?;
        if auth::restricted(&request) {
            let info = self.gateway.state(&id).await?;
            auth::check_known(&request, Op::Read, &info.task_id, &info.task)?;
        }
        let req = request.into_inner();
        let stream = Arc::clone(&self.gateway)
            .watch(id, req.include_json)
            .await?;
        Ok(Response::new(stream))
    }

    type SubmitAndWaitStream = TaskInfoStream;

    async fn submit_and_wait(
        &self,
        request: Request<v1::SubmitAndWaitRequest>,
    ) -> Result<Response<Self::SubmitAndWaitStream>, Status> {
        let task = request
            .get_ref()
            .submit
            .as_ref()
            .map(|s| s.task.clone())
            .unwrap_or_default();
        auth::check(&request, Op::Submit, Some(&task))?;
        auth::check(&request, Op::Read, Some(&task))?;
        let scope = auth::caller(&request).key_scope();
        let req = request.into_inner();
        let timeout = wait_timeout(req.timeout);
        let json = req.include_json;
        let gateway = Arc::clone(&self.gateway);
        let (first, results) = gateway
            .submit_subscribed(req.submit.unwrap_or_default(), scope.as_deref())
            .await?;
        let first = gateway.with_json(first, json).await?;
        if !matches!(first.state(), TaskState::Queued | TaskState::Scheduled) {
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
        let id = parse_id(&request.get_ref().task_id)?;
        let info = self.gateway.state(&id).await?;
        auth::check_known(&request, Op::Read, &info.task_id, &info.task)?;
        let req = request.into_inner();
        Ok(Response::new(
            self.gateway.with_json(info, req.include_json).await?,
        ))
    }

    async fn wait(
        &self,
        request: Request<v1::WaitRequest>,
    ) -> Result<Response<v1::TaskInfo>, Status> {
        let id = parse_id(&request.get_ref().task_id)?;
        if auth::restricted(&request) {
            let known = self.gateway.state(&id).await?;
            auth::check_known(&request, Op::Read, &known.task_id, &known.task)?;
        }
        let req = request.into_inner();
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
        let id = parse_id(&request.get_ref().task_id)?;
        if auth::restricted(&request) {
            let known = self.gateway.state(&id).await?;
            auth::check_known(&request, Op::Cancel, &known.task_id, &known.task)?;
        }
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

    async fn get_task_limits(
        &self,
        request: Request<v1::GetTaskLimitsRequest>,
    ) -> Result<Response<v1::TaskLimitsResponse>, Status> {
        let name = Name::parse(&request.into_inner().task).map_err(Error::InvalidName)?;
        Ok(Response::new(self.gateway.task_limits(&name).await?))
    }

    async fn set_task_limits(
        &self,
        request: Request<v1::SetTaskLimitsRequest>,
    ) -> Result<Response<v1::TaskLimitsResponse>, Status> {
        let req = request.into_inner();
        let name = Name::parse(&req.task).map_err(Error::InvalidName)?;
        let gateway = &self.gateway;
        gateway.registry.get(&name).await?;
        gateway.check_connected()?;
        if req.clear {
            gateway
                .broker
                .limits
                .purge(name.token())
                .await
                .map_err(|e| gateway.broker_error(e))?;
        } else {
            let limits = req.limits.unwrap_or_default();
            if !limits.rate_limit.is_empty() {
                taskwire::task::Rate::parse(&limits.rate_limit)
                    .map_err(|e| Error::BadRequest(format!("rate_limit: {e}")))?;
            }
            gateway
                .broker
                .limits
                .put(name.token(), prost::Message::encode_to_vec(&limits).into())
                .await
                .map_err(|e| gateway.broker_error(e))?;
        }
        tracing::info!(task = %name, clear = req.clear, "task limits set");
        Ok(Response::new(gateway.task_limits(&name).await?))
    }

    async fn list_workers(
        &self,
        _request: Request<v1::ListWorkersRequest>,
    ) -> Result<Response<v1::ListWorkersResponse>, Status> {
        let workers = self.gateway.workers().await?;
        Ok(Response::new(v1::ListWorkersResponse { workers }))
    }

    async fn list_queues(
        &self,
        _request: Request<v1::ListQueuesRequest>,
    ) -> Result<Response<v1::ListQueuesResponse>, Status> {
        let queues = self.gateway.queues().await?;
        Ok(Response::new(v1::ListQueuesResponse { queues }))
    }

    async fn get_task_history(
        &self,
        request: Request<v1::GetTaskHistoryRequest>,
    ) -> Result<Response<v1::GetTaskHistoryResponse>, Status> {
        let id = parse_id(&request.into_inner().task_id)?;
        Ok(Response::new(self.gateway.history(&id).await?))
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
                descriptor_hash: t.descriptor_hash.clone(),
            })
            .collect();
        Ok(Response::new(v1::ListTaskTypesResponse { task_types }))
    }
}

/// A task sent to the broker whose acks are still on their way.
pub(crate) struct Sending {
    id: Id,
    name: Name,
    /// None when the task was known already: nothing was sent.
    acks: Option<TaskAcks>,
}

struct TaskAcks {
    queued: async_nats::jetstream::context::PublishAckFuture,
    stored: async_nats::jetstream::context::PublishAckFuture,
}
