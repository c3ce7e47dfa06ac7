//! What a result costs the broker with more gateways: the same tasks through one gateway and
//! then spread over three (one worker), with nats-server's messages per task in and out. Each
//! result should reach the gateway that waits for it and no other, so the figure does not grow
//! with the gateways.

use serde_json::{Map, Value};

use super::compare::{messages_per_task, server_messages};
use super::load::load;
use super::stack::Stack;

/// `tasks` through `stack`'s gateway, then as many through it and two more gateways started
/// on the same NATS, a third of the loops on each.
pub(super) async fn per_gateway_count(
    stack: &Stack,
    nats_url: &str,
    monitoring: &str,
    tasks: usize,
    concurrency: usize,
    worker_concurrency: usize,
) -> anyhow::Result<Value> {
    let mut report = Map::new();
    let one = measured(monitoring, || async {
        load(&stack.client, concurrency, tasks).await
    })
    .await?;
    report.insert("1".into(), one);
    let mut others = Vec::new();
    for _ in 0..2 {
        others.push(Stack::start(nats_url, 1, worker_concurrency).await?);
    }
    let clients: Vec<_> = std::iter::once(&stack.client)
        .chain(others.iter().map(|s| &s.client))
        .collect();
    let three = measured(monitoring, || async {
        let n = clients.len();
        let loops = (concurrency / n).max(1);
        let runs = clients
            .iter()
            .enumerate()
            .map(|(i, c)| load(c, loops, tasks / n + usize::from(i < tasks % n)));
        futures::future::join_all(runs)
            .await
            .into_iter()
            .flatten()
            .collect()
    })
    .await?;
    report.insert("3".into(), three);
    for other in others {
        other.stop().await;
    }
    Ok(Value::Object(report))
}

/// Runs `flow` and gives nats-server's messages per task meanwhile.
async fn measured<F, Fut>(monitoring: &str, flow: F) -> anyhow::Result<Value>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Vec<super::load::Sample>>,
{
    let before = server_messages(Some(monitoring))
        .await
        .ok_or_else(|| anyhow::anyhow!("nats-server's /varz did not answer"))?;
    let samples = flow().await;
    let done = samples.iter().filter(|s| s.ok).count();
    anyhow::ensure!(
        done == samples.len() && done > 0,
        "{} of {} tasks failed",
        samples.len() - done,
        samples.len()
    );
    let mut figures = Map::new();
    figures.insert("tasks".into(), done.into());
    messages_per_task(Some(monitoring), Some(before), done, &mut figures).await;
    Ok(Value::Object(figures))
}
