//! The pull loop of a task type: as many tasks as there are free slots, by priority; an idle
//! worker waits with one long pull request per level.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
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

/// How long an idle worker's waiting pull at a level lasts before it is made again: what a
/// served task type costs an idle worker is a pull request per level in this time.
pub(crate) const IDLE_PULL: Duration = Duration::from_secs(10);

/// How often an idle worker looks at a level without a waiting pull of its own (with as few
/// slots as levels, it waits on the normal level this long at a time and looks at the others
/// in between).
pub(crate) const IDLE_LOOK: Duration = Duration::from_secs(1);

/// Most tasks asked for in one pull request.
pub(crate) const MAX_BATCH: usize = 1000;

/// How much longer than its expiry (a no-wait pull: none) the worker waits for a pull's end
/// before giving it up.
pub(crate) const PULL_SLACK: Duration = Duration::from_secs(5);

/// The levels an idle worker waits on, in the order they get a slot when there are fewer slots
/// than levels.
const IDLE_ORDER: [usize; 3] = [NORMAL, 0, 2];

/// The waiting pulls of an idle worker: which levels have one (the number of the watcher that
/// holds it, 0 for none), whether the worker is still idle (a waiting pull that expires is made
/// again only then), and the signal that one handed over a task (the worker is busy again) or
/// ended by itself. A watcher the loop ends is no news to it: it does not signal, and the level
/// is free at once, so that the loop's next idle wait makes a new one.
#[derive(Default)]
struct Waiting {
    levels: [AtomicU64; 3],
    watchers: AtomicU64,
    idle: AtomicBool,
    woke: tokio::sync::Notify,
}

impl Waiting {
    fn at(&self, level: usize) -> bool {
        self.levels[level].load(Ordering::Acquire) != 0
    }

    /// A new watcher holds the level: its number.
    fn claim(&self, level: usize) -> u64 {
        let watcher = self.watchers.fetch_add(1, Ordering::AcqRel) + 1;
        self.levels[level].store(watcher, Ordering::Release);
        watcher
    }

    /// The watcher `watcher` ended: the level is free, unless the loop has given it to another.
    fn release(&self, level: usize, watcher: u64) {
        let _ =
            self.levels[level].compare_exchange(watcher, 0, Ordering::AcqRel, Ordering::Acquire);
    }

    /// The loop ended the level's watcher: the level is free now.
    fn take_back(&self, level: usize) {
        self.levels[level].store(0, Ordering::Release);
    }

    fn idle(&self) -> bool {
        self.idle.load(Ordering::Acquire)
    }
}

/// Pulls only as many tasks as there are free slots, so that no task waits in this worker
/// unstarted while its ack wait runs out (and another worker gets it too). A busy worker's round
/// takes what is waiting at the high level first, then normal, then low (one round in eight
/// starts at low), with no-wait fetches. A worker that found nothing anywhere waits: one pull
/// request of one task per level, each in a slot of its own, lasting [`IDLE_PULL`]; the first
/// task handed over makes it busy again. A waiting pull still open then stays open until it
/// hands over a task (which starts in its slot) or expires, and is made again only once the
/// worker is idle again: one task per level at most may start before higher ones waiting.
pub(crate) async fn pull_loop(
    served: Arc<Served>,
    consumers: Vec<jetstream::consumer::PullConsumer>,
    concurrency: usize,
    stop: CancellationToken,
    tracker: TaskTracker,
    connects: tokio::sync::watch::Receiver<u64>,
) {
    let slots = Arc::new(Semaphore::new(concurrency));
    let waiting = Arc::new(Waiting::default());
    let mut quiet_until = [Instant::now(); 3];
    let mut round: u64 = 0;
    let mut idle = true;
    // Ends the normal level's waiting pull when the loop wants its slots back.
    let mut normal_end = CancellationToken::new();
    let mut pause_changes = served.pauses.changes();
    loop {
        // While the upstream that runs the tasks does not answer, nothing is pulled.
        if let Some(health) = &served.upstream
            && health.down().is_some()
            && !health.up(&stop).await
        {
            return;
        }
        // A queue paused at every level: nothing is pulled until it is resumed.
        pause_changes.borrow_and_update();
        let paused = served.pauses.levels(&served.task.name);
        if paused == [true; 3] {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = pause_changes.changed() => continue,
            }
        }
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
        // takes one task first, and asks the limits when it is in hand.
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
        let mut started = 0;
        let mut failed = false;
        for level in order {
            if reserved.num_permits() == 0 {
                break;
            }
            if (level != NORMAL && now < quiet_until[level]) || paused[level] {
                continue;
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
                        start(&served, &tracker, &mut reserved, &mut grant, level, message).await;
                    }
                    Err(e) => {
                        tracing::debug!(task = %served.task.name, error = %e, "pull interrupted");
                        break;
                    }
                }
            }
            if got == 0 && level != NORMAL {
                quiet_until[level] = Instant::now() + QUIET;
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
        if !idle {
            // Unused slots return to the pool; the next round looks again at once.
            continue;
        }
        if concurrency <= IDLE_ORDER.len() {
            // Too few slots for a waiting pull at every level and the loop's own look: wait on
            // the normal level for a moment, look at the others in the next round.
            quiet_until = [Instant::now(); 3];
            if paused[NORMAL] {
                drop(reserved);
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(IDLE_LOOK) => {}
                    _ = pause_changes.changed() => {}
                }
                continue;
            }
            wait_on_normal(
                &served,
                &consumers[NORMAL],
                &stop,
                &tracker,
                reserved,
                &mut grant,
            )
            .await;
            if stop.is_cancelled() {
                return;
            }
            continue;
        }
        drop(reserved);
        drop(grant);
        // Nothing anywhere: a waiting pull at each level that has none. High and low wait for
        // one task each, in a slot of their own; normal, where most tasks arrive, in every other
        // free slot, starting tasks as they come without waking the loop.
        waiting.idle.store(true, Ordering::Release);
        // A paused level gets no waiting pull (one made before the pause ends by itself).
        let unwatched = |waiting: &Waiting| {
            let paused = served.pauses.levels(&served.task.name);
            IDLE_ORDER.iter().any(|l| !paused[*l] && !waiting.at(*l))
        };
        for level in IDLE_ORDER {
            if waiting.at(level) || paused[level] {
                continue;
            }
            let permits = if level == NORMAL {
                // Less a slot for each of the other levels that still needs one.
                let others = [0, 2]
                    .iter()
                    .filter(|l| !waiting.at(**l) && !paused[**l])
                    .count();
                slots
                    .available_permits()
                    .saturating_sub(others)
                    .min(MAX_BATCH)
            } else {
                1
            };
            let Some(reserved) = u32::try_from(permits)
                .ok()
                .filter(|n| *n > 0)
                .and_then(|n| Arc::clone(&slots).try_acquire_many_owned(n).ok())
            else {
                continue;
            };
            let end = CancellationToken::new();
            if level == NORMAL {
                normal_end = end.clone();
            }
            let watcher = waiting.claim(level);
            tracker.spawn(wait_at(
                Arc::clone(&served),
                consumers[level].clone(),
                level,
                reserved,
                Arc::clone(&waiting),
                Ends {
                    stop: stop.clone(),
                    end,
                    watcher,
                },
                tracker.clone(),
                connects.clone(),
            ));
        }
        // (A level without one, its slot still taken by a task, is looked at every IDLE_LOOK.)
        let looks = unwatched(&waiting);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                () = waiting.woke.notified() => {}
                () = tokio::time::sleep(IDLE_LOOK), if looks => {}
                // Paused or resumed: every level is looked at again.
                _ = pause_changes.changed() => break,
            }
            // A watcher that signals has left its level first: with every level still watched,
            // the signal is an old one (left while the loop was busy) and there is nothing to do.
            if unwatched(&waiting) {
                break;
            }
        }
        waiting.idle.store(false, Ordering::Release);
        // Back at work (or time to look): the waiting pull at normal hands its slots back, and
        // every level is looked at.
        if !normal_end.is_cancelled() {
            normal_end.cancel();
            waiting.take_back(NORMAL);
        }
        quiet_until = [Instant::now(); 3];
    }
}

/// The idle wait of a worker with few slots: one waiting pull on the normal level for
/// [`IDLE_LOOK`], starting what it hands over in the slots reserved.
async fn wait_on_normal(
    served: &Arc<Served>,
    consumer: &jetstream::consumer::PullConsumer,
    stop: &CancellationToken,
    tracker: &TaskTracker,
    mut reserved: tokio::sync::OwnedSemaphorePermit,
    grant: &mut Grant,
) {
    let batch = consumer
        .batch()
        .max_messages(reserved.num_permits())
        .expires(IDLE_LOOK)
        .messages()
        .await;
    let mut messages = match batch {
        Ok(messages) => messages,
        Err(e) => {
            tracing::warn!(task = %served.task.name, error = %e, "cannot pull; retrying");
            drop(reserved);
            tokio::select! {
                () = stop.cancelled() => {}
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
            return;
        }
    };
    let bound = tokio::time::Instant::now() + IDLE_LOOK + PULL_SLACK;
    loop {
        let next = tokio::select! {
            () = stop.cancelled() => {
                release_prefetched(served, &mut messages).await;
                return;
            }
            () = tokio::time::sleep_until(bound) => {
                tracing::debug!(task = %served.task.name, "the pull outlived its expiry; pulling again");
                return;
            }
            next = messages.next() => next,
        };
        match next {
            Some(Ok(message)) => {
                start(served, tracker, &mut reserved, grant, NORMAL, message).await;
            }
            Some(Err(e)) => {
                tracing::debug!(task = %served.task.name, error = %e, "pull interrupted");
                return;
            }
            // The request is complete or expired; unused slots return to the pool.
            None => return,
        }
    }
}

/// What ends a waiting pull early: the worker's stop, or the loop taking its slots back.
struct Ends {
    stop: CancellationToken,
    end: CancellationToken,
    /// The watcher's number at its level (see [`Waiting::claim`]).
    watcher: u64,
}

/// Waiting pulls at `level` in the slots `reserved` (one for high and low), made again as they
/// expire while the worker stays idle. What they hand over starts at once; high and low take one
/// task and wake the pull loop, normal goes on taking tasks until its pull ends (then wakes the
/// loop) or the loop takes its slots back. A reconnect (a restarted server forgot the request)
/// makes it again at once; the worker's stop ends it, handing back a task that arrives
/// meanwhile.
#[allow(clippy::too_many_arguments)]
async fn wait_at(
    served: Arc<Served>,
    consumer: jetstream::consumer::PullConsumer,
    level: usize,
    mut reserved: tokio::sync::OwnedSemaphorePermit,
    waiting: Arc<Waiting>,
    ends: Ends,
    tracker: TaskTracker,
    mut connects: tokio::sync::watch::Receiver<u64>,
) {
    let limited = served.limits.limited(&served.task);
    let mut pause_changes = served.pauses.changes();
    let mut started = 0usize;
    'pulls: while started == 0
        && reserved.num_permits() > 0
        && waiting.idle()
        && !ends.stop.is_cancelled()
        && !ends.end.is_cancelled()
    {
        connects.borrow_and_update();
        // A task type with limits asks them with each task in hand: one at a time.
        let want = if limited { 1 } else { reserved.num_permits() };
        let pulled = consumer
            .batch()
            .max_messages(want)
            .expires(IDLE_PULL)
            .messages()
            .await;
        let mut messages = match pulled {
            Ok(messages) => messages,
            Err(e) => {
                tracing::warn!(task = %served.task.name, error = %e, "cannot pull; retrying");
                tokio::select! {
                    () = ends.stop.cancelled() => {}
                    () = ends.end.cancelled() => {}
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
                continue;
            }
        };
        let made = tokio::time::Instant::now();
        let bound = made + IDLE_PULL + PULL_SLACK;
        // Whether the pull may be made again at once: it handed over a task, or the connection
        // was made again.
        let mut again_now = false;
        loop {
            let next = tokio::select! {
                () = ends.stop.cancelled() => {
                    release_prefetched(&served, &mut messages).await;
                    break 'pulls;
                }
                () = ends.end.cancelled() => {
                    release_prefetched(&served, &mut messages).await;
                    break 'pulls;
                }
                _ = connects.changed() => {
                    // Made again at once: a restarted server forgot it.
                    again_now = true;
                    break;
                }
                _ = pause_changes.changed() => {
                    if served.pauses.paused(&served.task.name, level) {
                        // Paused: no task is taken here until it is resumed.
                        release_prefetched(&served, &mut messages).await;
                        break 'pulls;
                    }
                    continue;
                }
                () = tokio::time::sleep_until(bound) => break,
                next = messages.next() => next,
            };
            match next {
                Some(Ok(message)) => {
                    again_now = true;
                    let grant = if limited {
                        Some(served.limits.deferred(&served.task))
                    } else {
                        served.limits.acquire(&served.task, 1, &ends.stop).await
                    };
                    match grant {
                        Some(mut grant) => {
                            start(&served, &tracker, &mut reserved, &mut grant, level, message)
                                .await;
                        }
                        None => {
                            let _ = message.ack_with(AckKind::Nak(None)).await;
                        }
                    }
                    started += 1;
                    if level != NORMAL || reserved.num_permits() == 0 {
                        break 'pulls;
                    }
                }
                Some(Err(e)) => {
                    tracing::debug!(task = %served.task.name, error = %e, "waiting pull interrupted");
                    break;
                }
                // Complete, or expired.
                None => break,
            }
        }
        // A pull the server ended at once without a task (it refused it: too many pull
        // requests wait on the consumer, say) is made again after a moment, not in a loop.
        if !again_now && made.elapsed() < IDLE_PULL / 2 {
            tokio::select! {
                () = ends.stop.cancelled() => {}
                () = ends.end.cancelled() => {}
                () = tokio::time::sleep(IDLE_LOOK) => {}
            }
        }
    }
    waiting.release(level, ends.watcher);
    drop(reserved);
    // Busy again, or this level has no waiting pull now: the loop looks. Not when the loop or
    // the worker's stop ended it: a signal then would wake a later idle wait for nothing, and
    // that wait's watcher, ended in turn, would wake the next, and so on.
    if !ends.end.is_cancelled() && !ends.stop.is_cancelled() {
        waiting.woke.notify_one();
    }
}

/// How long a task handed over as its queue was paused stays back before it comes again.
pub(crate) const PAUSED_BACK: Duration = Duration::from_secs(1);

/// Starts a pulled task (of the priority `level`) in one of the reserved slots.
pub(crate) async fn start(
    served: &Arc<Served>,
    tracker: &TaskTracker,
    reserved: &mut tokio::sync::OwnedSemaphorePermit,
    grant: &mut Grant,
    level: usize,
    message: jetstream::Message,
) {
    if served.pauses.paused(&served.task.name, level) {
        // Its queue was paused as it was handed over: back unstarted, no attempt used.
        let _ = message.ack_with(AckKind::Nak(Some(PAUSED_BACK))).await;
        return;
    }
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
    // Limits that count by a field of the arguments: asked now that the task is in hand. Its
    // slots share one token: losing any stops the task.
    let lost = cluster_slot.as_ref().map(Slot::lost).unwrap_or_default();
    let keyed = if served.limits.keyed(&served.task) {
        match served
            .limits
            .take_keyed(&served.task, &message.payload, &lost)
            .await
        {
            Ok(slots) => slots,
            Err(wait) => {
                // Its key is at its limit: back to the queue unstarted, no attempt used.
                let _ = message.ack_with(AckKind::Nak(Some(wait))).await;
                return;
            }
        }
    } else {
        Vec::new()
    };
    let slot_lost = (cluster_slot.is_some() || !keyed.is_empty()).then_some(lost);
    let served = Arc::clone(served);
    tracker.spawn(async move {
        let span = process_span(&served, &message);
        handle(&served, message, slot_lost).instrument(span).await;
        drop(keyed);
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
