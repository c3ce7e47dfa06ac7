//! The task flow done with bare async-nats against the same server: the ceiling the
//! benchmark measures taskwire against.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer, stream};
use bytes::Bytes;
use futures::StreamExt as _;
use tokio::sync::{Semaphore, oneshot};

/// The same flow with bare async-nats: publish a task and wait for its PubAck, pull it, publish
/// the result and wait for its PubAck, ack the task, and the producer sees the result, with
/// streams of `replicas` copies.
pub(super) struct RawRun {
    pub(super) tasks_per_sec: f64,
    /// Each task's time from its publish to its result, in milliseconds, sorted: with one loop,
    /// the round trips.
    pub(super) times_ms: Vec<f64>,
}

/// Runs the raw flow: `concurrency` publish-then-wait loops until `tasks` are done.
pub(super) async fn raw_jetstream(
    url: &str,
    replicas: usize,
    concurrency: usize,
    tasks: usize,
) -> anyhow::Result<RawRun> {
    let client = async_nats::connect(taskwire_protocol::servers(url)).await?;
    let js = jetstream::new(client.clone());
    let _ = js.delete_stream("BENCH_RAW_TASKS").await;
    let _ = js.delete_stream("BENCH_RAW_RESULTS").await;
    let tasks_stream = js
        .create_stream(stream::Config {
            name: "BENCH_RAW_TASKS".into(),
            subjects: vec!["bench.raw.tasks".into()],
            retention: stream::RetentionPolicy::WorkQueue,
            num_replicas: replicas,
            ..Default::default()
        })
        .await?;
    js.create_stream(stream::Config {
        name: "BENCH_RAW_RESULTS".into(),
        subjects: vec!["bench.raw.results.*".into()],
        max_messages_per_subject: 1,
        num_replicas: replicas,
        ..Default::default()
    })
    .await?;
    let consumer: consumer::PullConsumer = tasks_stream
        .create_consumer(consumer::pull::Config {
            durable_name: Some("raw".into()),
            ack_policy: consumer::AckPolicy::Explicit,
            max_ack_pending: 10_000,
            ..Default::default()
        })
        .await?;

    // The worker side.
    let worker_js = js.clone();
    let worker = tokio::spawn(async move {
        let Ok(mut messages) = consumer
            .stream()
            .max_messages_per_batch(concurrency)
            .messages()
            .await
        else {
            return;
        };
        let slots = Arc::new(Semaphore::new(concurrency));
        while let Some(Ok(message)) = messages.next().await {
            let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
                return;
            };
            let js = worker_js.clone();
            tokio::spawn(async move {
                let n = message.payload.len();
                let id = String::from_utf8_lossy(&message.payload).into_owned();
                if let Ok(ack) = js
                    .publish(
                        format!("bench.raw.results.{id}"),
                        Bytes::from(vec![b'6'; n.min(8)]),
                    )
                    .await
                {
                    let _ = ack.await;
                }
                let _ = message.ack().await;
                drop(slot);
            });
        }
    });

    // The producer side: concurrent publish-then-wait loops, as in the taskwire run.
    let waiters: Arc<Mutex<HashMap<String, oneshot::Sender<()>>>> = Arc::default();
    let mut results = client.subscribe("bench.raw.results.*").await?;
    let router = {
        let waiters = Arc::clone(&waiters);
        tokio::spawn(async move {
            while let Some(msg) = results.next().await {
                let id = last_token(&msg.subject);
                if let Some(tx) = waiters
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&id)
                {
                    let _ = tx.send(());
                }
            }
        })
    };
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut loops = Vec::new();
    for _ in 0..concurrency.max(1) {
        let js = js.clone();
        let next = Arc::clone(&next);
        let waiters = Arc::clone(&waiters);
        loops.push(tokio::spawn(async move {
            let mut times = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= tasks {
                    return times;
                }
                let t0 = Instant::now();
                let id = format!("t{i}");
                let (tx, rx) = oneshot::channel();
                waiters
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(id.clone(), tx);
                if let Ok(ack) = js.publish("bench.raw.tasks", Bytes::from(id.clone())).await {
                    let _ = ack.await;
                }
                let _ = tokio::time::timeout(Duration::from_secs(60), rx).await;
                times.push(t0.elapsed().as_secs_f64() * 1000.0);
            }
        }));
    }
    let mut times_ms = Vec::with_capacity(tasks);
    for l in loops {
        if let Ok(times) = l.await {
            times_ms.extend(times);
        }
    }
    times_ms.sort_by(f64::total_cmp);
    let seconds = started.elapsed().as_secs_f64();
    worker.abort();
    router.abort();
    let _ = js.delete_stream("BENCH_RAW_TASKS").await;
    let _ = js.delete_stream("BENCH_RAW_RESULTS").await;
    Ok(RawRun {
        tasks_per_sec: tasks as f64 / seconds,
        times_ms,
    })
}

/// The task id at the end of a result subject.
fn last_token(subject: &async_nats::Subject) -> String {
    subject
        .as_str()
        .rsplit('.')
        .next()
        .unwrap_or_default()
        .to_owned()
}
