//! The oracle: each task's end, runs and dead letters checked against the guarantees.

use super::*;

/// Dead letters by task id.
pub(crate) async fn dead_letter_counts(client: &Client) -> anyhow::Result<HashMap<String, usize>> {
    let mut counts = HashMap::new();
    for letter in client.dead_letters("", u32::MAX).await? {
        *counts.entry(letter.task_id).or_default() += 1;
    }
    Ok(counts)
}

/// The runs the workers logged, by task id, in order of start.
pub(crate) fn check(
    task: &Task,
    last: Option<&TaskState>,
    runs: &[Run],
    dead_letters: usize,
    kills: &[SystemTime],
    violations: &mut Vec<Violation>,
) {
    // What the model saw of the task, for the report of a violation.
    let history = {
        let origin = task.submitted_at;
        let at = |t: SystemTime| match t.duration_since(origin) {
            Ok(d) => format!("{}ms", d.as_millis()),
            Err(e) => format!("-{}ms", e.duration().as_millis()),
        };
        let runs: Vec<String> = runs
            .iter()
            .map(|r| {
                let end = r.end.map_or_else(|| "?".to_owned(), at);
                format!("{}@{}..{end}", r.attempt, at(r.start))
            })
            .collect();
        let replays: Vec<String> = task.replays.iter().map(|r| at(*r)).collect();
        format!(
            "max_attempts {}, runs {runs:?}, replays asked at {replays:?}, cancelled at {:?}",
            task.max_attempts,
            task.cancelled_at.map(at)
        )
    };
    let mut violated = |guarantee: u8, what: String| {
        violations.push(Violation {
            guarantee,
            task: task.id.clone(),
            what: format!("{} {what} ({history})", task.name),
        });
    };
    // 1: an end, visible to Get.
    let state = match last {
        Some(state) if is_final(*state) => *state,
        Some(state) => {
            violated(1, format!("never ended: still {state:?}"));
            return;
        }
        None => {
            violated(1, "Get never knew it".into());
            return;
        }
    };
    // 3: attempts in order and within the limit, per series (a replay starts one).
    let mut series_start = 0;
    let mut replays = task.replays.clone();
    replays.sort();
    let mut unused = replays.as_slice();
    for (i, run) in runs.iter().enumerate() {
        // A run that starts the count again after a replay was asked for begins a new series
        // (the replay's time is when it was asked: the series may start before the answer).
        let restarted = i > 0 && run.attempt <= runs[i - 1].attempt;
        if restarted && unused.first().is_some_and(|r| *r <= run.start) {
            unused = &unused[1..];
            series_start = i;
        }
        if run.attempt > task.max_attempts {
            violated(
                3,
                format!("ran attempt {} of {}", run.attempt, task.max_attempts),
            );
        }
        // A parent's run after it waited for its children is the same attempt again.
        let resumed = task.parks && i > 0 && run.attempt == runs[i - 1].attempt;
        if i > series_start && run.attempt <= runs[i - 1].attempt && !resumed {
            let crashed = runs[i - 1].end.is_none()
                || kills
                    .iter()
                    .any(|k| *k > runs[i - 1].start && *k < run.start);
            if !crashed {
                violated(
                    3,
                    format!(
                        "attempt {} ran after attempt {}",
                        run.attempt,
                        runs[i - 1].attempt
                    ),
                );
            }
        }
    }
    // 4: nothing starts after a cancel; the outcome is the cancel.
    if let Some(at) = task.cancelled_at {
        let replayed_after = task.replays.iter().any(|r| *r > at);
        if !replayed_after {
            if let Some(run) = runs.iter().find(|r| r.start > at + CANCEL_TOLERANCE) {
                violated(
                    4,
                    format!(
                        "attempt {} started {:?} after its cancel",
                        run.attempt,
                        run.start.duration_since(at).unwrap_or_default()
                    ),
                );
            }
            if state != TaskState::Cancelled {
                violated(4, format!("cancelled, but ended {state:?}"));
            }
        }
    }
    // 5: not before its time; not after its expiry.
    if let Some(not_before) = task.not_before
        && let Some(run) = runs.iter().find(|r| r.start + CLOCK_TOLERANCE < not_before)
    {
        violated(
            5,
            format!(
                "started {:?} before its time",
                not_before.duration_since(run.start).unwrap_or_default()
            ),
        );
    }
    if let Some(expires) = task.expires_at
        && task.replays.is_empty()
        && let Some(run) = runs
            .iter()
            .find(|r| r.start > expires + Duration::from_millis(100))
    {
        violated(
            5,
            format!(
                "started {:?} after its expiry",
                run.start.duration_since(expires).unwrap_or_default()
            ),
        );
    }
    // 8: one dead letter for a task that failed for good, none for the rest.
    let expected = usize::from(state == TaskState::Failed);
    if dead_letters != expected {
        violated(
            8,
            format!("ended {state:?} with {dead_letters} dead letters"),
        );
    }
    // 9: what a waiter was told is what Get tells.
    if let Some(waited) = task.waited
        && waited != state
        && task.replays.is_empty()
    {
        violated(9, format!("a Wait answered {waited:?}, Get {state:?}"));
    }
}

/// 7: never more Limited tasks running at once than its `max_concurrency`.
/// No more Paced tasks start in any second than its highest rate allows.
pub(crate) fn check_rate(
    tasks: &[Task],
    runs: &HashMap<String, Vec<Run>>,
    keyed: &[Keyed],
    violations: &mut Vec<Violation>,
) {
    // Starts counted per label are checked per label (`check_keyed`).
    let mut starts: Vec<SystemTime> = tasks
        .iter()
        .filter(|t| t.name == PACED)
        .flat_map(|t| runs.get(&t.id).map(Vec::as_slice).unwrap_or_default())
        .map(|r| r.start)
        .filter(|t| !per_key_at(keyed, PACED, *t))
        .collect();
    starts.sort();
    let second = Duration::from_secs(1);
    if let Some(window) = starts
        .windows(PACED_PER_SECOND + 1)
        .find(|w| w[PACED_PER_SECOND].duration_since(w[0]).unwrap_or_default() < second)
    {
        violations.push(Violation {
            guarantee: 7,
            task: String::new(),
            what: format!(
                "{} Paced tasks started within {:?}; the highest rate is {PACED_PER_SECOND}/s",
                PACED_PER_SECOND + 1,
                window[PACED_PER_SECOND]
                    .duration_since(window[0])
                    .unwrap_or_default()
            ),
        });
    }
}

/// The most runs under way at once; a run cut short by a kill ended then at the latest (one
/// with no end and no kill after it is left out).
fn most_at_once<'a>(runs: impl Iterator<Item = &'a Run>, kills: &[SystemTime]) -> usize {
    let mut changes: Vec<(SystemTime, i64)> = Vec::new();
    for run in runs {
        let end = run
            .end
            .or_else(|| kills.iter().copied().find(|k| *k > run.start));
        let Some(end) = end else { continue };
        changes.push((run.start, 1));
        changes.push((end, -1));
    }
    changes.sort();
    let (mut running, mut most) = (0i64, 0i64);
    for (_, change) in changes {
        running += change;
        most = most.max(running);
    }
    usize::try_from(most).unwrap_or(0)
}

pub(crate) fn check_limit(
    tasks: &[Task],
    runs: &HashMap<String, Vec<Run>>,
    kills: &[SystemTime],
    keyed: &[Keyed],
    violations: &mut Vec<Violation>,
) {
    // A run that may have started under a limit per label holds that label's slot
    // (`check_keyed`), not one of the task type's.
    let whole = tasks
        .iter()
        .filter(|t| t.name == LIMITED)
        .flat_map(|t| runs.get(&t.id).map(Vec::as_slice).unwrap_or_default())
        .filter(|r| !per_key_at(keyed, LIMITED, r.start));
    let most = most_at_once(whole, kills);
    if most > LIMITED_CONCURRENCY {
        violations.push(Violation {
            guarantee: 7,
            task: String::new(),
            what: format!("{most} Limited tasks ran at once; the limit is {LIMITED_CONCURRENCY}"),
        });
    }
}

/// A stretch of time a limit per label was in force for a task type: at most `limit` running
/// at once (Limited) or started per second (Paced) for each label.
#[derive(Debug, Clone)]
pub(crate) struct Keyed {
    pub(crate) task: &'static str,
    pub(crate) limit: usize,
    /// When it was set (answered).
    pub(crate) from: SystemTime,
    /// When the next change of the task type's limits was asked (none: it lasted).
    pub(crate) to: Option<SystemTime>,
}

/// How long after a limit was set workers may still start by the one before (an override
/// applies within about a second).
const LIMIT_TOLERANCE: Duration = Duration::from_secs(2);

/// Whether a start of `task` at `at` may have been counted by a limit per label.
fn per_key_at(keyed: &[Keyed], task: &str, at: SystemTime) -> bool {
    keyed.iter().any(|k| {
        k.task == task
            && at + LIMIT_TOLERANCE >= k.from
            && k.to.is_none_or(|to| at <= to + LIMIT_TOLERANCE)
    })
}

/// 7, per key: among the runs of one label that started while a per-label limit was surely in
/// force, never more running at once (Limited), nor started within a second (Paced), than it.
pub(crate) fn check_keyed(
    tasks: &[Task],
    runs: &HashMap<String, Vec<Run>>,
    kills: &[SystemTime],
    keyed: &[Keyed],
    violations: &mut Vec<Violation>,
) {
    for stretch in keyed {
        let from = stretch.from + LIMIT_TOLERANCE;
        let within = |t: SystemTime| t >= from && stretch.to.is_none_or(|to| t < to);
        for label in LABELS {
            let started: Vec<&Run> = tasks
                .iter()
                .filter(|t| t.name == stretch.task && t.label == label)
                .flat_map(|t| runs.get(&t.id).map(Vec::as_slice).unwrap_or_default())
                .filter(|r| within(r.start))
                .collect();
            if stretch.task == LIMITED {
                let most = most_at_once(started.iter().copied(), kills);
                if most > stretch.limit {
                    violations.push(Violation {
                        guarantee: 7,
                        task: String::new(),
                        what: format!(
                            "{most} Limited tasks labelled {label} ran at once; the limit per label is {}",
                            stretch.limit
                        ),
                    });
                }
            } else {
                let mut starts: Vec<SystemTime> = started.iter().map(|r| r.start).collect();
                starts.sort();
                let second = Duration::from_secs(1);
                if let Some(window) = starts
                    .windows(stretch.limit + 1)
                    .find(|w| w[stretch.limit].duration_since(w[0]).unwrap_or_default() < second)
                {
                    violations.push(Violation {
                        guarantee: 7,
                        task: String::new(),
                        what: format!(
                            "{} Paced tasks labelled {label} started within {:?}; the rate per label is {}/s",
                            stretch.limit + 1,
                            window[stretch.limit].duration_since(window[0]).unwrap_or_default(),
                            stretch.limit
                        ),
                    });
                }
            }
        }
    }
}

/// Guarantee 14: a list by state finds every task in that state, and no task in another.
/// The model's tasks that ended are looked for in the lists of their final states; every task
/// of the model a list finds must be in the state it was listed under.
pub(super) async fn check_lists(
    client: &taskwire_client::Client,
    tasks: &[Task],
    finals: &HashMap<String, TaskState>,
    violations: &mut Vec<Violation>,
) {
    use std::collections::HashSet;
    let known: HashSet<&str> = tasks.iter().map(|t| t.id.as_str()).collect();
    for state in [
        TaskState::Succeeded,
        TaskState::Failed,
        TaskState::Cancelled,
        TaskState::Expired,
    ] {
        let filter = v1::TaskFilter {
            states: vec![state as i32],
            ..Default::default()
        };
        let listed = match client.find_tasks(filter, usize::MAX).await {
            Ok(listed) => listed,
            Err(e) => {
                violations.push(Violation {
                    guarantee: 14,
                    task: String::new(),
                    what: format!("the list of {state:?} tasks failed: {e}"),
                });
                continue;
            }
        };
        let mut found = HashSet::new();
        for info in &listed {
            if !known.contains(info.task_id.as_str()) {
                continue;
            }
            found.insert(info.task_id.as_str());
            if finals.get(&info.task_id) != Some(&state) || info.state() != state {
                violations.push(Violation {
                    guarantee: 14,
                    task: info.task_id.clone(),
                    what: format!(
                        "listed as {state:?} (says {:?}), ended {:?}",
                        info.state(),
                        finals.get(&info.task_id)
                    ),
                });
            }
        }
        for (id, _) in finals.iter().filter(|(_, s)| **s == state) {
            if known.contains(id.as_str()) && !found.contains(id.as_str()) {
                violations.push(Violation {
                    guarantee: 14,
                    task: id.clone(),
                    what: format!("ended {state:?}, missing from the list of {state:?} tasks"),
                });
            }
        }
    }
}
