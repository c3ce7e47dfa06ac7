//! A task's state changes (events) and its outcome (the result, stored once per task id).

use std::time::Duration;

use async_nats::HeaderMap;

use super::*;
use taskwire::task::{Id, Name};
use taskwire::v1;

/// A state change of a task, on `taskwire.events.<id>.<token>`: queued, scheduled, running
/// (also each progress report), retrying.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub name: Name,
    pub id: Id,
    pub state: v1::TaskState,
    /// The attempt it concerns (0 before the first).
    pub attempt: u32,
    /// Which replay of a dead letter the task is, when it is one.
    pub replay: Option<u32>,
    /// A scheduled task's time, in µs since the Unix epoch.
    pub not_before: Option<u64>,
    /// Not started after this, in µs since the Unix epoch.
    pub expires_at: Option<u64>,
    /// A progress report (body: `TaskProgress`).
    pub progress: bool,
    /// The broker's de-duplication id, when the event must be stored once (an attempt's
    /// start).
    pub msg_id: Option<String>,
    /// For a task that waited for its children: which resumed copy of its message the event
    /// belongs to (`Taskwire-Resume`); a `waiting` event names the copy that will follow. A
    /// delivery of an earlier copy is over.
    pub resume: Option<u32>,
}

impl Event {
    /// `state` of attempt `attempt`, and nothing more.
    pub fn new(name: &Name, id: &Id, state: v1::TaskState, attempt: u32) -> Self {
        Self {
            name: name.clone(),
            id: id.clone(),
            state,
            attempt,
            replay: None,
            not_before: None,
            expires_at: None,
            progress: false,
            msg_id: None,
            resume: None,
        }
    }

    /// The event of a resumed copy names it (see [`Self::resume`]).
    #[must_use]
    pub fn in_resume(mut self, resume: u32) -> Self {
        self.resume = (resume > 0).then_some(resume);
        self
    }

    /// The start of an attempt: stored once per attempt and series of attempts (`series`, the
    /// replay count), so that a second delivery racing the first finds it taken.
    pub fn start(name: &Name, id: &Id, attempt: u32, series: &str) -> Self {
        Self {
            msg_id: Some(format!("{id}.start.{series}.{attempt}")),
            ..Self::new(name, id, v1::TaskState::Running, attempt)
                .in_series(series.parse().unwrap_or_default())
        }
    }

    /// The event of a replayed task names its series (`Taskwire-Replay`), as its queued event
    /// does, so that a delivery of an older series, which a lost ack left in line, can tell
    /// that its series is over.
    #[must_use]
    pub fn in_series(mut self, series: u32) -> Self {
        self.replay = (series > 0).then_some(series);
        self
    }

    /// The series of attempts the event belongs to: 0, or the replay count.
    pub fn series(&self) -> u32 {
        self.replay.unwrap_or_default()
    }

    /// A progress report of a running attempt.
    pub fn progress(name: &Name, id: &Id, attempt: u32) -> Self {
        Self {
            progress: true,
            ..Self::new(name, id, v1::TaskState::Running, attempt)
        }
    }

    /// The event's headers.
    pub fn to_headers(&self) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::TASK_ID, self.id.as_str());
        headers.insert(header::TASK, self.name.as_str());
        headers.insert(header::STATE, state_name(self.state));
        headers.insert(header::ATTEMPT, self.attempt.to_string().as_str());
        if let Some(replay) = self.replay {
            headers.insert(header::REPLAY, replay.to_string().as_str());
        }
        if let Some(at) = self.not_before {
            headers.insert(header::NOT_BEFORE, at.to_string().as_str());
        }
        if let Some(at) = self.expires_at {
            headers.insert(header::EXPIRES_AT, at.to_string().as_str());
        }
        if self.progress {
            headers.insert(header::PROGRESS, "1");
        }
        if let Some(msg_id) = &self.msg_id {
            headers.insert(header::MSG_ID, msg_id.as_str());
        }
        if let Some(resume) = self.resume {
            headers.insert(header::RESUME, resume.to_string().as_str());
        }
        headers
    }

    /// Reads an event's (or a result's) headers.
    pub fn from_headers(headers: &HeaderMap) -> Result<Self, MessageError> {
        let state = required(headers, header::STATE)?;
        Ok(Self {
            name: name_of(headers)?,
            id: Id::parse(required(headers, header::TASK_ID)?)
                .map_err(|e| MessageError::invalid(header::TASK_ID, e))?,
            state: match parse_state(state) {
                v1::TaskState::Unspecified => {
                    return Err(MessageError::invalid(header::STATE, state));
                }
                known => known,
            },
            attempt: number(headers, header::ATTEMPT)?.unwrap_or_default(),
            replay: number(headers, header::REPLAY)?,
            not_before: number(headers, header::NOT_BEFORE)?,
            expires_at: number(headers, header::EXPIRES_AT)?,
            progress: headers.get(header::PROGRESS).is_some(),
            msg_id: optional(headers, header::MSG_ID).map(str::to_owned),
            resume: number(headers, header::RESUME)?,
        })
    }
}

/// A task's outcome on `taskwire.results.<id>.<token>`: stored only if the task has no result
/// yet, whoever publishes it and however often.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResultMessage {
    /// The final state and the attempt that reached it.
    pub event: Event,
    /// The series of attempts (`0`, or the replay count), which tells apart the results of a
    /// task's replays: their de-duplication ids must differ.
    pub series: String,
    /// How long the broker keeps it.
    pub ttl: Option<Duration>,
}

impl ResultMessage {
    /// The outcome `state` of attempt `attempt` in series `series`.
    pub fn new(
        name: &Name,
        id: &Id,
        state: v1::TaskState,
        attempt: u32,
        series: &str,
        ttl: Option<Duration>,
    ) -> Self {
        Self {
            event: Event::new(name, id, state, attempt),
            series: series.to_owned(),
            ttl,
        }
    }

    /// The result's headers.
    pub fn to_headers(&self) -> HeaderMap {
        let id = &self.event.id;
        let mut headers = Event {
            msg_id: Some(result_msg_id(id, &self.series)),
            ..self.event.clone()
        }
        .to_headers();
        headers.insert(header::EXPECTED_LAST_SUBJECT_SEQUENCE, "0");
        headers.insert(
            header::EXPECTED_LAST_SUBJECT_SEQUENCE_SUBJECT,
            subject::result_of(id).as_str(),
        );
        if let Some(ttl) = self.ttl {
            let seconds = ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0);
            headers.insert(header::TTL, seconds.max(1).to_string().as_str());
        }
        headers
    }

    /// The headers of the outcome record that goes with a result other than success (see
    /// [`crate::subject::outcome`]): the result's, less the check that only one is stored, with
    /// a de-duplication id of its own. The record is written before the result: a record whose
    /// result lost the race to another outcome names a state the task does not have, so readers
    /// take the state from the result.
    pub fn to_outcome_headers(&self) -> HeaderMap {
        let id = &self.event.id;
        let mut headers = Event {
            msg_id: Some(format!("{id}.outcome.{}", self.series)),
            ..self.event.clone()
        }
        .to_headers();
        if let Some(ttl) = self.ttl {
            let seconds = ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0);
            headers.insert(header::TTL, seconds.max(1).to_string().as_str());
        }
        headers
    }

    /// Reads a stored result's headers.
    pub fn from_headers(headers: &HeaderMap) -> Result<Self, MessageError> {
        let event = Event::from_headers(headers)?;
        let prefix = format!("{}.result.", event.id);
        let series = event
            .msg_id
            .as_deref()
            .and_then(|m| m.strip_prefix(&prefix))
            .ok_or_else(|| {
                MessageError::invalid(header::MSG_ID, event.msg_id.as_deref().unwrap_or(""))
            })?
            .to_owned();
        let ttl = number::<u64>(headers, header::TTL)?.map(Duration::from_secs);
        Ok(Self {
            event: Event {
                msg_id: None,
                ..event
            },
            series,
            ttl,
        })
    }
}

/// The de-duplication id of a task's result in a series of attempts (0, or its replay count).
pub fn result_msg_id(id: &Id, series: &str) -> String {
    format!("{id}.result.{series}")
}
