//! Workflows through faults: chords of ten members each, while a worker, the gateway and
//! nats-server are killed with SIGKILL and started again.

use taskwire::v1::{self, WorkflowState};
use taskwire_examples::flow::v1::{SlowArgs, Total};

use super::*;

const SLOW: &str = "examples.flow.v1.Flow/Slow";
const COLLECT: &str = "examples.flow.v1.Flow/Collect";
/// Members of each chord.
const MEMBERS: i64 = 10;

/// Chord `c`: ten Slow members answering `c * 100 + m`, then a Collect of all ten. Attempts
/// enough that a run cut short by a kill is tried again.
fn chord(c: usize) -> v1::Workflow {
    let options = v1::SubmitOptions {
        max_attempts: 5,
        ..Default::default()
    };
    let mut steps: Vec<v1::Step> = (0..MEMBERS)
        .map(|m| v1::Step {
            name: format!("m{m}"),
            task: SLOW.into(),
            args: Some(v1::step::Args::ArgsProto(prost::Message::encode_to_vec(
                &SlowArgs {
                    millis: 20,
                    total: c as i64 * 100 + m,
                },
            ))),
            options: Some(options.clone()),
            ..Default::default()
        })
        .collect();
    steps.push(v1::Step {
        name: "total".into(),
        task: COLLECT.into(),
        after: (0..MEMBERS).map(|m| format!("m{m}")).collect(),
        collect: "totals".into(),
        options: Some(options),
        ..Default::default()
    });
    v1::Workflow {
        steps,
        ..Default::default()
    }
}

/// What chord `c`'s callback must answer: the sum of its members, ten of them.
fn expected(c: usize) -> (i64, i64) {
    ((0..MEMBERS).map(|m| c as i64 * 100 + m).sum(), MEMBERS)
}

/// `n / 10` chords (at least 10); a worker, the gateway and nats-server each killed once while
/// they run. Every workflow must end succeeded, its callback's one result holding all ten.
pub(crate) async fn workflow_chords(n: usize) -> anyhow::Result<Report> {
    let chords = (n / MEMBERS as usize).max(10);
    let mut nats = NatsServer::start_temporary().await?;
    let env = [
        ("TASKWIRE_NATS_URL", nats.url()),
        ("TASKWIRE_LOG", "error".to_owned()),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (mut gateway, addr) = crate::gateway_process(&env, None).await?;
    let url = format!("http://{addr}");
    let mut workers = [
        worker(&nats.url(), "2s", 50)?,
        worker(&nats.url(), "2s", 50)?,
    ];
    crate::wait_for_task(&url, COLLECT, Duration::from_secs(30)).await?;
    let client = Client::connect(url.clone()).await?;
    let run = format!("{:x}", broker::now_micros());
    let accepted = Arc::new(AtomicUsize::new(0));
    let submitting = tokio::spawn({
        let (client, accepted, run) = (client.clone(), Arc::clone(&accepted), run.clone());
        async move {
            futures::stream::iter(0..chords)
                .map(|c| {
                    let (client, accepted) = (client.clone(), Arc::clone(&accepted));
                    let key = format!("{run}-{c}");
                    async move {
                        // The same key until accepted: a retry never makes a second workflow.
                        let deadline = Instant::now() + Duration::from_secs(90);
                        loop {
                            let workflow = taskwire_client::workflow::Workflow::from(chord(c));
                            match client.submit_workflow_keyed(workflow, &key).await {
                                Ok((id, _)) => {
                                    accepted.fetch_add(1, Ordering::Relaxed);
                                    return Some((c, id));
                                }
                                Err(_) if Instant::now() < deadline => {
                                    tokio::time::sleep(Duration::from_millis(100)).await;
                                }
                                Err(_) => return None,
                            }
                        }
                    }
                })
                .buffer_unordered(16)
                .filter_map(std::future::ready)
                .collect::<Vec<_>>()
                .await
        }
    });
    let reached = |k: usize| {
        let accepted = Arc::clone(&accepted);
        async move {
            let deadline = Instant::now() + Duration::from_secs(120);
            while accepted.load(Ordering::Relaxed) < k && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    };
    reached(chords / 4).await;
    signal(&workers[0], nix::sys::signal::Signal::SIGKILL);
    let _ = workers[0].wait().await;
    workers[0] = worker(&nats.url(), "2s", 50)?;
    reached(chords / 2).await;
    signal(&gateway, nix::sys::signal::Signal::SIGKILL);
    let _ = gateway.wait().await;
    (gateway, _) = crate::gateway_process(&env, Some(addr)).await?;
    reached(3 * chords / 4).await;
    nats.kill().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    nats.restart().await?;
    let submitted = submitting.await?;

    let mut report = Report {
        scenario: "workflow_chords",
        submitted: submitted.len(),
        succeeded: 0,
        failed: 0,
        lost: 0,
        duplicate_results: 0,
        results_in_stream: 0,
        logged_results: 0,
        refused: chords - submitted.len(),
        duplicate_dead_letters: 0,
        stray_dead_letters: 0,
        key_mismatches: 0,
        most_at_once: 0,
        seconds: 0.0,
    };
    let deadline = Instant::now() + Duration::from_secs(180);
    for (c, id) in &submitted {
        let info = loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            match client
                .wait_workflow(id, remaining.min(Duration::from_secs(60)), false)
                .await
            {
                Ok(info) => break Some(info),
                Err(_) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(_) => break None,
            }
        };
        let Some(info) = info else {
            report.lost += 1;
            eprintln!("workflow_chords: workflow {id} (chord {c}) did not end");
            continue;
        };
        let callback = info
            .steps
            .iter()
            .find(|s| s.name == "total")
            .and_then(|s| s.info.as_ref());
        let answer = callback
            .filter(|i| i.state() == TaskState::Succeeded)
            .and_then(|i| prost::Message::decode(i.result.as_slice()).ok())
            .map(|t: Total| (t.total, t.count));
        if info.state() == WorkflowState::Succeeded && answer == Some(expected(*c)) {
            report.succeeded += 1;
        } else {
            report.failed += 1;
            eprintln!("workflow_chords: chord {c}: {info:?}");
        }
        // Every step has its one result.
        if info
            .steps
            .iter()
            .all(|s| s.info.as_ref().is_some_and(|i| is_final(i.state())))
        {
            report.results_in_stream += 1;
        }
    }
    // The workers' own account: a task id logged twice was given two results.
    let logged = std::fs::read_to_string(execution_log(&nats.url())).unwrap_or_default();
    let _ = std::fs::remove_file(execution_log(&nats.url()));
    let mut counts = std::collections::HashMap::<&str, u64>::new();
    for line in logged.lines().filter(|l| !l.is_empty()) {
        *counts.entry(line).or_default() += 1;
    }
    report.duplicate_results = counts.values().filter(|n| **n > 1).count() as u64;
    report.logged_results = counts.len();
    drop(gateway);
    Ok(report)
}

fn is_final(state: TaskState) -> bool {
    matches!(
        state,
        TaskState::Succeeded | TaskState::Failed | TaskState::Cancelled | TaskState::Expired
    )
}
