//! Real processes and signals: a killed worker, SIGTERM, a broker restart.

use super::*;

/// Starts the test worker binary as a real process.
fn worker_process(nats: &NatsServer, ack_wait: &str) -> anyhow::Result<tokio::process::Child> {
    taskwire_testing::worker_process(
        &nats.url(),
        &[("TASKWIRE_ACK_WAIT", ack_wait), ("TASKWIRE_GRACE", "20s")],
    )
}

#[tokio::test]
async fn a_task_of_a_killed_worker_is_redelivered_and_has_one_result() -> anyhow::Result<()> {
    let nats = NatsServer::start_temporary().await?;
    let gateway = gateway_knowing_examples(&nats).await?;
    let client = Client::connect(gateway.url()).await?;
    let chaos = ChaosClient::new(client.clone());

    let mut first = worker_process(&nats, "2s")?;
    let handle = chaos
        .sleep(SleepArgs {
            millis: 1500,
            label: "survivor".into(),
        })
        .await?;
    eventually("the first worker runs the task", WAIT, || async {
        state_of(&client, handle.id()).await == TaskState::Running
    })
    .await?;
    first.start_kill()?;
    first.wait().await?;

    let _second = worker_process(&nats, "2s")?;
    let result: SleepResult = handle.get(WAIT).await?;
    assert_eq!(result.label, "survivor");
    assert_eq!(result.attempt, 2, "the second delivery finished it");
    assert_eq!(
        subject_messages(
            &nats,
            "TASKWIRE_RESULTS",
            &format!("taskwire.results.{}.>", handle.id())
        )
        .await?,
        1
    );
    assert_eq!(stream_messages(&nats, "TASKWIRE_RESULTS").await?, 1);
    eventually("the queue is empty", WAIT, || async {
        stream_messages(&nats, "TASKWIRE_TASKS").await.ok() == Some(0)
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn sigterm_lets_the_running_task_finish() -> anyhow::Result<()> {
    let nats = NatsServer::start_temporary().await?;
    let gateway = gateway_knowing_examples(&nats).await?;
    let client = Client::connect(gateway.url()).await?;
    let chaos = ChaosClient::new(client.clone());

    let mut worker = worker_process(&nats, "30s")?;
    let handle = chaos
        .sleep(SleepArgs {
            millis: 1000,
            label: "drained".into(),
        })
        .await?;
    eventually("the worker runs the task", WAIT, || async {
        state_of(&client, handle.id()).await == TaskState::Running
    })
    .await?;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(worker.id().expect("running") as i32),
        nix::sys::signal::Signal::SIGTERM,
    )?;
    let status = tokio::time::timeout(WAIT, worker.wait()).await??;
    assert!(
        status.success(),
        "the worker exits 0 after draining: {status}"
    );
    let info = client.get(handle.id(), false).await?;
    assert_eq!(
        info.state(),
        TaskState::Succeeded,
        "finished before exit: {info:?}"
    );
    assert_eq!(SleepResult::decode(info.result.as_slice())?.attempt, 1);
    Ok(())
}

#[tokio::test]
async fn results_and_queued_tasks_survive_a_broker_restart() -> anyhow::Result<()> {
    let mut nats = NatsServer::start_temporary().await?;
    let gateway = gateway_knowing_examples(&nats).await?;
    let client = Client::connect(gateway.url()).await?;
    let magic = MagicClient::new(client.clone());

    let worker = Worker::start(&nats.url(), |w| w.serve(tasks::magic())).await?;
    let done = magic
        .add(AddArgs {
            arg1: 1,
            arg2: 2,
            arg3: 3,
        })
        .await?;
    assert_eq!(done.get(WAIT).await?.sum, 6);
    worker.stop().await?;

    let mut queued = Vec::new();
    for i in 0..5 {
        queued.push(
            magic
                .add(AddArgs {
                    arg1: i,
                    arg2: 0,
                    arg3: 0,
                })
                .await?,
        );
    }
    assert_eq!(stream_messages(&nats, "TASKWIRE_TASKS").await?, 5);

    nats.restart().await?;
    eventually("the gateway is connected again", WAIT, || async {
        client.get(done.id(), false).await.is_ok()
    })
    .await?;
    assert_eq!(done.get(WAIT).await?.sum, 6, "the result survived");
    assert_eq!(
        stream_messages(&nats, "TASKWIRE_TASKS").await?,
        5,
        "the queue survived"
    );

    let _worker = Worker::start(&nats.url(), |w| w.serve(tasks::magic())).await?;
    for (i, handle) in queued.iter().enumerate() {
        assert_eq!(handle.get(WAIT).await?.sum, i as i64);
    }
    Ok(())
}

/// The processes whose parent is `pid`, with their command lines (arguments joined by spaces).
fn children_of(pid: u32) -> Vec<(u32, String)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(child) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) else {
            continue;
        };
        // The fields after the command name (which may hold spaces): state, then parent.
        let Some(after_name) = stat.rfind(')').map(|i| &stat[i + 2..]) else {
            continue;
        };
        if after_name.split_whitespace().nth(1) == Some(pid.to_string().as_str()) {
            let cmdline = std::fs::read(format!("/proc/{child}/cmdline")).unwrap_or_default();
            found.push((child, String::from_utf8_lossy(&cmdline).replace('\0', " ")));
        }
    }
    found
}

/// Whether a process runs: it exists and has not ended (a zombie has).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| stat.rfind(')').map(|i| !stat[i + 2..].starts_with('Z')))
        .unwrap_or(false)
}

#[tokio::test]
async fn a_bench_stopped_by_sigterm_stops_what_it_started() -> anyhow::Result<()> {
    let bench = Command::new(bin("taskwire")?)
        .args(["bench", "--tasks", "10000000", "--rounds", "1", "--json"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let pid = bench.id().expect("running");
    let wanted = ["nats-server", "taskwire-gateway", "taskwire-magic-worker"];
    eventually(
        "the bench starts its server, gateway and worker",
        Duration::from_secs(60),
        || async {
            let children = children_of(pid);
            wanted
                .iter()
                .all(|name| children.iter().any(|(_, cmd)| cmd.contains(name)))
        },
    )
    .await?;
    let children = children_of(pid);
    let store = children
        .iter()
        .find(|(_, cmd)| cmd.contains("nats-server"))
        .and_then(|(_, cmd)| {
            let mut args = cmd.split_whitespace();
            args.find(|a| *a == "-sd").and_then(|_| args.next())
        })
        .map(std::path::PathBuf::from)
        .expect("the bench's nats-server has a store");
    assert!(store.exists(), "{}", store.display());

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    )?;
    let out = tokio::time::timeout(WAIT, bench.wait_with_output()).await??;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("stopped by a signal"), "{stderr}");
    for (child, cmd) in &children {
        eventually(&format!("{cmd} ends"), WAIT, || async { !alive(*child) }).await?;
    }
    assert!(
        !store.exists(),
        "the server's temporary store {} is removed",
        store.display()
    );
    Ok(())
}
