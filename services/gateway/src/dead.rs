//! Dead letters: tasks that failed for good, listed, replayed under their own ids, or purged.

use taskwire::task::{Id, Name};
use taskwire::v1;
use taskwire_protocol::{
    self as broker, DeadLetter, ResultMessage, StoredMessage, header, subject,
};

use crate::{Error, Gateway};

/// How often (every 50 ms) a replay looks for the failed result of a dead letter before it
/// gives up: 2 s.
const RESULT_WAIT_TRIES: usize = 40;

const DEFAULT_LIMIT: u32 = 100;
const MAX_LIMIT: u32 = 1000;

impl Gateway {
    fn dead_filter(task: &str) -> Result<String, Error> {
        if task.is_empty() {
            return Ok(subject::DEAD.to_owned());
        }
        let name = Name::parse(task).map_err(Error::InvalidName)?;
        Ok(subject::dead_of_type(&name))
    }

    /// Dead letters matching `filter`, oldest first, at most `limit`.
    async fn dead_messages(&self, filter: &str, limit: u32) -> Result<Vec<StoredMessage>, Error> {
        self.check_connected()?;
        let mut found = Vec::new();
        let mut from = 1;
        while found.len() < limit as usize {
            let next = broker::next_message(&self.client, broker::DEAD_STREAM, filter, from)
                .await
                .map_err(|e| self.broker_error(e))?;
            let Some(message) = next else { break };
            from = message.sequence + 1;
            found.push(message);
        }
        Ok(found)
    }

    pub(crate) async fn list_dead(
        &self,
        task: &str,
        limit: u32,
    ) -> Result<Vec<v1::DeadLetter>, Error> {
        let limit = match limit {
            0 => DEFAULT_LIMIT,
            n => n.min(MAX_LIMIT),
        };
        let filter = Self::dead_filter(task)?;
        Ok(self
            .dead_messages(&filter, limit)
            .await?
            .iter()
            .map(dead_letter)
            .collect())
    }

    pub(crate) async fn replay_dead(
        &self,
        req: v1::ReplayDeadLettersRequest,
    ) -> Result<Vec<String>, Error> {
        let targets = match (req.task_ids.is_empty(), req.all) {
            (false, false) => {
                let mut targets = Vec::new();
                for id in &req.task_ids {
                    let id = Id::parse(id).map_err(Error::InvalidId)?;
                    let found = self
                        .broker
                        .last_message(broker::DEAD_STREAM, &subject::dead_of(&id))
                        .await
                        .map_err(|e| self.read_error(e))?
                        .ok_or_else(|| Error::NoDeadLetter(id.to_string()))?;
                    targets.push(found);
                }
                targets
            }
            (true, true) if !req.task.is_empty() => {
                let filter = Self::dead_filter(&req.task)?;
                self.dead_messages(&filter, u32::MAX).await?
            }
            _ => {
                return Err(Error::BadRequest(
                    "name the tasks to replay (task_ids), or a task type with all = true".into(),
                ));
            }
        };
        let mut replayed = Vec::new();
        for dead in targets {
            let letter = DeadLetter::from_headers(&dead.headers).map_err(|e| {
                Error::BadRequest(format!(
                    "the dead letter at sequence {} is no task that can run again ({e}); purge it instead",
                    dead.sequence
                ))
            })?;
            let (name, id) = (letter.name.clone(), letter.id.clone());
            // The failed result of the dead series gives way, or the new attempts could not
            // store theirs; only that one: a result of another series (a concurrent replay's,
            // stored meanwhile) or a success is never erased.
            let series = letter.replays().to_string();
            // A worker stores the letter, then the failed result: a letter without a result
            // is one whose worker is still at it (or died in between, and the task comes back
            // to fail again). Replaying it now would leave that failed result to take the new
            // series' place.
            // (An old letter's result may have run out: only a fresh one is waited for.)
            let fresh = dead.time.is_some_and(|t| {
                t.elapsed()
                    .is_ok_and(|age| age < std::time::Duration::from_secs(30))
            });
            let mut stored = None;
            for _ in 0..if fresh { RESULT_WAIT_TRIES } else { 1 } {
                stored = self
                    .broker
                    .last_message(broker::RESULTS_STREAM, &subject::result_of(&id))
                    .await
                    .map_err(|e| self.read_error(e))?;
                if stored.is_some() {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            if stored.is_none() && fresh {
                return Err(Error::Conflict(format!(
                    "task {id} is still being failed by a worker (its dead letter is stored, its failed result not yet); replay it again in a moment"
                )));
            }
            if let Some(result) = stored {
                // (An expiry marker, where a result ran out, reads as no result of any series.)
                let stored = ResultMessage::from_headers(&result.headers).ok();
                let state = stored.as_ref().map(|r| r.event.state).unwrap_or_default();
                let of_dead_series = stored.is_some_and(|r| r.series == series);
                if state == v1::TaskState::Succeeded {
                    return Err(Error::Finished {
                        id: id.to_string(),
                        state: "succeeded",
                    });
                }
                if of_dead_series {
                    self.broker
                        .results
                        .purge()
                        .filter(subject::result_of(&id))
                        .sequence(result.sequence + 1)
                        .await
                        .map_err(|e| self.broker_error(e))?;
                }
            }
            let task = letter.replay();
            let placement = crate::submit::Placement {
                priority: task.priority,
                ..Default::default()
            };
            self.store_task(task, dead.payload.clone(), &placement)
                .await?;
            // A concurrent replay of the same letter may have deleted it already; its task is
            // the same one (the replay's de-duplication id names the series).
            // The task is back in line by now: a failure to take the letter away is tried
            // again for a moment before it is reported.
            let mut tries = 0;
            while let Err(e) = self.broker.dead.delete_message(dead.sequence).await {
                let still_there = self
                    .broker
                    .last_message(broker::DEAD_STREAM, &subject::dead_of(&id))
                    .await
                    .map_err(|e| self.read_error(e))?
                    .is_some_and(|m| m.sequence == dead.sequence);
                if !still_there {
                    break;
                }
                tries += 1;
                if tries == 3 {
                    return Err(self.broker_error(format!(
                        "task {id} is back in line, but its dead letter could not be removed ({e}); replay it again to remove it"
                    )));
                }
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
            tracing::info!(task = %name, task_id = %id, "dead letter replayed");
            replayed.push(id.to_string());
        }
        Ok(replayed)
    }

    pub(crate) async fn purge_dead(&self, task: &str) -> Result<u64, Error> {
        self.check_connected()?;
        let purge = self.broker.dead.purge();
        let response = if task.is_empty() {
            purge.await
        } else {
            purge.filter(Self::dead_filter(task)?).await
        };
        Ok(response.map_err(|e| self.broker_error(e))?.purged)
    }
}

fn dead_letter(message: &StoredMessage) -> v1::DeadLetter {
    let text = |h: &str| {
        message
            .headers
            .get(h)
            .map(|v| v.as_str().to_owned())
            .unwrap_or_default()
    };
    v1::DeadLetter {
        task_id: text(header::TASK_ID),
        task: text(header::TASK),
        reason: text(header::DEAD_REASON),
        error: text(header::ERROR),
        attempt: text(header::ATTEMPT).parse().unwrap_or_default(),
        dead_at: message.time.map(prost_types::Timestamp::from),
        replays: text(header::REPLAY).parse().unwrap_or_default(),
    }
}
