//! Delivery of results to the calls waiting for them.
//!
//! The results stream republishes each result it stored (never one it refused) on
//! `taskwire.stored.results.<id>.<token>`. A call that waits subscribes to its own task's
//! subject there, so that each result reaches only the gateways that wait for it: with one
//! subscription of every gateway to all results, the broker would send each result once per
//! gateway, and the cost of a task would grow with the fleet rather than the work. The
//! subscription is literal when the task type is known (SubmitAndWait), which keeps the
//! broker's subject cache untouched by the subscribe and unsubscribe; a wait on an id alone
//! takes `<id>.>`.
//!
//! The subscribe goes out on the connection before anything the call publishes or reads
//! after it, and the server takes a connection's commands in order: a result stored after
//! the look that follows the subscribe is never missed.

use futures::StreamExt as _;
use taskwire::task::{Id, Name};
use taskwire_protocol::subject;

use crate::Error;

/// Subscribes waiting calls to their results.
#[derive(Debug, Clone)]
pub(crate) struct Waiters {
    client: async_nats::Client,
}

impl Waiters {
    pub(crate) fn new(client: async_nats::Client) -> Self {
        Self { client }
    }

    /// Interest in the result of `id`, of the task type `name` when it is known; it ends when
    /// the returned [`Waiting`] is dropped.
    pub(crate) async fn register(&self, id: &Id, name: Option<&Name>) -> Result<Waiting, Error> {
        let subject = match name {
            Some(name) => subject::stored_result(name, id),
            None => subject::stored_results_of(id),
        };
        let subscriber = self
            .client
            .subscribe(subject)
            .await
            .map_err(|e| Error::BrokerDown(format!("cannot subscribe to the result: {e}")))?;
        Ok(Waiting { subscriber })
    }
}

/// One call's interest in one result.
#[derive(Debug)]
pub(crate) struct Waiting {
    subscriber: async_nats::Subscriber,
}

impl Waiting {
    /// The result message, once it arrives; `None` if the subscription ended.
    pub(crate) async fn next(&mut self) -> Option<async_nats::Message> {
        self.subscriber.next().await
    }
}
