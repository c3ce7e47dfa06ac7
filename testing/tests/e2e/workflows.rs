//! Workflows: chains, chords and their failures, checked at submit and advanced by the gateway.

use std::time::Duration;

use prost::Message as _;
use taskwire::v1::workflows_client::WorkflowsClient;
use taskwire::v1::{self, StepState, TaskState, WorkflowState};
use taskwire_examples::flow::v1::{Numbers, ScaleArgs, SlowArgs, Total, Totals};
use taskwire_testing::{Gateway, NatsServer, Worker, eventually, tasks};
use tonic::Code;

use super::{WAIT, stream_messages};

const SUM: &str = "examples.flow.v1.Flow/Sum";
const SCALE: &str = "examples.flow.v1.Flow/Scale";
const DOUBLE: &str = "examples.flow.v1.Flow/Double";
const COLLECT: &str = "examples.flow.v1.Flow/Collect";
const SLOW: &str = "examples.flow.v1.Flow/Slow";
const REPORT: &str = "examples.flow.v1.Flow/Report";

fn step(name: &str, task: &str, after: &[&str]) -> v1::Step {
    v1::Step {
        name: name.into(),
        task: task.into(),
        after: after.iter().map(|s| (*s).to_owned()).collect(),
        ..Default::default()
    }
}

fn with_args(mut step: v1::Step, args: impl prost::Message) -> v1::Step {
    step.args = Some(v1::step::Args::ArgsProto(args.encode_to_vec()));
    step
}

fn mapping(from: &str, to: &str) -> v1::FieldMapping {
    v1::FieldMapping {
        from: from.into(),
        to: to.into(),
    }
}

async fn submit(
    client: &mut WorkflowsClient<tonic::transport::Channel>,
    workflow: v1::Workflow,
) -> Result<String, tonic::Status> {
    Ok(client
        .submit(v1::SubmitWorkflowRequest {
            workflow: Some(workflow),
            idempotency_key: String::new(),
        })
        .await?
        .into_inner()
        .workflow_id)
}

/// Waits until the workflow has ended; its state then.
async fn ended(
    client: &mut WorkflowsClient<tonic::transport::Channel>,
    id: &str,
) -> anyhow::Result<v1::WorkflowInfo> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let info = client
            .get(v1::GetWorkflowRequest {
                workflow_id: id.into(),
                include_json: false,
            })
            .await?
            .into_inner();
        if info.state() != WorkflowState::Running {
            return Ok(info);
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "workflow {id} did not end: {info:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn step_info<'a>(info: &'a v1::WorkflowInfo, name: &str) -> &'a v1::StepInfo {
    info.steps
        .iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no step {name} in {info:?}"))
}

fn step_task_state(info: &v1::WorkflowInfo, name: &str) -> Option<TaskState> {
    step_info(info, name).info.as_ref().map(|i| i.state())
}

fn output(info: &v1::WorkflowInfo, name: &str) -> Total {
    let bytes = &step_info(info, name)
        .info
        .as_ref()
        .expect("the step ran")
        .result;
    Total::decode(bytes.as_slice()).expect("a Total")
}

/// The state of a step's task now, if it has one.
async fn step_state_now(
    client: &WorkflowsClient<tonic::transport::Channel>,
    id: &str,
    name: &str,
) -> Option<TaskState> {
    let info = client
        .clone()
        .get(v1::GetWorkflowRequest {
            workflow_id: id.into(),
            include_json: false,
        })
        .await
        .ok()?
        .into_inner();
    step_task_state(&info, name)
}

async fn flow_system() -> anyhow::Result<(NatsServer, Gateway, Worker)> {
    let nats = NatsServer::start_temporary().await?;
    let gateway = Gateway::start(&nats.url()).await?;
    let worker = Worker::start(&nats.url(), |w| w.serve(tasks::flow())).await?;
    Ok((nats, gateway, worker))
}

#[tokio::test]
async fn a_chain_passes_each_result_on_and_shares_one_trace() -> anyhow::Result<()> {
    let (_nats, gateway, _worker) = flow_system().await?;
    let mut client = WorkflowsClient::connect(gateway.url()).await?;
    // sum(1, 2, 3) = 6, doubled = 12, scaled by 10 = 120.
    let workflow = v1::Workflow {
        steps: vec![
            with_args(
                step("sum", SUM, &[]),
                Numbers {
                    values: vec![1, 2, 3],
                },
            ),
            step("double", DOUBLE, &["sum"]),
            v1::Step {
                fields: vec![mapping("total", "value")],
                ..with_args(
                    step("scale", SCALE, &["double"]),
                    ScaleArgs {
                        value: 0,
                        factor: 10,
                    },
                )
            },
        ],
        ..Default::default()
    };
    let id = submit(&mut client, workflow).await?;
    let info = ended(&mut client, &id).await?;
    assert_eq!(info.state(), WorkflowState::Succeeded, "{info:?}");
    assert_eq!(output(&info, "sum").total, 6);
    assert_eq!(output(&info, "double").total, 12);
    assert_eq!(output(&info, "scale").total, 120);
    for step in &info.steps {
        assert_eq!(step.state(), StepState::Submitted);
        assert_eq!(
            step.task_id,
            format!(
                "{id}-{}",
                info.steps
                    .iter()
                    .position(|s| s.name == step.name)
                    .expect("listed")
            )
        );
        let task = step.info.as_ref().expect("ran");
        assert_eq!(
            task.trace_id, info.trace_id,
            "step {} shares the workflow's trace",
            step.name
        );
        // Each step ran once.
        let method = step
            .task
            .rsplit('/')
            .next()
            .expect("a method")
            .to_lowercase();
        let method: &'static str = Box::leak(method.into_boxed_str());
        assert_eq!(
            tasks::journal_count(&step.task_id, method),
            1,
            "{}",
            step.name
        );
    }
    assert!(!info.trace_id.is_empty());
    Ok(())
}

#[tokio::test]
async fn steps_that_do_not_fit_are_refused_and_nothing_is_stored() -> anyhow::Result<()> {
    let nats = NatsServer::start_temporary().await?;
    let gateway = super::gateway_knowing_examples(&nats).await?;
    let mut client = WorkflowsClient::connect(gateway.url()).await?;
    let sum = with_args(step("sum", SUM, &[]), Numbers { values: vec![1] });
    let cases: Vec<(v1::Workflow, &[&str])> = vec![
        (
            // Total is not ScaleArgs.
            v1::Workflow {
                steps: vec![sum.clone(), step("scale", SCALE, &["sum"])],
                ..Default::default()
            },
            &[
                "\"scale\"",
                "examples.flow.v1.ScaleArgs",
                "examples.flow.v1.Total",
                "fields",
            ],
        ),
        (
            v1::Workflow {
                steps: vec![
                    sum.clone(),
                    v1::Step {
                        fields: vec![mapping("sum", "value")],
                        ..step("scale", SCALE, &["sum"])
                    },
                ],
                ..Default::default()
            },
            &["\"scale\"", "no field \"sum\""],
        ),
        (
            // Numbers.values is repeated int64, not a message list.
            v1::Workflow {
                steps: vec![
                    sum.clone(),
                    with_args(step("other", SUM, &[]), Numbers { values: vec![2] }),
                    v1::Step {
                        collect: "values".into(),
                        ..step("all", SUM, &["sum", "other"])
                    },
                ],
                ..Default::default()
            },
            &["\"all\"", "not a repeated message field"],
        ),
        (
            v1::Workflow {
                steps: vec![
                    sum.clone(),
                    with_args(step("other", SUM, &[]), Numbers { values: vec![2] }),
                    step("all", COLLECT, &["sum", "other"]),
                ],
                ..Default::default()
            },
            &["\"all\"", "collect"],
        ),
        (
            v1::Workflow {
                steps: vec![
                    step("a", DOUBLE, &["b"]),
                    step("b", DOUBLE, &["a"]),
                    sum.clone(),
                ],
                ..Default::default()
            },
            &["cycle"],
        ),
        (
            v1::Workflow {
                steps: vec![sum.clone(), step("double", DOUBLE, &["nothing"])],
                ..Default::default()
            },
            &["\"double\"", "no step is named \"nothing\""],
        ),
        (
            v1::Workflow {
                steps: vec![step("sum", SUM, &[])],
                ..Default::default()
            },
            &["\"sum\"", "needs its arguments"],
        ),
        (
            v1::Workflow {
                steps: vec![sum.clone()],
                on_failure: Some(step("report", DOUBLE, &[])),
                ..Default::default()
            },
            &["\"report\"", "taskwire.v1.WorkflowFailure"],
        ),
        (
            v1::Workflow {
                steps: vec![
                    sum.clone(),
                    step("nope", "examples.flow.v1.Flow/Nope", &["sum"]),
                ],
                ..Default::default()
            },
            &["\"nope\"", "examples.flow.v1.Flow/Nope"],
        ),
    ];
    for (workflow, words) in cases {
        let err = submit(&mut client, workflow.clone())
            .await
            .expect_err("refused");
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
        for word in words {
            assert!(
                err.message().contains(word),
                "{:?} lacks {word:?}",
                err.message()
            );
        }
    }
    assert_eq!(stream_messages(&nats, "TASKWIRE_WORKFLOWS").await?, 0);
    assert_eq!(stream_messages(&nats, "TASKWIRE_TASKS").await?, 0);
    Ok(())
}

#[tokio::test]
async fn a_chord_takes_every_member_in_order_once() -> anyhow::Result<()> {
    let (nats, gateway, _worker) = flow_system().await?;
    let mut client = WorkflowsClient::connect(gateway.url()).await?;
    let mut steps: Vec<v1::Step> = (0..10)
        .map(|i| {
            with_args(
                step(&format!("m{i}"), SCALE, &[]),
                ScaleArgs {
                    value: i + 1,
                    factor: 100,
                },
            )
        })
        .collect();
    let members: Vec<String> = steps.iter().map(|s| s.name.clone()).collect();
    let members: Vec<&str> = members.iter().map(String::as_str).collect();
    steps.push(v1::Step {
        collect: "totals".into(),
        ..step("total", COLLECT, &members)
    });
    let id = submit(
        &mut client,
        v1::Workflow {
            steps,
            ..Default::default()
        },
    )
    .await?;
    let info = ended(&mut client, &id).await?;
    assert_eq!(info.state(), WorkflowState::Succeeded, "{info:?}");
    let total = output(&info, "total");
    assert_eq!((total.total, total.count), (5500, 10));
    let callback = &step_info(&info, "total").task_id;
    assert_eq!(tasks::journal_count(callback, "collect"), 1);
    // Its input holds the members' results in the members' order: the first event keeps it.
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await?);
    let first = js
        .get_stream("TASKWIRE_EVENTS")
        .await?
        .direct_get_first_for_subject(format!("taskwire.events.{callback}.>"))
        .await?;
    let input = Totals::decode(first.payload.as_ref())?;
    let order: Vec<i64> = input.totals.iter().map(|t| t.total).collect();
    assert_eq!(order, (1..=10).map(|i| i * 100).collect::<Vec<_>>());
    Ok(())
}

#[tokio::test]
async fn a_step_that_fails_ends_the_workflow_skips_the_rest_and_reports() -> anyhow::Result<()> {
    let (_nats, gateway, _worker) = flow_system().await?;
    let mut client = WorkflowsClient::connect(gateway.url()).await?;
    let workflow = v1::Workflow {
        steps: vec![
            with_args(step("sum", SUM, &[]), Numbers { values: vec![100] }),
            v1::Step {
                fields: vec![mapping("total", "total")],
                ..with_args(
                    step("double", DOUBLE, &["sum"]),
                    Total {
                        total: 0,
                        count: 0,
                        limit: 5,
                    },
                )
            },
            step("again", DOUBLE, &["double"]),
        ],
        on_failure: Some(step("report", REPORT, &[])),
        ..Default::default()
    };
    let id = submit(&mut client, workflow).await?;
    let info = ended(&mut client, &id).await?;
    assert_eq!(info.state(), WorkflowState::Failed, "{info:?}");
    assert_eq!(info.failed_step, "double");
    assert!(
        info.error
            .as_ref()
            .is_some_and(|e| e.message.contains("above the limit of 5")),
        "{info:?}"
    );
    assert_eq!(step_task_state(&info, "sum"), Some(TaskState::Succeeded));
    assert_eq!(step_task_state(&info, "double"), Some(TaskState::Failed));
    assert_eq!(step_info(&info, "again").state(), StepState::Skipped);
    // The on_failure step runs once, told which step failed and why.
    eventually("the on_failure step reports", WAIT, || async {
        tasks::flow_reports()
            .iter()
            .any(|r| r.starts_with(&format!("{id} double 100 is above the limit of 5")))
    })
    .await?;
    let info = ended(&mut client, &id).await?;
    let report = step_info(&info, "report");
    assert!(report.on_failure);
    eventually("the report's task succeeds", WAIT, || async {
        step_state_now(&client, &id, "report").await == Some(TaskState::Succeeded)
    })
    .await?;
    assert_eq!(tasks::journal_count(&report.task_id, "report"), 1);
    Ok(())
}

#[tokio::test]
async fn cancel_stops_the_running_step_and_starts_no_other() -> anyhow::Result<()> {
    let (_nats, gateway, _worker) = flow_system().await?;
    let mut client = WorkflowsClient::connect(gateway.url()).await?;
    let workflow = v1::Workflow {
        steps: vec![
            with_args(
                step("slow", SLOW, &[]),
                SlowArgs {
                    millis: 60_000,
                    total: 1,
                },
            ),
            step("double", DOUBLE, &["slow"]),
        ],
        on_failure: Some(step("report", REPORT, &[])),
        ..Default::default()
    };
    let id = submit(&mut client, workflow).await?;
    let slow = format!("{id}-0");
    eventually("the slow step runs", WAIT, || async {
        tasks::journal_count(&slow, "slow") == 1
    })
    .await?;
    let info = client
        .cancel(v1::CancelWorkflowRequest {
            workflow_id: id.clone(),
        })
        .await?
        .into_inner();
    assert_eq!(info.state(), WorkflowState::Cancelled);
    assert!(info.failed_step.is_empty());
    eventually("the running step sees its token", WAIT, || async {
        tasks::journal_count(&slow, "slow-cancelled") == 1
    })
    .await?;
    eventually("the slow step ends cancelled", WAIT, || async {
        step_state_now(&client, &id, "slow").await == Some(TaskState::Cancelled)
    })
    .await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let info = ended(&mut client, &id).await?;
    assert_eq!(info.state(), WorkflowState::Cancelled);
    assert_eq!(step_info(&info, "double").state(), StepState::Skipped);
    // A cancel is not a failure: no report.
    assert_eq!(step_info(&info, "report").state(), StepState::Skipped);
    Ok(())
}

#[tokio::test]
async fn a_failed_chord_member_cancels_the_others_and_the_callback_never_runs() -> anyhow::Result<()>
{
    let (_nats, gateway, _worker) = flow_system().await?;
    let mut client = WorkflowsClient::connect(gateway.url()).await?;
    let workflow = v1::Workflow {
        steps: vec![
            with_args(
                step("slow", SLOW, &[]),
                SlowArgs {
                    millis: 60_000,
                    total: 1,
                },
            ),
            with_args(
                step("fails", DOUBLE, &[]),
                Total {
                    total: 10,
                    count: 1,
                    limit: 1,
                },
            ),
            v1::Step {
                collect: "totals".into(),
                ..step("total", COLLECT, &["slow", "fails"])
            },
        ],
        ..Default::default()
    };
    let id = submit(&mut client, workflow).await?;
    let info = ended(&mut client, &id).await?;
    assert_eq!(info.state(), WorkflowState::Failed, "{info:?}");
    assert_eq!(info.failed_step, "fails");
    let slow = format!("{id}-0");
    eventually("the other member is cancelled", WAIT, || async {
        step_state_now(&client, &id, "slow").await == Some(TaskState::Cancelled)
    })
    .await?;
    let info = ended(&mut client, &id).await?;
    assert_eq!(step_info(&info, "total").state(), StepState::Skipped);
    assert_eq!(tasks::journal_count(&format!("{id}-2"), "collect"), 0);
    let _ = slow;
    Ok(())
}

#[tokio::test]
async fn an_idempotency_key_stores_one_workflow() -> anyhow::Result<()> {
    let (nats, gateway, _worker) = flow_system().await?;
    let mut client = WorkflowsClient::connect(gateway.url()).await?;
    let request = v1::SubmitWorkflowRequest {
        workflow: Some(v1::Workflow {
            steps: vec![with_args(
                step("sum", SUM, &[]),
                Numbers { values: vec![4, 5] },
            )],
            ..Default::default()
        }),
        idempotency_key: "order-17".into(),
    };
    let first = client.submit(request.clone()).await?.into_inner();
    assert!(!first.duplicate);
    let info = ended(&mut client, &first.workflow_id).await?;
    assert_eq!(output(&info, "sum").total, 9);
    let again = client.submit(request).await?.into_inner();
    assert!(again.duplicate);
    assert_eq!(again.workflow_id, first.workflow_id);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        tasks::journal_count(&format!("{}-0", first.workflow_id), "sum"),
        1
    );
    assert_eq!(
        super::subject_messages(&nats, "TASKWIRE_WORKFLOWS", "taskwire.workflows.*.spec").await?,
        1
    );
    Ok(())
}

#[tokio::test]
async fn the_rust_client_builds_chains_and_chords_and_waits() -> anyhow::Result<()> {
    use taskwire_client::workflow::{Step, Workflow};
    let (_nats, gateway, _worker) = flow_system().await?;
    let client = taskwire_client::Client::connect(gateway.url()).await?;
    let chain = Workflow::chain([
        Step::new("sum", SUM).args(&Numbers {
            values: vec![1, 2, 3],
        }),
        Step::new("double", DOUBLE),
        Step::new("scale", SCALE)
            .args(&ScaleArgs {
                value: 0,
                factor: 10,
            })
            .field("total", "value"),
    ]);
    let id = client.submit_workflow(chain).await?;
    let info = client.wait_workflow(&id, WAIT, false).await?;
    assert_eq!(info.state(), WorkflowState::Succeeded, "{info:?}");
    assert_eq!(output(&info, "scale").total, 120);

    let chord = Workflow::group((1..=3).map(|i| {
        Step::new(format!("m{i}"), SCALE).args(&ScaleArgs {
            value: i,
            factor: 2,
        })
    }))
    .then_collect(Step::new("total", COLLECT), "totals")
    .then(Step::new("double", DOUBLE));
    let id = client.submit_workflow(chord).await?;
    let info = client.wait_workflow(&id, WAIT, false).await?;
    assert_eq!(info.state(), WorkflowState::Succeeded, "{info:?}");
    assert_eq!(output(&info, "total").total, 12);
    assert_eq!(output(&info, "double").total, 24);

    // A wait that runs out says so, and names the workflow.
    let slow = Workflow::of([Step::new("slow", SLOW).args(&SlowArgs {
        millis: 60_000,
        total: 1,
    })]);
    let id = client.submit_workflow(slow).await?;
    let err = client
        .wait_workflow(&id, Duration::from_millis(300), false)
        .await
        .expect_err("still running");
    match err {
        taskwire_client::Error::Status(status) => {
            assert_eq!(status.code(), Code::DeadlineExceeded);
            assert!(status.message().contains(&id), "{status:?}");
        }
        other => anyhow::bail!("unexpected {other:?}"),
    }
    let cancelled = client.cancel_workflow(&id).await?;
    assert_eq!(cancelled.state(), WorkflowState::Cancelled);
    // Cancelling what ended is refused.
    let err = client
        .cancel_workflow(&info.workflow_id)
        .await
        .expect_err("it succeeded");
    assert!(
        matches!(&err, taskwire_client::Error::Status(s) if s.code() == Code::FailedPrecondition),
        "{err:?}"
    );
    Ok(())
}

#[tokio::test]
async fn the_cli_submits_a_workflow_file_and_gets_waits_for_and_cancels_workflows()
-> anyhow::Result<()> {
    use std::process::Stdio;
    use taskwire_testing::bin;
    use tokio::process::Command;
    let (_nats, gateway, _worker) = flow_system().await?;
    let dir = tempfile::tempdir()?;
    let cli = |args: &[&str]| {
        let mut command = Command::new(bin("taskwire").expect("taskwire binary"));
        command
            .args(args)
            .env("TASKWIRE_GATEWAY_URL", gateway.url())
            .stdin(Stdio::null());
        command
    };
    let file = dir.path().join("chain.json");
    std::fs::write(
        &file,
        r#"{"chain": [
            {"name": "sum", "task": "examples.flow.v1.Flow/Sum", "args": {"values": [1, 2, 3]}},
            {"name": "double", "task": "examples.flow.v1.Flow/Double"},
            {"name": "scale", "task": "examples.flow.v1.Flow/Scale", "args": {"factor": 10},
             "fields": ["Total.total -> ScaleArgs.value"]}
        ]}"#,
    )?;
    let file = file.to_str().expect("a path");
    let out = cli(&["workflow", "submit", file, "--wait"])
        .output()
        .await?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let info: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(info["state"], "succeeded", "{info}");
    assert_eq!(info["steps"][2]["result"]["total"], 120, "{info}");
    assert_eq!(info["steps"][0]["state"], "succeeded", "{info}");

    let out = cli(&["workflow", "get", info["id"].as_str().expect("an id")])
        .output()
        .await?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let again: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(again["steps"], info["steps"]);

    // A workflow whose steps do not fit: the gateway's reason, and nothing stored.
    let bad = dir.path().join("bad.json");
    std::fs::write(
        &bad,
        r#"{"chain": [
            {"name": "sum", "task": "examples.flow.v1.Flow/Sum", "args": {"values": [1]}},
            {"name": "scale", "task": "examples.flow.v1.Flow/Scale"}
        ]}"#,
    )?;
    let out = cli(&["workflow", "submit", bad.to_str().expect("a path")])
        .output()
        .await?;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("\"scale\"") && stderr.contains("ScaleArgs"),
        "{stderr}"
    );

    // Submitted without waiting, then cancelled while its first step runs.
    let slow = dir.path().join("slow.json");
    std::fs::write(
        &slow,
        r#"{"steps": [
            {"name": "slow", "task": "examples.flow.v1.Flow/Slow", "args": {"millis": 60000}},
            {"name": "double", "task": "examples.flow.v1.Flow/Double", "after": ["slow"]}
        ]}"#,
    )?;
    let out = cli(&["workflow", "submit", slow.to_str().expect("a path")])
        .output()
        .await?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = String::from_utf8(out.stdout)?.trim().to_owned();
    let out = cli(&["workflow", "wait", &id, "--timeout", "200ms"])
        .output()
        .await?;
    assert!(!out.status.success(), "it is still running");
    let out = cli(&["workflow", "cancel", &id]).output().await?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cancelled: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(cancelled["state"], "cancelled");
    assert_eq!(cancelled["steps"][1]["state"], "skipped");
    let out = cli(&["workflow", "wait", &id]).output().await?;
    assert_eq!(out.status.code(), Some(1), "a cancelled workflow exits 1");
    Ok(())
}

#[tokio::test]
async fn a_map_of_ten_thousand_elements_runs_each_once_and_collects_them_in_order()
-> anyhow::Result<()> {
    use taskwire_client::workflow::{Step, Workflow};
    use taskwire_examples::flow::v1::SplitArgs;
    let (nats, gateway, _worker) = flow_system().await?;
    let client = taskwire_client::Client::connect(gateway.url()).await?;
    const N: i64 = 10_000;
    // split(10,000) gives totals 0..9,999; each is doubled; the callback sums them all.
    let map = Workflow::chain([
        Step::new("split", "examples.flow.v1.Flow/Split").args(&SplitArgs { count: N, limit: 0 }),
        Step::new("double", DOUBLE).for_each("parts"),
        Step::new("total", COLLECT).collect("totals"),
    ]);
    let id = client.submit_workflow(map).await?;
    let info = client
        .wait_workflow(&id, Duration::from_secs(280), false)
        .await?;
    assert_eq!(info.state(), WorkflowState::Succeeded, "{:?}", info.error);
    let total = output(&info, "total");
    assert_eq!((total.total, total.count), (N * (N - 1), N));
    let double = step_info(&info, "double");
    assert_eq!(
        (double.elements, double.elements_succeeded),
        (N as u32, N as u32)
    );
    // Each element ran once; the callback once, with the elements in their order.
    for j in [0, 1, 4_999, 9_999] {
        assert_eq!(
            tasks::journal_count(&format!("{id}-1-{j}"), "double"),
            1,
            "{j}"
        );
    }
    let callback = &step_info(&info, "total").task_id;
    assert_eq!(tasks::journal_count(callback, "collect"), 1);
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await?);
    let first = js
        .get_stream("TASKWIRE_EVENTS")
        .await?
        .direct_get_first_for_subject(format!("taskwire.events.{callback}.>"))
        .await?;
    let input = Totals::decode(first.payload.as_ref())?;
    assert_eq!(input.totals.len(), N as usize);
    assert!(
        input
            .totals
            .iter()
            .enumerate()
            .all(|(j, t)| t.total == 2 * j as i64),
        "in the elements' order"
    );
    Ok(())
}

#[tokio::test]
async fn a_failing_element_fails_the_map_and_an_empty_map_succeeds() -> anyhow::Result<()> {
    use taskwire_client::workflow::{Step, Workflow};
    use taskwire_examples::flow::v1::SplitArgs;
    let (_nats, gateway, _worker) = flow_system().await?;
    let client = taskwire_client::Client::connect(gateway.url()).await?;
    // Elements above the limit fail for good: the workflow fails naming the map step and the
    // element's task, and its callback never runs.
    let failing = Workflow::chain([
        Step::new("split", "examples.flow.v1.Flow/Split").args(&SplitArgs {
            count: 20,
            limit: 0,
        }),
        Step::new("scaled", SCALE).for_each("parts"),
    ]);
    // (Scale takes ScaleArgs, not Total: refused before anything is stored.)
    let err = client.submit_workflow(failing).await.expect_err("refused");
    assert!(err.to_string().contains("examples.flow.v1.Total"), "{err}");
    let failing = Workflow::of([
        Step::new("split", "examples.flow.v1.Flow/Split").args(&SplitArgs {
            count: 20,
            limit: 0,
        }),
        Step::new("double", DOUBLE).after("split").for_each("parts"),
        Step::new("again", DOUBLE)
            .after("double")
            .args(&Total {
                total: 0,
                count: 0,
                limit: 0,
            })
            .field("total", "total"),
    ]);
    let err = client.submit_workflow(failing).await.expect_err("refused");
    assert!(err.to_string().contains("collect"), "{err}");

    // Parts above 14 fail for good when doubled: the workflow fails naming the map step and
    // the element's task; the callback never runs.
    let failing = Workflow::chain([
        Step::new("split", "examples.flow.v1.Flow/Split").args(&SplitArgs {
            count: 20,
            limit: 14,
        }),
        Step::new("double", DOUBLE).for_each("parts"),
        Step::new("total", COLLECT).collect("totals"),
    ]);
    let id = client.submit_workflow(failing).await?;
    let info = client.wait_workflow(&id, WAIT, false).await?;
    assert_eq!(info.state(), WorkflowState::Failed, "{info:?}");
    assert_eq!(info.failed_step, "double");
    assert!(
        info.error
            .as_ref()
            .is_some_and(|e| e.message.contains("above the limit of 14")),
        "{info:?}"
    );
    assert_eq!(step_info(&info, "total").state(), StepState::Skipped);
    let double = step_info(&info, "double");
    assert_eq!(double.elements, 20);
    assert!(double.elements_succeeded < 20, "{double:?}");
    assert_eq!(tasks::journal_count(&format!("{id}-2"), "collect"), 0);

    let empty = Workflow::chain([
        Step::new("split", "examples.flow.v1.Flow/Split").args(&SplitArgs { count: 0, limit: 0 }),
        Step::new("double", DOUBLE).for_each("parts"),
        Step::new("total", COLLECT).collect("totals"),
    ]);
    let id = client.submit_workflow(empty).await?;
    let info = client.wait_workflow(&id, WAIT, false).await?;
    assert_eq!(info.state(), WorkflowState::Succeeded, "{info:?}");
    assert_eq!(output(&info, "total").count, 0);
    Ok(())
}

#[tokio::test]
async fn watch_follows_a_workflow_to_its_end() -> anyhow::Result<()> {
    use taskwire_client::workflow::{Step, Workflow};
    let (_nats, gateway, _worker) = flow_system().await?;
    let client = taskwire_client::Client::connect(gateway.url()).await?;
    let id = client
        .submit_workflow(Workflow::chain([
            Step::new("slow", SLOW).args(&SlowArgs {
                millis: 1_500,
                total: 4,
            }),
            Step::new("double", DOUBLE),
        ]))
        .await?;
    let mut changes = client.watch_workflow(&id, true).await?;
    let mut seen = Vec::new();
    while let Some(info) = tokio::time::timeout(WAIT, changes.message()).await?? {
        seen.push(info);
    }
    let first = seen.first().expect("the state now");
    assert_eq!(first.state(), WorkflowState::Running);
    let last = seen.last().expect("the end");
    assert_eq!(last.state(), WorkflowState::Succeeded, "{seen:?}");
    assert_eq!(output(last, "double").total, 8);
    // The slow step was seen running; no two messages in a row are the same.
    assert!(
        seen.iter()
            .any(|i| step_task_state(i, "slow") == Some(TaskState::Running)),
        "{seen:?}"
    );
    assert!(seen.windows(2).all(|w| w[0] != w[1]), "{seen:?}");
    assert_eq!(
        seen.iter()
            .filter(|i| i.state() != WorkflowState::Running)
            .count(),
        1,
        "the end is the last message"
    );
    Ok(())
}
