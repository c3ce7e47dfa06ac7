//! The worker runtime serving an upstream gRPC server, against a real nats-server, gateway and
//! real processes: workers of every language sharing one queue, an upstream killed with SIGKILL
//! under load and started again, an upstream that is not there yet, and what a handler's status
//! means for its task.

use std::collections::HashMap;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use taskwire::v1::TaskState;
use taskwire_client::{Client, SubmitOptions};
use taskwire_examples::chaos::v1::{ChaosClient, FlakyArgs, SleepArgs};
use taskwire_testing::runtime::{self, Runtime};
use taskwire_testing::{Gateway, NatsServer, bin, eventually};
use tokio::process::{Child, Command};

const WAIT: Duration = Duration::from_secs(60);
const SLEEP: &str = "examples.chaos.v1.Chaos/Sleep";

/// The plain grpcio server of the example contracts alone (no runtime), on `socket`.
fn plain_server(socket: &Path, run_log: &Path) -> anyhow::Result<Child> {
    upstream(runtime::plain_server(), socket, run_log)
}

/// `server` alone (no runtime), serving on `socket`.
fn upstream(mut server: Command, socket: &Path, run_log: &Path) -> anyhow::Result<Child> {
    // A socket file left by a killed server would keep the next from binding.
    let _ = std::fs::remove_file(socket);
    Ok(server
        .arg(format!("unix:{}", socket.display()))
        .env("TASKWIRE_RUN_LOG", run_log)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()?)
}

/// `taskwire-worker --upstream unix://socket`, serving what the plain server answers.
fn runtime_process(nats_url: &str, socket: &Path, env: &[(&str, &str)]) -> anyhow::Result<Child> {
    let mut command = Command::new(bin("taskwire-worker")?);
    command
        .arg("--upstream")
        .arg(format!("unix://{}", socket.display()))
        .args(["--task", SLEEP, "--task", "examples.chaos.v1.Chaos/Flaky"])
        .env("TASKWIRE_NATS_URL", nats_url)
        .env("TASKWIRE_LOG", "warn")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .kill_on_drop(true);
    Ok(command.spawn()?)
}

/// Runs by task id: (starts, ends), from a run log.
fn runs(log: &Path) -> anyhow::Result<HashMap<String, (u32, u32)>> {
    let mut runs: HashMap<String, (u32, u32)> = HashMap::new();
    for (id, list) in runtime::read_runs(log)? {
        let starts = list.len() as u32;
        let ends = list.iter().filter(|r| r.end.is_some()).count() as u32;
        runs.insert(id, (starts, ends));
    }
    Ok(runs)
}

async fn submit_sleeps(
    client: &Client,
    n: usize,
    millis: u64,
    prefix: &str,
) -> anyhow::Result<Vec<String>> {
    let chaos = ChaosClient::new(client.clone());
    let mut ids = Vec::new();
    for i in 0..n {
        let handle = chaos
            .sleep(SleepArgs {
                millis,
                label: format!("{prefix}{i}"),
            })
            .await?;
        ids.push(handle.id().to_owned());
    }
    Ok(ids)
}

#[tokio::test]
async fn workers_of_every_language_share_one_queue() -> anyhow::Result<()> {
    let temp = tempfile::tempdir()?;
    let nats = NatsServer::start_temporary().await?;
    let gateway = Gateway::start(&nats.url()).await?;
    let client = Client::connect(gateway.url()).await?;
    let log = temp.path().join("runs.log");
    let log_text = log.display().to_string();
    let env = [
        ("TASKWIRE_RUN_LOG", log_text.as_str()),
        ("TASKWIRE_CONCURRENCY", "2"),
    ];
    let mut pids = HashMap::new();
    let mut workers = Vec::new();
    for kind in [
        Runtime::Rust,
        Runtime::Python,
        Runtime::TypeScript,
        Runtime::Plain,
    ] {
        let child = runtime::worker(kind, &nats.url(), &env)?;
        pids.insert(child.id().unwrap_or_default(), kind);
        workers.push(child);
    }
    // Each worker is up once its heartbeat names it.
    eventually("all four workers beat", WAIT, || async {
        client.workers().await.map(|w| w.len()).unwrap_or(0) == 4
    })
    .await?;
    let versions: Vec<String> = client
        .workers()
        .await?
        .into_iter()
        .map(|w| w.version)
        .collect();
    for name in ["python taskwire", "node taskwire", "plain grpcio"] {
        assert!(
            versions.iter().any(|v| v.contains(name)),
            "{name} in {versions:?}"
        );
    }

    let ids = submit_sleeps(&client, 80, 150, "shared-").await?;
    for id in &ids {
        let info = client.wait(id, WAIT, false).await?;
        assert_eq!(info.state(), TaskState::Succeeded, "{id}");
    }
    // Each ran a share: a run log line names the process that ran the handler.
    let text = std::fs::read_to_string(&log)?;
    let mut by_runtime: HashMap<Runtime, usize> = HashMap::new();
    for line in text.lines().filter(|l| l.starts_with("start ")) {
        let pid: u32 = line.rsplit(' ').next().unwrap_or("0").parse()?;
        if let Some(kind) = pids.get(&pid) {
            *by_runtime.entry(*kind).or_default() += 1;
        }
    }
    assert_eq!(
        by_runtime.values().sum::<usize>(),
        ids.len(),
        "{by_runtime:?}"
    );
    assert_eq!(by_runtime.len(), 4, "every worker ran some: {by_runtime:?}");
    Ok(())
}

#[tokio::test]
async fn an_upstream_killed_under_load_loses_nothing_and_uses_attempts_only_for_runs()
-> anyhow::Result<()> {
    killed_under_load(runtime::plain_server).await
}

/// The same with an upstream that takes its calls on one stream (the Python worker's handlers).
#[tokio::test]
async fn an_upstream_of_one_stream_killed_under_load_loses_nothing_and_uses_attempts_only_for_runs()
-> anyhow::Result<()> {
    killed_under_load(runtime::python_handlers).await
}

async fn killed_under_load(start: fn() -> Command) -> anyhow::Result<()> {
    let temp = tempfile::tempdir()?;
    let nats = NatsServer::start_temporary().await?;
    let gateway = Gateway::start(&nats.url()).await?;
    let client = Client::connect(gateway.url()).await?;
    let socket = temp.path().join("tasks.sock");
    let log = temp.path().join("runs.log");
    let mut server = upstream(start(), &socket, &log)?;
    const CONCURRENCY: u32 = 8;
    let _runtime = runtime_process(&nats.url(), &socket, &[("TASKWIRE_CONCURRENCY", "8")])?;
    eventually("the runtime serves Sleep", WAIT, || async {
        client
            .task_types()
            .await
            .is_ok_and(|t| t.iter().any(|t| t.name == SLEEP))
    })
    .await?;

    let ids = submit_sleeps(&client, 300, 50, "drill-").await?;
    // Mid-load: a third done.
    eventually("a third of the tasks ran", WAIT, || async {
        runs(&log).is_ok_and(|r| r.values().filter(|(_, ends)| *ends > 0).count() >= 100)
    })
    .await?;
    server.kill().await?;
    // While it is down, tasks come back unstarted: give the runtime time to see it and to take
    // some (each handed back at once, no attempt used).
    let down_for = tokio::time::Instant::now() + Duration::from_secs(3);
    tokio::time::sleep_until(down_for).await;
    let during = runs(&log)?;
    let _server = upstream(start(), &socket, &log)?;

    for id in &ids {
        let info = client.wait(id, WAIT, false).await?;
        assert_eq!(info.state(), TaskState::Succeeded, "{id}: {info:?}");
    }
    assert!(
        client.dead_letters("", 0).await?.is_empty(),
        "no task is dead-lettered because of the outage"
    );
    // An attempt is a run that started: only the attempts under way at the kill (one a slot
    // at most: a handler running, or its call on the way) were used without their run ending,
    // and each such task ran again. While the upstream was down, nothing used an attempt.
    let after = runs(&log)?;
    let mut extra = 0;
    for id in &ids {
        let info = client.get(id, false).await?;
        let (starts, ends) = after.get(id).copied().unwrap_or_default();
        assert!(ends >= 1, "{id} ran to its end");
        assert!(
            info.attempt == starts || info.attempt == starts + 1,
            "{id}: attempt {} after {starts} runs",
            info.attempt
        );
        if info.attempt > 1 {
            let (before, ended_before) = during.get(id).copied().unwrap_or_default();
            assert!(
                before == ended_before + 1 || info.attempt == starts + 1,
                "{id} used attempt {} but was not under way at the kill",
                info.attempt
            );
        }
        extra += info.attempt - 1;
    }
    assert!(
        extra <= CONCURRENCY,
        "{extra} attempts used without a run that ended, with {CONCURRENCY} slots"
    );
    Ok(())
}

#[tokio::test]
async fn a_runtime_waits_for_its_upstream_and_is_unhealthy_while_it_is_down() -> anyhow::Result<()>
{
    let temp = tempfile::tempdir()?;
    let nats = NatsServer::start_temporary().await?;
    let gateway = Gateway::start(&nats.url()).await?;
    let client = Client::connect(gateway.url()).await?;
    let socket = temp.path().join("tasks.sock");
    let log = temp.path().join("runs.log");
    let ports = temp.path().join("ports.json");
    let ports_text = ports.display().to_string();
    // The upstream is not there yet: the runtime waits for it (it cannot know what to serve).
    let mut runtime = runtime_process(
        &nats.url(),
        &socket,
        &[
            ("TASKWIRE_METRICS_ADDR", "127.0.0.1:0"),
            (taskwire_supervisor::ENV_PORTS_FILE, &ports_text),
        ],
    )?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(runtime.try_wait()?.is_none(), "it waits");
    assert!(client.task_types().await?.is_empty());
    let mut server = plain_server(&socket, &log)?;
    let found = taskwire_supervisor::wait_for_ports(&mut runtime, &ports, WAIT).await?;
    let http = found
        .http
        .ok_or_else(|| anyhow::anyhow!("no /metrics address"))?;
    let host = http.to_string();
    // 200, 503, or 0 when it does not answer.
    let healthz = || {
        let host = host.clone();
        async move {
            match taskwire_supervisor::http_get(&host, "/healthz").await {
                Ok(_) => 200,
                Err(e) if e.to_string().contains(" 503") => 503,
                Err(_) => 0,
            }
        }
    };
    eventually("healthy", WAIT, || async { healthz().await == 200 }).await?;

    // Down: unhealthy, says why in the heartbeat, and a task waits instead of failing.
    server.kill().await?;
    eventually("unhealthy", WAIT, || async { healthz().await == 503 }).await?;
    let chaos = ChaosClient::new(client.clone());
    let waiting = chaos
        .sleep(SleepArgs {
            millis: 1,
            label: "waits".into(),
        })
        .await?;
    eventually("the heartbeat says why", WAIT, || async {
        client
            .workers()
            .await
            .is_ok_and(|w| w.iter().any(|w| w.unavailable.contains("upstream")))
    })
    .await?;
    let info = client.get(waiting.id(), false).await?;
    assert_eq!(info.state(), TaskState::Queued, "{info:?}");

    // Back: the task runs, as its first attempt.
    let _server = plain_server(&socket, &log)?;
    let done = client.wait(waiting.id(), WAIT, false).await?;
    assert_eq!(done.state(), TaskState::Succeeded);
    assert_eq!(done.attempt, 1);
    eventually("healthy again", WAIT, || async { healthz().await == 200 }).await?;
    Ok(())
}

#[tokio::test]
async fn a_handlers_status_decides_retry_or_failure() -> anyhow::Result<()> {
    let temp = tempfile::tempdir()?;
    let nats = NatsServer::start_temporary().await?;
    let gateway = Gateway::start(&nats.url()).await?;
    let client = Client::connect(gateway.url()).await?;
    let socket = temp.path().join("tasks.sock");
    let log = temp.path().join("runs.log");
    let _server = plain_server(&socket, &log)?;
    let _runtime = runtime_process(&nats.url(), &socket, &[])?;
    let chaos = ChaosClient::new(client.clone());
    eventually("the runtime serves Flaky", WAIT, || async {
        client
            .task_types()
            .await
            .is_ok_and(|t| t.iter().any(|t| t.name.ends_with("/Flaky")))
    })
    .await?;
    // UNAVAILABLE twice, then success: retried with the task's backoff.
    let retried = chaos
        .flaky(FlakyArgs {
            succeed_on_attempt: 3,
            ..Default::default()
        })
        .await?;
    assert_eq!(retried.get(WAIT).await?.attempt, 3);
    // FAILED_PRECONDITION: failed at once, its message kept, one dead letter.
    let permanent = chaos
        .flaky_with(
            FlakyArgs {
                permanent: true,
                ..Default::default()
            },
            SubmitOptions::default().max_attempts(5),
        )
        .await?;
    permanent.get(WAIT).await.expect_err("fails");
    let info = client.get(permanent.id(), false).await?;
    assert_eq!(info.state(), TaskState::Failed);
    assert_eq!(info.attempt, 1);
    let dead = client.dead_letters("", 0).await?;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].reason, "permanent");
    assert_eq!(dead[0].error, "failing on purpose on attempt 1");
    Ok(())
}
