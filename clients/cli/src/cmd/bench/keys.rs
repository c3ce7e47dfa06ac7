//! A limit per key with many keys: the example task limited to one running per value of
//! `arg1`, through as many distinct values as tasks. What it costs: the rate, the worker's
//! memory, what the slots bucket holds afterwards, and the messages the idle worker sends
//! afterwards (keys not in use must cost nothing).

use std::time::{Duration, Instant};

use serde_json::{Map, Value};
use taskwire::v1;

use super::idle::idle_messages;
use super::load::load;
use super::stack::{Stack, WorkerKind};
use super::{TASK, round};

pub(super) async fn measure(
    stack: &mut Stack,
    nats_url: &str,
    keys: usize,
    concurrency: usize,
    monitoring: Option<&str>,
    idle: Duration,
    progress: &dyn Fn(&str),
) -> anyhow::Result<Map<String, Value>> {
    progress(&format!("a limit per key over {keys} keys"));
    stack
        .start_worker(
            &WorkerKind::Rust { many_task_types: 0 },
            None,
            Duration::from_secs(30),
        )
        .await?;
    let client = &stack.client.clone();
    client
        .set_task_limits(
            TASK,
            Some(v1::TaskLimits {
                max_concurrency: 1,
                concurrency_key_field: "arg1".into(),
                ..Default::default()
            }),
        )
        .await?;
    // Workers follow the override within about a second.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let started = Instant::now();
    let samples = load(client, concurrency, keys).await;
    let seconds = started.elapsed().as_secs_f64();
    let ok = samples.iter().filter(|s| s.ok).count();
    let mut report = Map::new();
    report.insert("keys".into(), keys.into());
    report.insert("succeeded".into(), ok.into());
    report.insert(
        "tasks_per_sec".into(),
        round(keys as f64 / seconds, 1).into(),
    );
    report.insert(
        "worker_rss_mib".into(),
        round(stack.worker_rss_mib(), 1).into(),
    );
    if let Some(monitoring) = monitoring
        && !idle.is_zero()
    {
        let per_second = idle_messages(monitoring, idle).await?;
        report.insert(
            "idle_worker_msgs_per_sec".into(),
            round(per_second, 2).into(),
        );
    }
    report.insert(
        "slots_bucket_messages".into(),
        slots_bucket_messages(nats_url).await?.into(),
    );
    client.set_task_limits(TASK, None).await?;
    stack.stop_worker().await;
    Ok(report)
}

/// Messages in the slots bucket now: the slots held, and the deletion markers of those freed,
/// which run out with the slots' lease.
async fn slots_bucket_messages(nats_url: &str) -> anyhow::Result<u64> {
    let js = async_nats::jetstream::new(
        async_nats::connect(taskwire_protocol::servers(nats_url)).await?,
    );
    let mut stream = js
        .get_stream(format!("KV_{}", taskwire_protocol::SLOTS_BUCKET))
        .await?;
    Ok(stream.info().await?.state.messages)
}
