//! What the dashboard's charts are drawn from: counts over time kept in the broker
//! (`TASKWIRE_SAMPLES`), so that no other service is needed and every gateway shows the same.
//!
//! Every [`SPAN`], each worker publishes what it counted since its last sample (tasks that
//! succeeded, failed and were retried, and how long attempts ran, per task type) on
//! `taskwire.samples.worker.<id>`, each gateway the tasks it stored on
//! `taskwire.samples.gateway.<id>`, and one gateway the queue depths on `taskwire.samples.queues`
//! (`Nats-Msg-Id: queues.<slot>`, so that of several gateways one sample a slot is kept). A
//! process with nothing to say publishes nothing: an idle system sends no samples. Each sample
//! is a JSON [`Sample`].

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// How often samples are published.
pub const SPAN: Duration = Duration::from_secs(10);
/// How long samples are kept.
pub const KEPT: Duration = Duration::from_secs(2 * 3600);
/// Every sample.
pub const ALL: &str = "taskwire.samples.>";
/// The queue depths.
pub const QUEUES: &str = "taskwire.samples.queues";

/// Upper bounds in milliseconds of the run-time buckets; the last bucket takes the rest.
pub const RUN_MS_BOUNDS: [u64; 15] = [
    1, 2, 5, 10, 20, 50, 100, 200, 500, 1_000, 2_000, 5_000, 10_000, 30_000, 60_000,
];

/// Where a worker's samples go.
pub fn of_worker(id: &str) -> String {
    format!("taskwire.samples.worker.{id}")
}

/// Where a gateway's samples go.
pub fn of_gateway(id: &str) -> String {
    format!("taskwire.samples.gateway.{id}")
}

/// The slot a time falls in: seconds since 1970, rounded down to a [`SPAN`].
pub fn slot(at: SystemTime) -> u64 {
    let seconds = at.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    seconds - seconds % SPAN.as_secs()
}

/// One process's counts over one span, per task type.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// The slot it ends (see [`slot`]).
    pub at: u64,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tasks: BTreeMap<String, Counts>,
}

/// What happened to one task type over a span (or, for depths, how many waited).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Counts {
    #[serde(default, skip_serializing_if = "is_zero")]
    pub submitted: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub succeeded: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub failed: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub retried: u64,
    /// Tasks waiting in the queue (all priorities) at the end of the span.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub depth: Option<u64>,
    /// Attempts that ended, by run time: one count per bucket of [`RUN_MS_BOUNDS`] and one
    /// over the last bound (empty: none ended).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub run_ms: Vec<u64>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl Counts {
    /// Counts an attempt that ran this long.
    pub fn ran(&mut self, took: Duration) {
        if self.run_ms.is_empty() {
            self.run_ms = vec![0; RUN_MS_BOUNDS.len() + 1];
        }
        let ms = took.as_millis() as u64;
        let bucket = RUN_MS_BOUNDS
            .iter()
            .position(|bound| ms <= *bound)
            .unwrap_or(RUN_MS_BOUNDS.len());
        self.run_ms[bucket] += 1;
    }

    /// Adds another's counts (a depth is taken as it is: the later one stands).
    pub fn add(&mut self, other: &Counts) {
        self.submitted += other.submitted;
        self.succeeded += other.succeeded;
        self.failed += other.failed;
        self.retried += other.retried;
        if other.depth.is_some() {
            self.depth = other.depth;
        }
        if !other.run_ms.is_empty() {
            if self.run_ms.is_empty() {
                self.run_ms = vec![0; RUN_MS_BOUNDS.len() + 1];
            }
            for (mine, theirs) in self.run_ms.iter_mut().zip(&other.run_ms) {
                *mine += theirs;
            }
        }
    }

    /// The run time (ms) under which `quantile` of the attempts ended: the bound of the bucket
    /// that holds it (the last bound doubled for the open bucket). `None` when none ended.
    pub fn run_quantile(&self, quantile: f64) -> Option<u64> {
        let total: u64 = self.run_ms.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = ((total as f64) * quantile).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, count) in self.run_ms.iter().enumerate() {
            seen += count;
            if seen >= rank {
                return Some(
                    RUN_MS_BOUNDS
                        .get(i)
                        .copied()
                        .unwrap_or(RUN_MS_BOUNDS[RUN_MS_BOUNDS.len() - 1] * 2),
                );
            }
        }
        None
    }

    /// Whether there is nothing to say.
    pub fn is_empty(&self) -> bool {
        self.submitted == 0
            && self.succeeded == 0
            && self.failed == 0
            && self.retried == 0
            && self.depth.is_none()
            && self.run_ms.iter().all(|n| *n == 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_times_fall_in_their_buckets_and_give_quantiles() {
        let mut counts = Counts::default();
        for ms in [0, 1, 3, 3, 40, 40, 40, 700, 90_000, 4] {
            counts.ran(Duration::from_millis(ms));
        }
        assert_eq!(counts.run_ms.iter().sum::<u64>(), 10);
        assert_eq!(counts.run_quantile(0.5), Some(5));
        assert_eq!(counts.run_quantile(0.6), Some(50));
        assert_eq!(counts.run_quantile(0.1), Some(1));
        assert_eq!(counts.run_quantile(0.99), Some(120_000));
        assert_eq!(Counts::default().run_quantile(0.5), None);
    }

    #[test]
    fn samples_add_up_and_read_back() {
        let mut a = Counts {
            submitted: 2,
            depth: Some(5),
            ..Default::default()
        };
        a.ran(Duration::from_millis(15));
        let mut b = Counts {
            succeeded: 3,
            depth: Some(1),
            ..Default::default()
        };
        b.ran(Duration::from_millis(15));
        a.add(&b);
        assert_eq!((a.submitted, a.succeeded, a.depth), (2, 3, Some(1)));
        assert_eq!(a.run_ms[4], 2);
        let sample = Sample {
            at: slot(SystemTime::now()),
            tasks: [("examples.magic.v1.Magic/Add".to_owned(), a)].into(),
        };
        let text = serde_json::to_string(&sample).expect("serializes");
        assert!(!text.contains("failed"), "zeros are left out: {text}");
        assert_eq!(
            serde_json::from_str::<Sample>(&text).expect("reads back"),
            sample
        );
        assert!(Counts::default().is_empty());
        assert_eq!(slot(UNIX_EPOCH + Duration::from_secs(1234)), 1230);
    }
}
