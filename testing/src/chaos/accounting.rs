//! The end of a drill: every accepted task accounted for (results, dead letters, the workers'
//! own log), and what was lost shown.

use super::*;

/// Waits until every accepted task has a result or a dead letter (or `limit` passes), then
/// counts.
pub(crate) async fn settle(
    scenario: &'static str,
    nats: &str,
    ids: &[String],
    refused: usize,
    limit: Duration,
) -> anyhow::Result<Report> {
    let client = async_nats::connect(broker::servers(nats)).await?;
    let js = async_nats::jetstream::new(client.clone());
    let deadline = Instant::now() + limit;
    loop {
        let results = stream_state(&js, broker::RESULTS_STREAM)
            .await?
            .state
            .messages;
        if results as usize >= ids.len() || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut report = Report {
        scenario,
        submitted: ids.len(),
        succeeded: 0,
        failed: 0,
        lost: 0,
        duplicate_results: 0,
        results_in_stream: 0,
        logged_results: 0,
        refused,
        duplicate_dead_letters: 0,
        stray_dead_letters: 0,
        key_mismatches: 0,
        most_at_once: 0,
        seconds: 0.0,
    };
    let mut succeeded = std::collections::HashSet::new();
    for id in ids {
        let id = Id::parse(id)?;
        let result = patiently(|| async {
            Ok(
                broker::last_message(&client, broker::RESULTS_STREAM, &subject::result_of(&id))
                    .await?,
            )
        })
        .await?;
        let state = result.map(|m| broker::task_info(&id, &m.headers, &m.payload, m.time).state());
        match state {
            Some(TaskState::Succeeded) => {
                report.succeeded += 1;
                succeeded.insert(id.to_string());
            }
            Some(_) => report.failed += 1,
            None => {
                let dead =
                    patiently(|| leader_read(&js, broker::DEAD_STREAM, subject::dead_of(&id)))
                        .await?;
                if dead.is_some() {
                    report.failed += 1;
                } else {
                    report.lost += 1;
                    if report.lost <= 3 {
                        // What the broker last heard of it, to tell a task never delivered
                        // from one stuck in a worker.
                        let event = broker::last_message(
                            &client,
                            broker::EVENTS_STREAM,
                            &subject::events_of(&id),
                        )
                        .await
                        .ok()
                        .flatten()
                        .map(|e| broker::task_info(&id, &e.headers, &e.payload, e.time));
                        eprintln!("{scenario}: task {id} lost; its last event: {event:?}");
                    }
                }
            }
        }
    }
    if report.lost > 0 {
        // Where the lost tasks may be: still in the tasks stream, and what its consumers say.
        let tasks = stream_state(&js, broker::TASKS_STREAM).await?;
        eprintln!(
            "{scenario}: tasks stream: {} messages, sequences {}..{}, leader {:?}",
            tasks.state.messages,
            tasks.state.first_sequence,
            tasks.state.last_sequence,
            tasks.cluster.and_then(|c| c.leader)
        );
        let stream = patiently(|| async { Ok(js.get_stream(broker::TASKS_STREAM).await?) }).await?;
        let mut names = stream.consumer_names();
        while let Some(Ok(name)) = names.next().await {
            let consumer: Result<async_nats::jetstream::consumer::PullConsumer, _> =
                stream.get_consumer(&name).await;
            if let Ok(mut consumer) = consumer
                && let Ok(info) = consumer.info().await
                && (info.num_pending > 0 || info.num_ack_pending > 0)
            {
                eprintln!(
                    "{scenario}: consumer {name}: pending {}, ack pending {}, redelivered {}, waiting {}, delivered {}, ack floor {}, leader {:?}",
                    info.num_pending,
                    info.num_ack_pending,
                    info.num_redelivered,
                    info.num_waiting,
                    info.delivered.stream_sequence,
                    info.ack_floor.stream_sequence,
                    info.cluster.as_ref().and_then(|c| c.leader.clone())
                );
            }
        }
    }
    let state = stream_state(&js, broker::RESULTS_STREAM).await?.state;
    report.results_in_stream = state.messages;
    // One dead letter per task: each is kept on its own subject.
    // Read whole, and again if a leader election cuts the listing short.
    let dead = patiently(|| async {
        let mut listing = js
            .get_stream(broker::DEAD_STREAM)
            .await?
            .info_with_subjects(subject::DEAD)
            .await?;
        let mut subjects = Vec::new();
        while let Some(entry) = listing.next().await {
            subjects.push(entry?);
        }
        Ok(subjects)
    })
    .await?;
    for (on, count) in dead {
        if count > 1 {
            report.duplicate_dead_letters += 1;
        }
        // taskwire.dead.<id>.<token>
        if on
            .split('.')
            .nth(2)
            .is_some_and(|id| succeeded.contains(id))
        {
            report.stray_dead_letters += 1;
        }
    }
    // The workers' own account: a task id logged twice was given two results. A worker logs
    // right after the result's PubAck, so give the last lines a moment to arrive.
    let log = execution_log(nats);
    let stored = report.succeeded + report.failed;
    let mut logged = String::new();
    let log_deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < log_deadline {
        logged = std::fs::read_to_string(&log).unwrap_or_default();
        if logged.lines().count() >= stored {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = std::fs::remove_file(&log);
    let mut counts = std::collections::HashMap::<&str, u64>::new();
    for id in logged.lines().filter(|l| !l.is_empty()) {
        *counts.entry(id).or_default() += 1;
    }
    let logged_twice = counts.values().filter(|n| **n > 1).count() as u64;
    report.duplicate_results = logged_twice;
    report.logged_results = counts.len();
    Ok(report)
}
