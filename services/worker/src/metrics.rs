//! What a worker counts: Prometheus metrics on `/metrics` (when it has an HTTP address), and
//! the heartbeat it writes to the `TASKWIRE_WORKERS` bucket so that `taskwire inspect workers`
//! and the gateway's `taskwire_workers_alive` see it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use taskwire::v1;
use taskwire_protocol::{self as broker, Broker};
use tokio_util::sync::CancellationToken;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TaskLabel {
    task: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    task: String,
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    task: String,
    reason: String,
}

/// The worker's counters.
pub(crate) struct Metrics {
    registry: Registry,
    started: Family<TaskLabel, Counter>,
    completed: Family<StateLabels, Counter>,
    retried: Family<TaskLabel, Counter>,
    dead: Family<ReasonLabels, Counter>,
    running: Family<TaskLabel, Gauge>,
    run_seconds: Family<TaskLabel, Histogram>,
    running_total: AtomicU64,
    succeeded_total: AtomicU64,
    failed_total: AtomicU64,
    /// What the dashboard's charts get of it.
    samples: Arc<crate::samples::Samples>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    pub(crate) fn new() -> Arc<Self> {
        let mut registry = Registry::with_prefix("taskwire");
        let started = Family::<TaskLabel, Counter>::default();
        let completed = Family::<StateLabels, Counter>::default();
        let retried = Family::<TaskLabel, Counter>::default();
        let dead = Family::<ReasonLabels, Counter>::default();
        let running = Family::<TaskLabel, Gauge>::default();
        let run_seconds = Family::<TaskLabel, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.001, 4.0, 10))
        });
        registry.register(
            "tasks_started",
            "Task attempts started by this worker",
            started.clone(),
        );
        registry.register(
            "tasks_completed",
            "Tasks this worker brought to a final state, by state",
            completed.clone(),
        );
        registry.register(
            "tasks_retried",
            "Attempts that failed and were put back for a retry",
            retried.clone(),
        );
        registry.register(
            "tasks_dead_lettered",
            "Tasks moved to the dead letters, by reason",
            dead.clone(),
        );
        registry.register(
            "tasks_running",
            "Tasks running in this worker now",
            running.clone(),
        );
        registry.register(
            "task_run_seconds",
            "How long attempts ran",
            run_seconds.clone(),
        );
        Arc::new(Self {
            registry,
            started,
            completed,
            retried,
            dead,
            running,
            run_seconds,
            running_total: AtomicU64::new(0),
            succeeded_total: AtomicU64::new(0),
            failed_total: AtomicU64::new(0),
            samples: Arc::default(),
        })
    }

    fn task(task: &str) -> TaskLabel {
        TaskLabel {
            task: task.to_owned(),
        }
    }

    /// The counters of one task type, looked up once rather than for every task.
    pub(crate) fn for_task(self: &Arc<Self>, task: &str) -> TaskMetrics {
        let label = Self::task(task);
        TaskMetrics {
            name: Arc::from(task),
            started: self.started.get_or_create(&label).clone(),
            running: self.running.get_or_create(&label).clone(),
            run_seconds: self.run_seconds.get_or_create(&label).clone(),
            metrics: Arc::clone(self),
        }
    }

    /// A task reached its final state here.
    pub(crate) fn completed(&self, task: &str, state: v1::TaskState) {
        self.completed
            .get_or_create(&StateLabels {
                task: task.to_owned(),
                state: broker::state_name(state).to_owned(),
            })
            .inc();
        self.samples.completed(task, state);
        let total = if state == v1::TaskState::Succeeded {
            &self.succeeded_total
        } else {
            &self.failed_total
        };
        total.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn retried(&self, task: &str) {
        self.retried.get_or_create(&Self::task(task)).inc();
        self.samples.retried(task);
    }

    pub(crate) fn dead_lettered(&self, task: &str, reason: &str) {
        self.dead
            .get_or_create(&ReasonLabels {
                task: task.to_owned(),
                reason: reason.to_owned(),
            })
            .inc();
    }

    /// The metrics in the Prometheus text format.
    pub(crate) fn render(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

/// The counters of one task type.
#[derive(Clone)]
pub(crate) struct TaskMetrics {
    name: Arc<str>,
    started: Counter,
    running: Gauge,
    run_seconds: Histogram,
    metrics: Arc<Metrics>,
}

impl TaskMetrics {
    /// An attempt starts; the returned guard marks its end.
    pub(crate) fn start(&self) -> Running {
        self.started.inc();
        self.running.inc();
        self.metrics.running_total.fetch_add(1, Ordering::Relaxed);
        Running {
            task: self.clone(),
            since: std::time::Instant::now(),
        }
    }
}

/// A running attempt, counted until dropped.
pub(crate) struct Running {
    task: TaskMetrics,
    since: std::time::Instant,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.task.running.dec();
        let took = self.since.elapsed();
        self.task.run_seconds.observe(took.as_secs_f64());
        self.task.metrics.samples.ran(&self.task.name, took);
        self.task
            .metrics
            .running_total
            .fetch_sub(1, Ordering::Relaxed);
    }
}

/// Serves `/metrics` and `/healthz` on `listener` until `stop`.
pub(crate) fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    upstream: Option<crate::upstream::Health>,
    stop: CancellationToken,
) {
    // Unhealthy while the upstream the tasks are served by does not answer.
    let healthz = move || {
        let down = upstream.as_ref().and_then(crate::upstream::Health::down);
        async move {
            match down {
                None => (axum::http::StatusCode::OK, "ok".to_owned()),
                Some(why) => (
                    axum::http::StatusCode::SERVICE_UNAVAILABLE,
                    format!("the upstream does not answer: {why}"),
                ),
            }
        }
    };
    let app = axum::Router::new()
        .route("/healthz", axum::routing::get(healthz))
        .route(
            "/metrics",
            axum::routing::get(move || {
                let metrics = Arc::clone(&metrics);
                async move {
                    (
                        [(
                            "content-type",
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        metrics.render(),
                    )
                }
            }),
        );
    tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await;
    });
}

/// Binds the metrics address, with an error that says which.
pub(crate) async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener, crate::Error> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| crate::Error::Metrics(format!("cannot listen on {addr}: {e}")))
}

/// Writes this worker's heartbeat every few seconds until `stop`, then removes it.
pub(crate) fn heartbeat(
    broker: Broker,
    metrics: Arc<Metrics>,
    tasks: Vec<String>,
    version: String,
    upstream: Option<crate::upstream::Health>,
    pauses: Arc<crate::pauses::Pauses>,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let id = uuid::Uuid::now_v7().simple().to_string();
    let started_at = SystemTime::now();
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "unknown".to_owned());
    let published = crate::samples::publish(
        broker.jetstream.client(),
        Arc::clone(&metrics.samples),
        id.clone(),
        stop.clone(),
    );
    tokio::spawn(async move {
        let every = broker::WORKER_TTL / 3;
        // A pause or resume is told at once, so that whoever paused a queue can see every
        // worker holds it.
        let mut pause_changes = pauses.changes();
        loop {
            let info = v1::WorkerInfo {
                id: id.clone(),
                host: host.clone(),
                pid: std::process::id(),
                tasks: tasks.clone(),
                running: metrics.running_total.load(Ordering::Relaxed),
                succeeded: metrics.succeeded_total.load(Ordering::Relaxed),
                failed: metrics.failed_total.load(Ordering::Relaxed),
                started_at: Some(started_at.into()),
                heartbeat_at: Some(SystemTime::now().into()),
                version: version.clone(),
                unavailable: upstream
                    .as_ref()
                    .and_then(crate::upstream::Health::down)
                    .map(|why| format!("the upstream does not answer: {why}"))
                    .unwrap_or_default(),
                paused: pauses.describe(&tasks),
            };
            if let Err(e) = broker
                .workers
                .put(&id, prost::Message::encode_to_vec(&info).into())
                .await
            {
                tracing::debug!(error = %e, "heartbeat not written");
            }
            tokio::select! {
                () = stop.cancelled() => break,
                () = tokio::time::sleep(every) => {}
                _ = pause_changes.changed() => {}
            }
        }
        let _ = tokio::time::timeout(Duration::from_secs(2), broker.workers.purge(&id)).await;
        let _ = published.await;
    })
}
