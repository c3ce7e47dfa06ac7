//! Cluster-wide limits of a task type: how many run at once across all workers, and how many
//! start per period.
//!
//! A concurrency limit of N is N slot keys in the `TASKWIRE_SLOTS` bucket (`<task>.0` to
//! `<task>.N-1`): a worker takes a free slot before it pulls a task, holds it while the task runs
//! (refreshing it), and deletes it after. The bucket forgets a slot that is not refreshed, so a
//! dead worker's slots come free by themselves. A rate limit counts starts in the `TASKWIRE_RATES`
//! bucket (see [`crate::rates`]). Limits declared in a task's proto can be
//! overridden through the Admin API (`TASKWIRE_LIMITS`), which every worker watches.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::kv;
use bytes::Bytes;
use prost::Message as _;
use taskwire::task::{Rate, TaskType};
use taskwire::v1;
use taskwire_protocol::{self as broker, Broker};
use tokio_util::sync::CancellationToken;

use crate::Error;
use crate::rates::{self, BrokerClock, Tokens};

/// How often a held slot is refreshed: well within its lease.
const REFRESH: Duration = Duration::from_secs(5);
/// How long before its lease runs out a slot that could not be refreshed is given up: time for
/// its task to see its token, its grace, and to be put back.
const LEASE_MARGIN: Duration = Duration::from_secs(5);
/// How long a worker waits before looking for a free slot again.
const SLOT_RETRY: Duration = Duration::from_millis(100);
/// How long a task whose key is at its limit goes back for before it is tried again.
const KEY_RETRY: Duration = Duration::from_secs(1);

/// The limits in force for a task type, and the fields they count by, if any.
#[derive(Debug, Clone, PartialEq)]
struct InForce {
    concurrency: Option<u32>,
    rate: Option<Rate>,
    concurrency_key: Option<String>,
    rate_key: Option<String>,
}

impl InForce {
    /// The limits that count the task type as a whole.
    fn whole(&self) -> (Option<u32>, Option<Rate>) {
        (
            self.concurrency.filter(|_| self.concurrency_key.is_none()),
            self.rate.filter(|_| self.rate_key.is_none()),
        )
    }
}

/// The part of a slot or start-log key that stands for one value of a key field: a hash, so
/// that any value makes a valid key of a fixed length.
fn key_part(value: &str) -> String {
    // FNV-1a, 64 bits.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in value.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("k{hash:016x}")
}

/// The limits this worker follows, and the buckets that enforce them.
pub(crate) struct Limits {
    /// Overrides set through the Admin API, by task token.
    overrides: Mutex<HashMap<String, v1::TaskLimits>>,
    broker: Broker,
    /// Written into the slots this worker holds.
    owner: Bytes,
    clock: BrokerClock,
}

impl std::fmt::Debug for Limits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limits").finish_non_exhaustive()
    }
}

impl Limits {
    /// Reads the overrides, then follows changes until `stop`.
    pub(crate) async fn start(
        broker: Broker,
        stop: CancellationToken,
        refusals: &taskwire_protocol::Refusals,
    ) -> Result<Arc<Self>, Error> {
        let limits = Arc::new(Self {
            overrides: Mutex::new(HashMap::new()),
            owner: Bytes::from(uuid::Uuid::now_v7().to_string()),
            broker,
            clock: BrokerClock::default(),
        });
        taskwire_protocol::follow::follow(limits.broker.limits.clone(), &limits, stop, refusals)
            .await
            .map_err(|e| Error::Limits(e.to_string()))?;
        Ok(limits)
    }
}

impl taskwire_protocol::follow::Follower for Limits {
    fn reset(self: &Arc<Self>, entries: Vec<kv::Entry>) {
        self.overrides
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        for entry in &entries {
            self.apply(entry);
        }
    }

    fn apply(self: &Arc<Self>, entry: &kv::Entry) {
        let mut overrides = self.overrides.lock().unwrap_or_else(|e| e.into_inner());
        match entry.operation {
            kv::Operation::Put => {
                if let Ok(limits) = v1::TaskLimits::decode(entry.value.clone()) {
                    tracing::info!(task = entry.key, ?limits, "task limits changed");
                    overrides.insert(entry.key.clone(), limits);
                }
            }
            kv::Operation::Delete | kv::Operation::Purge => {
                overrides.remove(&entry.key);
            }
        }
    }
}

impl Limits {
    /// The limits in force for a task type: the override, else the declared ones.
    fn effective(&self, task: &TaskType) -> InForce {
        let overrides = self.overrides.lock().unwrap_or_else(|e| e.into_inner());
        let field = |f: &str| (!f.is_empty()).then(|| f.to_owned());
        match overrides.get(&task.name.token()) {
            Some(set) => InForce {
                concurrency: (set.max_concurrency > 0).then_some(set.max_concurrency),
                rate: Rate::parse(&set.rate_limit).ok(),
                concurrency_key: field(&set.concurrency_key_field),
                rate_key: field(&set.rate_limit_key_field),
            },
            None => InForce {
                concurrency: task.options.max_concurrency,
                rate: task.options.rate_limit,
                concurrency_key: task.options.concurrency_key_field.clone(),
                rate_key: task.options.rate_limit_key_field.clone(),
            },
        }
    }

    /// Whether the task type has a limit in force.
    pub(crate) fn limited(&self, task: &TaskType) -> bool {
        let limits = self.effective(task);
        limits.concurrency.is_some() || limits.rate.is_some()
    }

    /// Whether a limit in force counts by a field of the task's arguments: it is asked with
    /// each task in hand ([`Self::take_keyed`]).
    pub(crate) fn keyed(&self, task: &TaskType) -> bool {
        // Asked before every start: read in place, nothing copied.
        let overrides = self.overrides.lock().unwrap_or_else(|e| e.into_inner());
        let set = if overrides.is_empty() {
            None
        } else {
            overrides.get(&task.name.token())
        };
        match set {
            Some(set) => {
                (set.max_concurrency > 0 && !set.concurrency_key_field.is_empty())
                    || (!set.rate_limit.is_empty() && !set.rate_limit_key_field.is_empty())
            }
            None => {
                let options = &task.options;
                (options.max_concurrency.is_some() && options.concurrency_key_field.is_some())
                    || (options.rate_limit.is_some() && options.rate_limit_key_field.is_some())
            }
        }
    }

    /// The limits that count by a field, for a task in hand whose arguments are `args`: a slot
    /// of its value's (held until the task ends; `lost` fires when it cannot be held) and a
    /// start counted against its value's rate. `Err` with how long the task goes back for
    /// when its value has no room.
    pub(crate) async fn take_keyed(
        self: &Arc<Self>,
        task: &TaskType,
        args: &[u8],
        lost: &CancellationToken,
    ) -> Result<Vec<Slot>, Duration> {
        let limits = self.effective(task);
        let token = task.name.token();
        let part = |field: &str| key_part(&taskwire::task::limit_key(&task.input, args, field));
        let mut slots = Vec::new();
        if let (Some(limit), Some(field)) = (limits.concurrency, &limits.concurrency_key) {
            let prefix = format!("{token}.{}", part(field));
            slots = self
                .take_slots_at(&task.name, &prefix, limit, 1, lost)
                .await;
            if slots.is_empty() {
                return Err(KEY_RETRY);
            }
        }
        if let (Some(rate), Some(field)) = (limits.rate, &limits.rate_key) {
            let key = format!("{token}.{}.starts", part(field));
            // One start, used at once (an error drops the slot taken, freeing it).
            self.take_tokens(&key, rate, 1).await?;
        }
        Ok(slots)
    }

    /// Waits until at least one of `want` tasks may start, and takes what the limits allow.
    /// `None` when `stop` fires first.
    pub(crate) async fn acquire(
        self: &Arc<Self>,
        task: &TaskType,
        want: usize,
        stop: &CancellationToken,
    ) -> Option<Grant> {
        loop {
            let wait = match self.try_acquire(task, want).await {
                Ok(grant) => return Some(grant),
                Err(wait) => wait,
            };
            tokio::select! {
                () = stop.cancelled() => return None,
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// A grant for whatever the limits allow now of `want` starts; `Err` with how long to wait
    /// when they allow none.
    async fn try_acquire(
        self: &Arc<Self>,
        task: &TaskType,
        want: usize,
    ) -> Result<Grant, Duration> {
        let (concurrency, rate) = self.effective(task).whole();
        if concurrency.is_none() && rate.is_none() {
            return Ok(Grant::unlimited(want));
        }
        let mut allowed = want;
        let mut slots = Vec::new();
        if let Some(limit) = concurrency {
            slots = self
                .take_slots_at(
                    &task.name,
                    &task.name.token(),
                    limit,
                    allowed,
                    &CancellationToken::new(),
                )
                .await;
            allowed = slots.len();
            if allowed == 0 {
                return Err(SLOT_RETRY);
            }
        }
        let mut counted = None;
        if let Some(rate) = rate {
            // Only a look: starts are counted when the tasks are in hand.
            let key = format!("{}.starts", task.name.token());
            allowed = self.room(&key, rate, allowed).await?;
            slots.truncate(allowed);
            counted = Some(Counted {
                key,
                rate,
                tokens: None,
                batch: 1,
            });
        }
        Ok(Grant {
            allowed,
            slots,
            counted,
            limits: Some(Arc::clone(self)),
            deferred: None,
        })
    }

    /// A grant that takes its slot and start only when a task is in hand: an idle worker waits
    /// for tasks without taking and freeing slots in a loop.
    pub(crate) fn deferred(self: &Arc<Self>, task: &TaskType) -> Grant {
        Grant {
            allowed: 1,
            slots: Vec::new(),
            counted: None,
            limits: Some(Arc::clone(self)),
            deferred: Some(task.clone()),
        }
    }

    fn start_logs(&self) -> rates::StartLogs<'_> {
        rates::StartLogs {
            store: &self.broker.rates,
            clock: &self.clock,
            jetstream: &self.broker.jetstream,
        }
    }

    async fn room(&self, key: &str, rate: Rate, want: usize) -> Result<usize, Duration> {
        rates::room(&self.start_logs(), key, rate, want).await
    }

    async fn take_tokens(&self, key: &str, rate: Rate, want: usize) -> Result<Tokens, Duration> {
        rates::take(&self.start_logs(), key, rate, want).await
    }

    /// Takes up to `want` free slots `<prefix>.<n>` of `limit` (the task type's, or one key
    /// value's); each fires `lost` when it cannot be held (a fresh token each, when the
    /// token given is not shared).
    async fn take_slots_at(
        self: &Arc<Self>,
        task: &taskwire::task::Name,
        prefix: &str,
        limit: u32,
        want: usize,
        lost: &CancellationToken,
    ) -> Vec<Slot> {
        let start = u32::try_from(broker::now_micros() % u64::from(limit)).unwrap_or(0);
        let mut slots = Vec::new();
        for n in 0..limit {
            if slots.len() >= want {
                break;
            }
            let key = format!("{prefix}.{}", (start + n) % limit);
            match self.broker.slots.create(&key, self.owner.clone()).await {
                Ok(revision) => {
                    // Slots of a round are held by different tasks: each its own token.
                    let lost = if want == 1 {
                        lost.clone()
                    } else {
                        CancellationToken::new()
                    };
                    slots.push(Slot::hold(Arc::clone(self), key, revision, lost));
                }
                Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {}
                Err(e) => {
                    tracing::warn!(task = %task, error = %e, "cannot take a concurrency slot");
                    break;
                }
            }
        }
        slots
    }
}

/// Leave to start some tasks: what the limits allowed in one pull round.
pub(crate) struct Grant {
    allowed: usize,
    slots: Vec<Slot>,
    counted: Option<Counted>,
    limits: Option<Arc<Limits>>,
    /// The task type of a grant that asks the limits when a task is in hand.
    deferred: Option<TaskType>,
}

/// The rate a grant counts starts against, and the starts it counted and has not used.
struct Counted {
    key: String,
    rate: Rate,
    tokens: Option<Tokens>,
    /// How many starts the next count asks for at most.
    batch: usize,
}

impl Grant {
    fn unlimited(want: usize) -> Self {
        Self {
            allowed: want,
            slots: Vec::new(),
            counted: None,
            limits: None,
            deferred: None,
        }
    }

    /// How many tasks may start.
    pub(crate) fn allowed(&self) -> usize {
        self.allowed
    }

    /// Uses one start for a task in hand, `more` more being likely to follow at once; the slot
    /// (when the type has a concurrency limit) must be held until the task ends. With a rate
    /// limit the start is counted now; `Err` with how long to wait when the rate allows no start
    /// (another worker counted first).
    pub(crate) async fn take(&mut self, more: usize) -> Result<Option<Slot>, Duration> {
        if let (Some(task), Some(limits)) = (self.deferred.clone(), self.limits.clone()) {
            *self = limits.try_acquire(&task, 1).await?;
        }
        if let (Some(counted), Some(limits)) = (&mut self.counted, &self.limits) {
            // Counted starts are used within half the rate's margin, so that a start and its
            // count are moments apart.
            let fresh = counted.rate.margin() / 2;
            let usable = counted
                .tokens
                .as_ref()
                .is_some_and(|t| t.left > 0 && t.taken_at.elapsed() < fresh);
            if !usable {
                // `more` counts the slots reserved, not the tasks that will arrive (a waiting
                // pull hands them over as they come): count 1 at first, twice as many after
                // counted starts were all used in time, 1 again after some were not.
                counted.batch = match counted.tokens.take() {
                    Some(stale) if stale.left > 0 => {
                        rates::give_back(&limits.broker.rates, stale).await;
                        1
                    }
                    Some(_) => counted.batch.saturating_mul(2),
                    None => 1,
                };
                let want = counted.batch.min(more + 1).min(self.allowed);
                counted.tokens = Some(limits.take_tokens(&counted.key, counted.rate, want).await?);
            }
            if let Some(tokens) = &mut counted.tokens {
                tokens.left -= 1;
            }
        }
        Ok(self.slots.pop())
    }
}

impl Drop for Grant {
    fn drop(&mut self) {
        // Unused slots are dropped (freed) with the grant; unused starts are given back.
        let (Some(counted), Some(limits)) = (&mut self.counted, &self.limits) else {
            return;
        };
        if let Some(tokens) = counted.tokens.take().filter(|t| t.left > 0) {
            let store = limits.broker.rates.clone();
            tokio::spawn(async move { rates::give_back(&store, tokens).await });
        }
    }
}

/// A concurrency slot this worker holds; refreshed while held, freed when dropped. When it
/// cannot be refreshed (NATS unreachable) for most of its lease, [`Slot::lost`] fires, so that
/// the task holding it stops before another worker may take the slot.
pub(crate) struct Slot {
    key: String,
    revision: Arc<Mutex<u64>>,
    refresher: tokio::task::JoinHandle<()>,
    limits: Arc<Limits>,
    lost: CancellationToken,
}

impl Slot {
    fn hold(limits: Arc<Limits>, key: String, revision: u64, lost: CancellationToken) -> Self {
        let revision = Arc::new(Mutex::new(revision));
        let refresher = {
            let (limits, key, revision, lost) = (
                Arc::clone(&limits),
                key.clone(),
                Arc::clone(&revision),
                lost.clone(),
            );
            tokio::spawn(async move {
                let mut refreshed = tokio::time::Instant::now();
                loop {
                    // Given up while there is still time for the task to stop within the lease.
                    let give_up = refreshed + broker::SLOT_LEASE - LEASE_MARGIN;
                    tokio::select! {
                        () = tokio::time::sleep_until(give_up) => break,
                        () = tokio::time::sleep(REFRESH) => {}
                    }
                    let current = *revision.lock().unwrap_or_else(|e| e.into_inner());
                    let update = limits
                        .broker
                        .slots
                        .update(&key, limits.owner.clone(), current);
                    let updated = tokio::select! {
                        () = tokio::time::sleep_until(give_up) => break,
                        updated = update => updated,
                    };
                    match updated {
                        Ok(next) => {
                            *revision.lock().unwrap_or_else(|e| e.into_inner()) = next;
                            refreshed = tokio::time::Instant::now();
                        }
                        // Its lease ran out and the slot may be someone else's now.
                        Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                            tracing::warn!(slot = key, "a concurrency slot was lost");
                            break;
                        }
                        Err(e) => {
                            tracing::warn!(slot = key, error = %e, "cannot refresh a concurrency slot")
                        }
                    }
                }
                tracing::warn!(
                    slot = key,
                    "stopping the task that holds a concurrency slot that could not be refreshed"
                );
                lost.cancel();
            })
        };
        Self {
            key,
            revision,
            refresher,
            limits,
            lost,
        }
    }

    /// Fires when the slot can no longer be held.
    pub(crate) fn lost(&self) -> CancellationToken {
        self.lost.clone()
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.refresher.abort();
        let (limits, key) = (Arc::clone(&self.limits), std::mem::take(&mut self.key));
        let revision = *self.revision.lock().unwrap_or_else(|e| e.into_inner());
        tokio::spawn(async move {
            // Only if it is still ours: a slot whose lease ran out may be someone else's now.
            let _ = limits
                .broker
                .slots
                .delete_expect_revision(&key, Some(revision))
                .await;
        });
    }
}
