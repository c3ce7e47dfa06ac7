//! The worker's part of the dashboard's charts: what it counted over each span, published to
//! `TASKWIRE_SAMPLES` (see `taskwire_protocol::samples`), nothing when it counted nothing.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use taskwire::v1::TaskState;
use taskwire_protocol::samples::{self, Counts, Sample};
use tokio_util::sync::CancellationToken;

/// Counts since the last sample, per task type.
#[derive(Debug, Default)]
pub(crate) struct Samples {
    counts: Mutex<BTreeMap<String, Counts>>,
}

impl Samples {
    fn with(&self, task: &str, change: impl FnOnce(&mut Counts)) {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        match counts.get_mut(task) {
            Some(c) => change(c),
            None => change(counts.entry(task.to_owned()).or_default()),
        }
    }

    pub(crate) fn completed(&self, task: &str, state: TaskState) {
        self.with(task, |c| {
            if state == TaskState::Succeeded {
                c.succeeded += 1;
            } else {
                c.failed += 1;
            }
        });
    }

    pub(crate) fn retried(&self, task: &str) {
        self.with(task, |c| c.retried += 1);
    }

    pub(crate) fn ran(&self, task: &str, took: Duration) {
        self.with(task, |c| c.ran(took));
    }

    /// What was counted since the last call, as the sample of the slot now ending.
    fn take(&self) -> Option<Sample> {
        let counts = std::mem::take(&mut *self.counts.lock().unwrap_or_else(|e| e.into_inner()));
        let tasks: BTreeMap<String, Counts> =
            counts.into_iter().filter(|(_, c)| !c.is_empty()).collect();
        (!tasks.is_empty()).then(|| Sample {
            at: samples::slot(SystemTime::now()),
            tasks,
        })
    }
}

/// Publishes the worker's samples every span until `stop`, and what is left at the stop.
pub(crate) fn publish(
    client: async_nats::Client,
    samples: std::sync::Arc<Samples>,
    id: String,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let subject = samples::of_worker(&id);
        loop {
            let stopping = tokio::select! {
                () = stop.cancelled() => true,
                () = tokio::time::sleep(samples::SPAN) => false,
            };
            if let Some(sample) = samples.take()
                && let Ok(body) = serde_json::to_vec(&sample)
                && let Err(e) = client.publish(subject.clone(), body.into()).await
            {
                // A chart misses a span; nothing else depends on it.
                tracing::debug!(error = %e, "sample not published");
            }
            if stopping {
                let _ = tokio::time::timeout(Duration::from_secs(1), client.flush()).await;
                return;
            }
        }
    })
}
