//! The pull loop of a task type: as many tasks as there are free slots, by priority.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, AckKind};
use futures::StreamExt as _;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument as _;

use crate::attempt::{handle, process_span};
use crate::limits::{Grant, Slot};
use crate::run::Served;

/// Index of the normal priority level in [`broker::PRIORITIES`] (high, normal, low).
pub(crate) const NORMAL: usize = 1;

/// One pull round in this many looks at the lowest level first, so that a steady flow of
/// higher priority work never starves low priority tasks.
pub(crate) const LOW_FIRST_EVERY: u64 = 8;

/// After finding a high or low level empty while busy, how long it is not looked at again (the
/// normal level is always looked at). This bounds how late a worker busy with normal work
/// notices a new backlog at another level.
pub(crate) const QUIET: Duration = Duration::from_millis(200);

/// The same for a worker that found nothing anywhere: it waits on the normal level this long
/// before it looks at the others again.
pub(crate) const IDLE_PULL: Duration = Duration::from_secs(1);

/// Most tasks asked for in one pull request.
pub(crate) const MAX_BATCH: usize = 1000;

/// How much longer than its expiry (a no-wait pull: none) the worker waits for a pull's end
/// before giving it up.
pub(crate) const PULL_SLACK: Duration = Duration::from_secs(5);

/// Pulls only as many tasks as there are free slots, so that no task waits in this worker
/// unstarted while its ack wait runs out (and another worker gets it too). Each round takes what
/// is waiting at the high level first, then normal, then low (one round in eight starts at low);
/// when nothing waits anywhere it waits on the normal level for a second.
pub(crate) async fn pull_loop(
    served: Arc<Served>,
    consumers: Vec<jetstream::consumer::PullConsumer>,
    concurrency: usize,
    stop: CancellationToken,
    tracker: TaskTracker,
) {
    let slots = Arc::new(Semaphore::new(concurrency));
    let mut quiet_until = [Instant::now(); 3];
    let mut round: u64 = 0;
    let mut idle = true;
    loop {
        let first = tokio::select! {
            () = stop.cancelled() => return,
            slot = Arc::clone(&slots).acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => return,
            },
        };
        // Every slot free now goes into this round.
        let mut reserved = first;
        let more = slots.available_permits().min(MAX_BATCH - 1);
        if more > 0
            && let Ok(extra) = Arc::clone(&slots).try_acquire_many_owned(more as u32)
        {
            reserved.merge(extra);
        }
        // Cluster-wide limits: take slots and starts for as many as may run. An idle worker
        // waits for one task first, and asks the limits when it is in hand.
        let mut grant = if idle && served.limits.limited(&served.task) {
            if let Some(one) = reserved.split(1) {
                reserved = one;
            }
            served.limits.deferred(&served.task)
        } else {
            match served
                .limits
                .acquire(&served.task, reserved.num_permits(), &stop)
                .await
            {
                Some(grant) => grant,
                None => return,
            }
        };
        if grant.allowed() < reserved.num_permits()
            && let Some(keep) = reserved.split(grant.allowed())
        {
            reserved = keep;
        }
        round += 1;
        let order = if round.is_multiple_of(LOW_FIRST_EVERY) {
            [2, 1, 0]
        } else {
            [0, 1, 2]
        };
        let now = Instant::now();
        let quiet_at_start = quiet_until;
        let due = |level: usize| level == NORMAL || now >= quiet_at_start[level];
        let mut started = 0;
        let mut failed = false;
        for (position, &level) in order.iter().enumerate() {
            if reserved.num_permits() == 0 {
                break;
            }
            if !due(level) {
                continue;
            }
            // Nothing started yet and no other level to look at after this one: the waiting
            // pull below serves the normal level in one request.
            if level == NORMAL && started == 0 && !order[position + 1..].iter().any(|l| due(*l)) {
                break;
            }
            let fetched = consumers[level]
                .fetch()
                .max_messages(reserved.num_permits())
                .messages()
                .await;
            let mut messages = match fetched {
                Ok(messages) => messages,
                Err(e) => {
                    tracing::warn!(task = %served.task.name, error = %e, "cannot pull; retrying");
                    failed = true;
                    break;
                }
            };
            let mut got = 0;
            // The server answers a no-wait pull at once (an expiry would make it wait for
            // tasks in flight); a reply lost with a broken connection would leave it open
            // forever, so the client stops waiting after a bound.
            let bound = tokio::time::Instant::now() + PULL_SLACK;
            while let Ok(Some(next)) = tokio::time::timeout_at(bound, messages.next()).await {
                match next {
                    Ok(message) => {
                        got += 1;
                        start(&served, &tracker, &mut reserved, &mut grant, message).await;
                    }
                    Err(e) => {
                        tracing::debug!(task = %served.task.name, error = %e, "pull interrupted");
                        break;
                    }
                }
            }
            if got == 0 && level != NORMAL {
                // An idle worker looks less often than a busy one.
                let quiet = if started == 0 { IDLE_PULL } else { QUIET };
                quiet_until[level] = Instant::now() + quiet;
            }
            started += got;
        }
        if failed {
            drop(reserved);
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(Duration::from_secs(1)) => continue,
            }
        }
        idle = started == 0;
        if started > 0 {
            // Unused slots return to the pool; the next round looks again at once.
            continue;
        }
        // Nothing waits at the other levels: wait on the normal level, where most tasks arrive,
        // until it is time to look at the others again.
        let next_look = quiet_until[0].min(quiet_until[2]);
        let expires = next_look
            .saturating_duration_since(Instant::now())
            .clamp(Duration::from_millis(50), IDLE_PULL);
        let batch = consumers[NORMAL]
            .batch()
            .max_messages(reserved.num_permits())
            .expires(expires)
            .messages()
            .await;
        let mut messages = match batch {
            Ok(messages) => messages,
            Err(e) => {
                tracing::warn!(task = %served.task.name, error = %e, "cannot pull; retrying");
                drop(reserved);
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            }
        };
        let bound = tokio::time::Instant::now() + expires + PULL_SLACK;
        loop {
            let next = tokio::select! {
                () = stop.cancelled() => {
                    release_prefetched(&served, &mut messages).await;
                    return;
                }
                () = tokio::time::sleep_until(bound) => {
                    tracing::debug!(task = %served.task.name, "the pull outlived its expiry; pulling again");
                    break;
                }
                next = messages.next() => next,
            };
            match next {
                Some(Ok(message)) => {
                    idle = false;
                    start(&served, &tracker, &mut reserved, &mut grant, message).await;
                }
                Some(Err(e)) => {
                    tracing::debug!(task = %served.task.name, error = %e, "pull interrupted");
                    break;
                }
                // The request is complete or expired; unused slots return to the pool.
                None => break,
            }
        }
    }
}

/// Starts a pulled task in one of the reserved slots.
pub(crate) async fn start(
    served: &Arc<Served>,
    tracker: &TaskTracker,
    reserved: &mut tokio::sync::OwnedSemaphorePermit,
    grant: &mut Grant,
    message: jetstream::Message,
) {
    let Some(slot) = reserved.split(1) else {
        // More than asked for: hand it back.
        let _ = message.ack_with(AckKind::Nak(None)).await;
        return;
    };
    // Held until the task is done, like the local slot.
    let cluster_slot: Option<Slot> = match grant.take(reserved.num_permits()).await {
        Ok(slot) => slot,
        Err(wait) => {
            // The rate allows no start now (another worker counted first): back to the queue
            // until it does, unstarted, so no attempt is used.
            let _ = message.ack_with(AckKind::Nak(Some(wait))).await;
            return;
        }
    };
    let slot_lost = cluster_slot.as_ref().map(Slot::lost);
    let served = Arc::clone(served);
    tracker.spawn(async move {
        let span = process_span(&served, &message);
        handle(&served, message, slot_lost).instrument(span).await;
        drop(cluster_slot);
        drop(slot);
    });
}

/// On shutdown, hands back the tasks that were fetched but not started: NAKed, another worker
/// gets them at once instead of after the ack wait. Stops when nothing more arrives for a
/// moment.
pub(crate) async fn release_prefetched(
    served: &Served,
    messages: &mut jetstream::consumer::pull::Batch,
) {
    let mut released = 0;
    while let Ok(Some(Ok(message))) =
        tokio::time::timeout(Duration::from_millis(100), messages.next()).await
    {
        let _ = message.ack_with(AckKind::Nak(None)).await;
        released += 1;
    }
    if released > 0 {
        tracing::info!(task = %served.task.name, released, "released fetched tasks that had not started");
    }
}
