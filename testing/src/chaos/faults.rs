//! Drills on the broker: restarts, a kill loop, a full stream, a cluster leader killed.

use super::*;

/// nats-server killed with SIGKILL under load and started again on the same store.
pub(crate) async fn nats_restart(n: usize) -> anyhow::Result<Report> {
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
pub(crate) async fn nats_kill_loop(n: usize) -> anyhow::Result<Report> {
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
    crate::wait_for_task(&gateway.url(), SLEEP, Duration::from_secs(30)).await?;
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

/// A queue limit: submits beyond it are refused, every accepted task completes.
pub(crate) async fn stream_full(n: usize) -> anyhow::Result<Report> {
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
pub(crate) async fn cluster_leader_kill(n: usize) -> anyhow::Result<Report> {
    let mut cluster = crate::NatsCluster::start_temporary(3).await?;
    let urls = cluster.urls();
    let mut config = taskwire_gateway::Config::new(urls.clone());
    config.broker.replicas = 3;
    let gateway = Gateway::start_with(config).await?;
    let _workers = [
        worker_with(&urls, "2s", 50, 3)?,
        worker_with(&urls, "2s", 50, 3)?,
    ];
    crate::wait_for_task(&gateway.url(), SLEEP, Duration::from_secs(30)).await?;
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
