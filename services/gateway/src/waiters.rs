//! Delivery of results to the calls waiting for them.
//!
//! The gateway holds one subscription on the results the results stream stored (it republishes
//! each on `taskwire.stored.results.<id>.<token>`, never one it refused) and hands each to the waiters
//! of its task id. One subscription instead of one per call spares the broker a
//! subscribe and an unsubscribe per task (and the sublist churn they cause on its publish
//! path); the price is that each gateway sees every result. Measured on a three-node cluster
//! (R3), a subscription per waiting call cost the servers about 100 µs more a task than this
//! one (each subscribe and unsubscribe goes to every other server), more than the results
//! a few more gateways receive.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures::StreamExt as _;
use taskwire::task::Id;
use taskwire_protocol::subject;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::Error;

type Senders = Vec<(u64, oneshot::Sender<async_nats::Message>)>;

/// Calls waiting for results, by task id.
#[derive(Debug, Default)]
pub(crate) struct Waiters {
    waiting: Mutex<HashMap<Id, Senders>>,
    next: AtomicU64,
}

impl Waiters {
    /// Subscribes to all results and dispatches them until `stop`.
    pub(crate) async fn start(
        client: &async_nats::Client,
        stop: CancellationToken,
    ) -> Result<Arc<Self>, Error> {
        let mut results = client
            .subscribe(subject::STORED_RESULTS)
            .await
            .map_err(|e| Error::Startup(format!("cannot subscribe to results: {e}")))?;
        let waiters = Arc::new(Self::default());
        let weak = Arc::downgrade(&waiters);
        tokio::spawn(async move {
            loop {
                let message = tokio::select! {
                    () = stop.cancelled() => return,
                    message = results.next() => message,
                };
                let (Some(message), Some(waiters)) = (message, weak.upgrade()) else {
                    return;
                };
                waiters.deliver(message);
            }
        });
        Ok(waiters)
    }

    fn deliver(&self, message: async_nats::Message) {
        let Some(id) = message
            .subject
            .as_str()
            // taskwire.stored.results.<id>.<token>
            .split('.')
            .nth(3)
            .and_then(|id| Id::parse(id).ok())
        else {
            return;
        };
        let senders = self
            .waiting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
        for (_, sender) in senders.into_iter().flatten() {
            let _ = sender.send(message.clone());
        }
    }

    /// Registers interest in the result of `id`; the registration ends when the returned
    /// [`Waiting`] is dropped.
    pub(crate) fn register(self: &Arc<Self>, id: &Id) -> Waiting {
        let token = self.next.fetch_add(1, Ordering::Relaxed);
        let (sender, receiver) = oneshot::channel();
        self.waiting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(id.clone())
            .or_default()
            .push((token, sender));
        Waiting {
            waiters: Arc::clone(self),
            id: id.clone(),
            token,
            receiver,
        }
    }
}

/// One call's interest in one result.
#[derive(Debug)]
pub(crate) struct Waiting {
    waiters: Arc<Waiters>,
    id: Id,
    token: u64,
    receiver: oneshot::Receiver<async_nats::Message>,
}

impl Waiting {
    /// The result message, once it arrives; `None` if the dispatcher stopped.
    pub(crate) async fn next(&mut self) -> Option<async_nats::Message> {
        (&mut self.receiver).await.ok()
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        let mut waiting = self
            .waiters
            .waiting
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(senders) = waiting.get_mut(&self.id) {
            senders.retain(|(token, _)| *token != self.token);
            if senders.is_empty() {
                waiting.remove(&self.id);
            }
        }
    }
}
