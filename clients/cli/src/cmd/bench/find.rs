//! Finding a few tasks among many kept: the broker filled with the records a million finished
//! tasks leave (each result as a worker stores it, the few failures with their outcome records
//! too), then the gateway asked for the failed ones. What it costs to keep what lists need: the
//! bytes each kind of record takes.

use std::future::IntoFuture as _;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use bytes::Bytes;
use futures::StreamExt as _;
use serde_json::{Map, Value};
use taskwire::task::{Id, Name};
use taskwire::v1::{self, TaskState};
use taskwire_client::Client;
use taskwire_protocol::{self as broker, subject};

use super::{TASK, median, round};

/// Publishes in flight at once while filling.
const IN_FLIGHT: usize = 4096;
/// Times each list is asked.
const ASKS: usize = 5;

pub(super) async fn measure(
    client: &Client,
    nats_url: &str,
    tasks: usize,
    failed: usize,
    progress: &dyn Fn(&str),
) -> anyhow::Result<Map<String, Value>> {
    progress(&format!(
        "{failed} failed tasks among {tasks} kept, then listed"
    ));
    let js = jetstream::new(async_nats::connect(nats_url).await?);
    let name = Name::parse(TASK)?;
    // What the real tasks of the flows before this one left: every one succeeded.
    let (results_before, records_before) = (
        stream_messages(&js, broker::RESULTS_STREAM).await?,
        stream_messages(&js, broker::OUTCOMES_STREAM).await?,
    );
    let every = (tasks / failed.max(1)).max(1);
    let started = Instant::now();
    let mut acks = futures::stream::FuturesUnordered::new();
    let mut failed_ids = Vec::new();
    for n in 0..tasks {
        let id = Id::generate();
        let fails = failed_ids.len() < failed && n % every == every / 2;
        let (state, body) = if fails {
            failed_ids.push(id.to_string());
            (
                TaskState::Failed,
                broker::failure_body(&format!("upstream refused order {n}"), false),
            )
        } else {
            (TaskState::Succeeded, Bytes::from_static(&[8, 6]))
        };
        let outcome = broker::ResultMessage::new(&name, &id, state, 1, "0", None);
        if fails {
            js.publish_with_headers(
                subject::outcome(state, &name, &id),
                outcome.to_outcome_headers(),
                body.clone(),
            )
            .await?
            .await?;
        }
        acks.push(
            js.publish_with_headers(subject::result(&name, &id), outcome.to_headers(), body)
                .await?
                .into_future(),
        );
        while acks.len() >= IN_FLIGHT {
            if let Some(ack) = acks.next().await {
                ack?;
            }
        }
    }
    while let Some(ack) = acks.next().await {
        ack?;
    }
    let fill_seconds = started.elapsed().as_secs_f64();

    let kept = js
        .get_stream(broker::RESULTS_STREAM)
        .await?
        .info()
        .await?
        .state
        .clone();
    let records = js
        .get_stream(broker::OUTCOMES_STREAM)
        .await?
        .info()
        .await?
        .state
        .clone();

    let by_state = v1::TaskFilter {
        states: vec![TaskState::Failed as i32],
        ..Default::default()
    };
    let by_text = v1::TaskFilter {
        task: "examples.*".into(),
        states: vec![TaskState::Failed as i32],
        error_contains: "REFUSED ORDER".into(),
        ..Default::default()
    };
    let by_text_alone = v1::TaskFilter {
        error_contains: "refused order".into(),
        ..Default::default()
    };
    let recent = v1::TaskFilter {
        states: vec![TaskState::Succeeded as i32],
        finished_after: Some((std::time::SystemTime::now() - Duration::from_secs(60)).into()),
        ..Default::default()
    };
    let mut report = Map::new();
    report.insert("kept_results".into(), kept.messages.into());
    report.insert("failed".into(), failed_ids.len().into());
    report.insert(
        "filled_per_sec".into(),
        round(tasks as f64 / fill_seconds, 1).into(),
    );
    for (label, filter, limit) in [
        ("list_failed_ms", by_state, usize::MAX),
        ("list_failed_by_error_text_ms", by_text, usize::MAX),
        ("list_by_error_text_alone_ms", by_text_alone, usize::MAX),
        ("first_page_of_recent_successes_ms", recent, 50),
    ] {
        let mut times = Vec::new();
        for _ in 0..ASKS {
            let asked = Instant::now();
            let found = client.find_tasks(filter.clone(), limit).await?;
            times.push(asked.elapsed().as_secs_f64() * 1000.0);
            if limit == usize::MAX {
                let ids: Vec<&str> = found.iter().map(|t| t.task_id.as_str()).collect();
                anyhow::ensure!(
                    ids == failed_ids,
                    "{label}: the list found {} tasks, not the {} that failed",
                    ids.len(),
                    failed_ids.len()
                );
            } else {
                anyhow::ensure!(found.len() == limit, "{label}: a short page");
            }
        }
        report.insert(label.into(), round(median(times.into_iter()), 2).into());
    }
    // What keeping costs: a result is kept for every task anyway; an outcome record only for
    // a task that did not succeed.
    report.insert(
        "result_bytes_per_task".into(),
        round(kept.bytes as f64 / kept.messages.max(1) as f64, 1).into(),
    );
    report.insert(
        "outcome_record_bytes_per_failed_task".into(),
        round(records.bytes as f64 / records.messages.max(1) as f64, 1).into(),
    );
    if results_before > 0 {
        report.insert(
            "outcome_records_per_succeeded_task".into(),
            round(records_before as f64 / results_before as f64, 4).into(),
        );
    }
    report.insert(
        "outcome_records_per_failed_task".into(),
        round(
            (records.messages - records_before) as f64 / failed_ids.len().max(1) as f64,
            2,
        )
        .into(),
    );
    Ok(report)
}

async fn stream_messages(js: &jetstream::Context, stream: &str) -> anyhow::Result<u64> {
    Ok(js.get_stream(stream).await?.info().await?.state.messages)
}
