//! How an attempt ends in the broker: results, dead letters and retries stored (retrying
//! through outages), then the task acked or NAKed.

use std::future::Future;
use std::time::Duration;

use async_nats::jetstream::{self, AckKind};
use bytes::Bytes;
use taskwire::TaskError;
use taskwire::task::{Id, Name};
use taskwire::v1::TaskState;
use taskwire_protocol::retry::Backoff;
use taskwire_protocol::{self as broker, DeadReason, header, subject};
use tracing::Instrument as _;

use crate::attempt::{span_error, stored_outcome};
use crate::run::Served;

/// One attempt of a task on this worker, as ending it needs it: the task type served, the
/// task, the attempt's number, and how long its outcome is kept (`None`: as long as the results
/// stream keeps results).
#[derive(Clone, Copy)]
pub(crate) struct Attempt<'a> {
    pub(crate) served: &'a Served,
    pub(crate) id: &'a Id,
    pub(crate) number: u32,
    pub(crate) ttl: Option<Duration>,
}

impl Attempt<'_> {
    /// Ends a task whose expiry passed before it started: `expired`, never run.
    pub(crate) async fn expire(self, message: jetstream::Message) {
        if let Some(error) = self.letter_of_series(&message).await {
            self.fail_as_its_letter_says(message, &error).await;
            return;
        }
        tracing::info!(task = %self.served.task.name, task_id = %self.id, "expired before it started");
        let body = broker::failure_body("not started before its expiry time", false);
        self.finish(message, TaskState::Expired, body).await;
    }

    /// The error of this series' dead letter, when there is one: an earlier delivery failed
    /// the task for good and died before it stored the failed result. Such a task ends failed
    /// (its letter stands), whatever else would end it now (its expiry passed, a cancel came).
    /// A read that finds no answer counts as no letter.
    pub(crate) async fn letter_of_series(self, message: &jetstream::Message) -> Option<String> {
        let Attempt { served, id, .. } = self;
        let subject = subject::dead(&served.task.name, id);
        let letter = served
            .broker
            .last_message_on(broker::DEAD_STREAM, &subject)
            .await
            .ok()
            .flatten()?;
        let letter = broker::DeadLetter::from_headers(&letter.headers).ok()?;
        (letter.replays() == series_number(message)).then_some(letter.error)
    }

    /// Ends the task failed with the error of the dead letter of its series (see
    /// [`Self::letter_of_series`]).
    pub(crate) async fn fail_as_its_letter_says(self, message: jetstream::Message, error: &str) {
        tracing::info!(task = %self.served.task.name, task_id = %self.id, "failed for good by an earlier delivery that stopped before its result");
        self.finish(
            message,
            TaskState::Failed,
            broker::failure_body(error, false),
        )
        .await;
    }

    /// A failed run: NAKed to run again after a backoff while it is retryable and attempts are
    /// left, else failed for good.
    pub(crate) async fn failed(
        self,
        message: jetstream::Message,
        options: &taskwire::task::Options,
        err: TaskError,
        timed_out: bool,
    ) {
        let Attempt {
            served,
            id,
            number: attempt,
            ..
        } = self;
        let name = &served.task.name;
        span_error(err.message());
        if err.is_retryable() && attempt < options.max_attempts {
            // The task's own word on when to try again stands; else the task's backoff.
            let delay = err
                .retry_delay()
                .unwrap_or_else(|| jitter(options.backoff(attempt)));
            tracing::info!(task = %name, task_id = %id, attempt, ?delay, error = %err, "retrying");
            served.metrics.retried(name.as_str());
            let _ = served
                .client
                .publish_with_headers(
                    subject::event(name, id),
                    broker::Event::new(name, id, TaskState::Retrying, attempt)
                        .in_series(series_number(&message))
                        .in_resume(crate::attempt::resume_number(&message))
                        .to_headers(),
                    broker::failure_body(err.message(), true),
                )
                .await;
            let _ = message.ack_with(AckKind::Nak(Some(delay))).await;
            return;
        }
        tracing::info!(task = %name, task_id = %id, attempt, error = %err, "failed");
        let reason = if err.is_poison() {
            DeadReason::Poison
        } else if timed_out {
            DeadReason::Timeout
        } else if err.is_retryable() {
            DeadReason::Exhausted
        } else {
            DeadReason::Permanent
        };
        let failure = Failure {
            reason,
            error: err.message(),
            retryable: err.is_retryable(),
        };
        self.fail_for_good(message, failure).await;
    }

    /// Ends a task failed for good: its dead letter, then its failed result, then the ack. When the
    /// result slot turns out to be held by another outcome (a delivery of the same task that ran
    /// elsewhere and succeeded, or found it expired), the letter is taken back: a task has a dead
    /// letter only if it failed.
    pub(crate) async fn fail_for_good(self, message: jetstream::Message, failure: Failure<'_>) {
        let Attempt { served, id, .. } = self;
        let Failure {
            reason,
            error,
            retryable,
        } = failure;
        let Some(letter) = self.store_dead(&message, reason, error).await else {
            return;
        };
        let body = broker::failure_body(error, retryable);
        let stored = self.finish(message, TaskState::Failed, body).await;
        // Another outcome may hold the result's place: refused as taken, or, when it was
        // stored under the same message id (an `expired` or `cancelled` end of this series by
        // another delivery), answered as a duplicate.
        let maybe_other = matches!(
            stored,
            Stored::Taken
                | Stored::Yes {
                    duplicate: true,
                    ..
                }
        );
        if let (true, Some(sequence)) = (maybe_other, letter) {
            // Read and deleted through a short outage. Unknown (no answer) counts as failed: a
            // letter too many is better than none.
            let failed = patiently(served, || stored_outcome(served, id), |_| true)
                .await
                .ok()
                .flatten()
                .is_none_or(|state| state == broker::state_name(TaskState::Failed));
            if failed {
                return;
            }
            // An answer, even a refusal (the letter gone already), is not asked again.
            let unanswered = |e: &jetstream::stream::DeleteMessageError| {
                !matches!(
                    e.kind(),
                    jetstream::stream::DeleteMessageErrorKind::JetStream(_)
                )
            };
            let dead = &served.broker.dead;
            if let Err(e) = patiently(served, || dead.delete_message(sequence), unanswered).await {
                tracing::warn!(task = %served.task.name, task_id = %id, error = %e, "could not take back the dead letter of a task that did not fail");
            }
        }
    }

    /// Keeps a task that failed for good as a dead letter, before its failed result is stored, so
    /// that every failed task can be found and replayed. `None` when it could not be stored before
    /// the worker had to stop (the task is then left to be redelivered), else where it is stored
    /// (none when the broker refused it for good).
    pub(crate) async fn store_dead(
        self,
        message: &jetstream::Message,
        reason: DeadReason,
        error: &str,
    ) -> Option<Option<u64>> {
        let Attempt {
            served,
            id,
            number: attempt,
            ..
        } = self;
        let name = &served.task.name;
        let headers =
            broker::DeadLetter::of(message.headers.as_ref(), name, id, attempt, reason, error)
                .to_headers();
        let stored = store(
            served,
            id,
            "dead letter",
            subject::dead(name, id),
            headers,
            message.payload.clone(),
        )
        .await;
        match stored {
            Stored::Yes {
                duplicate,
                sequence,
            } => {
                if !duplicate {
                    served.metrics.dead_lettered(name.as_str(), reason.as_str());
                }
                Some(Some(sequence))
            }
            // Nothing will ever store it: the failed result still ends the task, saying why.
            Stored::Refused(ref why) => {
                tracing::error!(task = %name, task_id = %id, error = %why, "the broker refuses this dead letter; the task ends failed without one");
                Some(None)
            }
            Stored::Taken => Some(None),
            Stored::GaveUp => None,
        }
    }

    /// Stores the result, then acks the task. Until the result is stored the task is not acked, so
    /// a worker that dies in between leaves it to be redelivered. A result the broker refuses for
    /// good (larger than its max payload, say) ends the task failed for good instead, with a dead
    /// letter saying why. Returns what became of the result.
    pub(crate) async fn finish(
        self,
        message: jetstream::Message,
        state: TaskState,
        body: Bytes,
    ) -> Stored {
        let Attempt {
            served,
            id,
            number: attempt,
            ..
        } = self;
        let name: &Name = &served.task.name;
        let stored = match self.store_result(&message, state, body).await {
            Stored::Refused(why) => {
                let error = format!(
                    "the task's {} result could not be stored: {why}",
                    broker::state_name(state)
                );
                tracing::error!(task = %name, task_id = %id, attempt, error = %error, "result refused");
                if self
                    .store_dead(&message, DeadReason::Permanent, &error)
                    .await
                    .is_none()
                {
                    return Stored::GaveUp;
                }
                let body = broker::failure_body(&error, false);
                let failed = self.store_result(&message, TaskState::Failed, body).await;
                if let Stored::Refused(why) = &failed {
                    // Not even a short failed result is accepted (a stream that refuses every
                    // message): redelivering would only run the task again to the same end.
                    tracing::error!(task = %name, task_id = %id, error = %why, "the broker refuses every result of this task; dropping it");
                    if let Err(e) = message.ack_with(AckKind::Term).await {
                        tracing::warn!(task = %name, task_id = %id, error = %e, "terminating the task failed; it will be redelivered");
                    }
                    return failed;
                }
                failed
            }
            stored => stored,
        };
        match stored {
            Stored::Yes {
                duplicate: false, ..
            } => {
                served.metrics.completed(name.as_str(), state);
                if let Some(hook) = &served.on_result {
                    hook(id, state);
                }
            }
            // Stored by an earlier publish, or the task had a result already (cancelled, or
            // stored by an earlier delivery).
            Stored::Yes {
                duplicate: true, ..
            }
            | Stored::Taken
            | Stored::Refused(_) => {}
            Stored::GaveUp => return stored,
        }
        if let Err(e) = message.ack().await {
            tracing::warn!(task = %name, task_id = %id, error = %e, "ack failed; a redelivery will find the stored result");
        }
        stored
    }

    /// Publishes a task's result, once per task and series of attempts.
    async fn store_result(
        self,
        message: &jetstream::Message,
        state: TaskState,
        body: Bytes,
    ) -> Stored {
        let Attempt {
            served,
            id,
            number: attempt,
            ttl,
        } = self;
        let name: &Name = &served.task.name;
        let outcome = broker::ResultMessage::new(name, id, state, attempt, series(message), ttl);
        if state != TaskState::Succeeded {
            // The outcome record first, so that no failed result goes unrecorded; a record
            // whose result loses to another outcome is read past (the result says the state).
            let record = subject::outcome(state, name, id);
            match store(
                served,
                id,
                "outcome record",
                record,
                outcome.to_outcome_headers(),
                body.clone(),
            )
            .await
            {
                Stored::GaveUp => return Stored::GaveUp,
                Stored::Refused(why) => {
                    tracing::warn!(task = %name, task_id = %id, error = %why, "outcome record refused; the result is stored without it");
                }
                _ => {}
            }
        }
        let headers = outcome.to_headers();
        let destination = subject::result(name, id);
        let span = tracing::info_span!(
            "publish",
            otel.name = "publish taskwire.results",
            otel.kind = "producer",
            messaging.system = "nats",
            messaging.destination.name = %destination,
            messaging.operation.type = "publish",
            messaging.operation.name = "publish",
            messaging.message.id = %id,
            taskwire.task.name = %name,
            taskwire.task.state = broker::state_name(state),
        );
        async {
            let mut headers = headers;
            // The result names the trace, for `taskwire inspect task` and the dashboard: this
            // span's, or without trace export here, the producer's.
            taskwire_protocol::trace::inject_nats(&mut headers);
            if headers.get("traceparent").is_none()
                && let Some(parent) = message.headers.as_ref().and_then(|h| h.get("traceparent"))
            {
                headers.insert("traceparent", parent.as_str());
            }
            store(served, id, "result", destination, headers, body).await
        }
        .instrument(span)
        .await
    }
}

/// Which series of attempts a task message belongs to: 0, or the replay count.
pub(crate) fn series(message: &jetstream::Message) -> &str {
    message
        .headers
        .as_ref()
        .and_then(|h| h.get(header::REPLAY))
        .map_or("0", |v| v.as_str())
}

/// [`series`] as a number (0 for a header that is none).
pub(crate) fn series_number(message: &jetstream::Message) -> u32 {
    series(message).parse().unwrap_or_default()
}

/// Spreads retries of tasks that failed together: the delay, give or take a fifth.
pub(crate) fn jitter(delay: Duration) -> Duration {
    // The clock's nanoseconds are random enough to spread retries; no generator needed.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    let factor = 0.8 + f64::from(nanos % 1000) / 2500.0;
    delay.mul_f64(factor)
}

/// Why a task failed for good: the dead letter's reason, the error, whether it was retryable.
pub(crate) struct Failure<'a> {
    pub(crate) reason: DeadReason,
    pub(crate) error: &'a str,
    pub(crate) retryable: bool,
}

/// `call()`, tried again for about ten seconds while it fails in a way `again` accepts (unless
/// the worker is forced to stop); the last failure is returned.
pub(crate) async fn patiently<T, E, F: Future<Output = Result<T, E>>>(
    served: &Served,
    mut call: impl FnMut() -> F,
    again: impl Fn(&E) -> bool,
) -> Result<T, E> {
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(2))
        .for_at_most(Duration::from_secs(10));
    loop {
        match call().await {
            Err(e) if again(&e) && !served.force.is_cancelled() && backoff.wait().await => {}
            done => return done,
        }
    }
}

/// What became of a message the worker had to store.
pub(crate) enum Stored {
    /// Stored now (at `sequence`); `duplicate` when an earlier publish of it had been stored
    /// already.
    Yes { duplicate: bool, sequence: u64 },
    /// The subject had its one message already (a result stored before).
    Taken,
    /// Refused for good (too large, a header or feature the stream refuses): trying again
    /// cannot help.
    Refused(String),
    /// Not stored before the worker had to stop.
    GaveUp,
}

/// Publishes until JetStream has stored the message (retrying through broker outages), the
/// subject turns out to be taken, the broker refuses it for good, or the worker is forced to
/// stop.
pub(crate) async fn store(
    served: &Served,
    id: &Id,
    what: &'static str,
    subject: String,
    headers: async_nats::HeaderMap,
    body: Bytes,
) -> Stored {
    let name = &served.task.name;
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    loop {
        let published = match served
            .broker
            .jetstream
            .publish_with_headers(subject.clone(), headers.clone(), body.clone())
            .await
        {
            Ok(ack) => ack.await,
            Err(e) => Err(e),
        };
        match published {
            Ok(ack) => {
                return Stored::Yes {
                    duplicate: ack.duplicate,
                    sequence: ack.sequence,
                };
            }
            Err(e) if broker::is_wrong_last_sequence(&e) => return Stored::Taken,
            Err(e) => {
                if let Some(why) = broker::permanent_refusal(&e) {
                    return Stored::Refused(why);
                }
                if served.force.is_cancelled() {
                    tracing::warn!(task = %name, task_id = %id, error = %e, "{what} not stored before exit; the task will be redelivered");
                    return Stored::GaveUp;
                }
                tracing::warn!(task = %name, task_id = %id, error = %e, "storing the {what} failed; retrying");
                backoff.wait().await;
            }
        }
    }
}
