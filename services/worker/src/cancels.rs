//! Cancellations: every worker watches the `TASKWIRE_CANCELLED` bucket, so that a cancelled task
//! that is still queued is never started, and a running one is told to stop at once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::kv;
use futures::StreamExt as _;
use taskwire::task::Id;
use tokio_util::sync::CancellationToken;

use crate::Error;

/// The cancelled ids this worker knows of, and the tokens of the tasks it runs.
#[derive(Debug)]
pub(crate) struct Cancels {
    /// Cancelled ids, with when this worker learnt of them; forgotten after `keep`, when the
    /// bucket has dropped them too.
    cancelled: Mutex<HashMap<Id, Instant>>,
    running: Mutex<HashMap<Id, CancellationToken>>,
    keep: Duration,
}

impl Cancels {
    /// Reads every cancellation kept in the bucket, then follows new ones until `stop`. When it
    /// returns, no task cancelled before can start here.
    pub(crate) async fn start(
        store: kv::Store,
        keep: Duration,
        stop: CancellationToken,
    ) -> Result<Arc<Self>, Error> {
        let cancels = Arc::new(Self {
            cancelled: Mutex::new(HashMap::new()),
            running: Mutex::new(HashMap::new()),
            keep,
        });
        let watch = cancels.load(&store).await?;
        let weak = Arc::downgrade(&cancels);
        tokio::spawn(async move {
            let mut watch = Some(watch);
            loop {
                let Some(mut entries) = watch.take() else {
                    return;
                };
                loop {
                    let entry = tokio::select! {
                        () = stop.cancelled() => return,
                        entry = entries.next() => entry,
                    };
                    let Some(cancels) = weak.upgrade() else {
                        return;
                    };
                    match entry {
                        Some(Ok(entry)) => cancels.apply(&entry),
                        Some(Err(e)) => {
                            tracing::debug!(error = %e, "cancellation watch interrupted");
                        }
                        None => break,
                    }
                }
                // The watch ended (the broker went away for long): start again from what the
                // bucket holds now.
                loop {
                    tokio::select! {
                        () = stop.cancelled() => return,
                        () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                    let Some(cancels) = weak.upgrade() else {
                        return;
                    };
                    match cancels.load(&store).await {
                        Ok(w) => {
                            watch = Some(w);
                            break;
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot watch cancellations; retrying")
                        }
                    }
                }
            }
        });
        Ok(cancels)
    }

    /// Starts watching for new cancellations, then reads those kept already (in this order, so
    /// that none falls in between).
    async fn load(&self, store: &kv::Store) -> Result<kv::Watch, Error> {
        let failed = |e: &dyn std::fmt::Display| Error::Cancellations(e.to_string());
        let watch = store.watch_all().await.map_err(|e| failed(&e))?;
        let mut keys = store.keys().await.map_err(|e| failed(&e))?;
        while let Some(key) = keys.next().await {
            let key = key.map_err(|e| failed(&e))?;
            if let Ok(id) = Id::parse(&key) {
                self.mark(id);
            }
        }
        Ok(watch)
    }

    fn apply(&self, entry: &kv::Entry) {
        let Ok(id) = Id::parse(&entry.key) else {
            return;
        };
        match entry.operation {
            kv::Operation::Put => self.mark(id),
            kv::Operation::Delete | kv::Operation::Purge => {
                self.cancelled
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&id);
            }
        }
    }

    fn mark(&self, id: Id) {
        let now = Instant::now();
        {
            let mut cancelled = self.cancelled.lock().unwrap_or_else(|e| e.into_inner());
            // Forget what the bucket has forgotten too, now and then (a zero TTL keeps all).
            if !self.keep.is_zero() && cancelled.len() % 1024 == 1023 {
                cancelled.retain(|_, at| now.duration_since(*at) < self.keep);
            }
            cancelled.insert(id.clone(), now);
        }
        if let Some(token) = self
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&id)
        {
            tracing::info!(task_id = %id, "cancelled while running; telling the task to stop");
            token.cancel();
        }
    }

    /// Whether the task was cancelled.
    pub(crate) fn is_cancelled(&self, id: &Id) -> bool {
        self.cancelled
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(id)
    }

    /// Tracks a task while it runs: its token fires if it is cancelled meanwhile.
    pub(crate) fn track(self: &Arc<Self>, id: &Id) -> Tracked {
        let token = CancellationToken::new();
        self.running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.clone(), token.clone());
        // Cancelled between the look before the run and now.
        if self.is_cancelled(id) {
            token.cancel();
        }
        Tracked {
            cancels: Arc::clone(self),
            id: id.clone(),
            token,
        }
    }
}

/// A running task's entry in [`Cancels`]; removed when dropped.
pub(crate) struct Tracked {
    cancels: Arc<Cancels>,
    id: Id,
    /// Fires when the task is cancelled.
    pub(crate) token: CancellationToken,
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.cancels
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.id);
    }
}
