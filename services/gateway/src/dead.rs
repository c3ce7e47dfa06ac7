//! Dead letters: tasks that failed for good, listed, replayed under their own ids, or purged.

use taskwire::broker::{self, StoredMessage, header, subject};
use taskwire::task::{Id, Name};
use taskwire::v1;

use crate::{Error, Gateway};

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
                    let found = broker::last_message(
                        &self.client,
                        broker::DEAD_STREAM,
                        &subject::dead_of(&id),
                    )
                    .await
                    .map_err(|e| self.broker_error(e))?
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
            let text = |h: &str| {
                dead.headers
                    .get(h)
                    .map(|v| v.as_str().to_owned())
                    .unwrap_or_default()
            };
            let name = Name::parse(&text(header::TASK)).map_err(Error::InvalidName)?;
            let id = Id::parse(&text(header::TASK_ID)).map_err(Error::InvalidId)?;
            // The old failed result gives way, or the new attempts could not store theirs.
            self.broker
                .results
                .purge()
                .filter(subject::result(&id))
                .await
                .map_err(|e| self.broker_error(e))?;
            let placement = crate::tasks::Placement {
                priority: broker::priority_of(&dead.headers),
                ..Default::default()
            };
            self.store_task(
                &name,
                &id,
                broker::replay_headers(&dead.headers, &name, &id),
                dead.payload.clone(),
                &placement,
            )
            .await?;
            self.broker
                .dead
                .delete_message(dead.sequence)
                .await
                .map_err(|e| self.broker_error(e))?;
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
