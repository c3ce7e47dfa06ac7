//! Dead letters: tasks that failed for good, listed, replayed under their own ids, or purged.

use taskwire::task::{Id, Name};
use taskwire::v1;
use taskwire_protocol::{
    self as broker, DeadLetter, Event, ResultMessage, StoredMessage, header, subject,
};

use crate::{Error, Gateway};

/// How often (every 50 ms) a replay looks for the failed result of a dead letter before it
/// gives up: 2 s.
const RESULT_WAIT_TRIES: usize = 40;

/// How often (every second) a replay tries again in the background to remove the letter of
/// a task it put back in line: 2 min.
const REMOVE_TRIES: usize = 120;

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
            (true, true) => {
                let matches = LetterFilter::parse(&req)?;
                self.dead_messages(&matches.subject, u32::MAX)
                    .await?
                    .into_iter()
                    .filter(|m| matches.holds(m))
                    .collect()
            }
            (false, true) => {
                return Err(Error::BadRequest(
                    "name the tasks to replay (task_ids) or ask for all that match (all = true), not both".into(),
                ));
            }
            (true, false) => {
                return Err(Error::BadRequest(
                    "name the tasks to replay (task_ids), or ask for every dead letter that matches the filter with all = true".into(),
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
            // A letter whose series was replayed already (a replay that put the task back in
            // line and could not take the letter away, say, the broker or this gateway going
            // away in between): the new series stands; only the letter is left to remove.
            let (events, results) = (subject::events_of(&id), subject::result_of(&id));
            let (event, result) = tokio::join!(
                self.broker.last_message(broker::EVENTS_STREAM, &events),
                self.broker.last_message(broker::RESULTS_STREAM, &results),
            );
            let event = event.map_err(|e| self.read_error(e))?;
            let mut stored = result.map_err(|e| self.read_error(e))?;
            if replayed_since(&letter, event.as_ref(), stored.as_ref()) {
                self.remove_dead(&id, dead.sequence).await?;
                tracing::info!(task = %name, task_id = %id, "dead letter of a series replayed before removed");
                replayed.push(id.to_string());
                continue;
            }
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
            for _ in 1..if fresh { RESULT_WAIT_TRIES } else { 1 } {
                if stored.is_some() {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                stored = self
                    .broker
                    .last_message(broker::RESULTS_STREAM, &results)
                    .await
                    .map_err(|e| self.read_error(e))?;
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
                let of_dead_series = stored.as_ref().is_some_and(|r| r.series == series);
                if state == v1::TaskState::Succeeded {
                    return Err(Error::Succeeded { id: id.to_string() });
                }
                if of_dead_series {
                    self.broker
                        .results
                        .purge()
                        .filter(subject::result_of(&id))
                        .sequence(result.sequence + 1)
                        .await
                        .map_err(|e| self.broker_error(e))?;
                    // Its outcome record goes too: the task is no longer a failed one.
                    self.broker
                        .outcomes
                        .purge()
                        .filter(subject::outcomes_of(&id))
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
            // The task is back in line: the letter goes (a concurrent replay of the same letter
            // may have removed it already; its task is the same one, the replay's
            // de-duplication id naming the series). Should the broker not take the removal
            // now, it is tried again in the background; a letter left behind all the same is
            // one a later replay finds replayed, and removes.
            if let Err(e) = self.remove_dead(&id, dead.sequence).await {
                tracing::warn!(task = %name, task_id = %id, error = %e, "the replayed task's dead letter could not be removed yet; trying again in the background");
                let letters = self.broker.dead.clone();
                let (id, sequence) = (id.clone(), dead.sequence);
                tokio::spawn(async move {
                    for _ in 0..REMOVE_TRIES {
                        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                        if remove_letters(&letters, &id, sequence).await.is_ok() {
                            return;
                        }
                    }
                    tracing::error!(task_id = %id, "the replayed task's dead letter could not be removed; replaying it again removes it");
                });
            }
            tracing::info!(task = %name, task_id = %id, "dead letter replayed");
            replayed.push(id.to_string());
        }
        Ok(replayed)
    }

    /// Removes the dead letter at `sequence`, with any older one of the same task (a letter of
    /// an earlier series that was left behind).
    async fn remove_dead(&self, id: &Id, sequence: u64) -> Result<(), Error> {
        remove_letters(&self.broker.dead, id, sequence)
            .await
            .map_err(|e| self.broker_error(e))
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

/// Which dead letters a replay with `all` takes.
struct LetterFilter {
    /// What the stream is read with.
    subject: String,
    task: Option<String>,
    reason: Option<String>,
    error: Option<String>,
    after: Option<std::time::SystemTime>,
    before: Option<std::time::SystemTime>,
}

impl LetterFilter {
    fn parse(req: &v1::ReplayDeadLettersRequest) -> Result<Self, Error> {
        let pattern = req.task.trim();
        let (subject, task) = if pattern.contains('*') {
            (subject::DEAD.to_owned(), Some(pattern.to_owned()))
        } else {
            (Gateway::dead_filter(pattern)?, None)
        };
        let reason = match req.reason.trim() {
            "" => None,
            reason => Some(
                broker::DeadReason::parse(reason)
                    .ok_or_else(|| {
                        Error::BadRequest(format!(
                            "reason {reason:?} is none of exhausted, permanent, panic, timeout or poison"
                        ))
                    })?
                    .as_str()
                    .to_owned(),
            ),
        };
        let time = |t: &Option<prost_types::Timestamp>, what: &str| {
            t.map(std::time::SystemTime::try_from)
                .transpose()
                .map_err(|_| Error::BadRequest(format!("{what} is not a time")))
        };
        Ok(Self {
            subject,
            task,
            reason,
            error: Some(req.error_contains.to_lowercase()).filter(|e| !e.is_empty()),
            after: time(&req.dead_after, "dead_after")?,
            before: time(&req.dead_before, "dead_before")?,
        })
    }

    fn holds(&self, letter: &StoredMessage) -> bool {
        let text = |h: &str| {
            letter
                .headers
                .get(h)
                .map(|v| v.as_str())
                .unwrap_or_default()
        };
        self.task
            .as_deref()
            .is_none_or(|t| crate::auth::glob_matches(t, text(header::TASK)))
            && self
                .reason
                .as_deref()
                .is_none_or(|r| r == text(header::DEAD_REASON))
            && self
                .error
                .as_deref()
                .is_none_or(|e| text(header::ERROR).to_lowercase().contains(e))
            && self
                .after
                .is_none_or(|a| letter.time.is_some_and(|t| t >= a))
            && self
                .before
                .is_none_or(|b| letter.time.is_some_and(|t| t <= b))
    }
}

/// Whether the series of `letter` was replayed already: the task's last `event` or its
/// `result` belongs to a later series.
fn replayed_since(
    letter: &DeadLetter,
    event: Option<&StoredMessage>,
    result: Option<&StoredMessage>,
) -> bool {
    let event_series = event
        .and_then(|m| Event::from_headers(&m.headers).ok())
        .map(|e| e.series());
    let result_series = result
        .and_then(|m| ResultMessage::from_headers(&m.headers).ok())
        .and_then(|r| r.series.parse::<u32>().ok());
    event_series
        .max(result_series)
        .is_some_and(|s| s > letter.replays())
}

/// Purges the dead letters of task `id` up to the one at `sequence`.
async fn remove_letters(
    letters: &async_nats::jetstream::stream::Stream,
    id: &Id,
    sequence: u64,
) -> Result<(), async_nats::jetstream::stream::PurgeError> {
    letters
        .purge()
        .filter(subject::dead_of(id))
        .sequence(sequence + 1)
        .await
        .map(|_| ())
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
