//! Workflows in the model: chains and groups of chaos tasks, some failing, some cancelled; at
//! the end every workflow must have ended as guarantees 11 and 12 say, and every step's task
//! is checked like any other task.

use taskwire::v1::{StepState, WorkflowState};
use taskwire_examples::chaos::v1::{FlakyArgs, SleepArgs};

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
}

fn args(message: &impl prost::Message) -> Option<v1::step::Args> {
    Some(v1::step::Args::ArgsProto(message.encode_to_vec()))
}

/// Submits a random workflow: a chain of Sleep steps (each taking the label of the one before,
/// the last perhaps a Flaky that may fail for good), or a group of Sleep steps side by side.
pub(crate) async fn submit_workflow(client: &Client, rng: &mut Rng, flows: &mut Vec<Flow>) {
    let options = Some(
        SubmitOptions::default()
            .max_attempts(STEP_ATTEMPTS)
            .into_proto(),
    );
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
                    key: String::new(),
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
        });
    }
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
            if step.state() != StepState::Submitted {
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
                    if state_of(i) != Some(TaskState::Succeeded) {
                        violated(11, format!("succeeded, but step {i} is {:?}", state_of(i)));
                    }
                }
            }
            WorkflowState::Failed => {
                let failed = info.steps.iter().position(|s| s.name == info.failed_step);
                let ok = failed
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
