//! Delivery of results to the calls waiting for them.
//!
//! The results stream republishes each result it stored (never one it refused) on
//! `taskwire.stored.results.<partition>.<id>.<token>`, the partition computed from the id. The
//! gateway holds a partition of its own (claimed in the gateways bucket), gives the tasks it
//! submits ids in it, and holds one subscription to that partition, handing each result to the
//! waiters of its task id: a result reaches only the gateway its caller waits on, however many
//! run. An id from elsewhere (an idempotency key's, or a task submitted through another gateway
//! and waited for here) is waited for on its own subject. One subscription for the calls on
//! their own ids spares the broker a subscribe and an unsubscribe per task: measured on a
//! three-node cluster (R3), a subscription per waiting call cost the servers about 100 µs more
//! a task (each subscribe and unsubscribe goes to every other server).
//!
//! A gateway that cannot claim a partition (no permission for the bucket, say) subscribes to
//! every stored result, as gateways did before partitions; two gateways that came to share one
//! (more than 64 of them, or one cut off from NATS longer than its claim lasts) each see the
//! other's results too. Neither changes what a waiter is told, only what the broker sends.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::kv;
use bytes::Bytes;
use futures::StreamExt as _;
use taskwire::task::Id;
use taskwire_protocol::partition::{self, RESULT_PARTITIONS};
use taskwire_protocol::{self as broker, subject};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::Error;

type Senders = Vec<(u64, oneshot::Sender<async_nats::Message>)>;

/// Calls waiting for results, by task id.
#[derive(Debug)]
pub(crate) struct Waiters {
    waiting: Mutex<HashMap<Id, Senders>>,
    next: AtomicU64,
    /// The result partition this gateway subscribes to; `None`: every result.
    partition: Option<u32>,
    client: async_nats::Client,
}

impl Waiters {
    /// Claims a result partition in `gateways` (when given), subscribes to its results and
    /// dispatches them until `stop`.
    pub(crate) async fn start(
        client: &async_nats::Client,
        gateways: Option<kv::Store>,
        stop: CancellationToken,
    ) -> Result<Arc<Self>, Error> {
        let claim = match gateways {
            Some(bucket) => Claim::take(bucket).await,
            None => None,
        };
        let partition = claim.as_ref().map(|c| c.partition);
        let filter = partition.map_or_else(
            || subject::STORED_RESULTS.to_owned(),
            subject::stored_results_in,
        );
        let mut results = client
            .subscribe(filter)
            .await
            .map_err(|e| Error::Startup(format!("cannot subscribe to results: {e}")))?;
        let waiters = Arc::new(Self {
            waiting: Mutex::default(),
            next: AtomicU64::default(),
            partition,
            client: client.clone(),
        });
        let weak = Arc::downgrade(&waiters);
        let dispatching = stop.clone();
        tokio::spawn(async move {
            loop {
                let message = tokio::select! {
                    () = dispatching.cancelled() => return,
                    message = results.next() => message,
                };
                let (Some(message), Some(waiters)) = (message, weak.upgrade()) else {
                    return;
                };
                waiters.deliver(message);
            }
        });
        if let Some(claim) = claim {
            tokio::spawn(claim.keep(stop));
        }
        Ok(waiters)
    }

    /// A new id for a task submitted through this gateway: one whose result comes to its
    /// partition.
    pub(crate) fn new_id(&self) -> Id {
        self.partition.map_or_else(Id::generate, partition::id_in)
    }

    fn deliver(&self, message: async_nats::Message) {
        let Some(id) =
            subject::stored_result_id(message.subject.as_str()).and_then(|id| Id::parse(id).ok())
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
    /// [`Waiting`] is dropped. Once this returns, the broker routes the result here.
    pub(crate) async fn register(self: &Arc<Self>, id: &Id) -> Result<Waiting, Error> {
        let ours = self
            .partition
            .is_none_or(|own| partition::partition_of(id) == own);
        if !ours {
            // The subscribe goes out before anything this call publishes next (the task, say),
            // so the server knows of it before the result can be stored.
            let subscription = self
                .client
                .subscribe(subject::stored_result_of(id))
                .await
                .map_err(|e| Error::Broker(format!("cannot subscribe to the result: {e}")))?;
            return Ok(Waiting {
                waiters: Arc::clone(self),
                id: id.clone(),
                source: Source::Own(subscription),
            });
        }
        let token = self.next.fetch_add(1, Ordering::Relaxed);
        let (sender, receiver) = oneshot::channel();
        self.waiting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(id.clone())
            .or_default()
            .push((token, sender));
        Ok(Waiting {
            waiters: Arc::clone(self),
            id: id.clone(),
            source: Source::Shared { token, receiver },
        })
    }
}

/// One call's interest in one result.
#[derive(Debug)]
pub(crate) struct Waiting {
    waiters: Arc<Waiters>,
    id: Id,
    source: Source,
}

#[derive(Debug)]
enum Source {
    /// Handed over by the partition's subscription.
    Shared {
        token: u64,
        receiver: oneshot::Receiver<async_nats::Message>,
    },
    /// A subscription of its own, for an id outside this gateway's partition.
    Own(async_nats::Subscriber),
}

impl Waiting {
    /// The result message, once it arrives; `None` if the dispatcher stopped.
    pub(crate) async fn next(&mut self) -> Option<async_nats::Message> {
        match &mut self.source {
            Source::Shared { receiver, .. } => receiver.await.ok(),
            Source::Own(subscription) => subscription.next().await,
        }
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        let Source::Shared { token, .. } = &self.source else {
            // Dropping the subscription unsubscribes.
            return;
        };
        let mut waiting = self
            .waiters
            .waiting
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(senders) = waiting.get_mut(&self.id) {
            senders.retain(|(t, _)| t != token);
            if senders.is_empty() {
                waiting.remove(&self.id);
            }
        }
    }
}

/// This gateway's hold on a result partition: a key of the gateways bucket, refreshed while it
/// runs and given up when it stops.
struct Claim {
    bucket: kv::Store,
    partition: u32,
    holder: Bytes,
    /// The key's revision when this gateway holds it; `None` while it shares the partition.
    revision: Option<u64>,
}

impl Claim {
    /// Takes the first free partition from a random one on; with none free, shares one.
    /// `None` when the bucket cannot be written at all.
    async fn take(bucket: kv::Store) -> Option<Self> {
        let holder = Bytes::from(format!("gateway {}", Id::generate()));
        let start = random_below(RESULT_PARTITIONS);
        for n in 0..RESULT_PARTITIONS {
            let partition = (start + n) % RESULT_PARTITIONS;
            match bucket.create(key(partition), holder.clone()).await {
                Ok(revision) => {
                    tracing::info!(partition, "holding a result partition");
                    return Some(Self {
                        bucket,
                        partition,
                        holder,
                        revision: Some(revision),
                    });
                }
                Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {}
                Err(e) => {
                    tracing::warn!(error = %e, "cannot claim a result partition; receiving every stored result");
                    return None;
                }
            }
        }
        tracing::warn!(
            partition = start,
            "every result partition is held: sharing one with another gateway"
        );
        Some(Self {
            bucket,
            partition: start,
            holder,
            revision: None,
        })
    }

    /// Refreshes the claim well within its time to live until `stop`, then gives it up.
    async fn keep(mut self, stop: CancellationToken) {
        let mut every = tokio::time::interval(broker::GATEWAY_TTL / 3);
        every.tick().await;
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                _ = every.tick() => self.refresh().await,
            }
        }
        if self.revision.is_some() {
            let _ = tokio::time::timeout(
                Duration::from_secs(2),
                self.bucket.purge(key(self.partition)),
            )
            .await;
        }
    }

    async fn refresh(&mut self) {
        let key = key(self.partition);
        let refreshed = match self.revision {
            Some(revision) => self
                .bucket
                .update(&key, self.holder.clone(), revision)
                .await
                .ok(),
            None => None,
        };
        // Lost (it ran out while NATS was out of reach, say, or was never had): taken again if
        // it is free, else shared.
        let refreshed = match refreshed {
            Some(revision) => Some(revision),
            None => self.bucket.create(&key, self.holder.clone()).await.ok(),
        };
        if refreshed.is_none() && self.revision.is_some() {
            tracing::warn!(
                partition = self.partition,
                "lost the hold on this gateway's result partition: sharing it"
            );
        }
        self.revision = refreshed;
    }
}

fn key(partition: u32) -> String {
    format!("partition-{partition}")
}

/// A number below `n`, random enough to spread gateways over partitions.
fn random_below(n: u32) -> u32 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    (nanos ^ std::process::id().rotate_left(7)) % n
}
