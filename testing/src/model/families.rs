//! Child tasks in the model: Spawn parents that submit Sleep children, some failing their first
//! attempt after submitting them (the retry finds them), some waiting for them without a
//! worker; parents are cancelled by the model's Cancel like any task. At the end every parent
//! and child is checked like any other task, and each family as guarantees 11 and 12 say.

use prost::Message as _;
use taskwire_examples::chaos::v1::{SpawnArgs, SpawnResult};

use super::*;

pub(crate) const SPAWN: &str = "examples.chaos.v1.Chaos/Spawn";

/// `max_attempts` of Spawn and Sleep in their proto.
const SPAWN_ATTEMPTS: u32 = 3;
const SLEEP_ATTEMPTS: u32 = 5;

/// What the model knows of one parent.
#[derive(Debug, Clone)]
pub(crate) struct Family {
    pub(crate) parent: String,
    pub(crate) args: SpawnArgs,
}

/// Submits a parent with a few children: at a random priority, some delayed, some with an
/// idempotency key of a few (a key used before must answer its parent, whatever its state,
/// waiting included).
pub(crate) async fn submit_family(
    client: &Client,
    rng: &mut Rng,
    tasks: &mut Vec<Task>,
    families: &mut Vec<Family>,
    keys: &mut HashMap<(&'static str, String), String>,
    violations: &mut Vec<Violation>,
    n: usize,
) {
    let args = SpawnArgs {
        count: 1 + rng.below(4) as u32,
        label: format!("f{n}"),
        // Some parents wait long enough to be caught waiting by a list.
        child_millis: if rng.chance(25) {
            2_000 + rng.below(2_000)
        } else {
            rng.below(300)
        },
        fail_first: rng.chance(30),
        gap_millis: rng.below(50),
        wait: rng.chance(60),
    };
    let priority = match rng.below(3) {
        0 => v1::Priority::High,
        1 => v1::Priority::Low,
        _ => v1::Priority::Normal,
    };
    let mut options = SubmitOptions::default().priority(priority);
    let mut not_before = None;
    if rng.chance(15) {
        let delay = Duration::from_millis(300 + rng.below(1500));
        options = options.countdown(delay);
        not_before = Some(SystemTime::now() + delay);
    }
    let key = rng.chance(20).then(|| format!("fk{}", rng.below(6)));
    if let Some(key) = &key {
        options = options.idempotency_key(key.clone());
    }
    let Ok(answer) = client
        .submit_raw(
            SPAWN,
            v1::submit_request::Args::ArgsProto(args.encode_to_vec()),
            options,
        )
        .await
    else {
        return;
    };
    if let Some(key) = key {
        match keys.get(&(SPAWN, key.clone())) {
            Some(known) => {
                if *known != answer.task_id || !answer.duplicate {
                    violations.push(Violation {
                        guarantee: 6,
                        task: answer.task_id.clone(),
                        what: format!(
                            "key {key} of {SPAWN} answered {} (duplicate: {}) after {known}",
                            answer.task_id, answer.duplicate
                        ),
                    });
                }
                return;
            }
            None if answer.duplicate => return,
            None => {
                keys.insert((SPAWN, key), answer.task_id.clone());
            }
        }
    } else if answer.duplicate {
        return;
    }
    tasks.push(Task {
        id: answer.task_id.clone(),
        name: SPAWN,
        max_attempts: SPAWN_ATTEMPTS,
        not_before,
        expires_at: None,
        cancelled_at: None,
        replays: Vec::new(),
        waited: None,
        submitted_at: SystemTime::now(),
        parks: args.wait,
        label: "",
        priority: Some(priority),
    });
    families.push(Family {
        parent: answer.task_id,
        args,
    });
}

/// Guarantee 14 for the parents that wait, which have left the tasks stream: a list of waiting
/// tasks between two reads of the latest parents. A parent that waited throughout (the same
/// waiting event before and after the list) must be listed; a parent listed must say it waits
/// and must not have been in one other state throughout.
pub(crate) async fn list_waiting(
    client: &Client,
    families: &[Family],
    violations: &mut Vec<Violation>,
) {
    let recent: Vec<&str> = families
        .iter()
        .rev()
        .take(20)
        .map(|f| f.parent.as_str())
        .collect();
    let before = infos(client, &recent).await;
    let filter = v1::TaskFilter {
        states: vec![TaskState::Waiting as i32],
        ..Default::default()
    };
    // A list cut off by a fault the model caused says nothing.
    let Ok(listed) = client.find_tasks(filter, usize::MAX).await else {
        return;
    };
    let after = infos(client, &recent).await;
    let unchanged = |id: &str| match (before.get(id), after.get(id)) {
        (Some(b), Some(a)) => {
            (b.state() == a.state() && b.updated_at == a.updated_at && b.attempt == a.attempt)
                .then_some(b.state())
        }
        _ => None,
    };
    for id in &recent {
        if unchanged(id) == Some(TaskState::Waiting) && !listed.iter().any(|t| t.task_id == *id) {
            violations.push(Violation {
                guarantee: 14,
                task: (*id).to_owned(),
                what: "waited for its children throughout a list of waiting tasks, which missed it"
                    .into(),
            });
        }
    }
    for info in listed
        .iter()
        .filter(|t| recent.contains(&t.task_id.as_str()))
    {
        let throughout = unchanged(&info.task_id).filter(|s| *s != TaskState::Waiting);
        if info.state() != TaskState::Waiting || throughout.is_some() {
            violations.push(Violation {
                guarantee: 14,
                task: info.task_id.clone(),
                what: format!(
                    "listed as waiting (says {:?}), {:?} before and after the list",
                    info.state(),
                    throughout
                ),
            });
        }
    }
    let mut seen = std::collections::HashSet::new();
    if let Some(twice) = listed.iter().find(|t| !seen.insert(t.task_id.as_str())) {
        violations.push(Violation {
            guarantee: 14,
            task: twice.task_id.clone(),
            what: "listed twice in one list of waiting tasks".into(),
        });
    }
}

/// What Get says of each of `ids` (those it answers).
async fn infos<'a>(client: &Client, ids: &[&'a str]) -> HashMap<&'a str, v1::TaskInfo> {
    let mut infos = HashMap::new();
    for id in ids {
        if let Ok(info) = client.get(id, false).await {
            infos.insert(*id, info);
        }
    }
    infos
}

/// The children of every parent, as Get lists them once the parents have ended.
pub(crate) async fn children_of(
    client: &Client,
    families: &[Family],
) -> HashMap<String, Vec<v1::TaskChild>> {
    let mut children = HashMap::new();
    for family in families {
        if let Ok(info) = client.get(&family.parent, false).await {
            children.insert(family.parent.clone(), info.children);
        }
    }
    children
}

/// The children, as tasks the model checks like others: one whose parent's Cancel succeeded
/// and that ended cancelled was cancelled then.
pub(crate) fn child_tasks(
    families: &[Family],
    tasks: &[Task],
    children: &HashMap<String, Vec<v1::TaskChild>>,
    finals: &HashMap<String, TaskState>,
    replays: &HashMap<String, Vec<SystemTime>>,
) -> Vec<Task> {
    let mut found = Vec::new();
    for family in families {
        let parent = tasks.iter().find(|t| t.id == family.parent);
        let parent_cancelled = parent.and_then(|p| p.cancelled_at);
        for child in children.get(&family.parent).into_iter().flatten() {
            let cancelled = finals.get(&child.task_id) == Some(&TaskState::Cancelled);
            found.push(Task {
                id: child.task_id.clone(),
                name: SLEEP,
                max_attempts: SLEEP_ATTEMPTS,
                not_before: None,
                expires_at: None,
                cancelled_at: parent_cancelled.filter(|_| cancelled),
                replays: replays.get(&child.task_id).cloned().unwrap_or_default(),
                waited: None,
                submitted_at: parent.map_or_else(SystemTime::now, |p| p.submitted_at),
                parks: false,
                label: "",
                priority: None,
            });
        }
    }
    found
}

/// 11 and 12 for families: a parent that succeeded answered the children it recorded, each
/// submitted once, and when it waited, their results in order; a parent whose Cancel
/// succeeded starts no child after it, and its children that had not ended end cancelled.
pub(crate) async fn check_families(
    client: &Client,
    families: &[Family],
    tasks: &[Task],
    children: &HashMap<String, Vec<v1::TaskChild>>,
    runs: &HashMap<String, Vec<Run>>,
    replays: &HashMap<String, Vec<SystemTime>>,
    violations: &mut Vec<Violation>,
) {
    for family in families {
        let mut violated = |guarantee: u8, what: String| {
            violations.push(Violation {
                guarantee,
                task: family.parent.clone(),
                what: format!("family: {what}"),
            });
        };
        let recorded = children.get(&family.parent).cloned().unwrap_or_default();
        if recorded.len() > family.args.count as usize {
            violated(
                11,
                format!(
                    "{} children recorded for {} submitted (a retry stored them again)",
                    recorded.len(),
                    family.args.count
                ),
            );
        }
        let Ok(info) = client.get(&family.parent, false).await else {
            continue;
        };
        if info.state() == TaskState::Succeeded {
            let Ok(result) = SpawnResult::decode(info.result.as_slice()) else {
                violated(11, "its result does not decode".into());
                continue;
            };
            let listed: Vec<&str> = recorded.iter().map(|c| c.task_id.as_str()).collect();
            if listed
                != result
                    .children
                    .iter()
                    .map(String::as_str)
                    .collect::<Vec<_>>()
            {
                violated(
                    11,
                    format!(
                        "answered children {:?}, Get lists {listed:?}",
                        result.children
                    ),
                );
            }
            if family.args.wait {
                // Each child's answer in order: its label when it succeeded; a child that
                // failed for good (its attempts cut short by the model's worker kills, say)
                // answers no label, and may have succeeded since if the model replayed it.
                // Every child has ended before the parent resumed.
                let mut expected = Vec::new();
                let mut either = Vec::new();
                for (i, child) in recorded.iter().enumerate() {
                    let ended = client.get(&child.task_id, false).await.ok();
                    let state = ended.as_ref().map(|c| c.state());
                    let label = format!("{}-{i}", family.args.label);
                    match state {
                        Some(TaskState::Succeeded) if replays.contains_key(&child.task_id) => {
                            either.push(i);
                            expected.push(label);
                        }
                        Some(TaskState::Succeeded) => expected.push(label),
                        Some(TaskState::Failed | TaskState::Cancelled | TaskState::Expired) => {
                            expected.push(String::new());
                        }
                        _ => {
                            violated(
                                11,
                                format!(
                                    "succeeded after waiting, but child {} is {state:?}",
                                    child.task_id
                                ),
                            );
                            expected.push(label);
                        }
                    }
                }
                let answered = |i: usize, want: &String| {
                    let got = result.labels.get(i);
                    got == Some(want) || either.contains(&i) && got.is_some_and(String::is_empty)
                };
                let agrees = result.labels.len() == expected.len()
                    && expected
                        .iter()
                        .enumerate()
                        .all(|(i, want)| answered(i, want));
                if !agrees {
                    violated(
                        11,
                        format!(
                            "waited for its children and answered {:?}, not {expected:?}",
                            result.labels
                        ),
                    );
                }
            }
        }
        let cancelled_at = tasks
            .iter()
            .find(|t| t.id == family.parent)
            .and_then(|t| t.cancelled_at);
        if let Some(at) = cancelled_at {
            for child in &recorded {
                if let Some(run) = runs
                    .get(&child.task_id)
                    .into_iter()
                    .flatten()
                    .find(|r| r.start > at + CANCEL_TOLERANCE)
                {
                    violated(
                        12,
                        format!(
                            "child {} started {:?} after its parent's Cancel",
                            child.task_id,
                            run.start.duration_since(at).unwrap_or_default()
                        ),
                    );
                }
            }
        }
    }
}
