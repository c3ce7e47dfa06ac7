//! What a workflow adds to its tasks: a chain of five steps and a chord of ten members and a
//! callback, one at a time, against the same tasks submitted and waited for one by one (the
//! chain) or side by side (the chord's members), on a worker that also serves the workflow
//! example tasks.

use std::time::{Duration, Instant};

use serde_json::{Map, Value};
use taskwire::v1::{self, WorkflowState};
use taskwire_client::workflow::{Step, Workflow};
use taskwire_client::{Client, SubmitOptions};
use taskwire_examples::flow::v1::{ScaleArgs, Total};

use taskwire_supervisor as supervisor;

use super::stack::Stack;
use super::{median, round};

const DOUBLE: &str = "examples.flow.v1.Flow/Double";
const SCALE: &str = "examples.flow.v1.Flow/Scale";
const COLLECT: &str = "examples.flow.v1.Flow/Collect";
const CHAIN: usize = 5;
const MEMBERS: i64 = 10;
const WAIT: Duration = Duration::from_secs(60);

/// `rounds` of each, medians in ms.
pub(super) async fn overhead(stack: &Stack, rounds: usize) -> anyhow::Result<Value> {
    let mut spec = stack.rust_worker_spec(0);
    spec.args.push("--flow".into());
    let mut worker = supervisor::spawn(&spec)?;
    supervisor::wait_for_task(&stack.gateway_url, COLLECT, Duration::from_secs(30)).await?;
    let client = &stack.client;
    let measured = async {
        // Warm up: the first workflow opens the consumers' pulls.
        chain(client).await?;
        let (mut plain_chain, mut chains, mut plain_group, mut chords) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for _ in 0..rounds.max(1) {
            plain_chain.push(one_by_one(client).await?);
            chains.push(chain(client).await?);
            plain_group.push(side_by_side(client).await?);
            chords.push(chord(client).await?);
        }
        anyhow::Ok((plain_chain, chains, plain_group, chords))
    }
    .await;
    supervisor::terminate(&mut worker, Duration::from_secs(5)).await;
    let (plain_chain, chains, plain_group, chords) = measured?;
    let (plain_chain, chains) = (median(plain_chain.into_iter()), median(chains.into_iter()));
    let (plain_group, chords) = (median(plain_group.into_iter()), median(chords.into_iter()));
    let steps = (MEMBERS + 1) as f64;
    let mut report = Map::new();
    for (key, value) in [
        ("chain_steps", CHAIN as f64),
        ("chain_ms", round(chains, 3)),
        ("plain_tasks_one_by_one_ms", round(plain_chain, 3)),
        (
            "chain_overhead_ms_per_step",
            round((chains - plain_chain) / CHAIN as f64, 3),
        ),
        ("chord_steps", steps),
        ("chord_ms", round(chords, 3)),
        ("plain_tasks_side_by_side_ms", round(plain_group, 3)),
        (
            "chord_overhead_ms_per_step",
            round((chords - plain_group) / steps, 3),
        ),
        ("rounds", rounds.max(1) as f64),
    ] {
        report.insert(key.into(), value.into());
    }
    Ok(Value::Object(report))
}

fn total(total: i64) -> Total {
    Total {
        total,
        count: 1,
        limit: 0,
    }
}

async fn submit_and_wait(
    client: &Client,
    task: &str,
    args: Vec<u8>,
) -> anyhow::Result<v1::TaskInfo> {
    let submitted = client
        .submit_raw(
            task,
            v1::submit_request::Args::ArgsProto(args),
            SubmitOptions::default(),
        )
        .await?;
    let info = client.wait(&submitted.task_id, WAIT, false).await?;
    anyhow::ensure!(info.state() == v1::TaskState::Succeeded, "{info:?}");
    Ok(info)
}

/// Five Double tasks, each submitted once the one before it ended, with its result.
async fn one_by_one(client: &Client) -> anyhow::Result<f64> {
    let started = Instant::now();
    let mut args = prost::Message::encode_to_vec(&total(1));
    for _ in 0..CHAIN {
        args = submit_and_wait(client, DOUBLE, args).await?.result;
    }
    Ok(started.elapsed().as_secs_f64() * 1000.0)
}

/// The same as a chain of five steps.
async fn chain(client: &Client) -> anyhow::Result<f64> {
    let started = Instant::now();
    let steps = (0..CHAIN).map(|i| {
        let step = Step::new(format!("d{i}"), DOUBLE);
        if i == 0 { step.args(&total(1)) } else { step }
    });
    finished(client, Workflow::chain(steps)).await?;
    Ok(started.elapsed().as_secs_f64() * 1000.0)
}

/// Ten Scale tasks side by side, then a Collect of their results.
async fn side_by_side(client: &Client) -> anyhow::Result<f64> {
    let started = Instant::now();
    let members = (1..=MEMBERS).map(|i| {
        submit_and_wait(
            client,
            SCALE,
            prost::Message::encode_to_vec(&ScaleArgs {
                value: i,
                factor: 2,
            }),
        )
    });
    let mut totals = Vec::new();
    for member in futures::future::join_all(members).await {
        totals.push(<Total as prost::Message>::decode(
            member?.result.as_slice(),
        )?);
    }
    let args = prost::Message::encode_to_vec(&taskwire_examples::flow::v1::Totals { totals });
    submit_and_wait(client, COLLECT, args).await?;
    Ok(started.elapsed().as_secs_f64() * 1000.0)
}

/// The same as a chord.
async fn chord(client: &Client) -> anyhow::Result<f64> {
    let started = Instant::now();
    let chord = Workflow::group((1..=MEMBERS).map(|i| {
        Step::new(format!("m{i}"), SCALE).args(&ScaleArgs {
            value: i,
            factor: 2,
        })
    }))
    .then_collect(Step::new("total", COLLECT), "totals");
    finished(client, chord).await?;
    Ok(started.elapsed().as_secs_f64() * 1000.0)
}

async fn finished(client: &Client, workflow: Workflow) -> anyhow::Result<()> {
    let id = client.submit_workflow(workflow).await?;
    let info = client.wait_workflow(&id, WAIT, false).await?;
    anyhow::ensure!(info.state() == WorkflowState::Succeeded, "{info:?}");
    Ok(())
}
