//! Cluster-wide limits: a concurrency limit is never exceeded however many workers run, a rate
//! limit paces starts across workers, and the Admin API overrides both at run time.

use std::time::Duration;

use taskwire::v1;
use taskwire_client::Client;
use taskwire_examples::chaos::v1::ChaosClient;
use taskwire_examples::chaos::v1::SleepArgs;
use taskwire_testing::{Gateway, NatsServer, Worker, tasks};

const WAIT: Duration = Duration::from_secs(60);
const LIMITED: &str = "examples.chaos.v1.Chaos/Limited";
const PACED: &str = "examples.chaos.v1.Chaos/Paced";

async fn three_workers(nats: &NatsServer) -> anyhow::Result<Vec<Worker>> {
    let mut workers = Vec::new();
    for _ in 0..3 {
        workers
            .push(Worker::start(&nats.url(), |w| w.serve(tasks::chaos()).concurrency(10)).await?);
    }
    Ok(workers)
}

async fn run_limited(chaos: &ChaosClient, prefix: &str, n: usize) -> anyhow::Result<()> {
    let mut handles = Vec::new();
    for i in 0..n {
        handles.push(
            chaos
                .limited(SleepArgs {
                    millis: 150,
                    label: format!("{prefix}{i}"),
                })
                .await?,
        );
    }
    for handle in handles {
        handle.get(WAIT).await?;
    }
    Ok(())
}

#[tokio::test]
async fn a_concurrency_limit_holds_across_three_workers_and_can_be_overridden() -> anyhow::Result<()>
{
    let nats = NatsServer::start_temporary().await?;
    let gateway = Gateway::start(&nats.url()).await?;
    let _workers = three_workers(&nats).await?;
    let client = Client::connect(gateway.url()).await?;
    let chaos = ChaosClient::new(client.clone());

    // Declared in the proto: at most five at once.
    let limits = client.task_limits(LIMITED).await?;
    assert_eq!(limits.limits.as_ref().map(|l| l.max_concurrency), Some(5));
    assert!(!limits.overridden);
    run_limited(&chaos, "limited-", 40).await?;
    let most = tasks::max_overlap("limited-");
    println!("max concurrent observed: {most} (limit 5, 3 workers of 10)");
    assert!(most <= 5, "{most} ran at once");
    assert!(most >= 2, "the workers ran tasks side by side: {most}");

    // Overridden through the Admin API: the workers follow.
    let set = client
        .set_task_limits(
            LIMITED,
            Some(v1::TaskLimits {
                max_concurrency: 2,
                rate_limit: String::new(),
                ..Default::default()
            }),
        )
        .await?;
    assert!(set.overridden);
    // Workers learn the override from their watch of the limits bucket.
    tokio::time::sleep(Duration::from_secs(2)).await;
    run_limited(&chaos, "overridden-", 20).await?;
    let most = tasks::max_overlap("overridden-");
    println!("max concurrent observed: {most} (override 2)");
    assert!(most <= 2, "{most} ran at once");

    // Cleared: the declared limit again.
    let cleared = client.set_task_limits(LIMITED, None).await?;
    assert!(!cleared.overridden);
    assert_eq!(cleared.limits.map(|l| l.max_concurrency), Some(5));

    let err = client
        .set_task_limits(
            LIMITED,
            Some(v1::TaskLimits {
                max_concurrency: 0,
                rate_limit: "fast".into(),
                ..Default::default()
            }),
        )
        .await
        .expect_err("bad rate");
    assert_eq!(err.code(), Some(tonic::Code::InvalidArgument), "{err}");
    assert!(err.to_string().contains("rate_limit"), "{err}");
    Ok(())
}

#[tokio::test]
async fn a_rate_limit_paces_starts_across_workers() -> anyhow::Result<()> {
    let nats = NatsServer::start_temporary().await?;
    let gateway = Gateway::start(&nats.url()).await?;
    let _workers = three_workers(&nats).await?;
    let client = Client::connect(gateway.url()).await?;
    let chaos = ChaosClient::new(client.clone());

    // Declared: 20 a second. Sixty quick tasks need three windows at least.
    let mut handles = Vec::new();
    for i in 0..60 {
        handles.push(
            chaos
                .paced(SleepArgs {
                    millis: 1,
                    label: format!("paced-{i}"),
                })
                .await?,
        );
    }
    for handle in handles {
        handle.get(WAIT).await?;
    }
    let mut starts = tasks::start_times("paced-");
    starts.sort();
    assert_eq!(starts.len(), 60);
    let span = starts[59].duration_since(starts[0])?;
    println!(
        "rate observed: {:.1}/s over {span:?} (limit 20/s)",
        59.0 / span.as_secs_f64()
    );
    // Any 21 starts in a row span at least a second, less the moments between counting a
    // start and running its task: no second window's worth at a window's edge.
    let closest = starts
        .windows(21)
        .map(|w| w[20].duration_since(w[0]).unwrap_or_default())
        .min()
        .unwrap_or_default();
    assert!(
        closest >= Duration::from_millis(900),
        "21 starts within {closest:?}"
    );
    Ok(())
}

const SLEEP: &str = "examples.chaos.v1.Chaos/Sleep";

/// Whether every live worker serving Sleep holds the queues `queues` paused, and no other.
async fn workers_hold(client: &Client, queues: &[&str]) -> bool {
    let Ok(workers) = client.workers().await else {
        return false;
    };
    let mut want: Vec<String> = queues.iter().map(|q| format!("{SLEEP}:{q}")).collect();
    want.sort();
    !workers.is_empty()
        && workers.iter().all(|w| {
            let mut held = w.paused.clone();
            held.sort();
            held == want
        })
}

async fn state_of(client: &Client, id: &str) -> anyhow::Result<v1::TaskState> {
    Ok(client.get(id, false).await?.state())
}

/// A paused queue starts nothing (what runs finishes, Submit still stores, a delayed task that
/// comes due waits), one priority can be resumed alone, and every task then runs once, in its
/// first attempt. Bad pauses are refused naming what to fix.
#[tokio::test]
async fn a_paused_queue_starts_nothing_until_resumed() -> anyhow::Result<()> {
    use taskwire_client::SubmitOptions;
    use taskwire_testing::eventually;
    let nats = NatsServer::start_temporary().await?;
    let gateway = Gateway::start(&nats.url()).await?;
    let _worker = Worker::start(&nats.url(), |w| w.serve(tasks::chaos()).concurrency(10)).await?;
    let client = Client::connect(gateway.url()).await?;
    let sleep = |millis: u64| format!(r#"{{"millis":{millis}}}"#);

    // A task running when the queue is paused finishes.
    let running = client
        .submit_json(SLEEP, &sleep(1500), SubmitOptions::default())
        .await?
        .task_id;
    eventually("the first task runs", WAIT, || async {
        state_of(&client, &running)
            .await
            .is_ok_and(|s| s == v1::TaskState::Running)
    })
    .await?;
    let paused = client.pause_queue(SLEEP, &[], "maintenance").await?;
    let pause = paused.pause.unwrap_or_default();
    assert_eq!(
        pause.priorities().collect::<Vec<_>>(),
        [v1::Priority::High, v1::Priority::Normal, v1::Priority::Low]
    );
    assert_eq!(pause.reason, "maintenance");
    eventually("the worker holds the queue paused", WAIT, || {
        workers_hold(&client, &["high", "normal", "low"])
    })
    .await?;
    let done = client.wait(&running, WAIT, false).await?;
    assert_eq!(done.state(), v1::TaskState::Succeeded, "{done:?}");

    // Stored while paused, at two priorities and with a delay that comes due meanwhile.
    let mut normal = Vec::new();
    for _ in 0..3 {
        normal.push(
            client
                .submit_json(SLEEP, &sleep(10), SubmitOptions::default())
                .await?
                .task_id,
        );
    }
    normal.push(
        client
            .submit_json(
                SLEEP,
                &sleep(10),
                SubmitOptions::default().countdown(Duration::from_millis(500)),
            )
            .await?
            .task_id,
    );
    let high = client
        .submit_json(
            SLEEP,
            &sleep(10),
            SubmitOptions::default().priority(v1::Priority::High),
        )
        .await?
        .task_id;
    // A while for anything that would start to start.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for id in normal.iter().chain([&high]) {
        let state = state_of(&client, id).await?;
        assert!(
            matches!(state, v1::TaskState::Queued | v1::TaskState::Scheduled),
            "{id} is {state:?} while its queue is paused"
        );
    }
    let queues = client.queues().await?;
    let sleeps: Vec<_> = queues.iter().filter(|q| q.task == SLEEP).collect();
    assert_eq!(sleeps.len(), 3, "{queues:?}");
    assert!(
        sleeps
            .iter()
            .all(|q| q.paused && q.paused_reason == "maintenance" && q.paused_since.is_some()),
        "{sleeps:?}"
    );
    let waiting = |priority: &str| {
        sleeps
            .iter()
            .find(|q| q.priority == priority)
            .map_or(0, |q| q.queued + q.in_flight)
    };
    assert_eq!((waiting("normal"), waiting("high")), (4, 1), "{sleeps:?}");

    // Resumed at high only: its task runs, the normal ones still wait.
    let resumed = client.resume_queue(SLEEP, &[v1::Priority::High]).await?;
    assert_eq!(
        resumed
            .pause
            .unwrap_or_default()
            .priorities()
            .collect::<Vec<_>>(),
        [v1::Priority::Normal, v1::Priority::Low]
    );
    let info = client.wait(&high, WAIT, false).await?;
    assert_eq!(info.state(), v1::TaskState::Succeeded, "{info:?}");
    assert_eq!(info.attempt, 1);
    eventually("the worker holds normal and low paused", WAIT, || {
        workers_hold(&client, &["normal", "low"])
    })
    .await?;
    for id in &normal {
        let state = state_of(&client, id).await?;
        assert!(
            matches!(state, v1::TaskState::Queued | v1::TaskState::Scheduled),
            "{id} is {state:?} while normal is paused"
        );
    }

    // Resumed everywhere: each runs once, in its first attempt.
    let resumed = client.resume_queue(SLEEP, &[]).await?;
    assert!(resumed.pause.unwrap_or_default().priorities.is_empty());
    for id in &normal {
        let info = client.wait(id, WAIT, false).await?;
        assert_eq!(info.state(), v1::TaskState::Succeeded, "{info:?}");
        assert_eq!(info.attempt, 1, "{info:?}");
    }
    assert!(
        client
            .queues()
            .await?
            .iter()
            .all(|q| !q.paused && q.paused_reason.is_empty())
    );
    // Resuming a running queue changes nothing.
    let again = client.resume_queue(SLEEP, &[]).await?;
    assert!(again.pause.unwrap_or_default().priorities.is_empty());

    // Bad pauses: nothing is stored.
    let unknown = client
        .pause_queue("examples.chaos.v1.Chaos/Nope", &[], "")
        .await
        .expect_err("an unknown task type");
    assert!(unknown.to_string().contains("Nope"), "{unknown}");
    let long = client
        .pause_queue(SLEEP, &[], &"x".repeat(201))
        .await
        .expect_err("a long reason");
    assert!(long.to_string().contains("at most 200"), "{long}");
    let unspecified = client
        .pause_queue(SLEEP, &[v1::Priority::Unspecified], "")
        .await
        .expect_err("an unspecified priority");
    assert!(
        unspecified.to_string().contains("PRIORITY_HIGH"),
        "{unspecified}"
    );
    assert!(client.queues().await?.iter().all(|q| !q.paused));
    Ok(())
}

/// Purging a queue cancels what waits in it at the priorities asked (a task running finishes,
/// the other priority's task stays queued), answers how many, and a repeat finds nothing more.
#[tokio::test]
async fn a_purge_cancels_what_waits_and_lets_what_runs_finish() -> anyhow::Result<()> {
    use taskwire_client::SubmitOptions;
    use taskwire_testing::eventually;
    let nats = NatsServer::start_temporary().await?;
    let gateway = Gateway::start(&nats.url()).await?;
    let _worker = Worker::start(&nats.url(), |w| w.serve(tasks::chaos()).concurrency(10)).await?;
    let client = Client::connect(gateway.url()).await?;
    let sleep = |millis: u64| format!(r#"{{"millis":{millis}}}"#);

    let running = client
        .submit_json(SLEEP, &sleep(1500), SubmitOptions::default())
        .await?
        .task_id;
    eventually("the first task runs", WAIT, || async {
        state_of(&client, &running)
            .await
            .is_ok_and(|s| s == v1::TaskState::Running)
    })
    .await?;
    client.pause_queue(SLEEP, &[], "purge").await?;
    eventually("the worker holds the queue paused", WAIT, || {
        workers_hold(&client, &["high", "normal", "low"])
    })
    .await?;
    let mut waiting = Vec::new();
    for _ in 0..3 {
        waiting.push(
            client
                .submit_json(SLEEP, &sleep(10), SubmitOptions::default())
                .await?
                .task_id,
        );
    }
    let high = client
        .submit_json(
            SLEEP,
            &sleep(10),
            SubmitOptions::default().priority(v1::Priority::High),
        )
        .await?
        .task_id;

    let purged = client.purge_queue(SLEEP, &[v1::Priority::Normal]).await?;
    assert_eq!(purged, 3);
    for id in &waiting {
        assert_eq!(
            state_of(&client, id).await?,
            v1::TaskState::Cancelled,
            "{id}"
        );
    }
    assert_eq!(state_of(&client, &high).await?, v1::TaskState::Queued);
    assert_eq!(client.purge_queue(SLEEP, &[v1::Priority::Normal]).await?, 0);
    let normal = client
        .queues()
        .await?
        .into_iter()
        .find(|q| q.task == SLEEP && q.priority == "normal")
        .expect("the normal queue");
    // Only the running task's message is left.
    assert!(normal.queued + normal.in_flight <= 1, "{normal:?}");

    client.resume_queue(SLEEP, &[]).await?;
    let done = client.wait(&running, WAIT, false).await?;
    assert_eq!(done.state(), v1::TaskState::Succeeded, "{done:?}");
    let done = client.wait(&high, WAIT, false).await?;
    assert_eq!(done.state(), v1::TaskState::Succeeded, "{done:?}");
    // The cancelled ones never ran and stay cancelled.
    for id in &waiting {
        let info = client.get(id, false).await?;
        assert_eq!(info.state(), v1::TaskState::Cancelled, "{info:?}");
        assert_eq!(info.attempt, 0, "{info:?}");
    }
    let unknown = client
        .purge_queue("examples.chaos.v1.Chaos/Nope", &[])
        .await
        .expect_err("an unknown task type");
    assert!(unknown.to_string().contains("Nope"), "{unknown}");
    Ok(())
}

/// Limits per value of a field of the arguments, set at run time: at most one Limited task per
/// label at once across three workers while labels run side by side, and at most two Paced
/// starts a second per label. A key field that is not in
/// the arguments, or one without its limit, is refused naming it.
#[tokio::test]
async fn limits_per_key_hold_for_each_value_across_workers() -> anyhow::Result<()> {
    let nats = NatsServer::start_temporary().await?;
    let gateway = Gateway::start(&nats.url()).await?;
    let _workers = three_workers(&nats).await?;
    let client = Client::connect(gateway.url()).await?;
    let chaos = ChaosClient::new(client.clone());

    for (limits, says) in [
        (
            v1::TaskLimits {
                max_concurrency: 1,
                concurrency_key_field: "customer".into(),
                ..Default::default()
            },
            "no field `customer`",
        ),
        (
            v1::TaskLimits {
                concurrency_key_field: "label".into(),
                ..Default::default()
            },
            "set max_concurrency too",
        ),
    ] {
        let err = client
            .set_task_limits(LIMITED, Some(limits))
            .await
            .expect_err(says);
        assert!(err.to_string().contains(says), "{err}");
    }
    let set = client
        .set_task_limits(
            LIMITED,
            Some(v1::TaskLimits {
                max_concurrency: 1,
                concurrency_key_field: "label".into(),
                ..Default::default()
            }),
        )
        .await?;
    assert_eq!(
        set.limits.map(|l| l.concurrency_key_field),
        Some("label".into())
    );
    client
        .set_task_limits(
            PACED,
            Some(v1::TaskLimits {
                rate_limit: "2/s".into(),
                rate_limit_key_field: "label".into(),
                ..Default::default()
            }),
        )
        .await?;
    // Workers learn the overrides from their watch of the limits bucket.
    tokio::time::sleep(Duration::from_secs(2)).await;

    let mut handles = Vec::new();
    for i in 0..12 {
        handles.push(
            chaos
                .limited(SleepArgs {
                    millis: 150,
                    label: format!("per-key-{}", i % 3),
                })
                .await?,
        );
    }
    let mut paced = Vec::new();
    for i in 0..8 {
        paced.push(
            chaos
                .paced(SleepArgs {
                    millis: 1,
                    label: format!("rate-key-{}", i % 2),
                })
                .await?,
        );
    }
    for handle in handles {
        handle.get(WAIT).await?;
    }
    for handle in paced {
        handle.get(WAIT).await?;
    }
    for key in 0..3 {
        let most = tasks::max_overlap(&format!("per-key-{key}"));
        assert_eq!(most, 1, "label per-key-{key}: {most} ran at once");
    }
    let together = tasks::max_overlap("per-key-");
    println!("per key at most 1 at once; all keys together {together}");
    assert!(together >= 2, "different keys ran side by side: {together}");

    // Two a second per label: any three starts of a label span a second (less the moments
    // between counting a start and running its task).
    for key in 0..2 {
        let mut starts = tasks::start_times(&format!("rate-key-{key}"));
        starts.sort();
        assert_eq!(starts.len(), 4);
        let closest = starts
            .windows(3)
            .map(|w| w[2].duration_since(w[0]).unwrap_or_default())
            .min()
            .unwrap_or_default();
        assert!(
            closest >= Duration::from_millis(900),
            "rate-key-{key}: 3 starts within {closest:?}"
        );
    }
    Ok(())
}
