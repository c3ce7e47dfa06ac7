//! Queues paused and resumed: while a task type's queue is paused at a priority, no task of it
//! at that priority starts, from shortly after the pause answered (the time workers take to
//! hear of it) until the resume is asked; at the end every pause is lifted, and every task
//! ends as the other checks say.

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

/// What the model paused, and when.
#[derive(Debug, Default)]
pub(crate) struct Pauses {
    stretches: Vec<Stretch>,
}

fn priority_at(level: usize) -> v1::Priority {
    taskwire_protocol::PRIORITIES[level]
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
        let levels: Vec<usize> = if rng.chance(60) {
            vec![0, 1, 2]
        } else {
            vec![rng.below(3) as usize]
        };
        let priorities: Vec<v1::Priority> = if levels.len() == 3 {
            Vec::new()
        } else {
            levels.iter().map(|l| priority_at(*l)).collect()
        };
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

    /// How many stretches of pause the run had.
    pub(crate) fn count(&self) -> usize {
        self.stretches.len()
    }
}
