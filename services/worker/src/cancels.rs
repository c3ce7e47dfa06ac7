//! Cancellations: every worker watches the `TASKWIRE_CANCELLED` bucket, so that a cancelled task
//! that is still queued is never started, and a running one is told to stop at once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::kv;
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
        refusals: &taskwire_protocol::Refusals,
    ) -> Result<Arc<Self>, Error> {
        let cancels = Arc::new(Self {
            cancelled: Mutex::new(HashMap::new()),
            running: Mutex::new(HashMap::new()),
            keep,
        });
        taskwire_protocol::follow::follow(store, &cancels, stop, refusals)
            .await
            .map_err(|e| Error::Cancellations(e.to_string()))?;
        Ok(cancels)
    }
}

impl taskwire_protocol::follow::Follower for Cancels {
    fn reset(self: &Arc<Self>, entries: Vec<kv::Entry>) {
        let ids: Vec<Id> = entries
            .iter()
            .filter(|e| e.operation == kv::Operation::Put)
            .filter_map(|e| Id::parse(&e.key).ok())
            .collect();
        for id in &ids {
            self.mark(id.clone());
        }
        let kept: std::collections::HashSet<&Id> = ids.iter().collect();
        self.cancelled
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|id, _| kept.contains(id));
    }

    fn apply(self: &Arc<Self>, entry: &kv::Entry) {
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
}

impl Cancels {
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
