//! The web dashboard in a real headless Chromium (driven by Playwright for Python): queue counts
//! after a known workload, a task's detail, replaying a dead letter, and workflows drawn as
//! graphs.

use std::path::PathBuf;
use std::time::Duration;

use taskwire::v1::{self, TaskState};
use taskwire_client::Client;
use taskwire_client::workflow::{Step, Workflow};
use taskwire_examples::chaos::v1::ChaosClient;
use taskwire_examples::chaos::v1::{FlakyArgs, SpawnArgs};
use taskwire_examples::flow::v1::{Numbers, Total};
use taskwire_examples::magic::v1::AddArgs;
use taskwire_examples::magic::v1::MagicClient;
use taskwire_testing::{Gateway, LOOPBACK_ANY_PORT, NatsServer, Worker, examples_config, tasks};

const WAIT: Duration = Duration::from_secs(20);

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[tokio::test]
async fn the_dashboard_shows_queues_a_task_and_replays_a_dead_letter() -> anyhow::Result<()> {
    let nats = NatsServer::start_temporary().await?;
    let mut config = examples_config(&nats.url());
    config.http_addr = Some(LOOPBACK_ANY_PORT);
    let gateway = Gateway::start_with(config).await?;
    let http = gateway.http_addr().expect("the dashboard's address");
    let client = Client::connect(gateway.url()).await?;
    let magic = MagicClient::new(client.clone());
    let chaos = ChaosClient::new(client.clone());

    // Some tasks run, two fail for good; then the worker stops and four wait.
    let worker = Worker::start(&nats.url(), |w| {
        w.serve(tasks::magic())
            .serve(tasks::chaos())
            .serve(tasks::flow())
    })
    .await?;
    // A chain that succeeds and one whose second step fails for good.
    let succeeded = client
        .submit_workflow(Workflow::chain([
            Step::new("sum", "examples.flow.v1.Flow/Sum").args(&Numbers {
                values: vec![1, 2, 3],
            }),
            Step::new("double", "examples.flow.v1.Flow/Double"),
        ]))
        .await?;
    let failed = client
        .submit_workflow(Workflow::chain([
            Step::new("sum", "examples.flow.v1.Flow/Sum").args(&Numbers { values: vec![100] }),
            Step::new("double", "examples.flow.v1.Flow/Double")
                .args(&Total {
                    total: 0,
                    count: 0,
                    limit: 5,
                })
                .field("total", "total"),
            Step::new("again", "examples.flow.v1.Flow/Double"),
        ]))
        .await?;
    for id in [&succeeded, &failed] {
        client.wait_workflow(id, WAIT, false).await?;
    }
    let mut done = Vec::new();
    for i in 0..3 {
        let handle = magic
            .add(AddArgs {
                arg1: i,
                arg2: 1,
                arg3: 1,
            })
            .await?;
        handle.get(WAIT).await?;
        done.push(handle);
    }
    let mut dead = Vec::new();
    for _ in 0..2 {
        let handle = chaos
            .flaky(FlakyArgs {
                permanent: true,
                ..Default::default()
            })
            .await?;
        handle.get(WAIT).await.expect_err("fails for good");
        dead.push(handle);
    }
    let parent = chaos
        .spawn(SpawnArgs {
            count: 2,
            label: "dashboard".into(),
            child_millis: 10,
            wait: true,
            ..Default::default()
        })
        .await?;
    parent.get(WAIT).await?;
    worker.stop().await?;
    let mut queued = Vec::new();
    for i in 0..4 {
        queued.push(
            magic
                .add(AddArgs {
                    arg1: 100 + i,
                    ..Default::default()
                })
                .await?,
        );
    }
    // Two tasks held for an hour, which the task list cancels.
    let mut delayed = Vec::new();
    for i in 0..2 {
        delayed.push(
            client
                .submit::<taskwire_examples::chaos::v1::SleepResult>(
                    "examples.chaos.v1.Chaos/Sleep",
                    &taskwire_examples::chaos::v1::SleepArgs {
                        millis: 1,
                        label: format!("held-{i}"),
                    },
                    taskwire_client::SubmitOptions {
                        countdown: Some(Duration::from_secs(3600)),
                        ..Default::default()
                    },
                )
                .await?,
        );
    }
    // A schedule in a time zone that fires at night.
    client
        .create_schedule(v1::Schedule {
            name: "nightly".into(),
            task: "examples.magic.v1.Magic/Add".into(),
            when: Some(v1::schedule::When::Cron("0 3 * * *".into())),
            time_zone: "Europe/Berlin".into(),
            args: Some(v1::schedule::Args::ArgsJson("{}".into())),
            ..Default::default()
        })
        .await?;

    let python = std::env::var("TASKWIRE_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|_| workspace().join(".tools/venv/bin/python"));
    let shots = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dashboard");
    let out = tokio::process::Command::new(&python)
        .arg(workspace().join("testing/browser/dashboard.py"))
        .arg(format!("http://{http}/"))
        .arg(done[1].id())
        .arg(dead[0].id())
        .arg(&shots)
        .arg(&succeeded)
        .arg(&failed)
        .arg(parent.id())
        .arg(queued[0].id())
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot run {} (make tools installs Playwright and Chromium): {e}",
                python.display()
            )
        })?;
    assert!(
        out.status.success(),
        "browser checks failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("screenshots in {}", shots.display());

    // The replay went through the gateway (the replayed task waits), and the purge took every
    // dead letter left.
    assert_eq!(dead[0].state().await?, TaskState::Queued);
    assert!(
        client.dead_letters("", 0).await?.is_empty(),
        "the purge left dead letters"
    );
    // The list cancelled the held tasks.
    for handle in &delayed {
        assert_eq!(handle.state().await?, TaskState::Cancelled);
    }
    // Cancelled from its page, the others by the purge of their queue.
    for handle in &queued {
        assert_eq!(
            handle.state().await?,
            TaskState::Cancelled,
            "{}",
            handle.id()
        );
    }
    // Paused and resumed from the page: nothing is left paused.
    assert!(client.queues().await?.iter().all(|q| !q.paused));

    // A change from another site is refused, and nothing is paused; no other site may frame the
    // pages.
    let change = r#"{"task":"examples.magic.v1.Magic/Add"}"#;
    let refused = http_request(
        http,
        &format!(
            "POST /api/queues/pause HTTP/1.0\r\nHost: test\r\nSec-Fetch-Site: cross-site\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{change}",
            change.len()
        ),
    )
    .await?;
    assert!(refused.starts_with("HTTP/1.0 403"), "{refused}");
    assert!(client.queues().await?.iter().all(|q| !q.paused));
    let page = http_request(http, "GET / HTTP/1.0\r\nHost: test\r\n\r\n").await?;
    assert!(
        page.to_ascii_lowercase()
            .contains("content-security-policy: frame-ancestors 'self'"),
        "{page}"
    );
    // From the page itself (same origin), a bad priority is refused naming it.
    let bad = r#"{"task":"examples.magic.v1.Magic/Add","priority":"urgent"}"#;
    let refused = http_request(
        http,
        &format!(
            "POST /api/queues/pause HTTP/1.0\r\nHost: test\r\nSec-Fetch-Site: same-origin\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{bad}",
            bad.len()
        ),
    )
    .await?;
    assert!(refused.starts_with("HTTP/1.0 400"), "{refused}");
    assert!(refused.contains("urgent"), "{refused}");
    Ok(())
}

/// One HTTP/1.0 request; the whole answer.
async fn http_request(addr: std::net::SocketAddr, request: &str) -> anyhow::Result<String> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream.write_all(request.as_bytes()).await?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await?;
    Ok(answer)
}

/// The charts come from the broker: two gateways draw the same series, tasks that ran through
/// one of them included.
#[tokio::test]
async fn every_gateway_draws_the_same_charts() -> anyhow::Result<()> {
    let nats = NatsServer::start_temporary().await?;
    let start = || {
        let mut config = examples_config(&nats.url());
        config.http_addr = Some(LOOPBACK_ANY_PORT);
        Gateway::start_with(config)
    };
    let (one, two) = (start().await?, start().await?);
    let worker = Worker::start(&nats.url(), |w| w.serve(tasks::magic())).await?;
    let magic = MagicClient::new(Client::connect(one.url()).await?);
    for i in 0..20 {
        magic
            .add(AddArgs {
                arg1: i,
                ..Default::default()
            })
            .await?
            .get(WAIT)
            .await?;
    }
    // Published when the worker stops, and within a span by the gateway.
    worker.stop().await?;
    let series = |gateway: &Gateway| {
        let http = gateway.http_addr().expect("an HTTP address");
        async move {
            let answer = http_request(
                http,
                "GET /api/series?task=examples.magic.v1.Magic/Add&minutes=15 HTTP/1.0\r\nHost: test\r\n\r\n",
            )
            .await?;
            let body = answer.split("\r\n\r\n").nth(1).unwrap_or_default();
            anyhow::Ok(serde_json::from_str::<serde_json::Value>(body)?)
        }
    };
    let total = |series: &serde_json::Value, key: &str| -> f64 {
        let step = series["step_seconds"].as_f64().unwrap_or_default();
        series["points"]
            .as_array()
            .map(|points| points.iter().filter_map(|p| p[key].as_f64()).sum::<f64>() * step)
            .unwrap_or_default()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (a, b) = (series(&one).await?, series(&two).await?);
        let counted = total(&a, "submitted_per_sec").round() as u64 == 20
            && total(&a, "succeeded_per_sec").round() as u64 == 20;
        if counted && a["points"] == b["points"] {
            assert!(
                a["points"]
                    .as_array()
                    .is_some_and(|p| p.iter().any(|p| p["run_p50_ms"].is_u64()))
            );
            return Ok(());
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "the gateways draw different charts, or not the tasks that ran:\n{a}\n{b}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
