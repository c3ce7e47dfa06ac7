//! Workflows in the model: chains and groups of chaos tasks, some failing, some cancelled; with
//! the Rust worker also chords (Scale steps, then a Collect of their results) and maps (a Split,
//! a Double per part, some failing for good, then a Collect); at the end every workflow must
//! have ended as guarantees 11 and 12 say, a chord's and a map's Collect with every result, and
//! every step's task is checked like any other task.

use prost::Message as _;
use taskwire::v1::{StepState, WorkflowState};
use taskwire_examples::chaos::v1::{FlakyArgs, SleepArgs};
use taskwire_examples::flow::v1::{ScaleArgs, SplitArgs, Total};

use super::*;

/// Attempts of every step's task.
const STEP_ATTEMPTS: u32 = 3;

/// What the model knows of one submitted workflow.
#[derive(Debug, Clone)]
pub(crate) struct Flow {
    pub(crate) id: String,
    /// Each step's task and the steps it comes after.
    pub(crate) steps: Vec<(&'static str, Vec<usize>)>,
    /// When a Cancel of it returned success.
    pub(crate) cancelled_at: Option<SystemTime>,
    pub(crate) submitted_at: SystemTime,
    /// What the last step answers when the workflow succeeds (a chord's or a map's Collect):
    /// the total and the count of results it took.
    pub(crate) expected: Option<(i64, i64)>,
}

const SCALE: &str = "examples.flow.v1.Flow/Scale";
const SPLIT: &str = "examples.flow.v1.Flow/Split";
const DOUBLE: &str = "examples.flow.v1.Flow/Double";
const COLLECT: &str = "examples.flow.v1.Flow/Collect";

fn args(message: &impl prost::Message) -> Option<v1::step::Args> {
    Some(v1::step::Args::ArgsProto(message.encode_to_vec()))
}

/// Submits a random workflow: a chain of Sleep steps (each taking the label of the one before,
/// the last perhaps a Flaky that may fail for good), or a group of Sleep steps side by side.
pub(crate) async fn submit_workflow(
    client: &Client,
    rng: &mut Rng,
    flows: &mut Vec<Flow>,
    runtime: Runtime,
) {
    let options = Some(
        SubmitOptions::default()
            .max_attempts(STEP_ATTEMPTS)
            .into_proto(),
    );
    // The Flow tasks only the Rust test worker serves.
    if runtime == Runtime::Rust && rng.chance(40) {
        return submit_flow(client, rng, flows, options).await;
    }
    let sleep = |rng: &mut Rng, i: usize| SleepArgs {
        millis: rng.below(150),
        label: format!("s{i}"),
    };
    let mut steps = Vec::new();
    let mut shape = Vec::new();
    if rng.chance(60) {
        let length = 1 + rng.below(4) as usize;
        for i in 0..length {
            let mut step = v1::Step {
                name: format!("s{i}"),
                task: SLEEP.into(),
                args: args(&sleep(rng, i)),
                options: options.clone(),
                ..Default::default()
            };
            if i > 0 {
                step.after = vec![format!("s{}", i - 1)];
                step.fields = vec![v1::FieldMapping {
                    from: "label".into(),
                    to: "label".into(),
                }];
            }
            steps.push(step);
            shape.push((SLEEP, if i > 0 { vec![i - 1] } else { vec![] }));
        }
        if rng.chance(50) {
            let i = steps.len();
            steps.push(v1::Step {
                name: "flaky".into(),
                task: FLAKY.into(),
                after: vec![format!("s{}", i - 1)],
                args: args(&FlakyArgs {
                    succeed_on_attempt: rng.below(4) as u32,
                    permanent: rng.chance(30),
                    ..Default::default()
                }),
                fields: vec![v1::FieldMapping {
                    from: "label".into(),
                    to: "key".into(),
                }],
                options: options.clone(),
                ..Default::default()
            });
            shape.push((FLAKY, vec![i - 1]));
        }
    } else {
        let width = 2 + rng.below(3) as usize;
        for i in 0..width {
            steps.push(v1::Step {
                name: format!("s{i}"),
                task: SLEEP.into(),
                args: args(&sleep(rng, i)),
                options: options.clone(),
                ..Default::default()
            });
            shape.push((SLEEP, vec![]));
        }
    }
    let workflow = v1::Workflow {
        steps,
        ..Default::default()
    };
    if let Ok(id) = client
        .submit_workflow(taskwire_client::workflow::Workflow::from(workflow))
        .await
    {
        flows.push(Flow {
            id,
            steps: shape,
            cancelled_at: None,
            submitted_at: SystemTime::now(),
            expected: None,
        });
    }
}

/// A chord (2 to 5 Scale steps, then a Collect of their results) or a map (a Split into 1 to
/// 40 parts, a Double of each, some above their limit and failing for good, then a Collect).
async fn submit_flow(
    client: &Client,
    rng: &mut Rng,
    flows: &mut Vec<Flow>,
    options: Option<v1::SubmitOptions>,
) {
    let step = |name: &str, task: &str, after: Vec<String>| v1::Step {
        name: name.into(),
        task: task.into(),
        after,
        options: options.clone(),
        ..Default::default()
    };
    let (steps, shape, expected) = if rng.chance(50) {
        let k = 2 + rng.below(4) as i64;
        let mut steps: Vec<v1::Step> = (0..k)
            .map(|i| v1::Step {
                args: args(&ScaleArgs {
                    value: i + 1,
                    factor: 2,
                }),
                ..step(&format!("m{i}"), SCALE, Vec::new())
            })
            .collect();
        steps.push(v1::Step {
            collect: "totals".into(),
            ..step("total", COLLECT, (0..k).map(|i| format!("m{i}")).collect())
        });
        let mut shape: Vec<(&'static str, Vec<usize>)> = (0..k).map(|_| (SCALE, vec![])).collect();
        shape.push((COLLECT, (0..k as usize).collect()));
        (steps, shape, (k * (k + 1), k))
    } else {
        let n = 1 + rng.below(40) as i64;
        // Parts are 0..n; doubled above the limit, a part fails for good.
        let limit = if rng.chance(25) {
            rng.below(n as u64) as i64 + 1
        } else {
            0
        };
        let steps = vec![
            v1::Step {
                args: args(&SplitArgs { count: n, limit }),
                ..step("split", SPLIT, Vec::new())
            },
            v1::Step {
                for_each: "parts".into(),
                ..step("double", DOUBLE, vec!["split".into()])
            },
            v1::Step {
                collect: "totals".into(),
                ..step("total", COLLECT, vec!["double".into()])
            },
        ];
        let shape = vec![(SPLIT, vec![]), (DOUBLE, vec![0]), (COLLECT, vec![1])];
        (steps, shape, (n * (n - 1), n))
    };
    let workflow = v1::Workflow {
        steps,
        ..Default::default()
    };
    if let Ok(id) = client
        .submit_workflow(taskwire_client::workflow::Workflow::from(workflow))
        .await
    {
        flows.push(Flow {
            id,
            steps: shape,
            cancelled_at: None,
            submitted_at: SystemTime::now(),
            expected: Some(expected),
        });
    }
}

/// A map step: no task of its own, one per element.
fn is_map(step: &v1::StepInfo) -> bool {
    step.elements > 0 || step.task == DOUBLE && step.info.is_none()
}

pub(crate) async fn cancel_workflow(client: &Client, rng: &mut Rng, flows: &mut [Flow]) {
    if let Some(index) = pick_index(rng, flows.len())
        && let Ok(info) = client.cancel_workflow(&flows[index].id).await
        && info.state() == WorkflowState::Cancelled
    {
        flows[index].cancelled_at.get_or_insert(SystemTime::now());
    }
}

/// Waits until every workflow has ended (or `limit` passes); each one's last state.
pub(crate) async fn settle_workflows(
    client: &Client,
    flows: &[Flow],
    limit: Duration,
) -> HashMap<String, v1::WorkflowInfo> {
    let deadline = Instant::now() + limit;
    let mut last = HashMap::new();
    for flow in flows {
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            match client
                .wait_workflow(&flow.id, remaining.min(Duration::from_secs(30)), false)
                .await
            {
                Ok(info) => {
                    last.insert(flow.id.clone(), info);
                    break;
                }
                Err(_) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(_) => {
                    if let Ok(info) = client.workflow(&flow.id, false).await {
                        last.insert(flow.id.clone(), info);
                    }
                    break;
                }
            }
        }
    }
    last
}

/// The step tasks of the workflows that were submitted, as tasks the model checks like others.
pub(crate) fn step_tasks(
    flows: &[Flow],
    infos: &HashMap<String, v1::WorkflowInfo>,
    replays: &HashMap<String, Vec<SystemTime>>,
) -> Vec<Task> {
    let mut tasks = Vec::new();
    for flow in flows {
        let Some(info) = infos.get(&flow.id) else {
            continue;
        };
        for (i, step) in info.steps.iter().enumerate() {
            if step.state() != StepState::Submitted || is_map(step) {
                continue;
            }
            let cancelled = step
                .info
                .as_ref()
                .is_some_and(|t| t.state() == TaskState::Cancelled);
            tasks.push(Task {
                id: step.task_id.clone(),
                name: flow.steps.get(i).map_or(SLEEP, |s| s.0),
                max_attempts: STEP_ATTEMPTS,
                not_before: None,
                expires_at: None,
                // Cancelled with its workflow: nothing of it starts after that cancel.
                cancelled_at: flow
                    .cancelled_at
                    .filter(|_| cancelled && info.failed_step.is_empty()),
                replays: replays.get(&step.task_id).cloned().unwrap_or_default(),
                waited: None,
                submitted_at: flow.submitted_at,
                parks: false,
                label: "",
                priority: None,
            });
        }
    }
    tasks
}

/// 11 and 12, against what Get says of each workflow and the runs the workers logged.
pub(crate) fn check_workflows(
    flows: &[Flow],
    infos: &HashMap<String, v1::WorkflowInfo>,
    runs: &HashMap<String, Vec<Run>>,
    replays: &HashMap<String, Vec<SystemTime>>,
    violations: &mut Vec<Violation>,
) {
    for flow in flows {
        let mut violated = |guarantee: u8, what: String| {
            violations.push(Violation {
                guarantee,
                task: flow.id.clone(),
                what: format!("workflow: {what}"),
            });
        };
        let Some(info) = infos.get(&flow.id) else {
            violated(11, "Get never knew it".into());
            continue;
        };
        let state_of = |i: usize| {
            info.steps
                .get(i)
                .and_then(|s| s.info.as_ref())
                .map(|t| t.state())
        };
        match info.state() {
            WorkflowState::Succeeded => {
                for i in 0..flow.steps.len() {
                    let map = info.steps.get(i).filter(|s| is_map(s));
                    if let Some(map) = map {
                        if map.elements_succeeded != map.elements || map.elements == 0 {
                            violated(
                                11,
                                format!(
                                    "succeeded, but map step {i} has {} of {} elements succeeded",
                                    map.elements_succeeded, map.elements
                                ),
                            );
                        }
                    } else if state_of(i) != Some(TaskState::Succeeded) {
                        violated(11, format!("succeeded, but step {i} is {:?}", state_of(i)));
                    }
                }
                // A chord's or a map's Collect took every result, once.
                if let Some((total, count)) = flow.expected {
                    let got = info
                        .steps
                        .last()
                        .and_then(|s| s.info.as_ref())
                        .and_then(|t| Total::decode(t.result.as_slice()).ok());
                    if got.as_ref().map(|t| (t.total, t.count)) != Some((total, count)) {
                        violated(
                            11,
                            format!("its Collect answered {got:?}, not total {total} of {count}"),
                        );
                    }
                }
            }
            WorkflowState::Failed => {
                let failed = info.steps.iter().position(|s| s.name == info.failed_step);
                // A map step fails with one of its elements.
                let map_failed = failed
                    .and_then(|i| info.steps.get(i))
                    .is_some_and(|s| is_map(s) && s.elements_succeeded < s.elements);
                let ok = map_failed
                    || failed
                        .and_then(state_of)
                        .is_some_and(|s| matches!(s, TaskState::Failed | TaskState::Expired));
                if !ok && !failed.is_some_and(|i| replays.contains_key(&info.steps[i].task_id)) {
                    violated(
                        11,
                        format!(
                            "failed on step {:?}, which is {:?}",
                            info.failed_step,
                            failed.and_then(state_of)
                        ),
                    );
                }
            }
            WorkflowState::Cancelled => {
                if info.failed_step.is_empty() && flow.cancelled_at.is_none() {
                    violated(11, "cancelled, but no Cancel succeeded".into());
                }
            }
            other => {
                violated(11, format!("never ended: still {other:?}"));
                continue;
            }
        }
        if flow.cancelled_at.is_some() && info.state() != WorkflowState::Cancelled {
            violated(
                12,
                format!("its Cancel succeeded, but it ended {:?}", info.state()),
            );
        }
        let task_runs = |i: usize| {
            info.steps
                .get(i)
                .and_then(|s| runs.get(&s.task_id))
                .map(Vec::as_slice)
                .unwrap_or_default()
        };
        for (i, (_, after)) in flow.steps.iter().enumerate() {
            let Some(first) = task_runs(i).first() else {
                continue;
            };
            // 11: no step starts before the steps it takes results from ended.
            for &d in after {
                let done = task_runs(d)
                    .iter()
                    .any(|r| r.end.is_some_and(|e| e <= first.start + CLOCK_TOLERANCE));
                if !done {
                    violated(11, format!("step {i} started before step {d} ended"));
                }
            }
            // 12: a step not done when its workflow's Cancel returned ends cancelled (its
            // task was cancelled before the answer), whatever its worker did.
            if let Some(at) = flow.cancelled_at
                && info.failed_step.is_empty()
                && state_of(i) == Some(TaskState::Succeeded)
                && !task_runs(i)
                    .iter()
                    .any(|r| r.end.is_some_and(|e| e <= at + CLOCK_TOLERANCE))
            {
                violated(
                    12,
                    format!("step {i} succeeded after the workflow's Cancel"),
                );
            }
            // 12: nothing starts after its Cancel (a replayed step is a new series).
            let replayed = info
                .steps
                .get(i)
                .is_some_and(|s| replays.contains_key(&s.task_id));
            if let Some(at) = flow.cancelled_at
                && !replayed
                && let Some(run) = task_runs(i)
                    .iter()
                    .find(|r| r.start > at + CANCEL_TOLERANCE)
            {
                violated(
                    12,
                    format!(
                        "step {i} started {:?} after the workflow's Cancel",
                        run.start.duration_since(at).unwrap_or_default()
                    ),
                );
            }
        }
    }
}
