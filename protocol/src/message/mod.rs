//! The messages of the protocol, typed: a task ([`TaskMessage`]), its state changes
//! ([`Event`]), its outcome ([`ResultMessage`]) and its dead letter ([`DeadLetter`]), each with
//! `to_headers` and `from_headers`; their bodies; and how a task's state is read back from
//! them.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::HeaderMap;
use bytes::Bytes;
use prost::Message as _;

use super::*;
use taskwire::task::{Id, Name};
use taskwire::v1;

mod dead;
mod event;
mod task;

pub use dead::{DeadLetter, DeadReason};
pub use event::{Event, ResultMessage, result_msg_id};
pub use task::{
    TaskMessage, delayed_headers, expires_at, schedule_headers, scheduled_at, scheduled_task_id,
};

/// A message whose headers are not those of its kind.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MessageError {
    #[error("the message has no {0} header")]
    Missing(&'static str),
    #[error("the message's {header} header is not valid: {value}")]
    Invalid { header: &'static str, value: String },
}

impl MessageError {
    fn invalid(header: &'static str, value: impl std::fmt::Display) -> Self {
        Self::Invalid {
            header,
            value: value.to_string(),
        }
    }
}

fn optional<'h>(headers: &'h HeaderMap, name: &'static str) -> Option<&'h str> {
    headers.get(name).map(|v| v.as_str())
}

fn required<'h>(headers: &'h HeaderMap, name: &'static str) -> Result<&'h str, MessageError> {
    optional(headers, name).ok_or(MessageError::Missing(name))
}

/// A number header: `None` when absent, an error when it is no number.
fn number<T: std::str::FromStr>(
    headers: &HeaderMap,
    name: &'static str,
) -> Result<Option<T>, MessageError> {
    optional(headers, name)
        .map(|text| {
            text.trim()
                .parse()
                .map_err(|_| MessageError::invalid(name, text))
        })
        .transpose()
}

fn name_of(headers: &HeaderMap) -> Result<Name, MessageError> {
    Name::parse(required(headers, header::TASK)?)
        .map_err(|e| MessageError::invalid(header::TASK, e))
}

/// The text of a state in headers.
pub fn state_name(state: v1::TaskState) -> &'static str {
    match state {
        v1::TaskState::Unspecified => "unspecified",
        v1::TaskState::Queued => "queued",
        v1::TaskState::Running => "running",
        v1::TaskState::Retrying => "retrying",
        v1::TaskState::Succeeded => "succeeded",
        v1::TaskState::Failed => "failed",
        v1::TaskState::Cancelled => "cancelled",
        v1::TaskState::Scheduled => "scheduled",
        v1::TaskState::Expired => "expired",
        v1::TaskState::Waiting => "waiting",
    }
}

/// Reads a state written by [`state_name`].
pub fn parse_state(text: &str) -> v1::TaskState {
    match text {
        "queued" => v1::TaskState::Queued,
        "running" => v1::TaskState::Running,
        "retrying" => v1::TaskState::Retrying,
        "succeeded" => v1::TaskState::Succeeded,
        "failed" => v1::TaskState::Failed,
        "cancelled" => v1::TaskState::Cancelled,
        "scheduled" => v1::TaskState::Scheduled,
        "expired" => v1::TaskState::Expired,
        "waiting" => v1::TaskState::Waiting,
        _ => v1::TaskState::Unspecified,
    }
}

/// Microseconds since the Unix epoch, as in [`header::SUBMITTED_AT`].
pub fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or_default()
}

/// What a submitter changed of a task's declared options, carried in the task's headers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Overrides {
    /// Attempts in all.
    pub max_attempts: Option<u32>,
    /// Time limit of one attempt.
    pub timeout: Option<Duration>,
    /// First retry delay.
    pub backoff_initial: Option<Duration>,
    /// Longest retry delay.
    pub backoff_max: Option<Duration>,
    /// How long the result is kept.
    pub result_ttl: Option<Duration>,
}

impl Overrides {
    fn write(&self, headers: &mut HeaderMap) {
        if let Some(n) = self.max_attempts {
            headers.insert(header::MAX_ATTEMPTS, n.to_string().as_str());
        }
        for (name, value) in [
            (header::TIMEOUT_MS, self.timeout),
            (header::BACKOFF_INITIAL_MS, self.backoff_initial),
            (header::BACKOFF_MAX_MS, self.backoff_max),
            (header::RESULT_TTL_MS, self.result_ttl),
        ] {
            if let Some(d) = value {
                headers.insert(name, d.as_millis().to_string().as_str());
            }
        }
    }

    /// Reads the overrides of a task message.
    pub fn read(headers: Option<&HeaderMap>) -> Self {
        let number = |name: &str| -> Option<u64> { headers?.get(name)?.as_str().parse().ok() };
        let millis = |name: &str| number(name).map(Duration::from_millis);
        Self {
            max_attempts: number(header::MAX_ATTEMPTS)
                .and_then(|n| u32::try_from(n).ok())
                .filter(|n| *n > 0),
            timeout: millis(header::TIMEOUT_MS),
            backoff_initial: millis(header::BACKOFF_INITIAL_MS),
            backoff_max: millis(header::BACKOFF_MAX_MS),
            result_ttl: millis(header::RESULT_TTL_MS),
        }
    }

    /// The declared options with these overrides applied.
    pub fn apply(&self, declared: &taskwire::task::Options) -> taskwire::task::Options {
        taskwire::task::Options {
            max_attempts: self.max_attempts.unwrap_or(declared.max_attempts),
            timeout: self.timeout.or(declared.timeout),
            backoff_initial: self.backoff_initial.unwrap_or(declared.backoff_initial),
            backoff_max: self.backoff_max.unwrap_or(declared.backoff_max),
            concurrency: declared.concurrency,
            result_ttl: self.result_ttl.or(declared.result_ttl),
            max_concurrency: declared.max_concurrency,
            rate_limit: declared.rate_limit,
            concurrency_key_field: declared.concurrency_key_field.clone(),
            rate_limit_key_field: declared.rate_limit_key_field.clone(),
        }
    }
}

/// Whether a stored message is the marker a result leaves when its time ran out.
pub fn is_expiry_marker(headers: &HeaderMap) -> bool {
    headers.get(header::MARKER_REASON).is_some()
}

/// The body of a progress event.
pub fn progress_body(progress: &v1::TaskProgress) -> Bytes {
    progress.encode_to_vec().into()
}

/// The body of a failed result or a retry event.
pub fn failure_body(message: &str, retryable: bool) -> Bytes {
    v1::TaskFailure {
        message: message.to_owned(),
        retryable,
    }
    .encode_to_vec()
    .into()
}

/// A task's state as an event or result message tells it.
pub fn task_info(
    id: &Id,
    headers: &HeaderMap,
    payload: &[u8],
    time: Option<SystemTime>,
) -> v1::TaskInfo {
    let mut state = headers
        .get(header::STATE)
        .map(|v| parse_state(v.as_str()))
        .unwrap_or_default();
    let micros_header = |name: &str| -> Option<SystemTime> {
        let micros: u64 = headers.get(name)?.as_str().parse().ok()?;
        Some(UNIX_EPOCH + Duration::from_micros(micros))
    };
    let not_before = micros_header(header::NOT_BEFORE);
    let now = SystemTime::now();
    // The broker released a scheduled task at its time: it is queued now.
    if state == v1::TaskState::Scheduled && not_before.is_some_and(|t| t <= now) {
        state = v1::TaskState::Queued;
    }
    // A task still waiting past its expiry never runs: whoever takes it next ends it as expired.
    if matches!(state, v1::TaskState::Queued | v1::TaskState::Scheduled)
        && micros_header(header::EXPIRES_AT).is_some_and(|t| t <= now)
    {
        state = v1::TaskState::Expired;
    }
    let mut info = v1::TaskInfo {
        task_id: id.to_string(),
        task: headers
            .get(header::TASK)
            .map(|v| v.as_str().to_owned())
            .unwrap_or_default(),
        state: state as i32,
        attempt: headers
            .get(header::ATTEMPT)
            .and_then(|v| v.as_str().parse().ok())
            .unwrap_or_default(),
        updated_at: time.map(prost_types::Timestamp::from),
        not_before: not_before.map(prost_types::Timestamp::from),
        trace_id: trace_id(headers).unwrap_or_default(),
        ..Default::default()
    };
    match state {
        v1::TaskState::Succeeded => info.result = payload.to_vec(),
        v1::TaskState::Failed
        | v1::TaskState::Retrying
        | v1::TaskState::Cancelled
        | v1::TaskState::Expired => {
            info.error = v1::TaskFailure::decode(payload).ok();
        }
        v1::TaskState::Running if headers.get(header::PROGRESS).is_some() => {
            info.progress = v1::TaskProgress::decode(payload).ok();
        }
        _ => {}
    }
    info
}

/// The trace id in a message's W3C `traceparent` header.
pub fn trace_id(headers: &HeaderMap) -> Option<String> {
    let parent = headers.get("traceparent")?;
    let id = parent.as_str().split('-').nth(1)?;
    (id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()) && id != "0".repeat(32))
        .then(|| id.to_owned())
}

/// The priority a task message names in its headers (normal when it names none).
pub fn priority_of(headers: &HeaderMap) -> v1::Priority {
    match headers.get(header::PRIORITY).map(|v| v.as_str()) {
        Some("high") => v1::Priority::High,
        Some("low") => v1::Priority::Low,
        _ => v1::Priority::Normal,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::open::subject_covers;

    #[test]
    fn a_tick_fired_twice_is_one_task() {
        let name = taskwire::task::Name::parse("examples.chaos.v1.Chaos/Sleep").expect("valid");
        let next = Some("2026-11-29T22:22:06Z");
        let first = scheduled_task_id(&name, "nightly", next, 17);
        assert_eq!(first, scheduled_task_id(&name, "nightly", next, 42));
        assert_ne!(
            first,
            scheduled_task_id(&name, "nightly", Some("2026-11-29T22:22:07Z"), 18)
        );
        // The same id as every runtime makes (clients/python/tests/test_vectors.py).
        assert_eq!(first.to_string(), "800023c8c1e052b38052b5e8a7a968f2");
        assert_ne!(
            scheduled_task_id(&name, "nightly", None, 17),
            scheduled_task_id(&name, "nightly", None, 18)
        );
    }

    #[test]
    fn a_result_is_stored_once_per_task_id_whatever_its_type() {
        let name = taskwire::task::Name::parse("examples.magic.v1.Magic/Add").expect("valid");
        let id = Id::parse("0123456789abcdef0123456789abcdef").expect("valid");
        assert_eq!(
            subject::result(&name, &id),
            "taskwire.results.0123456789abcdef0123456789abcdef.examples.magic.v1.Magic.Add"
        );
        let headers =
            ResultMessage::new(&name, &id, v1::TaskState::Succeeded, 1, "0", None).to_headers();
        assert_eq!(
            headers
                .get(header::EXPECTED_LAST_SUBJECT_SEQUENCE_SUBJECT)
                .map(|v| v.as_str()),
            Some("taskwire.results.0123456789abcdef0123456789abcdef.>")
        );
        assert!(subject_covers(subject::RESULTS, subject::RESULTS_BY_TYPE));
    }

    fn magic() -> (Name, Id) {
        (
            Name::parse("examples.magic.v1.Magic/Add").expect("valid"),
            Id::parse("0123456789abcdef0123456789abcdef").expect("valid"),
        )
    }

    #[test]
    fn every_message_reads_back_as_written() {
        let (name, id) = magic();
        let mut task = TaskMessage::submitted(
            &name,
            &id,
            Overrides {
                max_attempts: Some(3),
                timeout: Some(Duration::from_millis(1500)),
                ..Default::default()
            },
            Some(42),
        );
        task.priority = v1::Priority::High;
        assert_eq!(TaskMessage::from_headers(&task.to_headers()), Ok(task));

        let mut event = Event::new(&name, &id, v1::TaskState::Scheduled, 0);
        event.not_before = Some(7);
        event.replay = Some(2);
        assert_eq!(Event::from_headers(&event.to_headers()), Ok(event));
        let start = Event::start(&name, &id, 3, "1");
        assert_eq!(
            start.msg_id.as_deref(),
            Some("0123456789abcdef0123456789abcdef.start.1.3")
        );
        assert_eq!(start.series(), 1);
        assert_eq!(
            start.to_headers().get(header::REPLAY).map(|v| v.as_str()),
            Some("1")
        );
        assert_eq!(Event::from_headers(&start.to_headers()), Ok(start));
        assert_eq!(Event::start(&name, &id, 1, "0").replay, None);
        let progress = Event::progress(&name, &id, 1);
        assert_eq!(Event::from_headers(&progress.to_headers()), Ok(progress));

        let result = ResultMessage::new(
            &name,
            &id,
            v1::TaskState::Failed,
            2,
            "1",
            Some(Duration::from_millis(1500)),
        );
        let read = ResultMessage::from_headers(&result.to_headers()).expect("reads");
        // The broker keeps results for whole seconds.
        assert_eq!(read.ttl, Some(Duration::from_secs(2)));
        assert_eq!((read.event, read.series), (result.event, result.series));
    }

    #[test]
    fn a_dead_letter_keeps_the_task_and_replays_it_in_a_new_series() {
        let (name, id) = magic();
        let mut task = TaskMessage::submitted(&name, &id, Overrides::default(), None);
        task.priority = v1::Priority::Low;
        task.replay = Some(1);
        let mut headers = task.to_headers();
        headers.insert("Nats-Schedule-Next", "2026-11-29T22:22:06Z");
        let letter = DeadLetter::of(
            Some(&headers),
            &name,
            &id,
            3,
            DeadReason::Exhausted,
            "line one\nline two",
        );
        let stored = letter.to_headers();
        assert!(stored.get("Nats-Schedule-Next").is_none(), "{stored:?}");
        assert_eq!(
            stored.get(header::MSG_ID).map(|v| v.as_str()),
            Some("0123456789abcdef0123456789abcdef.dead.1")
        );
        let read = DeadLetter::from_headers(&stored).expect("reads");
        assert_eq!(read.error, "line one line two");
        assert_eq!(
            (read.reason, read.attempt, read.replays()),
            (DeadReason::Exhausted, 3, 1)
        );
        let replay = read.replay();
        assert_eq!(replay.replay, Some(2));
        assert_eq!(replay.priority, v1::Priority::Low);
        assert_eq!(replay.msg_id, "0123456789abcdef0123456789abcdef.replay.2");

        let mut bad = stored.clone();
        bad.insert(header::DEAD_REASON, "bored");
        assert!(matches!(
            DeadLetter::from_headers(&bad),
            Err(MessageError::Invalid {
                header: header::DEAD_REASON,
                ..
            })
        ));
        let mut no_id = HeaderMap::new();
        no_id.insert(header::TASK, name.as_str());
        assert_eq!(
            Event::from_headers(&no_id),
            Err(MessageError::Missing(header::STATE))
        );
    }
}
