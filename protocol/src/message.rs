//! The messages of the protocol: task, event, result and dead-letter headers and bodies, and
//! how a task's state is read back from them.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::HeaderMap;
use bytes::Bytes;
use prost::Message as _;

use super::*;
use taskwire::task::{Id, Name};
use taskwire::v1;

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
        }
    }
}

/// The headers of a task message. `expires_at` is in microseconds since the Unix epoch.
///
/// The de-duplication id is the task id. A keyed task's id is made from its task type and key
/// (and the submitter's scope), so a key used by two task types gives two ids and two tasks;
/// a bare key as the de-duplication id would let one type's key swallow another's task, since
/// the stream de-duplicates across all its subjects.
pub fn task_headers(
    name: &Name,
    id: &Id,
    overrides: &Overrides,
    expires_at: Option<u64>,
) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(header::TASK_ID, id.as_str());
    headers.insert(header::TASK, name.as_str());
    headers.insert(header::MSG_ID, id.as_str());
    headers.insert(header::SUBMITTED_AT, now_micros().to_string().as_str());
    headers.insert(header::ATTEMPT, "1");
    if let Some(at) = expires_at {
        headers.insert(header::EXPIRES_AT, at.to_string().as_str());
    }
    overrides.write(&mut headers);
    headers
}

/// The headers of a schedule: those of the tasks it submits (without an id: each tick's task
/// gets its own), with the schedule `spec` and its target.
pub fn schedule_headers(
    name: &Name,
    schedule: &str,
    spec: &str,
    priority: v1::Priority,
    overrides: &Overrides,
) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(header::TASK, name.as_str());
    headers.insert(header::SCHEDULE_NAME, schedule);
    headers.insert(header::ATTEMPT, "1");
    if priority != v1::Priority::Normal && priority != v1::Priority::Unspecified {
        headers.insert(header::PRIORITY, priority_name(priority));
    }
    overrides.write(&mut headers);
    headers.insert(header::SCHEDULE, spec);
    headers.insert(
        header::SCHEDULE_TARGET,
        subject::task_at(name, priority).as_str(),
    );
    headers
}

/// The id of the task a schedule fired: from the schedule's name and the tick, which the fired
/// message's `Nats-Schedule-Next` (the time of the tick after it) names, so that a tick fired
/// twice (by a new stream leader that had not learnt of the first firing) is one task; without
/// that header, from the message's sequence in the tasks stream. The same on every redelivery,
/// different on every tick.
pub fn scheduled_task_id(name: &Name, schedule: &str, next: Option<&str>, sequence: u64) -> Id {
    let tick = match next {
        Some(next) => format!("next\0{next}"),
        None => sequence.to_string(),
    };
    Id::from_idempotency_key(name, &format!("schedule\0{schedule}\0{tick}"))
}

/// The expiry time of a task message, in microseconds since the Unix epoch.
pub fn expires_at(headers: Option<&HeaderMap>) -> Option<u64> {
    headers?.get(header::EXPIRES_AT)?.as_str().parse().ok()
}

/// Turns task headers into those of a message schedule that publishes the task to `target`
/// at `at` (rounded up to the next whole second: the server's granularity).
pub fn delayed_headers(mut task: HeaderMap, target: &str, at: SystemTime) -> HeaderMap {
    let since = at.duration_since(UNIX_EPOCH).unwrap_or_default();
    let whole = if since.subsec_nanos() > 0 {
        since.as_secs() + 1
    } else {
        since.as_secs()
    };
    let at = UNIX_EPOCH + Duration::from_secs(whole);
    task.insert(
        header::SCHEDULE,
        format!("@at {}", humantime::format_rfc3339_seconds(at)).as_str(),
    );
    task.insert(header::SCHEDULE_TARGET, target);
    task
}

/// When a delayed task's message schedule (`@at <time>`) publishes it.
pub fn scheduled_at(headers: &HeaderMap) -> Option<SystemTime> {
    let spec = headers.get(header::SCHEDULE)?.as_str();
    humantime::parse_rfc3339_weak(spec.strip_prefix("@at ")?.trim()).ok()
}

/// The headers of a state change event.
pub fn event_headers(name: &Name, id: &Id, state: v1::TaskState, attempt: u32) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(header::TASK_ID, id.as_str());
    headers.insert(header::TASK, name.as_str());
    headers.insert(header::STATE, state_name(state));
    headers.insert(header::ATTEMPT, attempt.to_string().as_str());
    headers
}

/// The headers of a result: stored only if the task has no result yet, whoever publishes it and
/// however often. `series` tells apart the results of a task's replays (its `Taskwire-Replay`),
/// whose de-duplication ids must differ.
pub fn result_headers(
    name: &Name,
    id: &Id,
    state: v1::TaskState,
    attempt: u32,
    series: &str,
    ttl: Option<Duration>,
) -> HeaderMap {
    let mut headers = event_headers(name, id, state, attempt);
    headers.insert(header::MSG_ID, result_msg_id(id, series).as_str());
    headers.insert(header::EXPECTED_LAST_SUBJECT_SEQUENCE, "0");
    headers.insert(
        header::EXPECTED_LAST_SUBJECT_SEQUENCE_SUBJECT,
        subject::result_of(id).as_str(),
    );
    if let Some(ttl) = ttl {
        let seconds = ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0);
        headers.insert(header::TTL, seconds.max(1).to_string().as_str());
    }
    headers
}

/// The de-duplication id of a task's result in a series of attempts (0, or its replay count).
pub fn result_msg_id(id: &Id, series: &str) -> String {
    format!("{id}.result.{series}")
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

/// Why a task ended in the dead letters: the `Taskwire-Dead-Reason` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeadReason {
    /// A message that is no taskwire task (no valid id): it can never run.
    Poison,
    /// The task failed with a permanent error, or its result was refused for good.
    Permanent,
    /// Every attempt failed with an error that could pass.
    Exhausted,
    /// The last attempt ran past its time limit.
    Timeout,
    /// The handler panicked (in Python: raised an exception that is no `TaskError`).
    Panic,
    /// The last attempt was cut short (its worker stopped) and no attempt was left.
    Lost,
}

impl DeadReason {
    /// Every reason.
    pub const ALL: [DeadReason; 6] = [
        DeadReason::Poison,
        DeadReason::Permanent,
        DeadReason::Exhausted,
        DeadReason::Timeout,
        DeadReason::Panic,
        DeadReason::Lost,
    ];

    /// The reason as the header (and the metrics label) writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            DeadReason::Poison => "poison",
            DeadReason::Permanent => "permanent",
            DeadReason::Exhausted => "exhausted",
            DeadReason::Timeout => "timeout",
            DeadReason::Panic => "panic",
            DeadReason::Lost => "lost",
        }
    }

    /// The reason a header names, if it is one of these.
    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == text)
    }
}

impl std::fmt::Display for DeadReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The headers of a dead letter: the task's own, plus why it died. Stored once per task and
/// replay, however often the worker tries.
pub fn dead_headers(
    task: Option<&HeaderMap>,
    name: &Name,
    id: &Id,
    attempt: u32,
    reason: DeadReason,
    error: &str,
) -> HeaderMap {
    let mut headers = HeaderMap::new();
    // The task's own headers, less those the server acts on: a task a message schedule fired
    // carries `Nats-Scheduler` and `Nats-Schedule-Next`, which a stream without schedules
    // refuses, and a TTL or an expected sequence would change how the dead letter is kept.
    for (name, values) in task.into_iter().flat_map(|h| h.iter()) {
        let text: &str = name.as_ref();
        if text.len() >= 5 && text[..5].eq_ignore_ascii_case("nats-") {
            continue;
        }
        for value in values {
            headers.append(name.clone(), value.clone());
        }
    }
    let replay = headers
        .get(header::REPLAY)
        .map(|v| v.as_str().to_owned())
        .unwrap_or_else(|| "0".to_owned());
    headers.insert(header::TASK_ID, id.as_str());
    headers.insert(header::TASK, name.as_str());
    headers.insert(header::ATTEMPT, attempt.to_string().as_str());
    headers.insert(header::DEAD_REASON, reason.as_str());
    let one_line: String = error
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(1000)
        .collect();
    headers.insert(header::ERROR, one_line.as_str());
    headers.insert(header::MSG_ID, format!("{id}.dead.{replay}").as_str());
    headers
}

/// The headers of a dead task put back in line: a new series of attempts under the same id.
pub fn replay_headers(dead: &HeaderMap, name: &Name, id: &Id) -> HeaderMap {
    let replay = dead
        .get(header::REPLAY)
        .and_then(|v| v.as_str().parse::<u32>().ok())
        .unwrap_or(0)
        + 1;
    let mut headers = HeaderMap::new();
    headers.insert(header::TASK_ID, id.as_str());
    headers.insert(header::TASK, name.as_str());
    headers.insert(header::ATTEMPT, "1");
    headers.insert(header::REPLAY, replay.to_string().as_str());
    headers.insert(header::MSG_ID, format!("{id}.replay.{replay}").as_str());
    headers.insert(header::SUBMITTED_AT, now_micros().to_string().as_str());
    if let Some(priority) = dead.get(header::PRIORITY) {
        headers.insert(header::PRIORITY, priority.as_str());
    }
    Overrides::read(Some(dead)).write(&mut headers);
    headers
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
        let headers = result_headers(&name, &id, v1::TaskState::Succeeded, 1, "0", None);
        assert_eq!(
            headers
                .get(header::EXPECTED_LAST_SUBJECT_SEQUENCE_SUBJECT)
                .map(|v| v.as_str()),
            Some("taskwire.results.0123456789abcdef0123456789abcdef.>")
        );
        assert!(subject_covers(subject::RESULTS, subject::RESULTS_BY_TYPE));
    }
}
