//! Drills that kill or stop the processes around the broker: workers, the gateway; poison
//! among real tasks.

use super::*;

/// Three workers; one of them is killed with SIGKILL and started again, three times, while the
/// tasks run.
pub(crate) async fn worker_sigkill(n: usize) -> anyhow::Result<Report> {
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
pub(crate) async fn long_task(n: usize) -> anyhow::Result<Report> {
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

/// SIGTERM to a worker with tasks in flight: they finish, or go to the other worker.
pub(crate) async fn worker_sigterm(n: usize) -> anyhow::Result<Report> {
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

/// The gateway process killed with SIGKILL while submits are in flight, then started again;
/// clients retry with their idempotency keys.
pub(crate) async fn gateway_sigkill(n: usize) -> anyhow::Result<Report> {
    let nats = NatsServer::start_temporary().await?;
    let env = [
        ("TASKWIRE_NATS_URL", nats.url()),
        ("TASKWIRE_LOG", "error".to_owned()),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    // On a port of its choosing; started again on the same one.
    let (mut process, addr) = crate::gateway_process(&env, None).await?;
    let url = format!("http://{addr}");
    let _workers = [
        worker(&nats.url(), "2s", 50)?,
        worker(&nats.url(), "2s", 50)?,
    ];
    crate::wait_for_task(&url, SLEEP, Duration::from_secs(30)).await?;
    let client = Client::connect(url.clone()).await?;
    let load = Load::start(&client, n, 10);
    load.reached(n / 3).await;
    signal(&process, nix::sys::signal::Signal::SIGKILL);
    let _ = process.wait().await;
    (process, _) = crate::gateway_process(&env, Some(addr)).await?;
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
pub(crate) async fn poison(n: usize) -> anyhow::Result<Report> {
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
