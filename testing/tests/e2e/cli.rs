//! The `taskwire` command line against a real system.

use super::*;

#[tokio::test]
async fn cli_submits_gets_and_lists() -> anyhow::Result<()> {
    let nats = NatsServer::start_temporary().await?;
    let gateway = Gateway::start(&nats.url()).await?;
    let _worker = Worker::start(&nats.url(), |w| w.serve(tasks::magic())).await?;
    let cli = |args: &[&str]| {
        let mut command = Command::new(bin("taskwire").expect("taskwire binary"));
        command
            .args(args)
            .env("TASKWIRE_GATEWAY_URL", gateway.url())
            .stdin(Stdio::null());
        command
    };

    let out = cli(&["submit", ADD, r#"{"arg1":1,"arg2":2,"arg3":3}"#, "--wait"])
        .output()
        .await?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let result: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(result, serde_json::json!({ "sum": 6 }));

    // The health check containers use: the gateway serves; a closed port does not.
    let addr = gateway.url().trim_start_matches("http://").to_owned();
    let out = cli(&["health", "--grpc", &addr]).output().await?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "serving");
    // Port 0 takes no connections.
    let closed = "127.0.0.1:0";
    let out = cli(&["health", "--grpc", closed]).output().await?;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot connect"));

    let out = cli(&["submit", ADD, r#"{"arg1":2,"arg2":2,"arg3":3}"#])
        .output()
        .await?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = String::from_utf8(out.stdout)?.trim().to_owned();
    assert_eq!(id.len(), 32, "{id}");
    let out = cli(&["wait", &id]).output().await?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = cli(&["get", &id]).output().await?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let info: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(info["state"], "succeeded");
    assert_eq!(info["result"]["sum"], 7);
    assert_eq!(info["id"], id.as_str());

    let out = cli(&["tasks"]).output().await?;
    let listing = String::from_utf8(out.stdout)?;
    assert!(
        listing
            .lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>()
                == [
                    ADD,
                    "examples.magic.v1.AddArgs",
                    "examples.magic.v1.AddResult"
                ]),
        "{listing}"
    );

    let out = cli(&["submit", ADD, r#"{"arg9":1}"#]).output().await?;
    assert!(!out.status.success());
    let stderr = String::from_utf8(out.stderr)?;
    assert_eq!(
        stderr.trim().lines().count(),
        1,
        "one readable line: {stderr}"
    );
    assert!(
        stderr.contains("invalid argument") && stderr.contains("`arg9`"),
        "{stderr}"
    );
    Ok(())
}

/// `taskwire queue pause|resume`: what is paused, printed as JSON and shown by `inspect`; a
/// priority that does not exist is refused by the command line itself.
#[tokio::test]
async fn cli_pauses_and_resumes_a_queue() -> anyhow::Result<()> {
    let nats = NatsServer::start_temporary().await?;
    let gateway = Gateway::start(&nats.url()).await?;
    let _worker = Worker::start(&nats.url(), |w| w.serve(tasks::magic())).await?;
    let cli = |args: &[&str]| {
        let mut command = Command::new(bin("taskwire").expect("taskwire binary"));
        command
            .args(args)
            .env("TASKWIRE_GATEWAY_URL", gateway.url())
            .stdin(Stdio::null());
        command
    };
    let json = |out: &std::process::Output| -> anyhow::Result<serde_json::Value> {
        anyhow::ensure!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(serde_json::from_slice(&out.stdout)?)
    };

    let out = cli(&[
        "queue",
        "pause",
        ADD,
        "--priority",
        "low",
        "--priority",
        "high",
        "--reason",
        "deploy",
    ])
    .output()
    .await?;
    let paused = json(&out)?;
    assert_eq!(
        paused["paused"],
        serde_json::json!(["high", "low"]),
        "{paused}"
    );
    assert_eq!(paused["reason"], "deploy");

    let out = cli(&["inspect", "queues", "--json"]).output().await?;
    anyhow::ensure!(out.status.success());
    let rows: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    let paused_rows: Vec<&str> = rows
        .iter()
        .filter(|r| r["task"] == ADD && r["paused"] == true)
        .filter_map(|r| r["priority"].as_str())
        .collect();
    assert_eq!(paused_rows, ["high", "low"], "{rows:?}");
    let out = cli(&["inspect", "queues"]).output().await?;
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table
            .lines()
            .any(|l| l.contains(ADD) && l.contains("low") && l.ends_with("paused")),
        "{table}"
    );

    // A normal task still runs.
    let out = cli(&["submit", ADD, r#"{"arg1":1}"#, "--wait"])
        .output()
        .await?;
    assert_eq!(json(&out)?, serde_json::json!({ "sum": 1 }));

    let out = cli(&["queue", "resume", ADD]).output().await?;
    let resumed = json(&out)?;
    assert_eq!(resumed["paused"], serde_json::json!([]), "{resumed}");
    assert_eq!(resumed["since"], serde_json::Value::Null);

    // A purge asks for --yes, and then says how many it cancelled.
    let out = cli(&["queue", "purge", ADD]).output().await?;
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--yes"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = cli(&["queue", "purge", ADD, "--yes"]).output().await?;
    assert_eq!(json(&out)?["purged"], 0);

    let out = cli(&["queue", "pause", ADD, "--priority", "urgent"])
        .output()
        .await?;
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("urgent"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

#[tokio::test]
async fn cli_lists_tasks_by_filter_and_cancels_those_that_match() -> anyhow::Result<()> {
    let nats = NatsServer::start_temporary().await?;
    let gateway = gateway_knowing_examples(&nats).await?;
    let client = Client::connect(gateway.url()).await?;
    let cli = |args: &[&str]| {
        let mut command = Command::new(bin("taskwire").expect("taskwire binary"));
        command
            .args(args)
            .env("TASKWIRE_GATEWAY_URL", gateway.url())
            .stdin(Stdio::null());
        command
    };
    let lines = |out: &std::process::Output| -> anyhow::Result<Vec<serde_json::Value>> {
        anyhow::ensure!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(serde_json::from_str)
            .collect::<Result<_, _>>()?)
    };
    // No worker: three tasks wait.
    let mut ids = Vec::new();
    for n in 0..3 {
        let handle = client
            .submit::<AddResult>(
                ADD,
                &AddArgs {
                    arg1: n,
                    ..Default::default()
                },
                SubmitOptions::default(),
            )
            .await?;
        ids.push(handle.id().to_owned());
    }
    let out = cli(&[
        "tasks",
        "list",
        "--state",
        "queued",
        "--since",
        "1h",
        "--task",
        "examples.*",
        "-o",
        "json",
    ])
    .output()
    .await?;
    let found = lines(&out)?;
    let listed: Vec<&str> = found.iter().filter_map(|t| t["id"].as_str()).collect();
    assert_eq!(listed, ids);
    assert!(
        found.iter().all(|t| t["submitted_at"].is_string()),
        "{found:?}"
    );
    // A state that is none says which are.
    let out = cli(&["tasks", "list", "--state", "done"]).output().await?;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("none of queued"));
    // Cancelling in bulk asks for --yes without a terminal, and cancels nothing before.
    let out = cli(&["tasks", "cancel", "--task", ADD]).output().await?;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--yes"));
    assert_eq!(client.get(&ids[0], false).await?.state(), TaskState::Queued);
    let out = cli(&["tasks", "cancel", "--task", ADD, "--yes"])
        .output()
        .await?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "cancelled 3 task(s)"
    );
    let out = cli(&["tasks", "list", "--state", "cancelled", "-o", "json"])
        .output()
        .await?;
    assert_eq!(lines(&out)?.len(), 3);
    // `taskwire tasks` alone still lists the task types.
    let out = cli(&["tasks"]).output().await?;
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains(ADD));
    Ok(())
}
