//! What an idle worker costs the server: the messages it sends, from the server's `/connz`.

use std::time::{Duration, Instant};

use anyhow::Context as _;

/// Messages per second the idle worker sends the server over `window` (after a moment for the
/// last results to settle), from the server's `/connz`: the worker's connection's `in_msgs`.
pub(super) async fn idle_messages(monitoring: &str, window: Duration) -> anyhow::Result<f64> {
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = worker_in_msgs(monitoring).await?;
    let started = Instant::now();
    tokio::time::sleep(window).await;
    let after = worker_in_msgs(monitoring).await?;
    Ok(after.saturating_sub(before) as f64 / started.elapsed().as_secs_f64())
}

/// `in_msgs` of the connection named `taskwire-worker`, read from `/connz`.
async fn worker_in_msgs(monitoring: &str) -> anyhow::Result<u64> {
    let host = monitoring
        .strip_prefix("http://")
        .context("the monitoring endpoint is not http://")?;
    let connz: serde_json::Value =
        serde_json::from_str(&taskwire_supervisor::http_get(host, "/connz").await?)?;
    connz["connections"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["name"] == "taskwire-worker")
        .and_then(|c| c["in_msgs"].as_u64())
        .context("no taskwire-worker connection in /connz")
}
