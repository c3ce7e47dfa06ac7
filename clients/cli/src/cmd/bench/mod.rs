//! `taskwire bench`: pushes tasks through a real gateway and worker and prints one JSON object
//! with throughput, latency, memory and, for scale, the same task flow done with bare async-nats
//! against the same server in the same run.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures::StreamExt as _;
use prost::Message as _;
use taskwire_client::Client;
use taskwire_examples::magic::v1::{AddArgs, AddResult};

use taskwire_supervisor::{self as stack, NatsServer, Ports, ProcessSpec};

mod backlog;
mod idle;
mod raw;

/// The backlog a large one's drain rate is compared with.
const SMALL_BACKLOG: usize = 10_000;

use idle::idle_messages;
use raw::raw_jetstream;

const TASK: &str = "examples.magic.v1.Magic/Add";

/// Flags of `taskwire bench`.
#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    /// Tasks to push through.
    #[arg(long, default_value_t = 20_000)]
    pub tasks: usize,
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

/// Runs the benchmark and prints the JSON object on stdout.
pub async fn run(options: Options) -> anyhow::Result<()> {
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
    let env = vec![
        ("TASKWIRE_NATS_URL".to_owned(), nats_url.clone()),
        ("TASKWIRE_LOG".to_owned(), "warn".to_owned()),
        (
            "TASKWIRE_CONCURRENCY".to_owned(),
            options.worker_concurrency.to_string(),
        ),
    ];
    // The gateway listens on a port of its choosing and says which in its ports file.
    let ports = tempfile::tempdir()?;
    let ports_file = ports.path().join("gateway.json");
    let mut gateway_env = env.clone();
    gateway_env.extend([
        ("TASKWIRE_GATEWAY_ADDR".to_owned(), "127.0.0.1:0".to_owned()),
        (
            stack::ENV_PORTS_FILE.to_owned(),
            ports_file.display().to_string(),
        ),
    ]);
    let mut gateway = stack::spawn(&ProcessSpec {
        binary: "taskwire-gateway".into(),
        args: Vec::new(),
        env: gateway_env,
        inherit_output: false,
    })?;
    let Ports {
        grpc: Some(gateway_addr),
        ..
    } = stack::wait_for_ports(&mut gateway, &ports_file, Duration::from_secs(30)).await?
    else {
        anyhow::bail!("the gateway wrote no gRPC address to its ports file");
    };
    let gateway_url = format!("http://{gateway_addr}");
    let worker_spec = ProcessSpec {
        binary: "taskwire-magic-worker".into(),
        args: Vec::new(),
        env,
        inherit_output: false,
    };
    let mut worker = stack::spawn(&worker_spec)?;
    stack::wait_for_task(&gateway_url, TASK, Duration::from_secs(30)).await?;
    let gateway_pid = gateway.id().context("gateway exited")?;
    let worker_pid = worker.id().context("worker exited")?;

    // Every result message is counted, so a task that got two results shows up.
    let nats = async_nats::connect(nats_url.as_str()).await?;
    let mut results_sub = nats.subscribe("taskwire.results.>").await?;
    let result_counts: Arc<Mutex<HashMap<String, u32>>> = Arc::default();
    let counter = {
        let counts = Arc::clone(&result_counts);
        tokio::spawn(async move {
            while let Some(msg) = results_sub.next().await {
                // taskwire.results.<id>.<token>
                let id = msg.subject.split('.').nth(2).unwrap_or_default().to_owned();
                *counts
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .entry(id)
                    .or_default() += 1;
            }
        })
    };

    let client = Client::connect(gateway_url.clone()).await?;
    progress("warming up");
    load(&client, options.concurrency.min(64), 500).await;
    result_counts
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clear();

    progress(&format!(
        "{} tasks, {} in flight",
        options.tasks, options.concurrency
    ));
    let started = Instant::now();
    let samples = load(&client, options.concurrency, options.tasks).await;
    let seconds = started.elapsed().as_secs_f64();

    progress("round trips, one task at a time");
    let mut roundtrips = Vec::with_capacity(options.roundtrips);
    for i in 0..options.roundtrips {
        let t0 = Instant::now();
        let result: AddResult = client
            .run(TASK, &args(i), Default::default(), Duration::from_secs(10))
            .await?;
        anyhow::ensure!(result.sum == i as i64 + 5, "wrong sum {}", result.sum);
        roundtrips.push(t0.elapsed().as_secs_f64() * 1000.0);
    }
    roundtrips.sort_by(f64::total_cmp);

    let bulk = if options.submit_many > 0 {
        progress(&format!(
            "SubmitMany: {} tasks, {} a call",
            options.submit_many, options.submit_many_batch
        ));
        let before = result_counts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len();
        let started = Instant::now();
        let stored = submit_many(&client, options.submit_many, options.submit_many_batch).await?;
        let submit_seconds = started.elapsed().as_secs_f64();
        // Then until the worker has stored a result for each.
        let deadline = Instant::now() + Duration::from_secs(600);
        while result_counts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
            < before + stored
            && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let done_seconds = started.elapsed().as_secs_f64();
        Some((stored, submit_seconds, done_seconds))
    } else {
        None
    };

    // Let stray duplicates arrive before counting.
    tokio::time::sleep(Duration::from_millis(300)).await;
    counter.abort();
    let (lost, duplicated) = {
        let counts = result_counts.lock().unwrap_or_else(|e| e.into_inner());
        let ids: Vec<&String> = samples.iter().filter_map(|s| s.id.as_ref()).collect();
        let lost = samples.iter().filter(|s| !s.ok).count()
            + ids
                .iter()
                .filter(|id| !counts.contains_key(id.as_str()))
                .count();
        let duplicated = counts.values().filter(|n| **n > 1).count();
        (lost, duplicated)
    };
    let idle_worker = match own_nats.as_ref().and_then(NatsServer::monitoring_url) {
        Some(monitoring) if !options.idle.is_zero() => {
            progress("the worker idle");
            Some(idle_messages(monitoring, options.idle).await?)
        }
        _ => None,
    };
    let mut worker_rss = stack::peak_rss_mib(worker_pid).unwrap_or(0.0);
    stack::terminate(&mut worker, Duration::from_secs(10)).await;
    let backlogs = if options.backlog > 0 {
        // The same drain from a small backlog first: the large one is measured against it.
        let jetstream = async_nats::jetstream::new(nats.clone());
        let mut drained = Vec::new();
        for tasks in [SMALL_BACKLOG, options.backlog] {
            progress(&format!("a backlog of {tasks} tasks, stored, then drained"));
            let run = backlog::drain(
                &client,
                &jetstream,
                &worker_spec,
                tasks,
                options.submit_many_batch,
            )
            .await?;
            worker_rss = worker_rss.max(run.worker_rss_mib);
            drained.push((tasks, run));
        }
        Some(drained)
    } else {
        None
    };
    let gateway_rss = stack::peak_rss_mib(gateway_pid).unwrap_or(0.0);
    stack::terminate(&mut gateway, Duration::from_secs(10)).await;

    progress("bare async-nats flow on the same server");
    let raw = raw_jetstream(&nats_url, options.concurrency, options.tasks).await?;

    let mut submit: Vec<f64> = samples
        .iter()
        .filter(|s| s.ok)
        .map(|s| s.submit_ms)
        .collect();
    let mut e2e: Vec<f64> = samples.iter().filter(|s| s.ok).map(|s| s.e2e_ms).collect();
    submit.sort_by(f64::total_cmp);
    e2e.sort_by(f64::total_cmp);
    let tasks_per_sec = options.tasks as f64 / seconds;
    let report = serde_json::json!({
        "tasks": options.tasks,
        "concurrency": options.concurrency,
        "seconds": round(seconds, 3),
        "tasks_per_sec": round(tasks_per_sec, 1),
        "submit_p50_ms": round(percentile(&submit, 50.0), 3),
        "submit_p99_ms": round(percentile(&submit, 99.0), 3),
        "e2e_p50_ms": round(percentile(&e2e, 50.0), 3),
        "e2e_p99_ms": round(percentile(&e2e, 99.0), 3),
        "roundtrip_p50_ms": round(percentile(&roundtrips, 50.0), 3),
        "roundtrip_p99_ms": round(percentile(&roundtrips, 99.0), 3),
        "lost": lost,
        "duplicated": duplicated,
        "gateway_rss_mib": round(gateway_rss, 1),
        "worker_rss_mib": round(worker_rss, 1),
        "raw_jetstream_tasks_per_sec": round(raw, 1),
        "ratio_to_raw": round(tasks_per_sec / raw, 3),
        "profile": if cfg!(debug_assertions) { "debug" } else { "release" },
    });
    let mut report = report;
    if let Some((stored, submit_seconds, done_seconds)) = bulk {
        report["submit_many_tasks"] = stored.into();
        report["submit_many_batch"] = options.submit_many_batch.into();
        report["submit_many_tasks_per_sec"] = round(stored as f64 / submit_seconds, 1).into();
        report["submit_many_completed_per_sec"] = round(stored as f64 / done_seconds, 1).into();
    }
    if let Some(drained) = &backlogs
        && let [(_, small), (tasks, large)] = drained.as_slice()
    {
        report["backlog_tasks"] = (*tasks).into();
        report["backlog_stored_per_sec"] = round(large.stored_per_sec, 1).into();
        report["backlog_drained_per_sec"] = round(large.drained_per_sec, 1).into();
        report["backlog_small_drained_per_sec"] = round(small.drained_per_sec, 1).into();
        report["backlog_drain_ratio"] =
            round(large.drained_per_sec / small.drained_per_sec, 3).into();
    }
    if let Some(per_second) = idle_worker {
        // The example worker serves one task type.
        report["idle_worker_msgs_per_sec"] = round(per_second, 2).into();
        report["idle_worker_task_types"] = 1.into();
    }
    println!("{}", serde_json::to_string_pretty(&report)?);
    if let Some(mut server) = own_nats {
        server.stop().await;
    }
    Ok(())
}

/// Stores `tasks` tasks with SubmitMany, `batch` a call; how many were stored.
async fn submit_many(client: &Client, tasks: usize, batch: usize) -> anyhow::Result<usize> {
    let mut stored = 0usize;
    let mut offset = 0;
    while offset < tasks {
        let n = batch.min(tasks - offset).max(1);
        let requests: Vec<_> = (offset..offset + n)
            .map(|i| taskwire_client::request(TASK, &args(i), Default::default()))
            .collect();
        let response = client.submit_many(requests).await?;
        anyhow::ensure!(
            response.refused == 0,
            "SubmitMany refused {} tasks: {:?}",
            response.refused,
            response.results.iter().find(|r| r.task_id.is_empty())
        );
        stored += response.submitted as usize;
        offset += n;
    }
    Ok(stored)
}

fn args(i: usize) -> AddArgs {
    AddArgs {
        arg1: i as i64,
        arg2: 2,
        arg3: 3,
    }
}

struct Sample {
    id: Option<String>,
    ok: bool,
    submit_ms: f64,
    e2e_ms: f64,
}

/// `concurrency` loops, each submitting a task and waiting for its result, until `tasks` are
/// done.
async fn load(client: &Client, concurrency: usize, tasks: usize) -> Vec<Sample> {
    let next = Arc::new(AtomicUsize::new(0));
    let mut loops = Vec::new();
    for _ in 0..concurrency.max(1) {
        let client = client.clone();
        let next = Arc::clone(&next);
        loops.push(tokio::spawn(async move {
            let mut samples = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= tasks {
                    return samples;
                }
                let t0 = Instant::now();
                let submitted = client
                    .submit_and_wait(
                        TASK,
                        taskwire::v1::submit_request::Args::ArgsProto(args(i).encode_to_vec()),
                        Default::default(),
                        Duration::from_secs(60),
                        false,
                    )
                    .await;
                let submit_ms = t0.elapsed().as_secs_f64() * 1000.0;
                let Ok(pending) = submitted else {
                    samples.push(Sample { id: None, ok: false, submit_ms, e2e_ms: 0.0 });
                    continue;
                };
                let id = pending.id().to_owned();
                let ok = matches!(
                    pending.finish().await,
                    Ok(info) if info.state() == taskwire::v1::TaskState::Succeeded
                        && AddResult::decode(info.result.as_slice()).is_ok_and(|r| r.sum == i as i64 + 5)
                );
                samples.push(Sample {
                    id: Some(id),
                    ok,
                    submit_ms,
                    e2e_ms: t0.elapsed().as_secs_f64() * 1000.0,
                });
            }
        }));
    }
    let mut all = Vec::with_capacity(tasks);
    for l in loops {
        if let Ok(samples) = l.await {
            all.extend(samples);
        }
    }
    all
}
