//! Cancelling a task: recorded for the workers, and its outcome stored when it has not run.

use bytes::Bytes;
use taskwire::task::{Id, Name};
use taskwire::v1::{self, TaskState};
use taskwire_protocol::{self as broker, subject};

use crate::submit::publish_error;
use crate::{Error, Gateway};

impl Gateway {
    /// Cancels a task that has not ended: a mark the workers follow (a queued task never
    /// starts, a running one is told to stop), a delayed one taken out of the broker, and the
    /// `cancelled` outcome stored; a task that ended first answers FAILED_PRECONDITION.
    pub(crate) async fn cancel(&self, id: &Id) -> Result<v1::TaskInfo, Error> {
        self.check_connected()?;
        if let Some(info) = self.result(id).await? {
            return Err(Error::Finished {
                id: id.to_string(),
                state: broker::state_name(info.state()),
            });
        }
        let last = self
            .last_event(id)
            .await?
            .ok_or_else(|| Error::NotFound(id.to_string()))?;
        let name = Name::parse(&last.task).map_err(Error::InvalidName)?;
        let scheduled = last.state() == TaskState::Scheduled;
        match self
            .cancel_with_children(id, &name, last.attempt, scheduled)
            .await?
        {
            Cancelled::Now => {}
            Cancelled::ByWorker(info) => return Ok(*info),
            Cancelled::Finished(state) => {
                return Err(Error::Finished {
                    id: id.to_string(),
                    state,
                });
            }
        }
        self.result(id)
            .await?
            .ok_or_else(|| Error::Broker("the cancelled result was not stored".into()))
    }

    /// [`Self::cancel_stored`], then, when the task was cancelled (by this or by a worker), its
    /// children that have not ended, and theirs: what Cancel, a queue's purge and a cancel by
    /// filter do to each task.
    pub(crate) async fn cancel_with_children(
        &self,
        id: &Id,
        name: &Name,
        attempt: u32,
        scheduled: bool,
    ) -> Result<Cancelled, Error> {
        let cancelled = self.cancel_stored(id, name, attempt, scheduled).await?;
        if matches!(cancelled, Cancelled::Now | Cancelled::ByWorker(_)) {
            self.cancel_children(id).await?;
        }
        Ok(cancelled)
    }

    /// The mark, the delayed copy taken out, the cancelled result: what a cancel stores of a
    /// task that has not ended.
    pub(crate) async fn cancel_stored(
        &self,
        id: &Id,
        name: &Name,
        attempt: u32,
        scheduled: bool,
    ) -> Result<Cancelled, Error> {
        // First the durable mark that workers watch: a queued task is then never started, a
        // running one is told to stop, across restarts and redeliveries.
        self.broker
            .cancelled
            .put(id.as_str(), Bytes::from_static(b"cancelled on request"))
            .await
            .map_err(|e| self.broker_error(e))?;
        // A delayed task the broker still holds is taken out: it never fires, however long
        // before its time the cancel came (longer than the mark and the result are kept).
        if scheduled {
            self.broker
                .tasks
                .purge()
                .filter(subject::delayed(id))
                .await
                .map_err(|e| self.broker_error(e))?;
        }
        // Then the cancelled result takes the task's one result slot; a worker that finishes
        // the task later finds the slot taken and drops its own. Its outcome record comes
        // first, so that a cancelled task is always found as one.
        let outcome = broker::ResultMessage::new(
            name,
            id,
            TaskState::Cancelled,
            attempt,
            &format!("cancel.{}", broker::now_micros()),
            None,
        );
        let body = broker::failure_body("cancelled on request", false);
        self.record_outcome(name, id, &outcome, body.clone())
            .await?;
        let published = self
            .broker
            .jetstream
            .publish_with_headers(subject::result(name, id), outcome.to_headers(), body)
            .await
            .map_err(publish_error)?
            .await;
        match published {
            Ok(_) => Ok(Cancelled::Now),
            Err(e) if broker::is_wrong_last_sequence(&e) => {
                let stored = self.result(id).await?;
                // A worker saw the mark first and stored the cancelled result itself.
                if let Some(info) = stored.as_ref()
                    && info.state() == TaskState::Cancelled
                {
                    return Ok(Cancelled::ByWorker(Box::new(info.clone())));
                }
                // Finished first: the mark is not needed.
                let _ = self.broker.cancelled.delete(id.as_str()).await;
                Ok(Cancelled::Finished(stored.map_or("finished", |info| {
                    broker::state_name(info.state())
                })))
            }
            Err(e) => Err(publish_error(e)),
        }
    }
}

impl Gateway {
    /// Records an outcome other than success before its result is stored (see
    /// `subject::outcome`): what lists find failed, cancelled and expired tasks by.
    pub(crate) async fn record_outcome(
        &self,
        name: &Name,
        id: &Id,
        outcome: &broker::ResultMessage,
        body: Bytes,
    ) -> Result<(), Error> {
        self.broker
            .jetstream
            .publish_with_headers(
                subject::outcome(outcome.event.state, name, id),
                outcome.to_outcome_headers(),
                body,
            )
            .await
            .map_err(publish_error)?
            .await
            .map_err(publish_error)?;
        Ok(())
    }
}

/// What a cancel came to.
pub(crate) enum Cancelled {
    /// Its cancelled result stored now.
    Now,
    /// A worker that saw the mark stored it first.
    ByWorker(Box<v1::TaskInfo>),
    /// It had ended, in this state.
    Finished(&'static str),
}
