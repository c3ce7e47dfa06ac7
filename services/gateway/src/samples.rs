//! The gateway's part of the dashboard's charts (see `taskwire_protocol::samples`): the tasks
//! it stored, per task type, every span; the queue depths, one sample a slot whichever gateway
//! stores it; and the series the dashboard draws, read back from `TASKWIRE_SAMPLES`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use taskwire_protocol::samples::{self, Counts, Sample};
use taskwire_protocol::{self as broker, ReadFrom, header};
use tokio_util::sync::CancellationToken;

use crate::{Error, Gateway};

/// Tasks stored since the last sample, per task type.
#[derive(Debug, Default)]
pub(crate) struct Submitted(Mutex<BTreeMap<String, u64>>);

impl Submitted {
    pub(crate) fn add(&self, task: &str) {
        let mut counts = self.0.lock().unwrap_or_else(|e| e.into_inner());
        match counts.get_mut(task) {
            Some(n) => *n += 1,
            None => {
                counts.insert(task.to_owned(), 1);
            }
        }
    }

    fn take(&self) -> BTreeMap<String, u64> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// Samples kept per series point at most (a series of an hour has 60 points of a minute).
const MAX_POINTS: u64 = 360;

/// Publishes this gateway's samples every span until `stop`.
pub(crate) fn start(gateway: Arc<Gateway>, stop: CancellationToken) {
    tokio::spawn(async move {
        let id = taskwire::task::Id::generate().to_string();
        let subject = samples::of_gateway(&id);
        // Whether the last depths published were all zero: an idle system says so once.
        let mut quiet = false;
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(samples::SPAN) => {}
            }
            let at = samples::slot(SystemTime::now());
            let submitted = gateway.submitted.take();
            if !submitted.is_empty() {
                let sample = Sample {
                    at,
                    tasks: submitted
                        .into_iter()
                        .map(|(task, n)| {
                            let counts = Counts {
                                submitted: n,
                                ..Default::default()
                            };
                            (task, counts)
                        })
                        .collect(),
                };
                gateway.publish_sample(subject.clone(), &sample, None).await;
            }
            match gateway.depths().await {
                Ok(depths) => {
                    let zero = depths.values().all(|n| *n == 0);
                    if zero && quiet {
                        continue;
                    }
                    quiet = zero;
                    let sample = Sample {
                        at,
                        tasks: depths
                            .into_iter()
                            .map(|(task, n)| {
                                let counts = Counts {
                                    depth: Some(n),
                                    ..Default::default()
                                };
                                (task, counts)
                            })
                            .collect(),
                    };
                    let id = format!("queues.{at}");
                    gateway
                        .publish_sample(samples::QUEUES.to_owned(), &sample, Some(&id))
                        .await;
                }
                Err(e) => tracing::debug!(error = %e, "queue depths not sampled"),
            }
        }
    });
}

/// One point of a series: the rates over its span, the depth at its end, run-time quantiles.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub(crate) struct Point {
    at: u64,
    submitted_per_sec: f64,
    succeeded_per_sec: f64,
    failed_per_sec: f64,
    retried_per_sec: f64,
    depth: Option<u64>,
    run_p50_ms: Option<u64>,
    run_p90_ms: Option<u64>,
    run_p99_ms: Option<u64>,
}

impl Gateway {
    async fn publish_sample(&self, subject: String, sample: &Sample, msg_id: Option<&str>) {
        let Ok(body) = serde_json::to_vec(sample) else {
            return;
        };
        let mut headers = async_nats::HeaderMap::new();
        if let Some(id) = msg_id {
            headers.insert(header::MSG_ID, id);
        }
        if let Err(e) = self
            .client
            .publish_with_headers(subject, headers, body.into())
            .await
        {
            tracing::debug!(error = %e, "sample not published");
        }
    }

    /// Tasks waiting per task type (every priority; those running count until acked).
    async fn depths(&self) -> Result<BTreeMap<String, u64>, Error> {
        use futures::TryStreamExt as _;
        let mut depths = BTreeMap::new();
        for filter in [
            broker::subject::TASKS,
            broker::subject::TASKS_HIGH,
            broker::subject::TASKS_LOW,
        ] {
            let tasks = self.broker.tasks.clone();
            let subjects: Vec<(String, usize)> = tasks
                .info_with_subjects(filter)
                .await
                .map_err(|e| self.broker_error(e))?
                .try_collect()
                .await
                .map_err(|e| self.broker_error(e))?;
            for (subject, n) in subjects {
                // taskwire.tasks[-high|-low].<token>: the token is the name with its last `.`
                // for the `/`.
                let Some((_, token)) = subject
                    .split_once('.')
                    .and_then(|(_, rest)| rest.split_once('.'))
                else {
                    continue;
                };
                let Some((service, method)) = token.rsplit_once('.') else {
                    continue;
                };
                *depths.entry(format!("{service}/{method}")).or_default() += n as u64;
            }
        }
        for task_type in self.registry.list() {
            depths.entry(task_type.name.to_string()).or_default();
        }
        Ok(depths)
    }

    /// The series of the last `minutes` minutes, for one task type or (`None`) all, a point
    /// per `step` seconds.
    pub(crate) async fn series(
        &self,
        task: Option<&str>,
        minutes: u64,
    ) -> Result<serde_json::Value, Error> {
        let span = samples::SPAN.as_secs();
        let minutes = minutes.clamp(1, samples::KEPT.as_secs() / 60);
        let step = (minutes * 60 / MAX_POINTS.min(minutes * 60 / span)).max(span);
        let step = step - step % span;
        let now = samples::slot(SystemTime::now());
        let first = now.saturating_sub(minutes * 60);
        let points = ((now - first) / step) as usize + 1;
        let mut counts: Vec<Counts> = vec![Counts::default(); points];
        let mut depths: Vec<BTreeMap<String, u64>> = vec![BTreeMap::new(); points];
        let mut start = ReadFrom::Time(UNIX_EPOCH + Duration::from_secs(first));
        let mut tasks = std::collections::BTreeSet::new();
        loop {
            let batch =
                broker::next_messages(&self.client, broker::SAMPLES_STREAM, ">", start, 256)
                    .await
                    .map_err(|e| self.read_error(e))?;
            let full = batch.len() == 256;
            for message in batch {
                start = ReadFrom::Sequence(message.sequence + 1);
                let Ok(sample) = serde_json::from_slice::<Sample>(&message.payload) else {
                    continue;
                };
                if sample.at < first || sample.at > now + span {
                    continue;
                }
                let point = (((sample.at - first) / step) as usize).min(points - 1);
                for (name, c) in &sample.tasks {
                    tasks.insert(name.clone());
                    if task.is_some_and(|t| t != name) {
                        continue;
                    }
                    if let Some(depth) = c.depth {
                        depths[point].insert(name.clone(), depth);
                    }
                    let moved = Counts {
                        depth: None,
                        ..c.clone()
                    };
                    counts[point].add(&moved);
                }
            }
            if !full {
                break;
            }
        }
        // A quiet system says its depths once: until the next sample, they stand.
        let mut depth = None;
        let series: Vec<Point> = counts
            .iter()
            .zip(&depths)
            .enumerate()
            .map(|(i, (c, d))| {
                let per_sec = |n: u64| ((n as f64 / step as f64) * 100.0).round() / 100.0;
                if !d.is_empty() {
                    depth = Some(d.values().sum());
                }
                Point {
                    at: first + i as u64 * step,
                    submitted_per_sec: per_sec(c.submitted),
                    succeeded_per_sec: per_sec(c.succeeded),
                    failed_per_sec: per_sec(c.failed),
                    retried_per_sec: per_sec(c.retried),
                    depth,
                    run_p50_ms: c.run_quantile(0.5),
                    run_p90_ms: c.run_quantile(0.9),
                    run_p99_ms: c.run_quantile(0.99),
                }
            })
            .collect();
        Ok(serde_json::json!({
            "task": task,
            "minutes": minutes,
            "step_seconds": step,
            "tasks": tasks,
            "points": series,
        }))
    }
}
