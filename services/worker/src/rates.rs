//! Exact rate limits: at most `count` starts of a task type in any stretch of time `per` long,
//! across all workers, by the broker's clock.
//!
//! Each rate-limited task type has one key in `TASKWIRE_RATES` (`<token>.starts`) holding the starts
//! of the last period as a [`StartLog`]. A worker counts starts with compare-and-set: it reads
//! the log, drops what is older than the period, and writes back the log with its own starts.
//! The starts a write takes are stamped with the time the broker stored that write (the entry's
//! `created`), so no worker's clock decides anything. A worker's own idea of the broker's time
//! ([`BrokerClock`]) only decides when old starts leave the window, and it errs early (a lower
//! bound), so starts are, if anything, counted a little longer than the period.

use std::sync::Mutex;
use std::time::Duration;

use async_nats::jetstream::{self, kv, response::Response};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use taskwire::task::Rate;
use tokio::time::Instant;

/// Most entries a log keeps: beyond it the two closest are merged into the later one, which
/// keeps the count exact and only holds the earlier starts a little longer.
const MAX_ENTRIES: usize = 64;
/// How long this worker trusts its reading of the broker's clock before reading it again.
const CLOCK_FOR: Duration = Duration::from_secs(60);
/// Longest wait before looking at a full log again: starts given back free room before the
/// oldest start leaves.
const LOOK_AGAIN: Duration = Duration::from_secs(1);
/// How long to wait after the log could not be read or written.
const TROUBLE: Duration = Duration::from_millis(200);

/// The starts of a task type in the last period, as stored in its key of `TASKWIRE_RATES`.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct StartLog {
    /// Starts taken by the write that stored this value, at the time the broker stamped on it.
    pub(crate) taken: u32,
    /// Earlier starts: `[broker time in µs since the epoch, count, revision of the write that
    /// took them]`, oldest first.
    #[serde(default)]
    pub(crate) earlier: Vec<(u64, u32, u64)>,
}

impl StartLog {
    /// Every start the stored entry holds, this write's own included.
    fn starts(&self, stamped: u64, revision: u64) -> Vec<(u64, u32, u64)> {
        let mut starts = self.earlier.clone();
        if self.taken > 0 {
            starts.push((stamped, self.taken, revision));
        }
        starts
    }

    /// The log stored at `stamped` by write `revision`, with `left` starts taken off the item
    /// of the write `counted_by`; `None` when no item has that revision.
    fn given_back(&self, stamped: u64, revision: u64, counted_by: u64, left: u32) -> Option<Self> {
        let mut starts = self.starts(stamped, revision);
        let ours = starts.iter_mut().find(|s| s.2 == counted_by)?;
        ours.1 = ours.1.saturating_sub(left);
        starts.retain(|s| s.1 > 0);
        Some(Self::next(starts, 0))
    }

    /// The log a write taking `taken` more stores, given the starts still in the window.
    fn next(mut starts: Vec<(u64, u32, u64)>, taken: u32) -> Self {
        starts.sort_by_key(|s| s.0);
        while starts.len() > MAX_ENTRIES {
            let closest = (0..starts.len() - 1)
                .min_by_key(|&i| starts[i + 1].0 - starts[i].0)
                .unwrap_or(0);
            let merged = starts.remove(closest);
            starts[closest].1 += merged.1;
        }
        Self {
            taken,
            earlier: starts,
        }
    }
}

/// What one read of the log says about the window now.
struct Window {
    /// The starts still counted.
    starts: Vec<(u64, u32, u64)>,
    /// The revision to write over; `None` when the key does not exist.
    revision: Option<u64>,
    /// How long until the oldest counted start leaves the window.
    oldest_leaves_in: Duration,
}

impl Window {
    fn counted(&self) -> u32 {
        self.starts.iter().map(|s| s.1).sum()
    }
}

/// Starts this worker has counted and not yet used.
#[derive(Debug)]
pub(crate) struct Tokens {
    key: String,
    /// The revision of the write that counted them.
    revision: u64,
    pub(crate) left: u32,
    pub(crate) taken_at: Instant,
}

/// This worker's reading of the broker's clock: the time the broker stamped on an answer, and
/// when the answer arrived here.
#[derive(Debug, Default)]
pub(crate) struct BrokerClock {
    read: Mutex<Option<(Instant, u64)>>,
}

#[derive(Deserialize)]
struct Stamped {
    #[serde(with = "time::serde::rfc3339")]
    ts: time::OffsetDateTime,
}

impl BrokerClock {
    /// A lower bound of the broker's time now, in µs since the epoch: its stamp on an answer
    /// plus the time elapsed here since the answer arrived.
    async fn now(&self, jetstream: &jetstream::Context) -> Option<u64> {
        let known = *self.read.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((at, micros)) = known
            && at.elapsed() < CLOCK_FOR
        {
            return Some(micros + at.elapsed().as_micros() as u64);
        }
        let subject = format!("STREAM.INFO.KV_{}", taskwire_protocol::RATES_BUCKET);
        let answer: Response<Stamped> = match jetstream.request(subject, &()).await {
            Ok(answer) => answer,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the broker's clock");
                return None;
            }
        };
        let arrived = Instant::now();
        let stamped = match answer {
            Response::Ok(stamped) => stamped,
            Response::Err { error } => {
                tracing::warn!(%error, "cannot read the broker's clock");
                return None;
            }
        };
        let micros = u64::try_from(stamped.ts.unix_timestamp_nanos() / 1000).ok()?;
        *self.read.lock().unwrap_or_else(|e| e.into_inner()) = Some((arrived, micros));
        Some(micros)
    }
}

/// Where the start logs are kept, and this worker's reading of the broker's clock.
pub(crate) struct StartLogs<'a> {
    pub(crate) store: &'a kv::Store,
    pub(crate) clock: &'a BrokerClock,
    pub(crate) jetstream: &'a jetstream::Context,
}

/// Reads the window of a task type's rate. `Err` with how long to wait on trouble.
async fn window(logs: &StartLogs<'_>, key: &str, rate: Rate) -> Result<Window, Duration> {
    let entry = logs.store.entry(key).await.map_err(|e| {
        tracing::warn!(key, error = %e, "cannot read a rate limit's starts");
        TROUBLE
    })?;
    let now = logs.clock.now(logs.jetstream).await.ok_or(TROUBLE)?;
    let (starts, revision, stamped) = match entry {
        None => (Vec::new(), None, 0),
        Some(entry) => {
            let stamped = u64::try_from(entry.created.unix_timestamp_nanos() / 1000).unwrap_or(0);
            let starts = match entry.operation {
                kv::Operation::Put => match serde_json::from_slice::<StartLog>(&entry.value) {
                    Ok(log) => log.starts(stamped, entry.revision),
                    Err(e) => {
                        tracing::warn!(key, error = %e, "a rate limit's starts do not parse; counting afresh");
                        Vec::new()
                    }
                },
                _ => Vec::new(),
            };
            (starts, Some(entry.revision), stamped)
        }
    };
    // The broker stored the entry before this read, so its stamp is a lower bound of now too.
    let now = now.max(stamped);
    let counted_for = (rate.per + rate.margin()).as_micros() as u64;
    let starts: Vec<_> = starts
        .into_iter()
        .filter(|s| s.0 + counted_for > now)
        .collect();
    let oldest_leaves_in = starts
        .iter()
        .map(|s| s.0 + counted_for - now)
        .min()
        .map_or(Duration::ZERO, Duration::from_micros);
    Ok(Window {
        starts,
        revision,
        oldest_leaves_in,
    })
}

/// How many of `want` starts the window has room for now. `Err` with how long to wait when it
/// has none.
pub(crate) async fn room(
    logs: &StartLogs<'_>,
    key: &str,
    rate: Rate,
    want: usize,
) -> Result<usize, Duration> {
    let window = window(logs, key, rate).await?;
    let room = rate.count.saturating_sub(window.counted()) as usize;
    if room == 0 {
        return Err(window
            .oldest_leaves_in
            .clamp(Duration::from_millis(10), LOOK_AGAIN));
    }
    Ok(room.min(want))
}

/// Counts up to `want` starts. `Err` with how long to wait when the window is full.
pub(crate) async fn take(
    logs: &StartLogs<'_>,
    key: &str,
    rate: Rate,
    want: usize,
) -> Result<Tokens, Duration> {
    let store = logs.store;
    for _ in 0..20 {
        let window = window(logs, key, rate).await?;
        let counted = window.counted();
        if counted >= rate.count {
            return Err(window
                .oldest_leaves_in
                .clamp(Duration::from_millis(10), LOOK_AGAIN));
        }
        let taken = (rate.count - counted).min(u32::try_from(want).unwrap_or(u32::MAX));
        let log = StartLog::next(window.starts, taken);
        let value = Bytes::from(serde_json::to_vec(&log).unwrap_or_default());
        let written = match window.revision {
            Some(revision) => store
                .update(key, value, revision)
                .await
                .map_err(|e| e.kind() == kv::UpdateErrorKind::WrongLastRevision),
            None => store
                .create(key, value)
                .await
                .map_err(|e| e.kind() == kv::CreateErrorKind::AlreadyExists),
        };
        match written {
            Ok(revision) => {
                return Ok(Tokens {
                    key: key.to_owned(),
                    revision,
                    left: taken,
                    taken_at: Instant::now(),
                });
            }
            // Another worker counted in between: read again.
            Err(true) => continue,
            Err(false) => {
                tracing::warn!(key, "cannot count rate-limited starts");
                return Err(TROUBLE);
            }
        }
    }
    Err(Duration::from_millis(50))
}

/// Gives back starts that were counted and not used: lowers the count of the item with the
/// revision of the write that counted them. The entry's own `taken` becomes an `earlier` item
/// with its stamp and revision, so a give-back never takes over the starts another worker
/// counted in the latest write.
pub(crate) async fn give_back(store: &kv::Store, tokens: Tokens) {
    if tokens.left == 0 {
        return;
    }
    for tries in 0..20u64 {
        if tries > 0 {
            // Others count at the same moment: step aside for a moment.
            let jitter = taskwire_protocol::now_micros() % 5_000;
            tokio::time::sleep(Duration::from_micros(jitter)).await;
        }
        let entry = match store.entry(&tokens.key).await {
            Ok(Some(entry)) if entry.operation == kv::Operation::Put => entry,
            // Gone: nothing is counted any more.
            Ok(_) => return,
            Err(e) => {
                tracing::debug!(key = tokens.key, error = %e, "cannot read a start log to give starts back");
                continue;
            }
        };
        let Ok(log) = serde_json::from_slice::<StartLog>(&entry.value) else {
            return;
        };
        let stamped = u64::try_from(entry.created.unix_timestamp_nanos() / 1000).unwrap_or(0);
        let Some(log) = log.given_back(stamped, entry.revision, tokens.revision, tokens.left)
        else {
            // Out of the window, or merged with later starts: nothing to give back.
            return;
        };
        let value = Bytes::from(serde_json::to_vec(&log).unwrap_or_default());
        match store.update(&tokens.key, value, entry.revision).await {
            Ok(_) => return,
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {}
            Err(e) => {
                tracing::debug!(key = tokens.key, error = %e, "cannot give starts back");
            }
        }
    }
    tracing::warn!(
        key = tokens.key,
        left = tokens.left,
        "cannot give unused starts back; they count until they leave the window"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_log_merges_the_closest_starts_into_the_later() {
        let starts: Vec<_> = (0..MAX_ENTRIES as u64 + 1)
            .map(|i| (i * 1000 + if i == 10 { 999 } else { 0 }, 1, i + 1))
            .collect();
        let log = StartLog::next(starts, 3);
        assert_eq!(log.taken, 3);
        assert_eq!(log.earlier.len(), MAX_ENTRIES);
        // 10 999 and 11 000 were closest: one entry at the later time, counting both.
        assert!(log.earlier.contains(&(11_000, 2, 12)), "{:?}", log.earlier);
        assert_eq!(
            log.earlier.iter().map(|s| s.1).sum::<u32>(),
            MAX_ENTRIES as u32 + 1
        );
    }

    #[test]
    fn giving_back_keeps_the_latest_writes_starts_its_own() {
        // Write 7 counted 3 (two unused), write 8 counted 2 and is the entry now.
        let log = StartLog {
            taken: 2,
            earlier: vec![(1000, 3, 7)],
        };
        let back = log
            .given_back(5000, 8, 7, 2)
            .expect("write 7 is in the log");
        assert_eq!(back.taken, 0);
        assert_eq!(back.earlier, vec![(1000, 1, 7), (5000, 2, 8)]);
        // Write 8 can still give its own back afterwards, at its own stamp.
        let again = back
            .given_back(6000, 9, 8, 2)
            .expect("write 8 is still in the log");
        assert_eq!(again.earlier, vec![(1000, 1, 7)]);
        assert_eq!(log.given_back(5000, 8, 6, 1), None);
    }

    #[test]
    fn the_log_reads_as_stored() {
        let log: StartLog =
            serde_json::from_str(r#"{"taken":2,"earlier":[[1000,3,7]]}"#).expect("parses");
        assert_eq!(log.starts(5000, 8), vec![(1000, 3, 7), (5000, 2, 8)]);
        assert_eq!(
            serde_json::to_string(&StartLog::next(vec![(5000, 2, 8), (1000, 3, 7)], 1))
                .expect("serializes"),
            r#"{"taken":1,"earlier":[[1000,3,7],[5000,2,8]]}"#
        );
    }
}
