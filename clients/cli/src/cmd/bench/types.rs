//! Many task types: a worker serving them, and what they cost the gateway (memory, a metrics
//! scrape, a dashboard overview) and an idle worker (messages to the server), and how soon an
//! idle worker starts a task of one of them.

use std::time::{Duration, Instant};

use serde_json::{Map, Value};
use taskwire_examples::many;

use super::idle::idle_messages;
use super::stack::{Stack, WorkerKind};
use super::{median, round};
use taskwire_supervisor::http_get as get;

/// Starts a worker serving `task_types` generated task types besides the benchmark's, and
/// measures. `monitoring` is the server's monitoring endpoint, for the idle cost.
pub(super) async fn measure(
    stack: &mut Stack,
    task_types: usize,
    monitoring: Option<&str>,
    idle: Duration,
    progress: &dyn Fn(&str),
) -> anyhow::Result<Map<String, Value>> {
    progress(&format!("a worker serving {task_types} more task types"));
    let last = many::task_name(
        (task_types - 1) / many::TASKS_PER_SERVICE,
        (task_types - 1) % many::TASKS_PER_SERVICE,
    );
    let started = Instant::now();
    stack
        .start_worker(
            &WorkerKind::Rust {
                many_task_types: task_types,
            },
            Some(&last),
            Duration::from_secs(600),
        )
        .await?;
    let ready_seconds = started.elapsed().as_secs_f64();
    let listed = stack.client.task_types().await?.len();

    let http = stack
        .gateway_http
        .ok_or_else(|| anyhow::anyhow!("the gateway wrote no HTTP address to its ports file"))?
        .to_string();
    let mut scrapes = Vec::new();
    let mut overviews = Vec::new();
    for _ in 0..3 {
        let t0 = Instant::now();
        let metrics = get(&http, "/metrics").await?;
        scrapes.push(t0.elapsed().as_secs_f64() * 1000.0);
        anyhow::ensure!(
            metrics.contains("taskwire_"),
            "the gateway's /metrics has no taskwire figures"
        );
        let t0 = Instant::now();
        get(&http, "/api/overview").await?;
        overviews.push(t0.elapsed().as_secs_f64() * 1000.0);
    }

    // An idle worker takes a task of the last type at once: submitted one at a time, a moment
    // apart, each round trip bounds how late the task started.
    let mut idle_starts = Vec::new();
    for i in 0..10 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let t0 = Instant::now();
        let pending = stack
            .client
            .submit_and_wait(
                &last,
                taskwire::v1::submit_request::Args::ArgsJson(format!("{{\"n\": {i}}}")),
                Default::default(),
                Duration::from_secs(30),
                false,
            )
            .await?;
        let info = pending.finish().await?;
        anyhow::ensure!(
            info.state() == taskwire::v1::TaskState::Succeeded,
            "a task of {last} ended {:?}",
            info.state()
        );
        idle_starts.push(t0.elapsed().as_secs_f64() * 1000.0);
    }

    let mut report = Map::new();
    report.insert("task_types".into(), task_types.into());
    report.insert("registered".into(), listed.into());
    report.insert(
        "worker_ready_seconds".into(),
        round(ready_seconds, 1).into(),
    );
    report.insert(
        "metrics_scrape_ms".into(),
        round(median(scrapes.into_iter()), 1).into(),
    );
    report.insert(
        "dashboard_overview_ms".into(),
        round(median(overviews.into_iter()), 1).into(),
    );
    report.insert(
        "idle_roundtrip_p50_ms".into(),
        round(median(idle_starts.iter().copied()), 2).into(),
    );
    report.insert(
        "idle_roundtrip_max_ms".into(),
        round(idle_starts.iter().copied().fold(0.0, f64::max), 2).into(),
    );
    if let Some(monitoring) = monitoring
        && !idle.is_zero()
    {
        progress("the worker of many task types idle");
        let per_second = idle_messages(monitoring, idle).await?;
        report.insert(
            "idle_worker_msgs_per_sec".into(),
            round(per_second, 1).into(),
        );
        report.insert(
            "idle_worker_msgs_per_sec_per_task_type".into(),
            round(per_second / (task_types + 1) as f64, 3).into(),
        );
    }
    stack.memory_report(&mut report);
    stack.stop_worker().await;
    Ok(report)
}
