//! Fault drills: real processes, real signals, real restarts, and a count of what became of every
//! accepted task. `taskwire-chaos` runs them at full size (`make chaos`); the test suite runs
//! them small.
//!
//! A task counts as lost when its Submit was acknowledged but it has neither a result nor a dead
//! letter when the drill ends. Duplicate results are counted from the log the test workers keep
//! of every result they stored, and the results stream must hold exactly one message per task
//! with a result.

use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use taskwire::examples::chaos::v1::{SleepArgs, SleepResult};
use taskwire::task::Id;
use taskwire::v1::TaskState;
use taskwire_client::{Client, SubmitOptions};
use taskwire_protocol::{self as broker, subject};
use tokio::process::{Child, Command};

use crate::{Gateway, NatsServer, bin};

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
        other => anyhow::bail!("no drill named {other}; the drills are {SCENARIOS:?}"),
    };
    report.seconds = (started.elapsed().as_secs_f64() * 1000.0).round() / 1000.0;
    Ok(report)
}

/// A test worker process (magic and chaos services).
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

/// Waits until every accepted task has a result or a dead letter (or `limit` passes), then
/// counts.
async fn settle(
    scenario: &'static str,
    nats: &str,
    ids: &[String],
    refused: usize,
    limit: Duration,
) -> anyhow::Result<Report> {
    let client = async_nats::connect(broker::servers(nats)).await?;
    let js = async_nats::jetstream::new(client.clone());
    let deadline = Instant::now() + limit;
    loop {
        let results = stream_state(&js, broker::RESULTS_STREAM)
            .await?
            .state
            .messages;
        if results as usize >= ids.len() || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut report = Report {
        scenario,
        submitted: ids.len(),
        succeeded: 0,
        failed: 0,
        lost: 0,
        duplicate_results: 0,
        results_in_stream: 0,
        logged_results: 0,
        refused,
        duplicate_dead_letters: 0,
        stray_dead_letters: 0,
        key_mismatches: 0,
        most_at_once: 0,
        seconds: 0.0,
    };
    let mut succeeded = std::collections::HashSet::new();
    for id in ids {
        let id = Id::parse(id)?;
        let result = patiently(|| async {
            Ok(
                broker::last_message(&client, broker::RESULTS_STREAM, &subject::result_of(&id))
                    .await?,
            )
        })
        .await?;
        let state = result.map(|m| broker::task_info(&id, &m.headers, &m.payload, m.time).state());
        match state {
            Some(TaskState::Succeeded) => {
                report.succeeded += 1;
                succeeded.insert(id.to_string());
            }
            Some(_) => report.failed += 1,
            None => {
                let dead =
                    patiently(|| leader_read(&js, broker::DEAD_STREAM, subject::dead_of(&id)))
                        .await?;
                if dead.is_some() {
                    report.failed += 1;
                } else {
                    report.lost += 1;
                    if report.lost <= 3 {
                        // What the broker last heard of it, to tell a task never delivered
                        // from one stuck in a worker.
                        let event = broker::last_message(
                            &client,
                            broker::EVENTS_STREAM,
                            &subject::events_of(&id),
                        )
                        .await
                        .ok()
                        .flatten()
                        .map(|e| broker::task_info(&id, &e.headers, &e.payload, e.time));
                        eprintln!("{scenario}: task {id} lost; its last event: {event:?}");
                    }
                }
            }
        }
    }
    if report.lost > 0 {
        // Where the lost tasks may be: still in the tasks stream, and what its consumers say.
        let tasks = stream_state(&js, broker::TASKS_STREAM).await?;
        eprintln!(
            "{scenario}: tasks stream: {} messages, sequences {}..{}, leader {:?}",
            tasks.state.messages,
            tasks.state.first_sequence,
            tasks.state.last_sequence,
            tasks.cluster.and_then(|c| c.leader)
        );
        let stream = js.get_stream(broker::TASKS_STREAM).await?;
        let mut names = stream.consumer_names();
        while let Some(Ok(name)) = names.next().await {
            let consumer: Result<async_nats::jetstream::consumer::PullConsumer, _> =
                stream.get_consumer(&name).await;
            if let Ok(mut consumer) = consumer
                && let Ok(info) = consumer.info().await
                && (info.num_pending > 0 || info.num_ack_pending > 0)
            {
                eprintln!(
                    "{scenario}: consumer {name}: pending {}, ack pending {}, redelivered {}, waiting {}, delivered {}, ack floor {}, leader {:?}",
                    info.num_pending,
                    info.num_ack_pending,
                    info.num_redelivered,
                    info.num_waiting,
                    info.delivered.stream_sequence,
                    info.ack_floor.stream_sequence,
                    info.cluster.as_ref().and_then(|c| c.leader.clone())
                );
            }
        }
    }
    let state = stream_state(&js, broker::RESULTS_STREAM).await?.state;
    report.results_in_stream = state.messages;
    // One dead letter per task: each is kept on its own subject.
    let mut dead = js
        .get_stream(broker::DEAD_STREAM)
        .await?
        .info_with_subjects(subject::DEAD)
        .await?;
    while let Some(Ok((on, count))) = dead.next().await {
        if count > 1 {
            report.duplicate_dead_letters += 1;
        }
        // taskwire.dead.<id>.<token>
        if on
            .split('.')
            .nth(2)
            .is_some_and(|id| succeeded.contains(id))
        {
            report.stray_dead_letters += 1;
        }
    }
    // The workers' own account: a task id logged twice was given two results. A worker logs
    // right after the result's PubAck, so give the last lines a moment to arrive.
    let log = execution_log(nats);
    let stored = report.succeeded + report.failed;
    let mut logged = String::new();
    let log_deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < log_deadline {
        logged = std::fs::read_to_string(&log).unwrap_or_default();
        if logged.lines().count() >= stored {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = std::fs::remove_file(&log);
    let mut counts = std::collections::HashMap::<&str, u64>::new();
    for id in logged.lines().filter(|l| !l.is_empty()) {
        *counts.entry(id).or_default() += 1;
    }
    let logged_twice = counts.values().filter(|n| **n > 1).count() as u64;
    report.duplicate_results = logged_twice;
    report.logged_results = counts.len();
    Ok(report)
}

/// Three workers; one of them is killed with SIGKILL and started again, three times, while the
/// tasks run.
async fn worker_sigkill(n: usize) -> anyhow::Result<Report> {
    let nats = NatsServer::start_temporary().await?;
    let gateway = Gateway::start(&nats.url()).await?;
    let mut workers = [
        worker(&nats.url(), "1s", 50)?,
        worker(&nats.url(), "1s", 50)?,
        worker(&nats.url(), "1s", 50)?,
    ];
    let client = Client::connect(gateway.url()).await?;
    let load = Load::start(&client, n, 20);
    for round in 0..3 {
        load.reached(n * (round + 1) / 4).await;
        let victim = &mut workers[round % 3];
        signal(victim, nix::sys::signal::Signal::SIGKILL);
        let _ = victim.wait().await;
        *victim = worker(&nats.url(), "1s", 50)?;
    }
    let (ids, refused) = load.finish().await?;
    settle(
        "worker_sigkill",
        &nats.url(),
        &ids,
        refused,
        Duration::from_secs(120),
    )
    .await
}

/// Tasks five times longer than the ack wait (10 s against 2 s) on a live worker: each runs once.
async fn long_task(n: usize) -> anyhow::Result<Report> {
    let nats = NatsServer::start_temporary().await?;
    let gateway = Gateway::start(&nats.url()).await?;
    let _worker = worker(&nats.url(), "2s", n.min(2000))?;
    let client = Client::connect(gateway.url()).await?;
    let (ids, refused) = submit(&client, n, 10_000, 256).await?;
    let report = settle(
        "long_task",
        &nats.url(),
        &ids,
        refused,
        Duration::from_secs(120),
    )
    .await?;
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await?);
    let redelivered = patiently(|| async {
        let mut consumer: async_nats::jetstream::consumer::PullConsumer = js
            .get_stream(broker::TASKS_STREAM)
            .await?
            .get_consumer("examples-chaos-v1-Chaos-Sleep")
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(consumer.info().await?.num_redelivered)
    })
    .await?;
    anyhow::ensure!(
        redelivered == 0,
        "{redelivered} long tasks were redelivered to another run"
    );
    Ok(report)
}

/// nats-server killed with SIGKILL under load and started again on the same store.
async fn nats_restart(n: usize) -> anyhow::Result<Report> {
    let mut nats = NatsServer::start_temporary().await?;
    let gateway = Gateway::start(&nats.url()).await?;
    let _workers = [
        worker(&nats.url(), "2s", 50)?,
        worker(&nats.url(), "2s", 50)?,
    ];
    let client = Client::connect(gateway.url()).await?;
    let load = Load::start(&client, n, 10);
    load.reached(n / 3).await;
    nats.kill().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    nats.restart().await?;
    let (ids, refused) = load.finish().await?;
    settle(
        "nats_restart",
        &nats.url(),
        &ids,
        refused,
        Duration::from_secs(120),
    )
    .await
}

/// A backlog of five times `n` tasks, and nats-server killed (SIGKILL) and started again, 20
/// times at full size (3 when small): after each restart every worker starts tasks again within
/// 30 s (a pull never hangs on a connection that died), and in the end nothing is lost.
async fn nats_kill_loop(n: usize) -> anyhow::Result<Report> {
    let full = n >= 5000;
    let (restarts, millis, concurrency) = if full { (20, 200, 64) } else { (3, 100, 8) };
    let mut nats = NatsServer::start_temporary().await?;
    let gateway = Gateway::start(&nats.url()).await?;
    let runs = std::env::temp_dir().join(format!(
        "taskwire-drill-{}-runs-{}.log",
        std::process::id(),
        broker::now_micros()
    ));
    let log = runs.display().to_string();
    let concurrency = concurrency.to_string();
    let start = |nats: &str| {
        crate::worker_process(
            nats,
            &[
                ("TASKWIRE_RUN_LOG", log.as_str()),
                ("TASKWIRE_ACK_WAIT", "2s"),
                ("TASKWIRE_CONCURRENCY", concurrency.as_str()),
                ("TASKWIRE_LOG", "error"),
            ],
        )
    };
    let workers = [start(&nats.url())?, start(&nats.url())?];
    let pids: Vec<u32> = workers.iter().filter_map(Child::id).collect();
    taskwire_cli::stack::wait_for_task(&gateway.url(), SLEEP, Duration::from_secs(30)).await?;
    let client = Client::connect(gateway.url()).await?;
    let (ids, refused) = submit(&client, 5 * n, millis, 64).await?;
    for round in 1..=restarts {
        let since = broker::now_micros();
        nats.kill().await;
        nats.restart().await?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let text = std::fs::read_to_string(&runs).unwrap_or_default();
            let started: Vec<u32> = text
                .lines()
                .filter_map(|line| {
                    let parts: Vec<&str> = line.split(' ').collect();
                    let (event, micros, pid) = (parts.first()?, parts.get(3)?, parts.get(4)?);
                    (*event == "start" && micros.parse::<u64>().ok()? > since)
                        .then(|| pid.parse().ok())
                        .flatten()
                })
                .collect();
            let idle: Vec<&u32> = pids.iter().filter(|p| !started.contains(p)).collect();
            if idle.is_empty() {
                break;
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "after restart {round} of nats-server, worker(s) {idle:?} started no task within 30 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let report = settle(
        "nats_kill_loop",
        &nats.url(),
        &ids,
        refused,
        Duration::from_secs(if full { 600 } else { 120 }),
    )
    .await;
    drop(workers);
    let _ = std::fs::remove_file(&runs);
    report
}

/// The gateway process killed with SIGKILL while submits are in flight, then started again;
/// clients retry with their idempotency keys.
async fn gateway_sigkill(n: usize) -> anyhow::Result<Report> {
    let nats = NatsServer::start_temporary().await?;
    let addr = crate::free_port()?;
    let gateway = |nats: &str| -> anyhow::Result<Child> {
        Ok(Command::new(bin("taskwire-gateway")?)
            .env("TASKWIRE_NATS_URL", nats)
            .env("TASKWIRE_GATEWAY_ADDR", format!("127.0.0.1:{addr}"))
            .env("TASKWIRE_LOG", "error")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()?)
    };
    let url = format!("http://127.0.0.1:{addr}");
    let mut process = gateway(&nats.url())?;
    let _workers = [
        worker(&nats.url(), "2s", 50)?,
        worker(&nats.url(), "2s", 50)?,
    ];
    taskwire_cli::stack::wait_for_task(&url, SLEEP, Duration::from_secs(30)).await?;
    let client = Client::connect(url.clone()).await?;
    let load = Load::start(&client, n, 10);
    load.reached(n / 3).await;
    signal(&process, nix::sys::signal::Signal::SIGKILL);
    let _ = process.wait().await;
    process = gateway(&nats.url())?;
    let (ids, refused) = load.finish().await?;
    let report = settle(
        "gateway_sigkill",
        &nats.url(),
        &ids,
        refused,
        Duration::from_secs(120),
    )
    .await;
    drop(process);
    report
}

/// Messages that are not tasks, published straight to a task subject among real tasks: they
/// become dead letters and the worker goes on.
async fn poison(n: usize) -> anyhow::Result<Report> {
    let nats = NatsServer::start_temporary().await?;
    let gateway = Gateway::start(&nats.url()).await?;
    let _worker = worker(&nats.url(), "2s", 50)?;
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await?);
    let poison = (n / 10).max(1);
    for i in 0..poison {
        js.publish(
            "taskwire.tasks.examples.chaos.v1.Chaos.Sleep",
            format!("poison {i}").into(),
        )
        .await?
        .await?;
    }
    let client = Client::connect(gateway.url()).await?;
    let (ids, refused) = submit(&client, n, 1, 64).await?;
    let report = settle(
        "poison",
        &nats.url(),
        &ids,
        refused,
        Duration::from_secs(120),
    )
    .await?;
    let dead = client.dead_letters("", 1000).await?;
    anyhow::ensure!(
        dead.iter().filter(|d| d.reason == "poison").count() == poison.min(1000),
        "not every poison message became a dead letter"
    );
    Ok(report)
}

/// SIGTERM to a worker with tasks in flight: they finish, or go to the other worker.
async fn worker_sigterm(n: usize) -> anyhow::Result<Report> {
    let nats = NatsServer::start_temporary().await?;
    let gateway = Gateway::start(&nats.url()).await?;
    let mut first = worker(&nats.url(), "30s", 50)?;
    let _second = worker(&nats.url(), "30s", 50)?;
    let client = Client::connect(gateway.url()).await?;
    let load = Load::start(&client, n, 50);
    load.reached(n / 3).await;
    signal(&first, nix::sys::signal::Signal::SIGTERM);
    let status = first.wait().await?;
    anyhow::ensure!(
        status.success(),
        "the worker did not exit cleanly: {status}"
    );
    let (ids, refused) = load.finish().await?;
    settle(
        "worker_sigterm",
        &nats.url(),
        &ids,
        refused,
        Duration::from_secs(120),
    )
    .await
}

/// A queue limit: submits beyond it are refused, every accepted task completes.
async fn stream_full(n: usize) -> anyhow::Result<Report> {
    let nats = NatsServer::start_temporary().await?;
    let mut config = crate::examples_config(&nats.url());
    config.broker.max_queued = (n / 2).max(1) as i64;
    let gateway = Gateway::start_with(config).await?;
    let client = Client::connect(gateway.url()).await?;
    let (ids, refused) = submit(&client, n, 1, 64).await?;
    anyhow::ensure!(refused > 0, "no submit was refused by a full queue");
    let _worker = worker(&nats.url(), "2s", 50)?;
    settle(
        "stream_full",
        &nats.url(),
        &ids,
        refused,
        Duration::from_secs(120),
    )
    .await
}

/// A three-node cluster with every stream at three replicas: the tasks stream's leader is killed
/// with SIGKILL under load, then brought back.
async fn cluster_leader_kill(n: usize) -> anyhow::Result<Report> {
    let mut cluster = crate::NatsCluster::start_temporary(3).await?;
    let urls = cluster.urls();
    let mut config = taskwire_gateway::Config::new(urls.clone());
    config.broker.replicas = 3;
    let gateway = Gateway::start_with(config).await?;
    let _workers = [
        worker_with(&urls, "2s", 50, 3)?,
        worker_with(&urls, "2s", 50, 3)?,
    ];
    taskwire_cli::stack::wait_for_task(&gateway.url(), SLEEP, Duration::from_secs(30)).await?;
    let client = Client::connect(gateway.url()).await?;
    let load = Load::start(&client, n, 10);
    load.reached(n / 3).await;
    let js = async_nats::jetstream::new(async_nats::connect(broker::servers(&urls)).await?);
    let leader = patiently(|| async {
        stream_state(&js, broker::TASKS_STREAM)
            .await?
            .cluster
            .and_then(|c| c.leader)
            .ok_or_else(|| anyhow::anyhow!("the tasks stream has no leader"))
    })
    .await?;
    let node = cluster
        .server_mut(&leader)
        .ok_or_else(|| anyhow::anyhow!("no server named {leader}"))?;
    node.kill().await;
    load.reached(2 * n / 3).await;
    node.restart().await?;
    let (ids, refused) = load.finish().await?;
    settle(
        "cluster_leader_kill",
        &urls,
        &ids,
        refused,
        Duration::from_secs(120),
    )
    .await
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

/// Delayed tasks that fail for good (half with a permanent error, half by using up their two
/// attempts) and a schedule whose every tick fails, while a worker is killed (SIGKILL) and
/// started again: every one ends failed with exactly one dead letter.
async fn delayed_failures(n: usize) -> anyhow::Result<Report> {
    use taskwire::examples::chaos::v1::FlakyArgs;
    use taskwire::v1;
    const FLAKY: &str = "examples.chaos.v1.Chaos/Flaky";
    let nats = NatsServer::start_temporary().await?;
    let gateway = Gateway::start(&nats.url()).await?;
    let mut workers = [
        worker(&nats.url(), "2s", 50)?,
        worker(&nats.url(), "2s", 50)?,
    ];
    let client = Client::connect(gateway.url()).await?;
    ready(&client, FLAKY).await?;
    let schedule = v1::Schedule {
        name: "failing-every-second".into(),
        task: FLAKY.into(),
        when: Some(v1::schedule::When::Every(prost_types::Duration {
            seconds: 1,
            nanos: 0,
        })),
        args: Some(v1::schedule::Args::ArgsJson(r#"{"permanent":true}"#.into())),
        ..Default::default()
    };
    client.create_schedule(schedule).await?;
    let mut pending = futures::stream::iter(0..n)
        .map(|i| {
            let client = client.clone();
            async move {
                let args = FlakyArgs {
                    permanent: i % 2 == 0,
                    ..Default::default()
                };
                let options = SubmitOptions::default()
                    .countdown(Duration::from_millis(200 + (i as u64 * 37) % 2800))
                    .max_attempts(2);
                client
                    .submit::<taskwire::examples::chaos::v1::FlakyResult>(FLAKY, &args, options)
                    .await
                    .map(|h| h.id().to_owned())
            }
        })
        .buffer_unordered(64);
    let mut ids = Vec::new();
    while let Some(submitted) = pending.next().await {
        ids.push(submitted?);
        if ids.len() == n / 2 {
            signal(&workers[0], nix::sys::signal::Signal::SIGKILL);
            workers[0] = worker(&nats.url(), "2s", 50)?;
        }
    }
    // Let the delays run out and the schedule tick a few more times, then stop it.
    tokio::time::sleep(Duration::from_secs(4)).await;
    client.delete_schedule("failing-every-second").await?;
    // Every task of the type, the schedule's included: each has a queued or scheduled event.
    let nc = async_nats::connect(broker::servers(&nats.url())).await?;
    let js = async_nats::jetstream::new(nc);
    let mut events = js
        .get_stream(broker::EVENTS_STREAM)
        .await?
        .info_with_subjects("taskwire.events.*.examples.chaos.v1.Chaos.Flaky")
        .await?;
    let mut all: std::collections::BTreeSet<String> = ids.iter().cloned().collect();
    while let Some(Ok((subject, _))) = events.next().await {
        if let Some(id) = subject.split('.').nth(2) {
            all.insert(id.to_owned());
        }
    }
    let all: Vec<String> = all.into_iter().collect();
    let mut report = settle(
        "delayed_failures",
        &nats.url(),
        &all,
        0,
        Duration::from_secs(120),
    )
    .await?;
    // Failing tasks are the point here: succeeded would be wrong.
    report.lost += report.succeeded;
    Ok(report)
}

/// Keyed tasks submitted, nats-server killed and started again, and every key submitted again:
/// each answers its first task (as a duplicate), and each task has one result.
async fn keys_across_restart(n: usize) -> anyhow::Result<Report> {
    let mut nats = NatsServer::start_temporary().await?;
    let gateway = Gateway::start(&nats.url()).await?;
    let _workers = [worker(&nats.url(), "2s", 50)?];
    let client = Client::connect(gateway.url()).await?;
    ready(&client, SLEEP).await?;
    let run = format!("{:x}", broker::now_micros());
    let submit_all = |client: Client| {
        let run = run.clone();
        async move {
            let mut pending = futures::stream::iter(0..n)
                .map(|i| {
                    let client = client.clone();
                    let key = format!("{run}-{i}");
                    async move {
                        let deadline = Instant::now() + Duration::from_secs(60);
                        let args = SleepArgs {
                            millis: 1,
                            label: i.to_string(),
                        };
                        loop {
                            let options = SubmitOptions::default().idempotency_key(key.clone());
                            let submitted = client
                                .submit_raw(
                                    SLEEP,
                                    taskwire::v1::submit_request::Args::ArgsProto(
                                        prost::Message::encode_to_vec(&args),
                                    ),
                                    options,
                                )
                                .await;
                            match submitted {
                                Ok(answer) => return Ok((i, answer)),
                                Err(_) if Instant::now() < deadline => {
                                    tokio::time::sleep(Duration::from_millis(100)).await;
                                }
                                Err(e) => return Err(anyhow::Error::from(e)),
                            }
                        }
                    }
                })
                .buffer_unordered(64);
            let mut answers = vec![None; n];
            while let Some(answer) = pending.next().await {
                let (i, answer) = answer?;
                answers[i] = Some(answer);
            }
            anyhow::Ok(answers)
        }
    };
    let first = submit_all(client.clone()).await?;
    nats.kill().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    nats.restart().await?;
    let again = submit_all(client.clone()).await?;
    let mut mismatches = 0;
    for (first, again) in first.iter().zip(&again) {
        match (first, again) {
            (Some(first), Some(again)) if first.task_id == again.task_id && again.duplicate => {}
            _ => mismatches += 1,
        }
    }
    let ids: Vec<String> = first.into_iter().flatten().map(|a| a.task_id).collect();
    let mut report = settle(
        "keys_across_restart",
        &nats.url(),
        &ids,
        0,
        Duration::from_secs(120),
    )
    .await?;
    report.key_mismatches = mismatches;
    Ok(report)
}

/// Tasks of a type with a concurrency limit of 5 on three workers, and nats-server stopped
/// (SIGSTOP) for 25 s, longer than a slot's lease, then let go on: never more than five run at
/// once (a task whose slot could not be refreshed is stopped before its lease runs out), and
/// nothing is lost.
async fn outage_under_limit(n: usize) -> anyhow::Result<Report> {
    const LIMITED: &str = "examples.chaos.v1.Chaos/Limited";
    let nats = NatsServer::start_temporary().await?;
    let gateway = Gateway::start(&nats.url()).await?;
    let temp = tempfile::tempdir()?;
    let run_log = temp.path().join("runs.log");
    let run_log_text = run_log.display().to_string();
    let log = execution_log(&nats.url()).display().to_string();
    let mut workers = Vec::new();
    for _ in 0..3 {
        workers.push(crate::worker_process(
            &nats.url(),
            &[
                ("TASKWIRE_EXECUTION_LOG", &log),
                ("TASKWIRE_RUN_LOG", &run_log_text),
                ("TASKWIRE_ACK_WAIT", "5s"),
                ("TASKWIRE_GRACE", "2s"),
                ("TASKWIRE_CONCURRENCY", "10"),
                ("TASKWIRE_LOG", "error"),
            ],
        )?);
    }
    let client = Client::connect(gateway.url()).await?;
    ready(&client, LIMITED).await?;
    let mut pending = futures::stream::iter(0..n)
        .map(|i| {
            let client = client.clone();
            async move {
                let args = SleepArgs {
                    millis: 2_000 + (i as u64 % 5) * 500,
                    label: i.to_string(),
                };
                client
                    .submit::<SleepResult>(LIMITED, &args, SubmitOptions::default())
                    .await
                    .map(|h| h.id().to_owned())
            }
        })
        .buffer_unordered(64);
    let mut ids = Vec::new();
    while let Some(submitted) = pending.next().await {
        ids.push(submitted?);
    }
    // Mid-run: the limit is full of running tasks.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let pid = nats
        .pid()
        .ok_or_else(|| anyhow::anyhow!("nats-server is not running"))?;
    let pid = nix::unistd::Pid::from_raw(pid as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP)?;
    tokio::time::sleep(Duration::from_secs(25)).await;
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT)?;
    let mut report = settle(
        "outage_under_limit",
        &nats.url(),
        &ids,
        0,
        Duration::from_secs(60 + n as u64),
    )
    .await?;
    let runs = crate::runtime::read_runs(&run_log)?;
    let mut changes: Vec<(std::time::SystemTime, i64)> = Vec::new();
    for run in runs.values().flatten() {
        changes.push((run.start, 1));
        changes.push((run.end.unwrap_or(run.start), -1));
    }
    changes.sort();
    let (mut now, mut most) = (0i64, 0i64);
    for (_, change) in changes {
        now += change;
        most = most.max(now);
    }
    report.most_at_once = most as usize;
    drop(workers);
    Ok(report)
}
