//! The floor under every figure of the gateway: a gRPC call that does no work (the gateway's
//! health check) through the same gateway, over the same kind of connection. What it costs in
//! CPU time and in time one call at a time is what any task through the gateway costs before
//! the broker is asked anything.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use serde_json::{Map, Value};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

use super::cpu::CpuMeter;
use super::stack::Stack;
use super::{percentile, round};

/// `calls` health checks through the gateway from `concurrency` loops (the calls a second and
/// the CPU time per call of the gateway and of this process), then `one_at_a_time` of them in a
/// row (their p50).
pub(super) async fn grpc_call_floor(
    stack: &Stack,
    calls: usize,
    concurrency: usize,
    one_at_a_time: usize,
) -> anyhow::Result<Map<String, Value>> {
    let channel = tonic::transport::Endpoint::from_shared(stack.gateway_url.clone())?
        .connect()
        .await?;
    let client = HealthClient::new(channel);
    let check = |mut client: HealthClient<tonic::transport::Channel>| async move {
        client
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .map(|_| ())
    };
    for _ in 0..1000 {
        check(client.clone()).await?;
    }

    let meter = CpuMeter::start(&[
        ("gateway", stack.gateway_pid),
        ("bench", Some(std::process::id())),
    ]);
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut loops = Vec::new();
    for _ in 0..concurrency.max(1) {
        let client = client.clone();
        let next = Arc::clone(&next);
        loops.push(tokio::spawn(async move {
            while next.fetch_add(1, Ordering::Relaxed) < calls {
                check(client.clone()).await?;
            }
            Ok::<_, tonic::Status>(())
        }));
    }
    for l in loops {
        l.await??;
    }
    let per_second = calls as f64 / started.elapsed().as_secs_f64();
    let mut report = meter.per_task(calls);

    let mut trips = Vec::with_capacity(one_at_a_time);
    for _ in 0..one_at_a_time.max(1) {
        let t0 = Instant::now();
        check(client.clone()).await?;
        trips.push(t0.elapsed().as_secs_f64() * 1000.0);
    }
    trips.sort_by(f64::total_cmp);
    report.insert("calls".into(), calls.into());
    report.insert("calls_per_sec".into(), round(per_second, 1).into());
    report.insert(
        "roundtrip_p50_ms".into(),
        round(percentile(&trips, 50.0), 3).into(),
    );
    Ok(report)
}
