//! Following a KV bucket: read everything it holds, then every change, and start again from a
//! full read whenever the watch ends (a nats-server restart, a lost consumer), so that a
//! process never goes on with a stale or partial copy.

use std::sync::{Arc, Weak};
use std::time::Duration;

use async_nats::jetstream::kv;
use futures::StreamExt as _;
use tokio_util::sync::CancellationToken;

/// First and longest wait before reading the bucket again after its watch ended.
const AGAIN_FIRST: Duration = Duration::from_millis(100);
const AGAIN_MAX: Duration = Duration::from_secs(5);
/// How long the first read of a bucket is tried again before a process gives up starting.
const FIRST_READ_PATIENCE: Duration = Duration::from_secs(60);

/// What a process keeps of a bucket.
pub trait Follower: Send + Sync + 'static {
    /// What the bucket holds, read in full: at the start, and again after the watch ended.
    /// Replaces what was kept.
    fn reset(self: &Arc<Self>, entries: Vec<kv::Entry>);
    /// One change, in order.
    fn apply(self: &Arc<Self>, entry: &kv::Entry);
}

/// A bucket that could not be read.
#[derive(Debug, thiserror::Error)]
#[error("cannot read the {bucket} bucket: {reason}")]
pub struct Error {
    bucket: String,
    reason: String,
}

/// Reads `store` into `follower`, then follows its changes until `stop` or until the follower
/// is dropped. Fails only when the first read fails for a minute, or at once when NATS refused
/// something (`refusals`). When the connection comes back (see [`crate::Refusals::connects`])
/// the bucket is read again at once, rather than when the watch notices its consumer is gone
/// (two missed heartbeats).
pub async fn follow<F: Follower>(
    store: kv::Store,
    follower: &Arc<F>,
    stop: CancellationToken,
    refusals: &crate::Refusals,
) -> Result<(), Error> {
    let mut connects = refusals.connects();
    // The first read is tried again for a while (a broker restarting, paused, or electing a
    // leader); at once an error when NATS refused something (trying again cannot help).
    let mut backoff =
        crate::retry::Backoff::new(AGAIN_FIRST, AGAIN_MAX).for_at_most(FIRST_READ_PATIENCE);
    let watch = loop {
        match load(&store, follower).await {
            Ok(watch) => break watch,
            Err(e) if refusals.explain().is_none() && !stop.is_cancelled() => {
                let Some(wait) = backoff.next_wait() else {
                    return Err(e);
                };
                tracing::warn!(bucket = store.name, error = %e, ?wait, "cannot read the bucket yet; trying again");
                tokio::time::sleep(wait).await;
            }
            Err(e) => return Err(e),
        }
    };
    let weak: Weak<F> = Arc::downgrade(follower);
    tokio::spawn(async move {
        let mut watch = Some(watch);
        let mut backoff = crate::retry::Backoff::new(AGAIN_FIRST, AGAIN_MAX);
        loop {
            let Some(mut current) = watch.take() else {
                let Some(follower) = weak.upgrade() else {
                    return;
                };
                match load(&store, &follower).await {
                    Ok(again) => {
                        tracing::info!(bucket = store.name, "following the bucket again");
                        watch = Some(again);
                        backoff.reset(AGAIN_FIRST);
                    }
                    Err(e) => {
                        drop(follower);
                        let delay = backoff.next_wait().unwrap_or(AGAIN_MAX);
                        tracing::warn!(bucket = store.name, error = %e, ?delay, "cannot read the bucket; trying again");
                        tokio::select! {
                            () = stop.cancelled() => return,
                            () = tokio::time::sleep(delay) => {}
                        }
                    }
                }
                continue;
            };
            loop {
                let entry = tokio::select! {
                    () = stop.cancelled() => return,
                    changed = connects.changed() => {
                        if changed.is_ok() {
                            tracing::info!(bucket = store.name, "reconnected; reading the bucket again");
                            break;
                        }
                        // The connection is gone for good; the watch says the rest.
                        current.next().await
                    }
                    entry = current.next() => entry,
                };
                let Some(follower) = weak.upgrade() else {
                    return;
                };
                match entry {
                    Some(Ok(entry)) => follower.apply(&entry),
                    // Whatever broke the watch (the bucket deleted, its consumer lost, a gap),
                    // a full read puts things right.
                    Some(Err(e)) => {
                        tracing::warn!(bucket = store.name, error = %e, "the bucket watch failed; reading it again");
                        break;
                    }
                    None => {
                        tracing::warn!(
                            bucket = store.name,
                            "the bucket watch ended; reading it again"
                        );
                        break;
                    }
                }
            }
        }
    });
    Ok(())
}

/// Watches the bucket for changes, then reads what it holds (in this order, so that no change
/// falls in between: one may be seen twice, none is missed).
async fn load<F: Follower>(store: &kv::Store, follower: &Arc<F>) -> Result<kv::Watch, Error> {
    let other = |e: &dyn std::fmt::Display| Error {
        bucket: store.name.clone(),
        reason: e.to_string(),
    };
    let watch = store.watch_all().await.map_err(|e| other(&e))?;
    let mut keys = store.keys().await.map_err(|e| other(&e))?;
    let mut entries = Vec::new();
    while let Some(key) = keys.next().await {
        let key = key.map_err(|e| other(&e))?;
        if let Some(entry) = store.entry(&key).await.map_err(|e| other(&e))? {
            entries.push(entry);
        }
    }
    follower.reset(entries);
    Ok(watch)
}
