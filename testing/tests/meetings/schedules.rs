//! Schedules and delays: definitions never left firing, a far delay cancelled.

use super::*;

/// The message schedules the broker holds for a schedule's name (0 or 1 when consistent).
async fn held_schedules(nats: &NatsServer, name: &str) -> anyhow::Result<u64> {
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await?);
    let stream = js.get_stream(taskwire_protocol::TASKS_STREAM).await?;
    let info = stream
        .info_with_subjects(format!("taskwire.schedules.{name}"))
        .await?;
    let mut total = 0;
    let mut subjects = info;
    while let Some(entry) = futures::StreamExt::next(&mut subjects).await {
        total += entry?.1 as u64;
    }
    Ok(total)
}

#[tokio::test]
async fn racing_pause_resume_and_delete_never_leave_a_schedule_firing_against_its_definition()
-> anyhow::Result<()> {
    let nats = NatsServer::start_temporary().await?;
    let gateway = Gateway::start_with(examples_config(&nats.url())).await?;
    let client = Client::connect(gateway.url()).await?;
    let schedule = |name: &str| v1::Schedule {
        name: name.into(),
        task: SLEEP.into(),
        when: Some(v1::schedule::When::Cron("@hourly".into())),
        args: Some(v1::schedule::Args::ArgsJson(r#"{"millis":1}"#.into())),
        ..Default::default()
    };
    client.create_schedule(schedule("racing")).await?;
    for _ in 0..10 {
        let (a, b) = (client.clone(), client.clone());
        let (paused, resumed) = tokio::join!(
            async move { a.pause_schedule("racing").await },
            async move { b.resume_schedule("racing").await }
        );
        for outcome in [paused.map(drop), resumed.map(drop)] {
            if let Err(e) = outcome {
                assert_eq!(e.code(), Some(tonic::Code::Aborted), "{e}");
            }
        }
        let definition = client.schedule("racing").await?;
        let held = held_schedules(&nats, "racing").await?;
        assert_eq!(held, u64::from(!definition.paused), "{definition:?}");
    }
    // A delete racing a resume: neither a definition nor a firing schedule is left.
    client.pause_schedule("racing").await?;
    let (a, b) = (client.clone(), client.clone());
    let (_, _) = tokio::join!(
        async move { a.resume_schedule("racing").await },
        async move { b.delete_schedule("racing").await }
    );
    match client.schedule("racing").await {
        Err(e) if e.code() == Some(tonic::Code::NotFound) => {
            assert_eq!(held_schedules(&nats, "racing").await?, 0);
        }
        Ok(definition) => {
            // The delete lost to the resume (it looked before the resume wrote): consistent.
            assert_eq!(
                held_schedules(&nats, "racing").await?,
                u64::from(!definition.paused)
            );
        }
        Err(e) => return Err(e.into()),
    }
    Ok(())
}

#[tokio::test]
async fn a_task_delayed_far_ahead_and_cancelled_never_fires_and_stays_known() -> anyhow::Result<()>
{
    let nats = NatsServer::start_temporary().await?;
    let gateway = Gateway::start(&nats.url()).await?;
    let _worker = Worker::start(&nats.url(), |w| w.serve(tasks::chaos())).await?;
    let client = Client::connect(gateway.url()).await?;
    let far = client
        .submit_json(
            SLEEP,
            r#"{"millis":1,"label":"far-ahead"}"#,
            SubmitOptions::default().countdown(Duration::from_secs(29 * 24 * 3600)),
        )
        .await?;
    // Its events are kept for the result TTL only; the broker's schedule of it tells its state
    // for as long as it waits.
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await?);
    js.get_stream(taskwire_protocol::EVENTS_STREAM)
        .await?
        .purge()
        .await?;
    let info = client.get(&far.task_id, false).await?;
    assert_eq!(info.state(), TaskState::Scheduled, "{info:?}");
    assert!(info.not_before.is_some());
    let cancelled = client.cancel(&far.task_id).await?;
    assert_eq!(cancelled.state(), TaskState::Cancelled);
    // Taken out of the broker: nothing is left to fire, whatever outlives what.
    eventually("the delayed task to leave the stream", WAIT, || async {
        taskwire_testing::tasks_in_stream(&nats.url())
            .await
            .is_ok_and(|n| n == 0)
    })
    .await?;
    Ok(())
}
