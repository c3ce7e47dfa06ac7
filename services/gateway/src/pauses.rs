//! Pausing and resuming queues: the `TASKWIRE_PAUSED` bucket, changed with compare-and-set so
//! that two operators pausing different priorities of one task type at once both count; and
//! purging a queue of the tasks that wait in it.

use async_nats::jetstream::kv;
use bytes::Bytes;
use taskwire::task::{Id, Name};
use taskwire::v1;
use taskwire_protocol::{self as broker, header, pause};

use crate::cancel::Cancelled;
use crate::{Error, Gateway};

/// Tries of a change that another one keeps getting ahead of.
const TRIES: usize = 16;

impl Gateway {
    /// Pauses (`paused`) or resumes the priorities `priorities` (none: all) of a task type's
    /// queue; answers what is paused afterwards.
    pub(crate) async fn set_queue_paused(
        &self,
        task: &str,
        priorities: &[i32],
        paused: bool,
        reason: &str,
    ) -> Result<v1::QueuePauseResponse, Error> {
        let name = Name::parse(task).map_err(Error::InvalidName)?;
        self.registry.get(&name).await?;
        let levels = pause::levels_of(priorities).map_err(Error::BadRequest)?;
        if reason.chars().count() > pause::MAX_REASON {
            return Err(Error::BadRequest(format!(
                "reason: at most {} characters, not {}",
                pause::MAX_REASON,
                reason.chars().count()
            )));
        }
        self.check_connected()?;
        let key = name.token();
        let bucket = &self.broker.paused;
        for _ in 0..TRIES {
            let entry = bucket
                .entry(key.clone())
                .await
                .map_err(|e| self.broker_error(e))?;
            let revision = entry.as_ref().map_or(0, |e| e.revision);
            let stored = entry.as_ref().and_then(pause::decode);
            let mut now = stored
                .as_ref()
                .map(pause::paused_levels)
                .unwrap_or_default();
            for (level, asked) in levels.into_iter().enumerate() {
                if asked {
                    now[level] = paused;
                }
            }
            let next = now.contains(&true).then(|| {
                let kept = stored.clone().filter(|s| !s.priorities.is_empty());
                v1::QueuePause {
                    priorities: pause::priorities_of(now),
                    since: kept
                        .as_ref()
                        .and_then(|s| s.since)
                        .or_else(|| Some(std::time::SystemTime::now().into())),
                    reason: if paused {
                        reason.to_owned()
                    } else {
                        kept.map(|s| s.reason).unwrap_or_default()
                    },
                }
            });
            let written = match &next {
                Some(next) if Some(next) == stored.as_ref() => Ok(()),
                Some(next) => bucket
                    .update(
                        &key,
                        Bytes::from(prost::Message::encode_to_vec(next)),
                        revision,
                    )
                    .await
                    .map(|_| ()),
                None if stored.is_none() => Ok(()),
                None => bucket.delete_expect_revision(&key, Some(revision)).await,
            };
            match written {
                Ok(()) => {
                    tracing::info!(task = %name, paused, ?levels, "queue pause changed (levels high, normal, low)");
                    return Ok(v1::QueuePauseResponse {
                        task: name.to_string(),
                        pause: Some(next.unwrap_or_default()),
                    });
                }
                Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => continue,
                Err(e) => return Err(self.broker_error(e)),
            }
        }
        Err(Error::Broker(format!(
            "the pause of {name} kept changing under this one; try again"
        )))
    }

    /// The stored pause of a task type, if any of its priorities is paused.
    pub(crate) async fn pause_of(&self, name: &Name) -> Result<Option<v1::QueuePause>, Error> {
        let entry = self
            .broker
            .paused
            .entry(name.token())
            .await
            .map_err(|e| self.broker_error(e))?;
        Ok(entry
            .as_ref()
            .and_then(pause::decode)
            .filter(|p| !p.priorities.is_empty()))
    }
}

/// Whether `pause` holds the queue of `priority` paused.
pub(crate) fn holds(pause: Option<&v1::QueuePause>, priority: v1::Priority) -> bool {
    pause.is_some_and(|p| {
        let level = broker::PRIORITIES
            .iter()
            .position(|x| *x == priority)
            .unwrap_or(1);
        pause::paused_levels(p)[level]
    })
}

impl Gateway {
    /// Cancels every task waiting in a task type's queue (at `priorities`, none: all three), as
    /// a Cancel of each would, then takes its message out of the stream; a task running now is
    /// left to finish. Answers how many it cancelled. After a crash midway, the ones done stay
    /// cancelled and a repeat goes on with the rest.
    pub(crate) async fn purge_queue(&self, task: &str, priorities: &[i32]) -> Result<u64, Error> {
        use async_nats::jetstream::stream::RawMessageErrorKind;
        let name = Name::parse(task).map_err(Error::InvalidName)?;
        self.registry.get(&name).await?;
        let levels = pause::levels_of(priorities).map_err(Error::BadRequest)?;
        self.check_connected()?;
        let mut purged = 0;
        for (level, priority) in broker::PRIORITIES.iter().enumerate() {
            if !levels[level] {
                continue;
            }
            let subject = broker::subject::task_at(&name, *priority);
            let mut from = 1;
            loop {
                let message = match self
                    .broker
                    .tasks
                    .raw_message_builder()
                    .sequence(from)
                    .next_by_subject(subject.clone())
                    .send()
                    .await
                {
                    Ok(message) => message,
                    Err(e) if e.kind() == RawMessageErrorKind::NoMessageFound => break,
                    Err(e) => return Err(self.broker_error(e)),
                };
                from = message.sequence + 1;
                let Some(id) = queued_task_id(&name, &message.headers, message.sequence) else {
                    // Not a task (a worker moves such a message to the dead letters).
                    continue;
                };
                let last = self.last_event(&id).await?;
                if last
                    .as_ref()
                    .is_some_and(|e| e.state() == v1::TaskState::Running)
                {
                    continue;
                }
                let attempt = last.map_or(0, |e| e.attempt);
                match self
                    .cancel_with_children(&id, &name, attempt, false)
                    .await?
                {
                    Cancelled::Now | Cancelled::ByWorker(_) => purged += 1,
                    Cancelled::Finished(_) => {}
                }
                // Nothing of it is left to run.
                if let Err(e) = self.broker.tasks.delete_message(message.sequence).await {
                    tracing::debug!(task_id = %id, error = %e, "the message of a purged task was gone already");
                }
            }
        }
        tracing::info!(task = %name, purged, "queue purged");
        Ok(purged)
    }
}

/// The id of the task a message of the tasks stream holds: its own, or for a schedule's tick
/// the one the worker makes of it. `None`: not a task (a worker moves such a message to the
/// dead letters).
pub(crate) fn queued_task_id(
    name: &Name,
    headers: &async_nats::HeaderMap,
    sequence: u64,
) -> Option<Id> {
    match headers.get(header::TASK_ID) {
        Some(id) => Id::parse(id.as_str()).ok(),
        None => headers.get(header::SCHEDULE_NAME).map(|schedule| {
            broker::scheduled_task_id(
                name,
                schedule.as_str(),
                headers.get(header::SCHEDULE_NEXT).map(|v| v.as_str()),
                sequence,
            )
        }),
    }
}
