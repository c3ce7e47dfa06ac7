//! Pausing and resuming queues: the `TASKWIRE_PAUSED` bucket, changed with compare-and-set so
//! that two operators pausing different priorities of one task type at once both count.

use async_nats::jetstream::kv;
use bytes::Bytes;
use taskwire::task::Name;
use taskwire::v1;
use taskwire_protocol::{self as broker, pause};

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
