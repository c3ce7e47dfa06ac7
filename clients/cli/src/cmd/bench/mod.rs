//! `taskwire bench`: pushes tasks through a real gateway and worker and prints one JSON object
//! with throughput, latency, memory and, for scale, the same task flow done with bare async-nats
//! against the same server in the same run.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use taskwire_supervisor::{NatsCluster, NatsServer};

mod backlog;
mod compare;
mod cpu;
mod find;
mod floor;
mod gateways;
mod idle;
mod keys;
mod load;
mod raw;
mod stack;
mod types;
mod workflows;

use compare::{Settings, interleaved};
use idle::idle_messages;
use load::{roundtrips, submit_many};
use stack::{Stack, WorkerKind};

/// The backlog a large one's drain rate is compared with.
const SMALL_BACKLOG: usize = 10_000;

const TASK: &str = "examples.magic.v1.Magic/Add";

/// Flags of `taskwire bench`.
#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    /// Tasks to push through in each round.
    #[arg(long, default_value_t = 100_000)]
    pub tasks: usize,
    /// Rounds of taskwire and then the bare async-nats flow, interleaved; figures are their
    /// medians.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Tasks in flight at once (concurrent submit-and-wait loops).
    #[arg(long, default_value_t = 256)]
    pub concurrency: usize,
    /// Tasks the worker runs at once.
    #[arg(long, default_value_t = 256)]
    pub worker_concurrency: usize,
    /// Sequential round trips measured one task at a time.
    #[arg(long, default_value_t = 300)]
    pub roundtrips: usize,
    /// Then store this many tasks with SubmitMany (0: skip) and time it.
    #[arg(long, default_value_t = 0)]
    pub submit_many: usize,
    /// Tasks per SubmitMany call.
    #[arg(long, default_value_t = 10_000)]
    pub submit_many_batch: usize,
    /// Use this nats-server instead of starting one.
    #[arg(long)]
    pub nats_url: Option<String>,
    /// Print JSON only (the default prints JSON too, with progress on stderr).
    #[arg(long)]
    pub json: bool,
    /// Then store this many tasks while no worker runs and time one worker draining them,
    /// against a backlog of 10,000 (0: skip).
    #[arg(long, default_value_t = 0)]
    pub backlog: usize,
    /// Then leave the worker idle this long and count the messages it sends the server
    /// (0: skip; only with the nats-server the benchmark starts).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub idle: Duration,
    /// Then limit the example task to one running per value of a field and push this many
    /// tasks through, each with a value of its own, measuring what the keys cost (0: skip).
    #[arg(long, default_value_t = 10_000)]
    pub limit_keys: usize,
    /// Then fill the broker with the records this many finished tasks leave, 12 of them
    /// failed, and time listing the failed ones (0: skip).
    #[arg(long, default_value_t = 1_000_000)]
    pub list_among: usize,
    /// Then start a worker serving this many more task types and measure what they cost
    /// (0: skip).
    #[arg(long, default_value_t = 0)]
    pub task_types: usize,
    /// Then the same tasks through the Python example worker (this script, e.g.
    /// clients/python/examples/worker.py), run by `--python`.
    #[arg(long)]
    pub python_worker: Option<PathBuf>,
    /// The Python interpreter for `--python-worker`, with the client's dependencies.
    #[arg(long, env = "TASKWIRE_PYTHON", default_value = "python3")]
    pub python: String,
    /// Tasks through the Python worker, and through the TypeScript worker.
    #[arg(long, default_value_t = 20_000)]
    pub python_tasks: usize,
    /// Then the same tasks through the TypeScript example worker (this script, e.g.
    /// clients/typescript/dist/examples/worker.js), run by `--node`.
    #[arg(long)]
    pub typescript_worker: Option<PathBuf>,
    /// Node.js for `--typescript-worker`.
    #[arg(long, env = "TASKWIRE_NODE", default_value = "node")]
    pub node: String,
    /// Then the same flow with Celery and Redis: this script (clients/python/bench/celery_flow.py)
    /// run by `--celery-python`, which prints its tasks per second.
    #[arg(long)]
    pub celery_script: Option<PathBuf>,
    /// The Python interpreter for `--celery-script`, with Celery installed.
    #[arg(long, default_value = "python3")]
    pub celery_python: String,
    /// Tasks through Celery.
    #[arg(long, default_value_t = 20_000)]
    pub celery_tasks: usize,
    /// Then this many tasks through one gateway and as many spread over three (one worker),
    /// counting nats-server's messages per task (0: skip; only with the nats-server the
    /// benchmark starts).
    #[arg(long, default_value_t = 20_000)]
    pub gateways_tasks: usize,
    /// Then the same flow with BullMQ and Redis: this script (bench/bullmq/flow.mjs, its
    /// packages installed beside it) run by `--node`, which prints its tasks per second and
    /// round trips.
    #[arg(long)]
    pub bullmq_script: Option<PathBuf>,
    /// Tasks through BullMQ.
    #[arg(long, default_value_t = 20_000)]
    pub bullmq_tasks: usize,
    /// The BullMQ worker's concurrency.
    #[arg(long, default_value_t = 100)]
    pub bullmq_worker_concurrency: usize,
    /// Then the rounds and round trips again on a three-node cluster with every stream at
    /// three replicas.
    #[arg(long)]
    pub cluster: bool,
    /// Rounds of the workflow figures (a chain and a chord against the same plain tasks); 0
    /// skips them.
    #[arg(long, default_value_t = 20)]
    pub workflow_rounds: usize,
    /// Tasks in each round on the cluster.
    #[arg(long, default_value_t = 20_000)]
    pub cluster_tasks: usize,
}

/// The median of some figures (0 for none).
fn median(values: impl Iterator<Item = f64>) -> f64 {
    let mut values: Vec<f64> = values.collect();
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => 0.0,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

/// Latency percentiles in milliseconds.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

fn round(x: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (x * f).round() / f
}

/// What the machine is: the figures are its, and compare only with others from it.
fn machine() -> Value {
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let memory_gib = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(0.0, |kib| round(kib / 1024.0 / 1024.0, 1));
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|v| v.split_once(':'))
        .map_or("", |(_, name)| name.trim());
    json!({ "cores": cores, "memory_gib": memory_gib, "cpu": cpu })
}

/// What the broker holds, read from the streams' own counts: nothing subscribes to the
/// results meanwhile, so watching costs the system under measure nothing per task.
struct Stored {
    js: async_nats::jetstream::Context,
}

impl Stored {
    /// Messages `stream` holds now.
    async fn count(&self, stream: &str) -> anyhow::Result<u64> {
        let stream = self.js.get_stream(stream).await?;
        Ok(stream.cached_info().state.messages)
    }

    /// Events stored: each task stores two (queued, then the start of its one run); a task
    /// that ran twice stores a third.
    async fn events(&self) -> anyhow::Result<u64> {
        self.count(taskwire_protocol::EVENTS_STREAM).await
    }

    async fn results(&self) -> anyhow::Result<u64> {
        self.count(taskwire_protocol::RESULTS_STREAM).await
    }
}

/// Tasks of `samples` that failed or got a wrong result, and runs beyond one per task, from
/// the events stored before and after them.
fn lost_and_duplicated(samples: &[load::Sample], events: (u64, u64)) -> (usize, u64) {
    let lost = samples.iter().filter(|s| !s.ok).count();
    let expected = 2 * samples.len() as u64;
    (
        lost,
        events.1.saturating_sub(events.0).saturating_sub(expected),
    )
}

/// Runs the benchmark and prints the JSON object on stdout. A SIGTERM or SIGINT stops it, and
/// with it every server and worker it started, whose temporary stores go too.
pub async fn run(options: Options) -> anyhow::Result<()> {
    tokio::select! {
        measured = measure(options) => measured,
        () = taskwire::shutdown_signal() => anyhow::bail!(
            "stopped by a signal before it ended; the servers and workers it started are stopped"
        ),
    }
}

async fn measure(options: Options) -> anyhow::Result<()> {
    let progress = |text: &str| {
        if !options.json {
            eprintln!("bench: {text}");
        }
    };
    let mut own_nats = None;
    let nats_url = match &options.nats_url {
        Some(url) => url.clone(),
        None => {
            let server = NatsServer::start_temporary().await?;
            let url = server.url();
            own_nats = Some(server);
            url
        }
    };
    let nats_pid = own_nats.as_ref().and_then(NatsServer::pid);
    let monitoring = own_nats
        .as_ref()
        .and_then(NatsServer::monitoring_url)
        .map(str::to_owned);
    let mut stack = Stack::start(&nats_url, 1, options.worker_concurrency).await?;
    let rust_worker = WorkerKind::Rust { many_task_types: 0 };
    stack
        .start_worker(&rust_worker, None, Duration::from_secs(30))
        .await?;

    let nats = async_nats::connect(taskwire_protocol::servers(&nats_url)).await?;
    let stored = Stored {
        js: async_nats::jetstream::new(nats.clone()),
    };
    progress("warming up");
    load::load(&stack.client, options.concurrency.min(64), 500).await;
    let events_before = stored.events().await?;

    let compared = interleaved(
        &stack,
        &Settings {
            nats_url: &nats_url,
            servers: &[("nats_server", nats_pid)],
            replicas: 1,
            concurrency: options.concurrency,
            tasks: options.tasks,
            rounds: options.rounds.max(1),
            monitoring: monitoring.as_deref(),
        },
        &progress,
    )
    .await?;
    let events = (events_before, stored.events().await?);
    let mut report = compared.report();
    report.insert("tasks".into(), options.tasks.into());
    report.insert("concurrency".into(), options.concurrency.into());

    progress("round trips, one task at a time");
    round_trips(&mut report, &stack, &nats_url, 1, options.roundtrips).await?;

    progress("gRPC calls that do no work, through the gateway");
    let floor = floor::grpc_call_floor(
        &stack,
        options.tasks,
        options.concurrency,
        options.roundtrips,
    )
    .await?;
    report.insert("grpc_call_floor".into(), floor.into());
    floor_ratios(&mut report);

    if options.submit_many > 0 {
        progress(&format!(
            "SubmitMany: {} tasks, {} a call",
            options.submit_many, options.submit_many_batch
        ));
        let before = stored.results().await?;
        let started = Instant::now();
        let submitted = submit_many(
            &stack.client,
            options.submit_many,
            options.submit_many_batch,
        )
        .await?;
        let submit_seconds = started.elapsed().as_secs_f64();
        // Then until the worker has stored a result for each.
        let deadline = Instant::now() + Duration::from_secs(600);
        while stored.results().await? < before + submitted as u64 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let done_seconds = started.elapsed().as_secs_f64();
        report.insert("submit_many_tasks".into(), submitted.into());
        report.insert("submit_many_batch".into(), options.submit_many_batch.into());
        report.insert(
            "submit_many_tasks_per_sec".into(),
            round(submitted as f64 / submit_seconds, 1).into(),
        );
        report.insert(
            "submit_many_completed_per_sec".into(),
            round(submitted as f64 / done_seconds, 1).into(),
        );
    }
    let (lost, duplicated) = lost_and_duplicated(&compared.samples, events);
    report.insert("lost".into(), lost.into());
    report.insert("duplicated".into(), duplicated.into());

    if let Some(monitoring) = &monitoring
        && !options.idle.is_zero()
    {
        progress("the worker idle");
        let per_second = idle_messages(monitoring, options.idle).await?;
        // The example worker serves one task type.
        report.insert(
            "idle_worker_msgs_per_sec".into(),
            round(per_second, 2).into(),
        );
        report.insert("idle_worker_task_types".into(), 1.into());
    }
    if let Some(monitoring) = &monitoring
        && options.gateways_tasks > 0
    {
        progress("one gateway, then three");
        let figures = gateways::per_gateway_count(
            &stack,
            &nats_url,
            monitoring,
            options.gateways_tasks,
            options.concurrency,
            options.worker_concurrency,
        )
        .await?;
        report.insert("gateways".into(), figures);
    }
    if options.workflow_rounds > 0 {
        progress("a chain and a chord, against the same tasks without a workflow");
        let figures = workflows::overhead(&stack, options.workflow_rounds).await?;
        report.insert("workflows".into(), figures);
    }
    let worker_rss = stack.worker_rss_mib();

    let flows = [
        options.python_worker.as_ref().map(|script| {
            (
                "python_worker",
                WorkerKind::Python {
                    interpreter: options.python.clone(),
                    script: script.clone(),
                },
            )
        }),
        options.typescript_worker.as_ref().map(|script| {
            (
                "typescript_worker",
                WorkerKind::Node {
                    node: options.node.clone(),
                    script: script.clone(),
                },
            )
        }),
    ];
    for (label, kind) in flows.into_iter().flatten() {
        upstream_flow(&mut stack, &options, &mut report, &progress, label, &kind).await?;
    }
    stack.stop_worker().await;

    report.insert(
        "gateway_rss_mib".into(),
        round(stack.gateway_rss_mib(), 1).into(),
    );
    report.insert("worker_rss_mib".into(), round(worker_rss, 1).into());

    if options.backlog > 0 {
        stack.reset_gateway_peak();
        // The same drain from a small backlog first: the large one is measured against it.
        let jetstream = stored.js.clone();
        let spec = stack.rust_worker_spec(0);
        let mut drained = Vec::new();
        for tasks in [SMALL_BACKLOG, options.backlog] {
            progress(&format!("a backlog of {tasks} tasks, stored, then drained"));
            let run = backlog::drain(
                &stack.client,
                &jetstream,
                &spec,
                tasks,
                options.submit_many_batch,
            )
            .await?;
            drained.push(run);
        }
        if let [small, large] = drained.as_slice() {
            report.insert("backlog_tasks".into(), options.backlog.into());
            report.insert(
                "backlog_stored_per_sec".into(),
                round(large.stored_per_sec, 1).into(),
            );
            report.insert(
                "backlog_drained_per_sec".into(),
                round(large.drained_per_sec, 1).into(),
            );
            report.insert(
                "backlog_small_drained_per_sec".into(),
                round(small.drained_per_sec, 1).into(),
            );
            report.insert(
                "backlog_drain_ratio".into(),
                round(large.drained_per_sec / small.drained_per_sec, 3).into(),
            );
            // Peaks while the backlogs were stored and drained.
            report.insert(
                "backlog_gateway_rss_mib".into(),
                round(stack.gateway_rss_mib(), 1).into(),
            );
            report.insert(
                "backlog_worker_rss_mib".into(),
                round(small.worker_rss_mib.max(large.worker_rss_mib), 1).into(),
            );
        }
    }

    if options.limit_keys > 0 {
        let keyed = keys::measure(
            &mut stack,
            &nats_url,
            options.limit_keys,
            options.concurrency,
            monitoring.as_deref(),
            options.idle,
            &progress,
        )
        .await?;
        report.insert("limit_per_key".into(), keyed.into());
    }
    if options.list_among > 0 {
        let found =
            find::measure(&stack.client, &nats_url, options.list_among, 12, &progress).await?;
        report.insert("find_tasks".into(), found.into());
    }
    if options.task_types > 0 {
        let many = types::measure(
            &mut stack,
            options.task_types,
            monitoring.as_deref(),
            options.idle,
            &progress,
        )
        .await?;
        report.insert("many_task_types".into(), many.into());
    }
    stack.stop().await;
    if let Some(mut server) = own_nats {
        server.stop().await;
    }

    if let Some(script) = &options.bullmq_script {
        progress(&format!(
            "{} tasks through BullMQ and Redis",
            options.bullmq_tasks
        ));
        let bullmq = peer_flow(
            &options.node,
            script,
            &[
                "--tasks".into(),
                options.bullmq_tasks.to_string(),
                "--concurrency".into(),
                options.concurrency.to_string(),
                "--worker-concurrency".into(),
                options.bullmq_worker_concurrency.to_string(),
                "--roundtrips".into(),
                options.roundtrips.to_string(),
            ],
        )
        .await?;
        for (key, ours, theirs) in [
            ("rust_worker_to_bullmq", "tasks_per_sec", "tasks_per_sec"),
            (
                "roundtrip_p50_to_bullmq",
                "roundtrip_p50_ms",
                "roundtrip_p50_ms",
            ),
        ] {
            let ours = report.get(ours).and_then(Value::as_f64);
            let theirs = bullmq.get(theirs).and_then(Value::as_f64);
            if let (Some(ours), Some(theirs)) = (ours, theirs)
                && theirs > 0.0
            {
                report.insert(key.into(), round(ours / theirs, 2).into());
            }
        }
        report.insert("bullmq".into(), bullmq);
    }

    if let Some(script) = &options.celery_script {
        progress(&format!(
            "{} tasks through Celery and Redis",
            options.celery_tasks
        ));
        let celery = celery_flow(&options, script).await?;
        if let Some(per_second) = celery.get("tasks_per_sec").and_then(Value::as_f64) {
            for (key, ours) in [
                ("rust_worker_to_celery", "tasks_per_sec"),
                ("python_worker_to_celery", "python_worker_tasks_per_sec"),
                (
                    "typescript_worker_to_celery",
                    "typescript_worker_tasks_per_sec",
                ),
            ] {
                if let Some(ours) = report.get(ours).and_then(Value::as_f64) {
                    report.insert(key.into(), round(ours / per_second, 2).into());
                }
            }
        }
        report.insert("celery".into(), celery);
    }

    if options.cluster {
        let cluster = on_a_cluster(&options, &progress).await?;
        report.insert("cluster".into(), cluster.into());
    }
    report.insert("machine".into(), machine());
    report.insert(
        "profile".into(),
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        }
        .into(),
    );
    println!("{}", serde_json::to_string_pretty(&Value::Object(report))?);
    Ok(())
}

/// How close a task comes to what any gateway in front of JetStream must pay, from the same
/// run: `floor_ratio`, (the raw flow's CPU per task + a bare gRPC call's) over taskwire's, and
/// `roundtrip_to_floor`, taskwire's round trip p50 over (the raw flow's + a bare call's).
fn floor_ratios(report: &mut serde_json::Map<String, Value>) {
    let at = |path: &[&str]| {
        let mut value = report.get(path[0])?;
        for key in &path[1..] {
            value = value.get(key)?;
        }
        value.as_f64()
    };
    let cpu = (
        at(&["per_task", "raw", "total_cpu_us"]),
        at(&["grpc_call_floor", "total_cpu_us"]),
        at(&["per_task", "taskwire", "total_cpu_us"]),
    );
    let trip = (
        at(&["raw_roundtrip_p50_ms"]),
        at(&["grpc_call_floor", "roundtrip_p50_ms"]),
        at(&["roundtrip_p50_ms"]),
    );
    if let (Some(raw), Some(call), Some(ours)) = cpu
        && ours > 0.0
    {
        report.insert("floor_ratio".into(), round((raw + call) / ours, 3).into());
    }
    if let (Some(raw), Some(call), Some(ours)) = trip
        && raw + call > 0.0
    {
        report.insert(
            "roundtrip_to_floor".into(),
            round(ours / (raw + call), 3).into(),
        );
    }
}

/// The Celery run: the JSON object its script prints.
async fn celery_flow(options: &Options, script: &std::path::Path) -> anyhow::Result<Value> {
    peer_flow(
        &options.celery_python,
        script,
        &[
            "--tasks".into(),
            options.celery_tasks.to_string(),
            "--concurrency".into(),
            options.concurrency.min(64).to_string(),
        ],
    )
    .await
}

/// A peer's flow: `program script args`, which prints one JSON object as its last line.
async fn peer_flow(
    program: &str,
    script: &std::path::Path,
    args: &[String],
) -> anyhow::Result<Value> {
    let output = tokio::process::Command::new(program)
        .arg(script)
        .args(args)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| anyhow::anyhow!("running {}: {e}", script.display()))?;
    anyhow::ensure!(
        output.status.success(),
        "{} failed: {}",
        script.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8_lossy(&output.stdout);
    let last = text.lines().last().unwrap_or_default();
    serde_json::from_str(last)
        .map_err(|e| anyhow::anyhow!("{} printed no JSON ({e}): {text}", script.display()))
}

/// `count` round trips one task at a time through the gateway, and as many with bare async-nats
/// on `nats_url` with streams of `replicas`: their p50, p99 and mean.
async fn round_trips(
    report: &mut serde_json::Map<String, Value>,
    stack: &Stack,
    nats_url: &str,
    replicas: usize,
    count: usize,
) -> anyhow::Result<()> {
    let trips = roundtrips(&stack.client, count).await?;
    let mean = trips.iter().sum::<f64>() / trips.len().max(1) as f64;
    let raw = raw::raw_jetstream(nats_url, replicas, 1, count.max(1))
        .await?
        .times_ms;
    let raw_mean = raw.iter().sum::<f64>() / raw.len().max(1) as f64;
    for (key, ms) in [
        ("roundtrip_p50_ms", percentile(&trips, 50.0)),
        ("roundtrip_p99_ms", percentile(&trips, 99.0)),
        ("roundtrip_mean_ms", mean),
        ("raw_roundtrip_p50_ms", percentile(&raw, 50.0)),
        ("raw_roundtrip_p99_ms", percentile(&raw, 99.0)),
        ("raw_roundtrip_mean_ms", raw_mean),
    ] {
        report.insert(key.into(), round(ms, 3).into());
    }
    Ok(())
}

/// The rounds and round trips on a three-node cluster, every stream at three replicas.
async fn on_a_cluster(
    options: &Options,
    progress: &dyn Fn(&str),
) -> anyhow::Result<serde_json::Map<String, Value>> {
    progress("a three-node cluster, streams at three replicas");
    let mut cluster = NatsCluster::start_temporary(3).await?;
    let urls = cluster.urls();
    let servers: Vec<(&'static str, Option<u32>)> = ["n1", "n2", "n3"]
        .into_iter()
        .map(|name| (name, cluster.server_mut(name).and_then(|s| s.pid())))
        .collect();
    let mut stack = Stack::start(&urls, 3, options.worker_concurrency).await?;
    stack
        .start_worker(
            &WorkerKind::Rust { many_task_types: 0 },
            None,
            Duration::from_secs(60),
        )
        .await?;
    load::load(&stack.client, options.concurrency.min(64), 500).await;
    let compared = interleaved(
        &stack,
        &Settings {
            nats_url: &urls,
            servers: &servers,
            replicas: 3,
            concurrency: options.concurrency,
            tasks: options.cluster_tasks,
            rounds: options.rounds.max(1),
            monitoring: None,
        },
        progress,
    )
    .await?;
    let mut report = compared.report();
    report.insert("tasks".into(), options.cluster_tasks.into());
    round_trips(&mut report, &stack, &urls, 3, options.roundtrips).await?;
    let failed = compared.samples.iter().filter(|s| !s.ok).count();
    report.insert("lost".into(), failed.into());
    stack.memory_report(&mut report);
    stack.stop().await;
    drop(cluster);
    Ok(report)
}

/// The flow through a worker of another language on the worker runtime: its tasks a second,
/// against the Rust worker's and Celery's, its memory, and the CPU time a task costs its
/// handlers' process and the runtime beside it (`{label}_handlers_cpu_us`,
/// `{label}_runtime_cpu_us`): what the local call adds to a task.
async fn upstream_flow(
    stack: &mut stack::Stack,
    options: &Options,
    report: &mut serde_json::Map<String, Value>,
    progress: &impl Fn(&str),
    label: &str,
    kind: &WorkerKind,
) -> anyhow::Result<()> {
    progress(&format!(
        "{} tasks through the {}",
        options.python_tasks,
        label.replace('_', " ")
    ));
    stack
        .start_worker(kind, None, Duration::from_secs(60))
        .await?;
    load::load(&stack.client, options.concurrency.min(64), 500).await;
    let runtime = stack.worker_pid.and_then(taskwire_supervisor::child_of);
    let meter = cpu::CpuMeter::start(&[("handlers", stack.worker_pid), ("runtime", runtime)]);
    let started = Instant::now();
    let samples = load::load(&stack.client, options.concurrency, options.python_tasks).await;
    let per_second = options.python_tasks as f64 / started.elapsed().as_secs_f64();
    let failed = samples.iter().filter(|s| !s.ok).count();
    anyhow::ensure!(failed == 0, "{failed} tasks failed on the {label}");
    let cpu = meter.per_task(options.python_tasks);
    let rust = report
        .get("tasks_per_sec")
        .and_then(Value::as_f64)
        .unwrap_or(0.0);
    report.insert(
        format!("{label}_tasks_per_sec"),
        round(per_second, 1).into(),
    );
    report.insert(
        format!("{label}_to_rust_worker"),
        round(per_second / rust, 3).into(),
    );
    report.insert(
        format!("{label}_rss_mib"),
        round(stack.worker_rss_mib(), 1).into(),
    );
    for (part, value) in cpu {
        if part != "total_cpu_us" {
            report.insert(format!("{label}_{part}"), value);
        }
    }
    Ok(())
}
