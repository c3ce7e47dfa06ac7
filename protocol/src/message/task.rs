//! A task as published on its subject, and the schedules and delays that publish tasks later.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::HeaderMap;

use super::*;
use taskwire::task::{Id, Name};
use taskwire::v1;

/// A task message: what a worker needs besides the arguments (the body).
///
/// The de-duplication id of a submitted task is the task id. A keyed task's id is made from its
/// task type and key (and the submitter's scope), so a key used by two task types gives two ids
/// and two tasks; a bare key as the de-duplication id would let one type's key swallow another's
/// task, since the stream de-duplicates across all its subjects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskMessage {
    pub name: Name,
    pub id: Id,
    /// The attempt this delivery starts with (1; a worker counts runs itself).
    pub attempt: u32,
    /// When it was submitted, in µs since the Unix epoch.
    pub submitted_at: u64,
    /// Not started after this, in µs since the Unix epoch.
    pub expires_at: Option<u64>,
    pub overrides: Overrides,
    pub priority: v1::Priority,
    /// Which replay of a dead letter this is (`None`: the first series of attempts).
    pub replay: Option<u32>,
    /// The broker's de-duplication id.
    pub msg_id: String,
}

impl TaskMessage {
    /// A task submitted now.
    pub fn submitted(name: &Name, id: &Id, overrides: Overrides, expires_at: Option<u64>) -> Self {
        Self {
            name: name.clone(),
            id: id.clone(),
            attempt: 1,
            submitted_at: now_micros(),
            expires_at,
            overrides,
            priority: v1::Priority::Normal,
            replay: None,
            msg_id: id.to_string(),
        }
    }

    /// The message's headers.
    pub fn to_headers(&self) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::TASK_ID, self.id.as_str());
        headers.insert(header::TASK, self.name.as_str());
        headers.insert(header::MSG_ID, self.msg_id.as_str());
        headers.insert(header::SUBMITTED_AT, self.submitted_at.to_string().as_str());
        headers.insert(header::ATTEMPT, self.attempt.to_string().as_str());
        if let Some(replay) = self.replay {
            headers.insert(header::REPLAY, replay.to_string().as_str());
        }
        if let Some(at) = self.expires_at {
            headers.insert(header::EXPIRES_AT, at.to_string().as_str());
        }
        if !matches!(
            self.priority,
            v1::Priority::Normal | v1::Priority::Unspecified
        ) {
            headers.insert(header::PRIORITY, priority_name(self.priority));
        }
        self.overrides.write(&mut headers);
        headers
    }

    /// Reads a task message's headers. (A task a schedule fired has no id of its own: see
    /// [`scheduled_task_id`].)
    pub fn from_headers(headers: &HeaderMap) -> Result<Self, MessageError> {
        let id = Id::parse(required(headers, header::TASK_ID)?)
            .map_err(|e| MessageError::invalid(header::TASK_ID, e))?;
        Ok(Self {
            name: name_of(headers)?,
            msg_id: optional(headers, header::MSG_ID).map_or_else(|| id.to_string(), str::to_owned),
            id,
            attempt: number(headers, header::ATTEMPT)?.unwrap_or(1),
            submitted_at: number(headers, header::SUBMITTED_AT)?.unwrap_or_default(),
            expires_at: number(headers, header::EXPIRES_AT)?,
            overrides: Overrides::read(Some(headers)),
            priority: priority_of(headers),
            replay: number(headers, header::REPLAY)?,
        })
    }
}

/// The headers of a schedule: those of the tasks it submits (without an id: each tick's task
/// gets its own), with the schedule `spec` and its target.
pub fn schedule_headers(
    name: &Name,
    schedule: &str,
    spec: &str,
    time_zone: Option<&str>,
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
    if let Some(zone) = time_zone {
        headers.insert(header::SCHEDULE_TIME_ZONE, zone);
    }
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
