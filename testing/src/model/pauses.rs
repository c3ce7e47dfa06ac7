//! Queues paused and resumed: while a task type's queue is paused at a priority, no task of it
//! at that priority starts, from shortly after the pause answered (the time workers take to
//! hear of it) until the resume is asked; at the end every pause is lifted, and every task
//! ends as the other checks say. Queues purged: a task that ended cancelled without a Cancel
//! of its own was in a queue purged after it was submitted, and started no run after the last
//! such purge answered.

use super::*;

/// The task types the model pauses.
const PAUSABLE: [&str; 5] = [SLEEP, FLAKY, LIMITED, PACED, families::SPAWN];

/// How long after a pause answered a start still counts as one decided before it. The promise
/// is within a second; this leaves a loaded machine the same room as a cancel.
const PAUSE_TOLERANCE: Duration = CANCEL_TOLERANCE;

/// One stretch of a queue paused.
#[derive(Debug, Clone)]
struct Stretch {
    task: &'static str,
    level: usize,
    /// When the pause answered.
    from: SystemTime,
    /// When the resume was asked (none while it lasts).
    to: Option<SystemTime>,
}

/// The task types the model purges: no workflow step or child is of them.
const PURGEABLE: [&str; 2] = [LIMITED, PACED];

/// What the model paused, and when; what it purged, and when that answered.
#[derive(Debug, Default)]
pub(crate) struct Pauses {
    stretches: Vec<Stretch>,
    purges: Vec<(&'static str, usize, SystemTime)>,
}

fn priority_at(level: usize) -> v1::Priority {
    taskwire_protocol::PRIORITIES[level]
}

/// Every level (`all` percent of the time, asked as no priority) or one, and the priorities to
/// ask for them.
fn pick_levels(rng: &mut Rng, all: u64) -> (Vec<usize>, Vec<v1::Priority>) {
    if rng.chance(all) {
        (vec![0, 1, 2], Vec::new())
    } else {
        let level = rng.below(3) as usize;
        (vec![level], vec![priority_at(level)])
    }
}

impl Pauses {
    fn open(&self, task: &str, level: usize) -> Option<usize> {
        self.stretches
            .iter()
            .position(|s| s.task == task && s.level == level && s.to.is_none())
    }

    /// Pauses a queue that runs, or resumes one that is paused: a whole task type, or one
    /// priority.
    pub(crate) async fn step(&mut self, client: &Client, rng: &mut Rng) {
        let Some(&task) = rng.pick(&PAUSABLE) else {
            return;
        };
        let (levels, priorities) = pick_levels(rng, 60);
        let pausing = levels.iter().any(|l| self.open(task, *l).is_none());
        if pausing {
            // A pause that answered an error may have been stored: it can only keep tasks
            // from starting, which no check counts against it.
            if client.pause_queue(task, &priorities, "model").await.is_ok() {
                let from = SystemTime::now();
                for level in levels {
                    if self.open(task, level).is_none() {
                        self.stretches.push(Stretch {
                            task,
                            level,
                            from,
                            to: None,
                        });
                    }
                }
            }
        } else {
            self.resume(client, task, &levels, &priorities).await;
        }
    }

    /// Resumes: the stretches end when it is asked (an answer that was an error may have
    /// resumed too).
    async fn resume(
        &mut self,
        client: &Client,
        task: &'static str,
        levels: &[usize],
        priorities: &[v1::Priority],
    ) -> bool {
        let asked = SystemTime::now();
        for level in levels {
            if let Some(open) = self.open(task, *level) {
                self.stretches[open].to = Some(asked);
            }
        }
        client.resume_queue(task, priorities).await.is_ok()
    }

    /// Purges a queue of Limited or Paced, at every priority or one.
    pub(crate) async fn purge(&mut self, client: &Client, rng: &mut Rng) {
        let Some(&task) = rng.pick(&PURGEABLE) else {
            return;
        };
        let (levels, priorities) = pick_levels(rng, 50);
        // One that answered an error may have cancelled some: they count from when it was
        // asked, which a later purge's answer covers too.
        let asked = SystemTime::now();
        let answered = client.purge_queue(task, &priorities).await;
        let at = if answered.is_ok() {
            SystemTime::now()
        } else {
            asked
        };
        for level in levels {
            self.purges.push((task, level, at));
        }
    }

    /// Every queue runs again, at every priority (tried until it answers, for a while).
    pub(crate) async fn lift_all(&mut self, client: &Client) {
        for task in PAUSABLE {
            for _ in 0..30 {
                if self.resume(client, task, &[0, 1, 2], &[]).await {
                    break;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }

    /// Whether the queue of `task` at `level` was paused at `at`, past the tolerance.
    fn held(&self, task: &str, level: usize, at: SystemTime) -> Option<&Stretch> {
        self.stretches.iter().find(|s| {
            s.task == task
                && s.level == level
                && at > s.from + PAUSE_TOLERANCE
                && s.to.is_none_or(|to| at + CLOCK_TOLERANCE < to)
        })
    }

    /// No run of a task started while its queue was held paused. A task whose priority the
    /// model does not know (a workflow step, a child) counts only while all three were.
    pub(crate) fn check(
        &self,
        tasks: &[Task],
        runs: &HashMap<String, Vec<Run>>,
        violations: &mut Vec<Violation>,
    ) {
        for task in tasks {
            for run in runs.get(&task.id).map(Vec::as_slice).unwrap_or_default() {
                let held = match task.priority {
                    Some(priority) => {
                        let level = taskwire_protocol::PRIORITIES
                            .iter()
                            .position(|p| *p == priority)
                            .unwrap_or(1);
                        self.held(task.name, level, run.start)
                    }
                    None => (0..3)
                        .map(|level| self.held(task.name, level, run.start))
                        .collect::<Option<Vec<_>>>()
                        .and_then(|all| all.into_iter().next()),
                };
                if let Some(stretch) = held {
                    violations.push(Violation {
                        guarantee: 13,
                        task: task.id.clone(),
                        what: format!(
                            "attempt {} started {:?} after its queue ({}) was paused{}",
                            run.attempt,
                            run.start.duration_since(stretch.from).unwrap_or_default(),
                            taskwire_protocol::priority_name(priority_at(stretch.level)),
                            match stretch.to {
                                Some(to) => format!(
                                    ", {:?} before it was resumed",
                                    to.duration_since(run.start).unwrap_or_default()
                                ),
                                None => String::new(),
                            }
                        ),
                    });
                }
            }
        }
    }

    /// A task cancelled with no Cancel of its own was purged: its queue was purged after it was
    /// submitted, and no run of it started after the last purge answered.
    pub(crate) fn check_purges(
        &self,
        tasks: &[Task],
        finals: &HashMap<String, TaskState>,
        runs: &HashMap<String, Vec<Run>>,
        violations: &mut Vec<Violation>,
    ) {
        for task in tasks {
            if task.cancelled_at.is_some()
                || finals.get(&task.id) != Some(&TaskState::Cancelled)
                || !PURGEABLE.contains(&task.name)
            {
                continue;
            }
            let Some(priority) = task.priority else {
                continue;
            };
            let level = taskwire_protocol::PRIORITIES
                .iter()
                .position(|p| *p == priority)
                .unwrap_or(1);
            let last = self
                .purges
                .iter()
                .filter(|(name, l, at)| {
                    *name == task.name
                        && *l == level
                        && *at + CLOCK_TOLERANCE > task.submitted_at - CANCEL_TOLERANCE
                })
                .map(|(_, _, at)| *at)
                .max();
            let Some(last) = last else {
                violations.push(Violation {
                    guarantee: 4,
                    task: task.id.clone(),
                    what: format!(
                        "{} ended cancelled with no Cancel nor purge of its queue",
                        task.name
                    ),
                });
                continue;
            };
            let ran = runs.get(&task.id).map(Vec::as_slice).unwrap_or_default();
            if let Some(run) = ran.iter().find(|r| r.start > last + CANCEL_TOLERANCE) {
                violations.push(Violation {
                    guarantee: 4,
                    task: task.id.clone(),
                    what: format!(
                        "{} purged, yet attempt {} started {:?} after the purge answered",
                        task.name,
                        run.attempt,
                        run.start.duration_since(last).unwrap_or_default()
                    ),
                });
            }
        }
    }

    /// How many stretches of pause the run had.
    pub(crate) fn count(&self) -> usize {
        self.stretches.len()
    }
}
