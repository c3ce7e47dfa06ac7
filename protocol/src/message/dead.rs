//! Dead letters: a task that will not run again by itself, kept with why, until replayed or
//! purged.

use async_nats::HeaderMap;

use super::*;
use taskwire::task::{Id, Name};

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

/// A dead letter: the task's own headers (and, in the body, its arguments), plus why it died.
/// Stored once per task and replay, however often the worker tries.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub name: Name,
    pub id: Id,
    /// The attempt that ended the task.
    pub attempt: u32,
    pub reason: DeadReason,
    /// The last error, on one line.
    pub error: String,
    /// The task's own headers, less those the server acts on.
    task: HeaderMap,
}

impl DeadLetter {
    /// The letter of a task (its message's headers, when it has them) that died at `attempt`.
    pub fn of(
        task: Option<&HeaderMap>,
        name: &Name,
        id: &Id,
        attempt: u32,
        reason: DeadReason,
        error: &str,
    ) -> Self {
        let mut kept = HeaderMap::new();
        // Less the headers the server acts on: a task a message schedule fired carries
        // `Nats-Scheduler` and `Nats-Schedule-Next`, which a stream without schedules refuses,
        // and a TTL or an expected sequence would change how the dead letter is kept.
        for (name, values) in task.into_iter().flat_map(|h| h.iter()) {
            let text: &str = name.as_ref();
            if text.len() >= 5 && text[..5].eq_ignore_ascii_case("nats-") {
                continue;
            }
            for value in values {
                kept.append(name.clone(), value.clone());
            }
        }
        Self {
            name: name.clone(),
            id: id.clone(),
            attempt,
            reason,
            error: error
                .chars()
                .map(|c| if c.is_control() { ' ' } else { c })
                .take(1000)
                .collect(),
            task: kept,
        }
    }

    /// Which replay of the task died (0: its first series of attempts).
    pub fn replays(&self) -> u32 {
        self.task
            .get(header::REPLAY)
            .and_then(|v| v.as_str().parse().ok())
            .unwrap_or(0)
    }

    /// The letter's headers.
    pub fn to_headers(&self) -> HeaderMap {
        let mut headers = self.task.clone();
        headers.insert(header::TASK_ID, self.id.as_str());
        headers.insert(header::TASK, self.name.as_str());
        headers.insert(header::ATTEMPT, self.attempt.to_string().as_str());
        headers.insert(header::DEAD_REASON, self.reason.as_str());
        headers.insert(header::ERROR, self.error.as_str());
        let replay = self
            .task
            .get(header::REPLAY)
            .map_or_else(|| "0".to_owned(), |v| v.as_str().to_owned());
        headers.insert(
            header::MSG_ID,
            format!("{}.dead.{replay}", self.id).as_str(),
        );
        headers
    }

    /// Reads a stored letter's headers.
    pub fn from_headers(headers: &HeaderMap) -> Result<Self, MessageError> {
        let reason = required(headers, header::DEAD_REASON)?;
        Ok(Self {
            name: name_of(headers)?,
            id: Id::parse(required(headers, header::TASK_ID)?)
                .map_err(|e| MessageError::invalid(header::TASK_ID, e))?,
            attempt: number(headers, header::ATTEMPT)?.unwrap_or_default(),
            reason: DeadReason::parse(reason)
                .ok_or_else(|| MessageError::invalid(header::DEAD_REASON, reason))?,
            error: optional(headers, header::ERROR)
                .unwrap_or_default()
                .to_owned(),
            task: headers.clone(),
        })
    }

    /// The task put back in line: a new series of attempts under the same id, with the
    /// priority and overrides it had.
    pub fn replay(&self) -> TaskMessage {
        let replay = self.replays() + 1;
        TaskMessage {
            name: self.name.clone(),
            id: self.id.clone(),
            attempt: 1,
            submitted_at: now_micros(),
            expires_at: None,
            overrides: Overrides::read(Some(&self.task)),
            priority: priority_of(&self.task),
            replay: Some(replay),
            msg_id: format!("{}.replay.{replay}", self.id),
        }
    }
}
