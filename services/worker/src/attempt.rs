//! The life of one delivered task on a worker: the looks before it starts (stored outcome,
//! cancel, expiry, limits), the attempt itself, and what it came to.

use std::panic::AssertUnwindSafe;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, AckKind};
use bytes::Bytes;
use futures::FutureExt as _;
use taskwire::task::{Id, Name};
use taskwire::v1::TaskState;
use taskwire::{TaskContext, TaskError};
use taskwire_protocol::{self as broker, DeadReason, header, subject};
use tokio_util::sync::CancellationToken;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use crate::progress::Progress;
use crate::run::Served;
use crate::settle::{Attempt, Failure, series, series_number};

/// What became of one attempt.
pub(crate) enum Outcome {
    Done(Result<Vec<u8>, TaskError>),
    Panicked(String),
    TimedOut(Duration),
    /// Cancelled on request and abandoned after the grace period.
    Cancelled,
    Released,
}

pub(crate) async fn handle(
    served: &Served,
    message: jetstream::Message,
    slot_lost: Option<CancellationToken>,
) {
    let name = &served.task.name;
    let Some(id) = task_id(name, &message) else {
        // Not a taskwire task: it can never run, so it must not block the queue. It is kept as
        // a dead letter under an id made from its place in the stream.
        let sequence = message
            .info()
            .map(|i| i.stream_sequence)
            .unwrap_or_default();
        let id = Id::parse(&format!("poison-{sequence}")).unwrap_or_else(|_| Id::generate());
        tracing::error!(task = %name, subject = %message.subject, dead_letter = %id, "message without a valid task id; moving it to the dead letters");
        let poison = Attempt {
            served,
            id: &id,
            number: 1,
            ttl: None,
        };
        let stored = poison
            .store_dead(
                &message,
                DeadReason::Poison,
                "the message has no valid Taskwire-Task-Id header",
            )
            .await;
        if stored.is_some()
            && let Err(e) = message.ack_with(AckKind::Term).await
        {
            tracing::warn!(task = %name, error = %e, "terminating a poison message failed; it comes back and is moved again");
        }
        return;
    };
    // Attempts count runs, not deliveries: a first delivery is the header's attempt; a
    // redelivery follows the last run that started (each start is stored as a `running` event
    // before the handler runs), so deliveries that never started the handler (released at a
    // drain, pulled by a request the client gave up) do not count.
    let first_attempt = message
        .headers
        .as_ref()
        .and_then(|h| h.get(header::ATTEMPT))
        .and_then(|v| v.as_str().parse::<u32>().ok())
        .unwrap_or(1)
        .max(1);
    let deliveries = message.info().map(|i| i.delivered.max(1)).unwrap_or(1);
    let resumed = resume_number(&message) > 0;
    let attempt = if deliveries <= 1 && !resumed {
        first_attempt
    } else {
        match last_run(served, &id).await {
            // A resumed copy goes on with the attempt that waited, or with a later one that
            // started meanwhile (a delivery of the task that came back during the wait).
            Ok(last) if deliveries <= 1 => first_attempt.max(last.attempt),
            Ok(last) if last.series > series_number(&message) => {
                // A copy of a series that ended in a dead letter, which was replayed since:
                // its ack was lost. The new series stands in for it; it has nothing to do.
                tracing::info!(task = %name, task_id = %id, series = last.series, "a delivery of a series that was replayed since; dropping it");
                if let Err(e) = message.ack().await {
                    tracing::debug!(task = %name, task_id = %id, error = %e, "ack of a replayed series' copy failed; it comes back and is dropped again");
                }
                return;
            }
            Ok(LastRun {
                resume: Some(resume),
                ..
            }) if resume > resume_number(&message) => {
                // A copy of a run that waited for its children, parked since (its ack was
                // lost): the resumed copy stands in for it.
                tracing::info!(task = %name, task_id = %id, "a delivery of a run that waits for its children; dropping it");
                if let Err(e) = message.ack().await {
                    tracing::debug!(task = %name, task_id = %id, error = %e, "ack of a parked run's copy failed; it comes back and is dropped again");
                }
                return;
            }
            Ok(LastRun {
                started: Some(started),
                ..
            }) => started.saturating_add(1).max(first_attempt),
            Ok(_) => first_attempt,
            Err(e) => {
                put_back(
                    served,
                    &message,
                    &id,
                    "cannot tell which attempt this is",
                    &e,
                )
                .await;
                return;
            }
        }
    };
    let span = tracing::Span::current();
    span.record("task_id", tracing::field::display(&id));
    span.record("attempt", attempt);
    span.record("messaging.message.id", tracing::field::display(&id));
    // A number in the trace, not its text.
    span.record("taskwire.task.attempt", i64::from(attempt));
    // The task's declared options, as its submitter changed them.
    let options = broker::Overrides::read(message.headers.as_ref()).apply(&served.task.options);
    let max_attempts = options.max_attempts;

    let this = Attempt {
        served,
        id: &id,
        number: attempt,
        ttl: options.result_ttl,
    };
    // Cancelled before it started: it never runs.
    if served.cancels.is_cancelled(&id) {
        if let Some(error) = this.letter_of_series(&message).await {
            this.fail_as_its_letter_says(message, &error).await;
            return;
        }
        tracing::info!(task = %name, task_id = %id, "cancelled before it started");
        let body = broker::failure_body("cancelled on request", false);
        this.finish(message, TaskState::Cancelled, body).await;
        return;
    }
    // Not started in time: it never runs.
    if past_expiry(&message) {
        this.expire(message).await;
        return;
    }

    // A run cut short (a worker killed mid-task) used its attempt: with none left the task
    // fails for good rather than running again.
    if attempt > max_attempts {
        // Unless the cut-short run stored its outcome before it died (and missed its ack):
        // then there is nothing to fail.
        if !unsettled(served, &message, &id, has_result(served, &id).await).await {
            return;
        }
        tracing::warn!(task = %name, task_id = %id, attempt, max_attempts, "its last attempt was cut short; failing it");
        let error = format!(
            "attempt {} of {max_attempts} was cut short (its worker stopped before it ended) and no attempt is left",
            attempt - 1
        );
        let failure = Failure {
            reason: DeadReason::Lost,
            error: &error,
            retryable: false,
        };
        let cut_short = Attempt {
            number: attempt - 1,
            ..this
        };
        cut_short.fail_for_good(message, failure).await;
        return;
    }

    // The upstream that would run it does not answer: handed back unstarted, so that its
    // outage uses no attempt.
    if let Some(why) = served.upstream.as_ref().and_then(|h| h.down()) {
        put_back(served, &message, &id, "the upstream does not answer", &why).await;
        return;
    }

    // A task whose outcome is stored never runs: a redelivery after a crash that followed the
    // result, a task cancelled before this worker heard of it, a keyed task stored again. At
    // the same time the start is stored, so that a redelivery knows this attempt ran.
    let (stored, started) = tokio::join!(
        has_result(served, &id),
        mark_started(served, &message, &id, attempt)
    );
    if !unsettled(served, &message, &id, stored).await {
        return;
    }
    match started {
        Ok(true) => {}
        Ok(false) => {
            // Another delivery started this attempt (an earlier one of this message, whose
            // count a broker restart may have forgotten, or another copy of the task): it runs
            // it and keeps it in progress, so this one is left alone (neither acked nor handed
            // back, which would let a third delivery start a second attempt beside the first).
            // If that worker died, the ack wait brings the task back as the next attempt.
            tracing::info!(task = %name, task_id = %id, attempt, "another delivery of the task started this attempt; leaving it to that one");
            return;
        }
        Err(e) => {
            put_back(
                served,
                &message,
                &id,
                "cannot store the start of the attempt",
                &e,
            )
            .await;
            return;
        }
    }

    // The looks above wait on the broker, which an outage may stretch: a task whose time ran
    // out meanwhile does not start either.
    if past_expiry(&message) {
        this.expire(message).await;
        return;
    }

    let tracked = served.cancels.track(&id);
    let token = CancellationToken::new();
    let deadline = options.timeout.map(|t| Instant::now() + t);
    let progress = Progress::new(
        served,
        &id,
        attempt,
        series_number(&message),
        resume_number(&message),
    );
    let ctx = TaskContext::new(id.clone(), name.clone(), attempt, max_attempts)
        .with_deadline(deadline)
        .with_cancellation(token.clone())
        .with_progress_sink(progress.sink())
        .with_children(crate::children::AttemptChildren::new(
            served.client.clone(),
            &id,
            name,
            &message,
        ));
    let family = ctx.clone();
    let running = served.task_metrics.start();
    let outcome = run_attempt(
        served,
        &message,
        ctx,
        token,
        options.timeout,
        &tracked.token,
        slot_lost.unwrap_or_default(),
    )
    .await;
    // Progress reports go out before the result, so that watchers see them in order (unless
    // the task kept its context alive past its end).
    drop(running);
    progress.flush().await;
    if tracked.token.is_cancelled() && !matches!(outcome, Outcome::Released) {
        tracing::info!(task = %name, task_id = %id, "stopped on cancel");
        let body = broker::failure_body("cancelled on request", false);
        this.finish(message, TaskState::Cancelled, body).await;
        return;
    }

    // It waited for children that have not all ended: parked until they have, holding no
    // worker meanwhile (unless it ended with a success after all).
    if family.is_waiting() && matches!(outcome, Outcome::Done(Err(_))) {
        park(served, message, &id, attempt).await;
        return;
    }

    match outcome {
        Outcome::Done(Ok(output)) => {
            this.finish(message, TaskState::Succeeded, output.into())
                .await;
        }
        Outcome::Done(Err(err)) if err.is_crash() => {
            tracing::error!(task = %name, task_id = %id, attempt, error = %err, "task failed unexpectedly");
            span_error(err.message());
            let failure = Failure {
                reason: DeadReason::Panic,
                error: err.message(),
                retryable: false,
            };
            this.fail_for_good(message, failure).await;
        }
        Outcome::Done(Err(err)) => {
            this.failed(message, &options, err, false).await;
        }
        Outcome::TimedOut(limit) => {
            let err = TaskError::retryable(format!("timed out after {limit:?}"));
            this.failed(message, &options, err, true).await;
        }
        Outcome::Panicked(text) => {
            tracing::error!(task = %name, task_id = %id, attempt, panic = %text, "task panicked");
            span_error(&text);
            let error = format!("task panicked: {text}");
            let failure = Failure {
                reason: DeadReason::Panic,
                error: &error,
                retryable: false,
            };
            this.fail_for_good(message, failure).await;
        }
        Outcome::Cancelled | Outcome::Released => {
            tracing::info!(task = %name, task_id = %id, "released for another worker");
            let _ = message.ack_with(AckKind::Nak(None)).await;
        }
    }
}

/// Whether a task may go on, given what the look for its stored outcome found: one that has an
/// outcome is acked (nothing is left to do); one whose outcome the broker could not tell is
/// handed back rather than risk a second run.
async fn unsettled(
    served: &Served,
    message: &jetstream::Message,
    id: &Id,
    stored: Result<bool, async_nats::RequestError>,
) -> bool {
    match stored {
        Ok(false) => true,
        Ok(true) => {
            if let Err(e) = message.ack().await {
                tracing::debug!(task = %served.task.name, task_id = %id, error = %e, "ack of a finished task failed; it comes back and is acked again");
            }
            false
        }
        Err(e) => {
            put_back(
                served,
                message,
                id,
                "cannot tell whether the task has a result",
                &e,
            )
            .await;
            false
        }
    }
}

/// The id of a task message: its id header, or for a task a schedule submitted, one made from
/// the schedule and the message's place in the stream.
pub(crate) fn task_id(name: &Name, message: &jetstream::Message) -> Option<Id> {
    let headers = message.headers.as_ref()?;
    if let Some(id) = headers.get(header::TASK_ID) {
        return Id::parse(id.as_str()).ok();
    }
    let schedule = headers.get(header::SCHEDULE_NAME)?;
    let next = headers.get(header::SCHEDULE_NEXT).map(|v| v.as_str());
    let sequence = message.info().ok()?.stream_sequence;
    Some(broker::scheduled_task_id(
        name,
        schedule.as_str(),
        next,
        sequence,
    ))
}

/// Whether the task's expiry time (`Taskwire-Expires-At`) has passed.
pub(crate) fn past_expiry(message: &jetstream::Message) -> bool {
    broker::expires_at(message.headers.as_ref()).is_some_and(|at| broker::now_micros() > at)
}

/// The span of one attempt: a consumer span that continues the producer's trace (its
/// `traceparent` travels in the task's headers), linked to it as well when it is a retry.
pub(crate) fn process_span(served: &Served, message: &jetstream::Message) -> tracing::Span {
    let span = tracing::info_span!(
        "task",
        otel.name = %format!("process {}", served.task.name),
        otel.kind = "consumer",
        otel.status_code = tracing::field::Empty,
        otel.status_description = tracing::field::Empty,
        messaging.system = "nats",
        messaging.destination.name = %message.subject,
        messaging.operation.type = "process",
        messaging.operation.name = "process",
        messaging.message.id = tracing::field::Empty,
        taskwire.task.name = %served.task.name,
        taskwire.task.attempt = tracing::field::Empty,
        task = %served.task.name,
        task_id = tracing::field::Empty,
        attempt = tracing::field::Empty,
        trace_id = tracing::field::Empty,
    );
    let parent = taskwire_protocol::trace::extract_nats(message.headers.as_ref());
    if taskwire::propagation::is_valid(&parent) {
        use opentelemetry::trace::TraceContextExt as _;
        let producer = parent.span().span_context().clone();
        let _ = span.set_parent(parent);
        let redelivered = message.info().is_ok_and(|i| i.delivered > 1)
            || message
                .headers
                .as_ref()
                .and_then(|h| h.get(header::ATTEMPT))
                .is_some_and(|a| a.as_str() != "1");
        if redelivered {
            span.add_link(producer.clone());
        }
        span.record("trace_id", tracing::field::display(producer.trace_id()));
    } else {
        use opentelemetry::trace::TraceContextExt as _;
        let own = span.context();
        let own = own.span().span_context().clone();
        if own.is_valid() {
            span.record("trace_id", tracing::field::display(own.trace_id()));
        }
    }
    span
}

/// Marks the current attempt's span as failed.
pub(crate) fn span_error(message: &str) {
    let span = tracing::Span::current();
    // The description sets the error status with it (a bare error code would set an error
    // status without one, which a later one of the same rank does not replace).
    span.record("otel.status_description", message);
}

/// After a task's time limit, how long it has to notice its cancellation before it is abandoned.
pub(crate) const TIMEOUT_GRACE: Duration = Duration::from_secs(2);

pub(crate) async fn run_attempt(
    served: &Served,
    message: &jetstream::Message,
    ctx: TaskContext,
    token: CancellationToken,
    limit: Option<Duration>,
    cancelled: &CancellationToken,
    slot_lost: CancellationToken,
) -> Outcome {
    let deadline = ctx.deadline();
    // Without trace export here, what the call passes on (to an upstream) is the producer's
    // trace context, so that a handler's spans still join the task's trace.
    let producer = taskwire_protocol::trace::extract_nats(message.headers.as_ref());
    let call = taskwire::propagation::with_incoming(
        producer,
        served
            .service
            .call(served.task.name.as_str(), ctx, message.payload.clone()),
    );
    let mut call = std::pin::pin!(AssertUnwindSafe(call).catch_unwind());
    let mut heartbeat = tokio::time::interval_at(
        tokio::time::Instant::now() + served.heartbeat,
        served.heartbeat,
    );
    let far = Instant::now() + Duration::from_secs(365 * 24 * 3600);
    let mut abandon_at = tokio::time::Instant::from_std(deadline.unwrap_or(far));
    let mut timed_out = false;
    let mut cancel_seen = false;
    let mut slot_gone = false;
    loop {
        tokio::select! {
            result = &mut call => {
                if slot_gone {
                    // Whatever it answered, it was stopped: it runs again in a slot of its own.
                    return Outcome::Released;
                }
                return match result {
                    Ok(done) if timed_out && done.is_err() => Outcome::TimedOut(limit.unwrap_or_default()),
                    Ok(done) => Outcome::Done(done),
                    Err(panic) => Outcome::Panicked(panic_text(&panic)),
                };
            }
            _ = heartbeat.tick() => {
                let _ = message.ack_with(AckKind::Progress).await;
            }
            () = cancelled.cancelled(), if !cancel_seen => {
                // Cancelled on request: tell the task to stop, and give it a moment to do so.
                cancel_seen = true;
                token.cancel();
                abandon_at = abandon_at.min(tokio::time::Instant::now() + TIMEOUT_GRACE);
            }
            () = slot_lost.cancelled(), if !slot_gone => {
                // Its concurrency slot could not be kept (NATS unreachable): stop before the
                // slot's lease runs out and another worker may start a task in it.
                slot_gone = true;
                token.cancel();
                abandon_at = abandon_at.min(tokio::time::Instant::now() + TIMEOUT_GRACE);
            }
            () = tokio::time::sleep_until(abandon_at) => {
                if slot_gone {
                    return Outcome::Released;
                }
                if cancel_seen {
                    return Outcome::Cancelled;
                }
                if timed_out {
                    return Outcome::TimedOut(limit.unwrap_or_default());
                }
                // Tell the task to stop, and give it a moment to do so.
                timed_out = true;
                token.cancel();
                abandon_at = tokio::time::Instant::now() + TIMEOUT_GRACE;
            }
            () = served.force.cancelled() => {
                token.cancel();
                return Outcome::Released;
            }
        }
    }
}

pub(crate) fn panic_text(panic: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic without a message".to_owned()
    }
}

/// What the last event of a task says of its runs.
pub(crate) struct LastRun {
    /// The attempt of the last run that started (its `running` event, or a later progress or
    /// retry event of that run); `None` when none did since it was queued (or replayed).
    pub(crate) started: Option<u32>,
    /// The series of attempts the event belongs to: 0, or the replay count.
    pub(crate) series: u32,
    /// The resumed copy of the task's message the event belongs to, when it waited for its
    /// children (a `waiting` event: the copy that will follow).
    pub(crate) resume: Option<u32>,
    /// The attempt the last event concerns, whatever its state (0 when there is none).
    pub(crate) attempt: u32,
}

/// What the last event of the task says: which attempt last started, in which series.
pub(crate) async fn last_run(
    served: &Served,
    id: &Id,
) -> Result<LastRun, async_nats::RequestError> {
    let last = served
        .broker
        .last_message_on(
            broker::EVENTS_STREAM,
            &subject::event(&served.task.name, id),
        )
        .await?;
    let event = last.and_then(|m| broker::Event::from_headers(&m.headers).ok());
    Ok(LastRun {
        resume: event.as_ref().and_then(|e| e.resume),
        attempt: event.as_ref().map_or(0, |e| e.attempt),
        started: event.as_ref().and_then(|event| {
            (matches!(event.state, TaskState::Running | TaskState::Retrying) && event.attempt > 0)
                .then_some(event.attempt)
        }),
        series: event.as_ref().map_or(0, broker::Event::series),
    })
}

/// How many times the task was resumed after waiting for its children: 0 for its first message.
pub(crate) fn resume_number(message: &jetstream::Message) -> u32 {
    message
        .headers
        .as_ref()
        .map_or(0, |h| number_header(h, header::RESUME))
}

fn number_header(headers: &async_nats::HeaderMap, name: &str) -> u32 {
    headers
        .get(name)
        .and_then(|v| v.as_str().parse().ok())
        .unwrap_or_default()
}

/// Parks a task that waits for its children; it holds no worker until they have ended.
async fn park(served: &Served, message: jetstream::Message, id: &Id, attempt: u32) {
    let name = &served.task.name;
    match crate::children::park(&served.client, id, name, attempt, &message).await {
        Ok(resumed) => {
            tracing::info!(task = %name, task_id = %id, attempt, resumed, "waiting for its children");
            if let Err(e) = message.ack().await {
                tracing::debug!(task = %name, task_id = %id, error = %e, "ack of a parked task failed; its copy comes back and is dropped");
            }
        }
        Err(e) => put_back(served, &message, id, "cannot park the task", &e).await,
    }
}

/// Stores the start of an attempt as a `running` event, acknowledged before the handler runs.
/// False when another delivery of the task stored this attempt's start first.
pub(crate) async fn mark_started(
    served: &Served,
    message: &jetstream::Message,
    id: &Id,
    attempt: u32,
) -> Result<bool, async_nats::jetstream::context::PublishError> {
    let name = &served.task.name;
    // One start per attempt: a second delivery of the task racing this one (its ack wait ran
    // out while this worker was still getting ready) finds the start taken.
    let mut start =
        broker::Event::start(name, id, attempt, series(message)).in_resume(resume_number(message));
    // A resumed run is the same attempt as the run that waited: its start is its own.
    if let Some(resume) = start.resume {
        start.msg_id = start.msg_id.map(|m| format!("{m}.resume.{resume}"));
    }
    let mut headers = start.to_headers();
    if let Some(parent) = message.headers.as_ref().and_then(|h| h.get("traceparent")) {
        headers.insert("traceparent", parent.as_str());
    }
    let ack = served
        .broker
        .jetstream
        .publish_with_headers(subject::event(name, id), headers, Bytes::new())
        .await?
        .await?;
    Ok(!ack.duplicate)
}

/// Hands a task back unstarted, for a moment: it does not use an attempt.
pub(crate) async fn put_back(
    served: &Served,
    message: &jetstream::Message,
    id: &Id,
    why: &str,
    error: &(dyn std::fmt::Display + Sync),
) {
    let name = &served.task.name;
    tracing::warn!(task = %name, task_id = %id, error = %error, "{why}; putting the task back");
    if let Err(e) = message
        .ack_with(AckKind::Nak(Some(Duration::from_secs(1))))
        .await
    {
        tracing::debug!(task = %name, task_id = %id, error = %e, "NAK failed; the task comes back after its ack wait");
    }
}

/// The state of the task's stored result (`None`: it has none); an expiry marker, which says
/// a result ran out, counts as an outcome too.
pub(crate) async fn stored_outcome(
    served: &Served,
    id: &Id,
) -> Result<Option<String>, async_nats::RequestError> {
    // The subject in the API subject: the form NATS permissions can limit to the results of
    // this worker's own task types.
    let subject = subject::result(&served.task.name, id);
    let found = served
        .broker
        .last_message_on(broker::RESULTS_STREAM, &subject)
        .await?;
    Ok(found.map(|m| {
        m.headers
            .get(header::STATE)
            .map(|v| v.as_str().to_owned())
            .unwrap_or_default()
    }))
}

pub(crate) async fn has_result(served: &Served, id: &Id) -> Result<bool, async_nats::RequestError> {
    stored_outcome(served, id)
        .await
        .map(|found| found.is_some())
}
