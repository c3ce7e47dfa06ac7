//! Drills where features meet faults: delayed tasks that fail, keys across a restart, an
//! outage under a concurrency limit.

use super::*;

/// Delayed tasks that fail for good (half with a permanent error, half by using up their two
/// attempts) and a schedule whose every tick fails, while a worker is killed (SIGKILL) and
/// started again: every one ends failed with exactly one dead letter.
pub(crate) async fn delayed_failures(n: usize) -> anyhow::Result<Report> {
    use taskwire::v1;
    use taskwire_examples::chaos::v1::FlakyArgs;
    const FLAKY: &str = "examples.chaos.v1.Chaos/Flaky";
    let nats = NatsServer::start_temporary().await?;
    let gateway = Gateway::start(&nats.url()).await?;
    let mut workers = [
        worker(&nats.url(), "2s", 50)?,
        worker(&nats.url(), "2s", 50)?,
    ];
    let client = Client::connect(gateway.url()).await?;
    ready(&client, FLAKY).await?;
    let schedule = v1::Schedule {
        name: "failing-every-second".into(),
        task: FLAKY.into(),
        when: Some(v1::schedule::When::Every(prost_types::Duration {
            seconds: 1,
            nanos: 0,
        })),
        args: Some(v1::schedule::Args::ArgsJson(r#"{"permanent":true}"#.into())),
        ..Default::default()
    };
    client.create_schedule(schedule).await?;
    let mut pending = futures::stream::iter(0..n)
        .map(|i| {
            let client = client.clone();
            async move {
                let args = FlakyArgs {
                    permanent: i % 2 == 0,
                    ..Default::default()
                };
                let options = SubmitOptions::default()
                    .countdown(Duration::from_millis(200 + (i as u64 * 37) % 2800))
                    .max_attempts(2);
                client
                    .submit::<taskwire_examples::chaos::v1::FlakyResult>(FLAKY, &args, options)
                    .await
                    .map(|h| h.id().to_owned())
            }
        })
        .buffer_unordered(64);
    let mut ids = Vec::new();
    while let Some(submitted) = pending.next().await {
        ids.push(submitted?);
        if ids.len() == n / 2 {
            signal(&workers[0], nix::sys::signal::Signal::SIGKILL);
            workers[0] = worker(&nats.url(), "2s", 50)?;
        }
    }
    // Let the delays run out and the schedule tick a few more times, then stop it.
    tokio::time::sleep(Duration::from_secs(4)).await;
    client.delete_schedule("failing-every-second").await?;
    // Every task of the type, the schedule's included: each has a queued or scheduled event.
    let nc = async_nats::connect(broker::servers(&nats.url())).await?;
    let js = async_nats::jetstream::new(nc);
    let mut events = js
        .get_stream(broker::EVENTS_STREAM)
        .await?
        .info_with_subjects("taskwire.events.*.examples.chaos.v1.Chaos.Flaky")
        .await?;
    let mut all: std::collections::BTreeSet<String> = ids.iter().cloned().collect();
    while let Some(Ok((subject, _))) = events.next().await {
        if let Some(id) = subject.split('.').nth(2) {
            all.insert(id.to_owned());
        }
    }
    let all: Vec<String> = all.into_iter().collect();
    let mut report = settle(
        "delayed_failures",
        &nats.url(),
        &all,
        0,
        Duration::from_secs(120),
    )
    .await?;
    // Failing tasks are the point here: succeeded would be wrong.
    report.lost += report.succeeded;
    Ok(report)
}

/// Keyed tasks submitted, nats-server killed and started again, and every key submitted again:
/// each answers its first task (as a duplicate), and each task has one result.
pub(crate) async fn keys_across_restart(n: usize) -> anyhow::Result<Report> {
    let mut nats = NatsServer::start_temporary().await?;
    let gateway = Gateway::start(&nats.url()).await?;
    let _workers = [worker(&nats.url(), "2s", 50)?];
    let client = Client::connect(gateway.url()).await?;
    ready(&client, SLEEP).await?;
    let run = format!("{:x}", broker::now_micros());
    let submit_all = |client: Client| {
        let run = run.clone();
        async move {
            let mut pending = futures::stream::iter(0..n)
                .map(|i| {
                    let client = client.clone();
                    let key = format!("{run}-{i}");
                    async move {
                        let deadline = Instant::now() + Duration::from_secs(60);
                        let args = SleepArgs {
                            millis: 1,
                            label: i.to_string(),
                        };
                        loop {
                            let options = SubmitOptions::default().idempotency_key(key.clone());
                            let submitted = client
                                .submit_raw(
                                    SLEEP,
                                    taskwire::v1::submit_request::Args::ArgsProto(
                                        prost::Message::encode_to_vec(&args),
                                    ),
                                    options,
                                )
                                .await;
                            match submitted {
                                Ok(answer) => return Ok((i, answer)),
                                Err(_) if Instant::now() < deadline => {
                                    tokio::time::sleep(Duration::from_millis(100)).await;
                                }
                                Err(e) => return Err(anyhow::Error::from(e)),
                            }
                        }
                    }
                })
                .buffer_unordered(64);
            let mut answers = vec![None; n];
            while let Some(answer) = pending.next().await {
                let (i, answer) = answer?;
                answers[i] = Some(answer);
            }
            anyhow::Ok(answers)
        }
    };
    let first = submit_all(client.clone()).await?;
    nats.kill().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    nats.restart().await?;
    let again = submit_all(client.clone()).await?;
    let mut mismatches = 0;
    for (first, again) in first.iter().zip(&again) {
        match (first, again) {
            (Some(first), Some(again)) if first.task_id == again.task_id && again.duplicate => {}
            _ => mismatches += 1,
        }
    }
    let ids: Vec<String> = first.into_iter().flatten().map(|a| a.task_id).collect();
    let mut report = settle(
        "keys_across_restart",
        &nats.url(),
        &ids,
        0,
        Duration::from_secs(120),
    )
    .await?;
    report.key_mismatches = mismatches;
    Ok(report)
}

/// Tasks of a type with a concurrency limit of 5 on three workers, and nats-server stopped
/// (SIGSTOP) for 25 s, longer than a slot's lease, then let go on: never more than five run at
/// once (a task whose slot could not be refreshed is stopped before its lease runs out), and
/// nothing is lost.
pub(crate) async fn outage_under_limit(n: usize) -> anyhow::Result<Report> {
    const LIMITED: &str = "examples.chaos.v1.Chaos/Limited";
    let nats = NatsServer::start_temporary().await?;
    let gateway = Gateway::start(&nats.url()).await?;
    let temp = tempfile::tempdir()?;
    let run_log = temp.path().join("runs.log");
    let run_log_text = run_log.display().to_string();
    let log = execution_log(&nats.url()).display().to_string();
    let mut workers = Vec::new();
    for _ in 0..3 {
        workers.push(crate::worker_process(
            &nats.url(),
            &[
                ("TASKWIRE_EXECUTION_LOG", &log),
                ("TASKWIRE_RUN_LOG", &run_log_text),
                ("TASKWIRE_ACK_WAIT", "5s"),
                ("TASKWIRE_GRACE", "2s"),
                ("TASKWIRE_CONCURRENCY", "10"),
                ("TASKWIRE_LOG", "error"),
            ],
        )?);
    }
    let client = Client::connect(gateway.url()).await?;
    ready(&client, LIMITED).await?;
    let mut pending = futures::stream::iter(0..n)
        .map(|i| {
            let client = client.clone();
            async move {
                let args = SleepArgs {
                    millis: 2_000 + (i as u64 % 5) * 500,
                    label: i.to_string(),
                };
                client
                    .submit::<SleepResult>(LIMITED, &args, SubmitOptions::default())
                    .await
                    .map(|h| h.id().to_owned())
            }
        })
        .buffer_unordered(64);
    let mut ids = Vec::new();
    while let Some(submitted) = pending.next().await {
        ids.push(submitted?);
    }
    // Mid-run: the limit is full of running tasks.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let pid = nats
        .pid()
        .ok_or_else(|| anyhow::anyhow!("nats-server is not running"))?;
    let pid = nix::unistd::Pid::from_raw(pid as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP)?;
    tokio::time::sleep(Duration::from_secs(25)).await;
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT)?;
    let mut report = settle(
        "outage_under_limit",
        &nats.url(),
        &ids,
        0,
        Duration::from_secs(60 + n as u64),
    )
    .await?;
    let runs = crate::runtime::read_runs(&run_log)?;
    let mut changes: Vec<(std::time::SystemTime, i64)> = Vec::new();
    for run in runs.values().flatten() {
        changes.push((run.start, 1));
        changes.push((run.end.unwrap_or(run.start), -1));
    }
    changes.sort();
    let (mut now, mut most) = (0i64, 0i64);
    for (_, change) in changes {
        now += change;
        most = most.max(now);
    }
    report.most_at_once = most as usize;
    drop(workers);
    Ok(report)
}
