//! Metrics, heartbeats and `taskwire inspect`, after a known workload on a real gateway and a
//! real worker process.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use taskwire_client::Client;
use taskwire_examples::chaos::v1::ChaosClient;
use taskwire_examples::chaos::v1::{FlakyArgs, SleepArgs};
use taskwire_examples::magic::v1::AddArgs;
use taskwire_examples::magic::v1::MagicClient;
use taskwire_testing::{
    Gateway, LOOPBACK_ANY_PORT, NatsServer, bin, eventually, examples_config, worker_process_ports,
};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const WAIT: Duration = Duration::from_secs(20);
const ADD: &str = "examples.magic.v1.Magic/Add";
const FLAKY: &str = "examples.chaos.v1.Chaos/Flaky";

/// `GET /metrics`, parsed into `name{labels}` → value.
async fn scrape(addr: SocketAddr) -> anyhow::Result<HashMap<String, f64>> {
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: test\r\n\r\n")
        .await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow::anyhow!("not an HTTP response: {response}"))?;
    anyhow::ensure!(
        head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
        "{head}"
    );
    let mut samples = HashMap::new();
    for line in body.lines() {
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let (name, value) = line
            .rsplit_once(' ')
            .ok_or_else(|| anyhow::anyhow!("bad sample line {line:?}"))?;
        samples.insert(name.to_owned(), value.parse::<f64>()?);
    }
    anyhow::ensure!(body.trim_end().ends_with("# EOF"), "no # EOF: {body}");
    Ok(samples)
}

fn sample(samples: &HashMap<String, f64>, name: &str) -> f64 {
    samples.get(name).copied().unwrap_or_else(|| {
        let mut names: Vec<&String> = samples.keys().collect();
        names.sort();
        panic!("no sample {name}; have {names:#?}")
    })
}

#[tokio::test]
async fn metrics_count_a_known_workload_and_inspect_shows_it() -> anyhow::Result<()> {
    let nats = NatsServer::start_temporary().await?;
    let mut config = examples_config(&nats.url());
    config.http_addr = Some(LOOPBACK_ANY_PORT);
    let gateway = Gateway::start_with(config).await?;
    let gateway_http = gateway.http_addr().expect("the gateway's /metrics address");
    let client = Client::connect(gateway.url()).await?;

    // A backlog before any worker: inspect counts it from the subject.
    let chaos = ChaosClient::new(client.clone());
    for i in 0..3 {
        chaos
            .sleep(SleepArgs {
                millis: 1,
                label: format!("waiting-{i}"),
            })
            .await?;
    }
    let out = tokio::process::Command::new(bin("taskwire")?)
        .args(["inspect", "queues", "--json"])
        .env("TASKWIRE_GATEWAY_URL", gateway.url())
        .stdin(Stdio::null())
        .output()
        .await?;
    assert!(out.status.success(), "{out:?}");
    let lines: Vec<serde_json::Value> = String::from_utf8(out.stdout)?
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    let sleep = lines
        .iter()
        .find(|l| l["task"] == "examples.chaos.v1.Chaos/Sleep" && l["priority"] == "normal")
        .expect("the Sleep queue");
    assert_eq!(sleep["queued"], 3, "{sleep}");
    assert!(
        sleep["oldest_waiting_seconds"].as_f64().unwrap_or(0.0) > 0.0,
        "{sleep}"
    );

    // The worker process, with its metrics endpoint.
    let (mut worker, ports) = worker_process_ports(
        &nats.url(),
        &[("TASKWIRE_METRICS_ADDR", &LOOPBACK_ANY_PORT.to_string())],
    )
    .await?;
    let worker_http = ports.http.expect("the worker's /metrics address");
    eventually("the worker's heartbeat", WAIT, || async {
        client.workers().await.is_ok_and(|w| w.len() == 1)
    })
    .await?;
    // Its health check, as containers run it.
    let health = tokio::process::Command::new(bin("taskwire")?)
        .args(["health", "--http", &format!("http://{worker_http}/healthz")])
        .output()
        .await?;
    assert!(
        health.status.success(),
        "{}",
        String::from_utf8_lossy(&health.stderr)
    );

    let magic = MagicClient::new(client.clone());
    for i in 0..5 {
        magic
            .add_and_wait(
                AddArgs {
                    arg1: i,
                    arg2: 0,
                    arg3: 0,
                },
                WAIT,
            )
            .await?;
    }
    for _ in 0..2 {
        let failing = chaos
            .flaky(FlakyArgs {
                permanent: true,
                ..Default::default()
            })
            .await?;
        failing.get(WAIT).await.expect_err("fails for good");
    }
    let retried = chaos
        .flaky(FlakyArgs {
            succeed_on_attempt: 2,
            ..Default::default()
        })
        .await?;
    retried.get(WAIT).await?;

    // A worker counts a result right after storing it, so the client may see it first.
    let flaky_done =
        format!(r#"taskwire_tasks_completed_total{{task="{FLAKY}",state="succeeded"}}"#);
    eventually("the worker to count the last result", WAIT, || async {
        scrape(worker_http)
            .await
            .is_ok_and(|m| m.get(&flaky_done) == Some(&1.0))
    })
    .await?;
    let worker_metrics = scrape(worker_http).await?;
    let completed = |task: &str, state: &str| {
        sample(
            &worker_metrics,
            &format!(r#"taskwire_tasks_completed_total{{task="{task}",state="{state}"}}"#),
        )
    };
    assert_eq!(completed(ADD, "succeeded"), 5.0);
    assert_eq!(completed(FLAKY, "failed"), 2.0);
    assert_eq!(completed(FLAKY, "succeeded"), 1.0);
    assert_eq!(
        sample(
            &worker_metrics,
            &format!(r#"taskwire_tasks_retried_total{{task="{FLAKY}"}}"#)
        ),
        1.0
    );
    assert_eq!(
        sample(
            &worker_metrics,
            &format!(r#"taskwire_tasks_dead_lettered_total{{task="{FLAKY}",reason="permanent"}}"#)
        ),
        2.0
    );
    assert_eq!(
        sample(
            &worker_metrics,
            &format!(r#"taskwire_task_run_seconds_count{{task="{ADD}"}}"#)
        ),
        5.0
    );

    let gateway_metrics = scrape(gateway_http).await?;
    assert_eq!(
        sample(
            &gateway_metrics,
            &format!(r#"taskwire_tasks_submitted_total{{task="{ADD}"}}"#)
        ),
        5.0
    );
    assert_eq!(
        sample(
            &gateway_metrics,
            &format!(r#"taskwire_tasks_submitted_total{{task="{FLAKY}"}}"#)
        ),
        3.0
    );
    assert!(
        sample(
            &gateway_metrics,
            r#"taskwire_gateway_requests_total{method="/taskwire.v1.Tasks/Submit",code="Ok"}"#
        ) >= 6.0
    );
    assert_eq!(
        sample(
            &gateway_metrics,
            &format!(r#"taskwire_dead_letters{{task="{FLAKY}"}}"#)
        ),
        2.0
    );
    assert_eq!(sample(&gateway_metrics, "taskwire_workers_alive"), 1.0);
    assert_eq!(
        sample(
            &gateway_metrics,
            &format!(r#"taskwire_queue_depth{{task="{ADD}",priority="normal"}}"#)
        ),
        0.0
    );

    // Every query of the Grafana dashboard names a metric exported here.
    let exported: std::collections::HashSet<String> = worker_metrics
        .keys()
        .chain(gateway_metrics.keys())
        .map(|k| k.split('{').next().unwrap_or(k).to_owned())
        .collect();
    let dashboard: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/grafana/taskwire.json"),
    )?)?;
    let panels = dashboard["panels"].as_array().expect("panels");
    assert!(panels.len() >= 8);
    for panel in panels {
        for target in panel["targets"].as_array().expect("targets") {
            let expr = target["expr"].as_str().expect("a query");
            let names: Vec<&str> = expr
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .filter(|w| w.starts_with("taskwire_"))
                .collect();
            assert!(!names.is_empty(), "{expr}");
            for name in names {
                assert!(exported.contains(name), "{name} in {expr} is not exported");
            }
        }
    }

    // inspect workers (after the next heartbeat) and inspect task.
    eventually("a heartbeat with the counts", WAIT, || async {
        client
            .workers()
            .await
            .is_ok_and(|w| w.len() == 1 && w[0].succeeded >= 9 && w[0].failed == 2)
    })
    .await?;
    let out = tokio::process::Command::new(bin("taskwire")?)
        .args(["inspect", "workers", "--json"])
        .env("TASKWIRE_GATEWAY_URL", gateway.url())
        .stdin(Stdio::null())
        .output()
        .await?;
    assert!(out.status.success(), "{out:?}");
    let worker_line: serde_json::Value =
        serde_json::from_str(String::from_utf8(out.stdout)?.trim())?;
    assert_eq!(worker_line["pid"], worker.id().expect("running"));
    assert!(
        worker_line["succeeded"].as_u64().unwrap_or(0) >= 9,
        "{worker_line}"
    );
    assert_eq!(worker_line["failed"], 2, "{worker_line}");

    let out = tokio::process::Command::new(bin("taskwire")?)
        .args(["inspect", "task", retried.id(), "--json"])
        .env("TASKWIRE_GATEWAY_URL", gateway.url())
        .stdin(Stdio::null())
        .output()
        .await?;
    assert!(out.status.success(), "{out:?}");
    let task: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(task["state"], "succeeded");
    assert_eq!(task["attempt"], 2);
    let states: Vec<&str> = task["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter_map(|e| e["state"].as_str())
        .collect();
    assert_eq!(states.first(), Some(&"queued"), "{task}");
    assert!(states.contains(&"retrying"), "{task}");

    // A worker that stops leaves the list at once.
    let pid = nix::unistd::Pid::from_raw(worker.id().expect("running") as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM)?;
    worker.wait().await?;
    eventually("the worker to leave the list", WAIT, || async {
        client.workers().await.is_ok_and(|w| w.is_empty())
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn json_logs_carry_the_task_of_each_line() -> anyhow::Result<()> {
    let nats = NatsServer::start_temporary().await?;
    let gateway = Gateway::start(&nats.url()).await?;
    let client = Client::connect(gateway.url()).await?;
    let mut worker = tokio::process::Command::new(bin("taskwire-test-worker")?)
        .env("TASKWIRE_NATS_URL", nats.url())
        .env("TASKWIRE_LOG", "info")
        .env("TASKWIRE_LOG_FORMAT", "json")
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    eventually("the worker to register", WAIT, || async {
        client
            .task_types()
            .await
            .is_ok_and(|t| t.iter().any(|t| t.name == FLAKY))
    })
    .await?;
    // Submitted with a W3C trace context, as any traced producer sends it.
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let mut tasks = taskwire::v1::tasks_client::TasksClient::connect(gateway.url()).await?;
    let mut request = tonic::Request::new(taskwire::v1::SubmitRequest {
        task: FLAKY.into(),
        args: Some(taskwire::v1::submit_request::Args::ArgsJson(
            r#"{"succeedOnAttempt":2}"#.into(),
        )),
        options: None,
        ..Default::default()
    });
    request.metadata_mut().insert(
        "traceparent",
        format!("00-{trace}-00f067aa0ba902b7-01").parse()?,
    );
    let id = tasks.submit(request).await?.into_inner().task_id;
    let done = client.wait(&id, WAIT, false).await?;
    assert_eq!(done.state(), taskwire::v1::TaskState::Succeeded);
    assert_eq!(done.trace_id, trace, "the result names the trace");
    let pid = nix::unistd::Pid::from_raw(worker.id().expect("running") as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM)?;
    let mut stderr = String::new();
    worker
        .stderr
        .take()
        .expect("piped")
        .read_to_string(&mut stderr)
        .await?;
    worker.wait().await?;

    let lines: Vec<serde_json::Value> = stderr
        .lines()
        .map(|l| serde_json::from_str(l).map_err(|e| anyhow::anyhow!("{e}: {l}")))
        .collect::<anyhow::Result<_>>()?;
    let retrying = lines
        .iter()
        .find(|l| l["fields"]["message"] == "retrying")
        .ok_or_else(|| anyhow::anyhow!("no retrying line in {stderr}"))?;
    assert_eq!(retrying["level"], "INFO");
    assert_eq!(retrying["span"]["task"], FLAKY, "{retrying}");
    assert_eq!(retrying["span"]["task_id"], id.as_str(), "{retrying}");
    assert_eq!(retrying["span"]["attempt"], 1, "{retrying}");
    assert_eq!(retrying["span"]["trace_id"], trace, "{retrying}");
    Ok(())
}
