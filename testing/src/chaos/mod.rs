//! Fault drills: real processes, real signals, real restarts, and a count of what became of every
//! accepted task. `taskwire-chaos` runs them at full size (`make chaos`); the test suite runs
//! them small.
//!
//! A task counts as lost when its Submit was acknowledged but it has neither a result nor a dead
//! letter when the drill ends. Duplicate results are counted from the log the test workers keep
//! of every result they stored, and the results stream must hold exactly one message per task
//! with a result.

mod accounting;
mod faults;
mod meetings;
mod processes;
mod workflows;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use taskwire::task::Id;
use taskwire::v1::TaskState;
use taskwire_client::{Client, SubmitOptions};
use taskwire_examples::chaos::v1::{SleepArgs, SleepResult};
use taskwire_protocol::{self as broker, subject};
use tokio::process::Child;

use crate::{Gateway, NatsServer};
use accounting::settle;
use faults::{cluster_leader_kill, nats_kill_loop, nats_restart, stream_full};
use meetings::{delayed_failures, keys_across_restart, outage_under_limit};
use processes::{gateway_sigkill, long_task, poison, worker_sigkill, worker_sigterm};
use workflows::workflow_chords;

const SLEEP: &str = "examples.chaos.v1.Chaos/Sleep";

/// What became of the tasks of one drill.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
    /// The drill's name.
    pub scenario: &'static str,
    /// Tasks whose Submit was acknowledged.
    pub submitted: usize,
    /// Of those, tasks that succeeded.
    pub succeeded: usize,
    /// Of those, tasks that failed (with a dead letter).
    pub failed: usize,
    /// Of those, tasks with neither a result nor a dead letter.
    pub lost: usize,
    /// Tasks whose result was stored more than once, by the workers' log (a worker logs a result
    /// once its PubAck confirms it was stored).
    pub duplicate_results: u64,
    /// Messages in the results stream: one per task that has a result.
    pub results_in_stream: u64,
    /// Tasks the workers' log says they stored a result for.
    pub logged_results: usize,
    /// Submits refused (for the full-queue drill).
    pub refused: usize,
    /// Tasks with more than one dead letter.
    pub duplicate_dead_letters: usize,
    /// Dead letters of tasks that succeeded.
    pub stray_dead_letters: usize,
    /// Idempotency keys that, submitted again, did not answer their first task (for the keys
    /// drill).
    pub key_mismatches: usize,
    /// The most tasks of a type with a concurrency limit that ran at once (for the outage
    /// drill; its limit is 5).
    pub most_at_once: usize,
    /// How long the drill took.
    pub seconds: f64,
}

/// Every drill, by name.
pub const SCENARIOS: &[&str] = &[
    "worker_sigkill",
    "long_task",
    "nats_restart",
    "gateway_sigkill",
    "poison",
    "worker_sigterm",
    "stream_full",
    "cluster_leader_kill",
    "nats_kill_loop",
    "delayed_failures",
    "keys_across_restart",
    "outage_under_limit",
    "workflow_chords",
];

/// Runs one drill with `tasks` tasks.
pub async fn run(scenario: &str, tasks: usize) -> anyhow::Result<Report> {
    let started = Instant::now();
    let mut report = match scenario {
        "worker_sigkill" => worker_sigkill(tasks).await?,
        "long_task" => long_task(tasks).await?,
        "nats_restart" => nats_restart(tasks).await?,
        "gateway_sigkill" => gateway_sigkill(tasks).await?,
        "poison" => poison(tasks).await?,
        "worker_sigterm" => worker_sigterm(tasks).await?,
        "stream_full" => stream_full(tasks).await?,
        "cluster_leader_kill" => cluster_leader_kill(tasks).await?,
        "nats_kill_loop" => nats_kill_loop(tasks).await?,
        "delayed_failures" => delayed_failures(tasks).await?,
        "keys_across_restart" => keys_across_restart(tasks).await?,
        "outage_under_limit" => outage_under_limit(tasks).await?,
        "workflow_chords" => workflow_chords(tasks).await?,
        other => anyhow::bail!("no drill named {other}; the drills are {SCENARIOS:?}"),
    };
    report.seconds = (started.elapsed().as_secs_f64() * 1000.0).round() / 1000.0;
    Ok(report)
}

/// A test worker process (magic, chaos and flow services).
fn worker(nats: &str, ack_wait: &str, concurrency: usize) -> anyhow::Result<Child> {
    worker_with(nats, ack_wait, concurrency, 1)
}

/// Where the workers of the drill on `nats` log the results they store.
fn execution_log(nats: &str) -> std::path::PathBuf {
    let name: String = nats
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .take(80)
        .collect();
    std::env::temp_dir().join(format!("taskwire-drill-{}-{name}.log", std::process::id()))
}

fn worker_with(
    nats: &str,
    ack_wait: &str,
    concurrency: usize,
    replicas: usize,
) -> anyhow::Result<Child> {
    let log = execution_log(nats).display().to_string();
    let (replicas, concurrency) = (replicas.to_string(), concurrency.to_string());
    crate::worker_process(
        nats,
        &[
            ("TASKWIRE_EXECUTION_LOG", &log),
            ("TASKWIRE_REPLICAS", &replicas),
            ("TASKWIRE_ACK_WAIT", ack_wait),
            ("TASKWIRE_GRACE", "30s"),
            ("TASKWIRE_CONCURRENCY", &concurrency),
            ("TASKWIRE_LOG", "error"),
        ],
    )
}

fn signal(child: &Child, signal: nix::sys::signal::Signal) {
    if let Some(pid) = child.id() {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), signal);
    }
}

/// Submits `n` Sleep tasks, each with its own idempotency key, retrying a submit that failed
/// for a passing reason with the same key (so a retry never makes a second task). Returns the
/// ids of the accepted tasks and how many were refused for good (a full queue).
async fn submit(
    client: &Client,
    n: usize,
    millis: u64,
    in_flight: usize,
) -> anyhow::Result<(Vec<String>, usize)> {
    submit_counted(client, n, millis, in_flight, &Arc::default()).await
}

async fn submit_counted(
    client: &Client,
    n: usize,
    millis: u64,
    in_flight: usize,
    accepted: &Arc<AtomicUsize>,
) -> anyhow::Result<(Vec<String>, usize)> {
    let run = format!("{:x}", broker::now_micros());
    let mut pending = futures::stream::iter(0..n)
        .map(|i| {
            let client = client.clone();
            let key = format!("{run}-{i}");
            async move {
                let deadline = Instant::now() + Duration::from_secs(60);
                let args = SleepArgs {
                    millis,
                    label: i.to_string(),
                };
                loop {
                    let options = SubmitOptions::default().idempotency_key(key.clone());
                    match client.submit::<SleepResult>(SLEEP, &args, options).await {
                        Ok(handle) => return Some(Ok(handle.id().to_owned())),
                        Err(e) if e.code() == Some(tonic::Code::ResourceExhausted) => {
                            return Some(Err(()));
                        }
                        Err(_) if Instant::now() < deadline => {
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                        Err(_) => return None,
                    }
                }
            }
        })
        .buffer_unordered(in_flight.max(1));
    let (mut ids, mut refused) = (Vec::new(), 0);
    while let Some(outcome) = pending.next().await {
        match outcome {
            Some(Ok(id)) => {
                ids.push(id);
                accepted.fetch_add(1, Ordering::Relaxed);
            }
            Some(Err(())) => refused += 1,
            None => {}
        }
    }
    Ok((ids, refused))
}

/// Tasks being submitted in the background, so that faults strike mid-load.
struct Load {
    accepted: Arc<AtomicUsize>,
    handle: tokio::task::JoinHandle<anyhow::Result<(Vec<String>, usize)>>,
}

impl Load {
    fn start(client: &Client, n: usize, millis: u64) -> Self {
        let accepted = Arc::new(AtomicUsize::new(0));
        let handle = tokio::spawn({
            let (client, accepted) = (client.clone(), Arc::clone(&accepted));
            async move { submit_counted(&client, n, millis, 64, &accepted).await }
        });
        Self { accepted, handle }
    }

    /// Waits until `k` tasks were accepted (or the load ended).
    async fn reached(&self, k: usize) {
        while self.accepted.load(Ordering::Relaxed) < k && !self.handle.is_finished() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    async fn finish(self) -> anyhow::Result<(Vec<String>, usize)> {
        self.handle.await?
    }
}

/// Retries a broker query for up to 60 s: in a cluster, answers stop for a while when a leader
/// is elected again, and a loaded machine answers slowly.
async fn patiently<T, F, Fut>(mut query: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match query().await {
            Ok(value) => return Ok(value),
            Err(e) if Instant::now() > deadline => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
}

/// The last message on `subject`, read from the stream's leader.
async fn leader_read(
    js: &async_nats::jetstream::Context,
    stream: &str,
    subject: String,
) -> anyhow::Result<Option<async_nats::jetstream::message::StreamMessage>> {
    use async_nats::jetstream::stream::LastRawMessageErrorKind;
    match js
        .get_stream(stream)
        .await?
        .get_last_raw_message_by_subject(&subject)
        .await
    {
        Ok(message) => Ok(Some(message)),
        Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(None),
        Err(e) => Err(e.into()),
    }
}

async fn stream_state(
    js: &async_nats::jetstream::Context,
    stream: &str,
) -> anyhow::Result<async_nats::jetstream::stream::Info> {
    patiently(|| async { Ok(js.get_stream(stream).await?.get_info().await?) }).await
}

/// Waits until the gateway knows `task` (a worker registered it).
async fn ready(client: &Client, task: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !client
        .task_types()
        .await
        .is_ok_and(|t| t.iter().any(|t| t.name == task))
    {
        anyhow::ensure!(Instant::now() < deadline, "no worker registered {task}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}
