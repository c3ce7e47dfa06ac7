//! The load: concurrent submit-and-wait loops through the gateway, and round trips one task
//! at a time.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use prost::Message as _;
use taskwire_client::Client;
use taskwire_examples::magic::v1::{AddArgs, AddResult};

use super::TASK;

/// The arguments of task number `i`: its sum is `i + 5`.
pub(super) fn args(i: usize) -> AddArgs {
    AddArgs {
        arg1: i as i64,
        arg2: 2,
        arg3: 3,
    }
}

/// One submit-and-wait.
pub(super) struct Sample {
    pub(super) ok: bool,
    pub(super) submit_ms: f64,
    pub(super) e2e_ms: f64,
}

/// `concurrency` loops, each submitting a task and waiting for its result, until `tasks` are
/// done.
pub(super) async fn load(client: &Client, concurrency: usize, tasks: usize) -> Vec<Sample> {
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
                    samples.push(Sample { ok: false, submit_ms, e2e_ms: 0.0 });
                    continue;
                };
                let ok = matches!(
                    pending.finish().await,
                    Ok(info) if info.state() == taskwire::v1::TaskState::Succeeded
                        && AddResult::decode(info.result.as_slice()).is_ok_and(|r| r.sum == i as i64 + 5)
                );
                samples.push(Sample {
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

/// `count` tasks one after the other, each submitted and waited for: their round trips in
/// milliseconds, sorted.
pub(super) async fn roundtrips(client: &Client, count: usize) -> anyhow::Result<Vec<f64>> {
    let mut roundtrips = Vec::with_capacity(count);
    for i in 0..count {
        let t0 = Instant::now();
        let result: AddResult = client
            .run(TASK, &args(i), Default::default(), Duration::from_secs(10))
            .await?;
        anyhow::ensure!(result.sum == i as i64 + 5, "wrong sum {}", result.sum);
        roundtrips.push(t0.elapsed().as_secs_f64() * 1000.0);
    }
    roundtrips.sort_by(f64::total_cmp);
    Ok(roundtrips)
}

/// Stores `tasks` tasks with SubmitMany, `batch` a call; how many were stored.
pub(super) async fn submit_many(
    client: &Client,
    tasks: usize,
    batch: usize,
) -> anyhow::Result<usize> {
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
