//! The model test: random sequences of operations against a real system (nats-server, a
//! gateway, worker processes), with an oracle of what may become of every task.
//!
//! Operations: submits of the chaos tasks with and without an idempotency key, a delay, a
//! priority, an expiry and an attempt limit; Get, Wait, Cancel, replays of dead letters;
//! schedules created, paused, resumed and deleted; workflows (chains and groups of chaos
//! tasks, some failing for good; with the Rust worker chords and maps too) submitted and
//! cancelled; parents submitting children (retried after submitting them, waiting for them,
//! delayed, keyed, at each priority) cancelled like any task; limits overridden and cleared (the
//! concurrency of Limited, the rate of Paced); queues paused and resumed (a whole task type
//! or one priority) and purged; workers killed (SIGKILL) or stopped (SIGTERM)
//! and started again; nats-server restarted, or stopped (SIGSTOP) for a few seconds. The workers log the start and end of
//! every run (`TASKWIRE_RUN_LOG`). At the end every task must have ended as the guarantees of
//! the README say, checked against the broker (Get, dead letters) and the run log.
//!
//! One JSON line reports `seed`, `operations`, `tasks`, `runs`, `violations` and the first
//! violations in full; the same seed gives the same sequence of operations.

mod check;
mod families;
mod operations;
mod pauses;
mod workflows;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use futures::StreamExt as _;
use taskwire::v1::{self, TaskState};
use taskwire_client::{Client, SubmitOptions};
use taskwire_examples::chaos::v1::{FlakyArgs, SleepArgs};
use tokio::process::Child;

use crate::runtime::{Run, Runtime, read_runs};
use crate::{Gateway, NatsServer};
use check::{check, check_limit, check_rate, dead_letter_counts};
use families::{Family, check_families, child_tasks, children_of, list_waiting, submit_family};
use operations::{burst, schedule, settle, submit};
use workflows::{
    Flow, cancel_workflow, check_workflows, settle_workflows, step_tasks, submit_workflow,
};

const SLEEP: &str = "examples.chaos.v1.Chaos/Sleep";

const FLAKY: &str = "examples.chaos.v1.Chaos/Flaky";

const LIMITED: &str = "examples.chaos.v1.Chaos/Limited";

const PACED: &str = "examples.chaos.v1.Chaos/Paced";

/// `rate_limit` of Paced in its proto: 20 a second, the highest rate the model sets too.
const PACED_PER_SECOND: usize = 20;

/// `max_concurrency` of Limited in its proto.
const LIMITED_CONCURRENCY: usize = 5;

/// The labels of Limited and Paced tasks: the values their limits count by, when per key.
const LABELS: [&str; 2] = ["key-a", "key-b"];

/// The highest per-key limits the model sets: with two labels, never above the task-wide ones.
const KEYED_CONCURRENCY: usize = 2;

/// How long the model leaves a limit per label in force at least.
const KEYED_FOR: Duration = Duration::from_secs(8);

/// How long after a Cancel returned a start still counts as one decided before it (a worker
/// that looked for an outcome just before the cancel was stored).
const CANCEL_TOLERANCE: Duration = Duration::from_secs(2);

/// Clock reads of two processes on one machine.
const CLOCK_TOLERANCE: Duration = Duration::from_millis(10);

/// What to run.
#[derive(Debug, Clone)]
pub struct Config {
    /// Seeds the sequence of operations.
    pub seed: u64,
    /// How many operations.
    pub operations: usize,
    /// Worker processes kept running (faults take them down and bring them back).
    pub workers: usize,
    /// The worker runtime.
    pub runtime: Runtime,
}

/// One broken promise.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Violation {
    /// The number of the guarantee in the README.
    pub guarantee: u8,
    /// The task it concerns (empty when none).
    pub task: String,
    /// What happened.
    pub what: String,
}

/// What a model run found.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
    /// The seed (repeat a run with it).
    pub seed: u64,
    /// The worker runtime.
    pub runtime: Runtime,
    /// Operations done.
    pub operations: usize,
    /// Operations by kind.
    pub done: BTreeMap<&'static str, usize>,
    /// Tasks submitted (answered an id, not a duplicate), workflow steps included.
    pub tasks: usize,
    /// Workflows submitted.
    pub workflows: usize,
    /// Stretches of a queue paused (one per priority).
    pub queue_pauses: usize,
    /// Runs the workers logged.
    pub runs: usize,
    /// Broken promises.
    pub violations: usize,
    /// The first of them, in full.
    pub first_violations: Vec<Violation>,
    /// How long it took.
    pub seconds: f64,
}

/// A small, seedable generator (SplitMix64): the same seed gives the same operations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n`.
    fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next() % n }
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> Option<&'a T> {
        if items.is_empty() {
            None
        } else {
            items.get(self.below(items.len() as u64) as usize)
        }
    }
}

/// What the model knows of one submitted task.
#[derive(Debug, Clone)]
struct Task {
    id: String,
    name: &'static str,
    max_attempts: u32,
    not_before: Option<SystemTime>,
    expires_at: Option<SystemTime>,
    /// When a Cancel of it returned success.
    cancelled_at: Option<SystemTime>,
    /// When replays of it returned.
    replays: Vec<SystemTime>,
    /// The final state a Wait answered.
    waited: Option<TaskState>,
    /// When its Submit was answered.
    submitted_at: SystemTime,
    /// A parent that waits for its children: the run after its wait is the same attempt.
    parks: bool,
    /// Its priority, when the model submitted it (a workflow step's or a child's is not
    /// followed).
    priority: Option<v1::Priority>,
    /// The label of a Limited or Paced task: the value its limits count by when they are
    /// set per key.
    label: &'static str,
}

/// The system under test.
struct System {
    nats: NatsServer,
    _gateway: Gateway,
    client: Client,
    workers: Vec<Child>,
    runtime: Runtime,
    run_log: PathBuf,
    /// When workers were killed: a run without an end ended then at the latest.
    kills: Vec<SystemTime>,
    _temp: tempfile::TempDir,
}

impl System {
    async fn start(config: &Config) -> anyhow::Result<Self> {
        let temp = tempfile::tempdir()?;
        let run_log = temp.path().join("runs.log");
        let nats = NatsServer::start_temporary().await?;
        let gateway = Gateway::start(&nats.url()).await?;
        let client = Client::connect(gateway.url()).await?;
        let mut system = Self {
            nats,
            _gateway: gateway,
            client,
            workers: Vec::new(),
            runtime: config.runtime,
            run_log,
            kills: Vec::new(),
            _temp: temp,
        };
        for _ in 0..config.workers.max(1) {
            system.start_worker()?;
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let known = system.client.task_types().await.unwrap_or_default();
            if [SLEEP, FLAKY, LIMITED, PACED]
                .iter()
                .all(|t| known.iter().any(|k| k.name == *t))
            {
                break;
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "the workers did not register within 60s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(system)
    }

    fn start_worker(&mut self) -> anyhow::Result<()> {
        let log = self.run_log.display().to_string();
        let env = [
            ("TASKWIRE_RUN_LOG", log.as_str()),
            ("TASKWIRE_ACK_WAIT", "2s"),
            ("TASKWIRE_GRACE", "2s"),
            ("TASKWIRE_CONCURRENCY", "16"),
            ("TASKWIRE_LOG", "error"),
        ];
        let child = crate::runtime::worker(self.runtime, &self.nats.url(), &env)?;
        self.workers.push(child);
        Ok(())
    }

    /// Starts a worker in the place of each that exited by itself (one started while NATS was
    /// restarting stops, saying why).
    fn keep_workers(&mut self) {
        let before = self.workers.len();
        self.workers
            .retain_mut(|child| matches!(child.try_wait(), Ok(None)));
        for _ in self.workers.len()..before {
            if let Err(e) = self.start_worker() {
                eprintln!("taskwire-model: cannot start a worker: {e}");
            }
        }
    }

    /// Takes a worker down with `signal` and starts another in its place.
    async fn replace_worker(&mut self, rng: &mut Rng, signal: nix::sys::signal::Signal) {
        if self.workers.is_empty() {
            let _ = self.start_worker();
            return;
        }
        let index = rng.below(self.workers.len() as u64) as usize;
        let mut child = self.workers.swap_remove(index);
        if let Some(pid) = child.id() {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), signal);
        }
        // A stopped worker drains within its grace; a killed one is gone at once.
        let _ = tokio::time::timeout(Duration::from_secs(10), child.wait()).await;
        let _ = child.kill().await;
        self.kills.push(SystemTime::now());
        if let Err(e) = self.start_worker() {
            eprintln!("taskwire-model: cannot start a worker: {e}");
        }
    }
}

/// Runs the model and reports what it found.
pub async fn run(config: Config) -> anyhow::Result<Report> {
    let started = Instant::now();
    let mut rng = Rng(config.seed);
    let mut system = System::start(&config).await?;
    let mut tasks: Vec<Task> = Vec::new();
    let mut keys: HashMap<(&'static str, String), String> = HashMap::new();
    let mut schedules: Vec<(String, bool)> = Vec::new();
    let mut violations = Vec::new();
    let mut done: BTreeMap<&'static str, usize> = BTreeMap::new();
    let mut flows: Vec<Flow> = Vec::new();
    let mut families: Vec<Family> = Vec::new();
    let mut pauses = pauses::Pauses::default();
    let mut keyed: Vec<check::Keyed> = Vec::new();
    // Replays of tasks the model did not submit itself (workflow steps).
    let mut other_replays: HashMap<String, Vec<SystemTime>> = HashMap::new();

    for n in 0..config.operations {
        let roll = rng.below(1000);
        let kind = match roll {
            0..=529 => "submit",
            530..=549 => "burst",
            550..=649 => "get",
            650..=729 => "cancel",
            730..=779 => "wait",
            780..=829 => "replay",
            830..=869 => "schedule",
            870..=899 => "limits",
            900..=924 => "workflow",
            925..=939 => "family",
            940..=949 => "workflow_cancel",
            950..=964 => "queue_pause",
            965..=969 => "queue_purge",
            970..=974 => "cancel_many",
            975..=979 => "list_waiting",
            980..=989 => "get",
            990..=994 => "worker_kill",
            995..=997 => "worker_term",
            998 => "nats_pause",
            _ => "nats_restart",
        };
        *done.entry(kind).or_default() += 1;
        if n % 50 == 0 {
            system.keep_workers();
        }
        match kind {
            "submit" => {
                submit(
                    &system.client,
                    &mut rng,
                    &mut tasks,
                    &mut keys,
                    &mut violations,
                    None,
                )
                .await
            }
            "burst" => {
                burst(
                    &system.client,
                    &mut rng,
                    &mut tasks,
                    &mut keys,
                    &mut violations,
                )
                .await
            }
            "get" => {
                if let Some(task) = rng.pick(&tasks) {
                    match system.client.get(&task.id, false).await {
                        Err(e) if e.code() == Some(tonic::Code::NotFound) => {
                            violations.push(Violation {
                                guarantee: 1,
                                task: task.id.clone(),
                                what: format!("Get does not know it: {e}"),
                            });
                        }
                        _ => {}
                    }
                }
            }
            "wait" => {
                if let Some(index) = pick_index(&mut rng, tasks.len()) {
                    let id = tasks[index].id.clone();
                    if let Ok(info) = system
                        .client
                        .wait(&id, Duration::from_millis(300), false)
                        .await
                        && is_final(info.state())
                    {
                        tasks[index].waited = Some(info.state());
                    }
                }
            }
            "cancel" => {
                if let Some(index) = pick_index(&mut rng, tasks.len()) {
                    let id = tasks[index].id.clone();
                    match system.client.cancel(&id).await {
                        Ok(info) if info.state() == TaskState::Cancelled => {
                            tasks[index].cancelled_at.get_or_insert(SystemTime::now());
                        }
                        Err(e) if e.code() == Some(tonic::Code::NotFound) => {
                            violations.push(Violation {
                                guarantee: 1,
                                task: id,
                                what: format!("Cancel does not know it: {e}"),
                            });
                        }
                        _ => {}
                    }
                }
            }
            "replay" => {
                // The new series may start before the answer arrives: it counts from the ask.
                let asked = SystemTime::now();
                if let Ok(dead) = system.client.dead_letters("", 100).await
                    && let Some(letter) = rng.pick(&dead)
                {
                    let replayed = system
                        .client
                        .replay_dead_letters(vec![letter.task_id.clone()], "", false)
                        .await;
                    // A replay that answered an error (a time-out, say) may still have put the
                    // task back in line: a new series may start from then on.
                    let maybe = match &replayed {
                        Ok(ids) => ids.contains(&letter.task_id),
                        Err(e) => e.code() != Some(tonic::Code::NotFound),
                    };
                    if maybe {
                        match tasks.iter_mut().find(|t| t.id == letter.task_id) {
                            Some(task) => task.replays.push(asked),
                            None => other_replays
                                .entry(letter.task_id.clone())
                                .or_default()
                                .push(asked),
                        }
                    }
                }
            }
            "schedule" => schedule(&system.client, &mut rng, &mut schedules, n).await,
            "workflow" => {
                submit_workflow(&system.client, &mut rng, &mut flows, config.runtime).await
            }
            "family" => {
                submit_family(
                    &system.client,
                    &mut rng,
                    &mut tasks,
                    &mut families,
                    &mut keys,
                    &mut violations,
                    n,
                )
                .await
            }
            "workflow_cancel" => cancel_workflow(&system.client, &mut rng, &mut flows).await,
            "queue_pause" => pauses.step(&system.client, &mut rng).await,
            "queue_purge" => pauses.purge(&system.client, &mut rng).await,
            "cancel_many" => {
                cancel_many(&system.client, &mut rng, &mut tasks, &mut violations).await
            }
            "list_waiting" => list_waiting(&system.client, &families, &mut violations).await,
            "limits" => {
                // Overrides never above the declared limits, which the checks hold to.
                let (task, limits) = if rng.chance(50) {
                    // Per label (at most two each, four in all), or for the task type.
                    let keyed = rng.chance(30);
                    let most = if keyed {
                        1 + rng.below(KEYED_CONCURRENCY as u64) as u32
                    } else {
                        1 + rng.below(LIMITED_CONCURRENCY as u64) as u32
                    };
                    (
                        LIMITED,
                        (!rng.chance(25)).then(|| v1::TaskLimits {
                            max_concurrency: most,
                            rate_limit: String::new(),
                            concurrency_key_field: if keyed {
                                "label".into()
                            } else {
                                String::new()
                            },
                            ..Default::default()
                        }),
                    )
                } else if rng.chance(30) {
                    // Per label: ten a second at most each, twenty in all.
                    let rate = ["5/s", "10/s"][rng.below(2) as usize];
                    (
                        PACED,
                        Some(v1::TaskLimits {
                            rate_limit: rate.into(),
                            rate_limit_key_field: "label".into(),
                            ..Default::default()
                        }),
                    )
                } else {
                    // Per-second rates only: the check below counts starts per second, and a
                    // per-minute rate may start its whole minute's worth at once.
                    let rate = ["5/s", "10/s", "20/s"][rng.below(3) as usize];
                    (
                        PACED,
                        (!rng.chance(25)).then(|| v1::TaskLimits {
                            max_concurrency: 0,
                            rate_limit: rate.into(),
                            ..Default::default()
                        }),
                    )
                };
                // A limit per label stays a while, so that its check has runs to look at.
                let young = keyed.iter().any(|k| {
                    k.task == task
                        && k.to.is_none()
                        && k.from.elapsed().unwrap_or_default() < KEYED_FOR
                });
                if young {
                    continue;
                }
                let asked = SystemTime::now();
                for open in keyed
                    .iter_mut()
                    .filter(|k| k.task == task && k.to.is_none())
                {
                    open.to = Some(asked);
                }
                let per_key = limits.as_ref().and_then(|l| {
                    if !l.concurrency_key_field.is_empty() {
                        Some(l.max_concurrency as usize)
                    } else if !l.rate_limit_key_field.is_empty() {
                        taskwire::task::Rate::parse(&l.rate_limit)
                            .ok()
                            .map(|r| r.count as usize)
                    } else {
                        None
                    }
                });
                if system.client.set_task_limits(task, limits).await.is_ok()
                    && let Some(limit) = per_key
                {
                    keyed.push(check::Keyed {
                        task,
                        limit,
                        from: SystemTime::now(),
                        to: None,
                    });
                }
            }
            "nats_pause" => {
                // An outage the connections live through: nats-server stopped, then going on.
                if let Some(pid) = system.nats.pid() {
                    let pid = nix::unistd::Pid::from_raw(pid as i32);
                    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP);
                    tokio::time::sleep(Duration::from_millis(1000 + rng.below(4000))).await;
                    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT);
                }
            }
            "worker_kill" => {
                system
                    .replace_worker(&mut rng, nix::sys::signal::Signal::SIGKILL)
                    .await
            }
            "worker_term" => {
                system
                    .replace_worker(&mut rng, nix::sys::signal::Signal::SIGTERM)
                    .await
            }
            _ => {
                if rng.chance(50) {
                    system.nats.kill().await;
                }
                system.nats.restart().await?;
                system.kills.push(SystemTime::now());
            }
        }
    }

    // Quiesce: schedules go, every worker runs, and every task gets the time to end.
    for (name, _) in &schedules {
        let _ = system.client.delete_schedule(name).await;
    }
    for task in [LIMITED, PACED] {
        let asked = SystemTime::now();
        for open in keyed
            .iter_mut()
            .filter(|k| k.task == task && k.to.is_none())
        {
            open.to = Some(asked);
        }
        let _ = system.client.set_task_limits(task, None).await;
    }
    pauses.lift_all(&system.client).await;
    system.keep_workers();
    let ended = settle_workflows(&system.client, &flows, Duration::from_secs(120)).await;
    let steps = step_tasks(&flows, &ended, &other_replays);
    tasks.extend(steps);
    let finals = settle(&system.client, &tasks, Duration::from_secs(120)).await;
    // Children are known once their parents have ended; then they end too.
    let children = children_of(&system.client, &families).await;
    let kin = child_tasks(
        &families,
        &tasks,
        &children,
        &HashMap::new(),
        &other_replays,
    );
    let kin_finals = settle(&system.client, &kin, Duration::from_secs(120)).await;
    let kin = child_tasks(&families, &tasks, &children, &kin_finals, &other_replays);
    tasks.extend(kin);
    let mut finals = finals;
    finals.extend(kin_finals);
    let dead = dead_letter_counts(&system.client).await?;
    let runs = read_runs(&system.run_log)?;
    let run_count = runs.values().map(Vec::len).sum();
    for task in &tasks {
        check(
            task,
            finals.get(&task.id),
            runs.get(&task.id).map(Vec::as_slice).unwrap_or_default(),
            dead.get(&task.id).copied().unwrap_or(0),
            &system.kills,
            &mut violations,
        );
    }
    check_workflows(&flows, &ended, &runs, &other_replays, &mut violations);
    check_families(
        &system.client,
        &families,
        &tasks,
        &children,
        &runs,
        &other_replays,
        &mut violations,
    )
    .await;
    check_limit(&tasks, &runs, &system.kills, &keyed, &mut violations);
    check_rate(&tasks, &runs, &keyed, &mut violations);
    check::check_keyed(&tasks, &runs, &system.kills, &keyed, &mut violations);
    pauses.check(&tasks, &runs, &mut violations);
    pauses.check_purges(&tasks, &finals, &runs, &mut violations);
    check::check_lists(&system.client, &tasks, &finals, &mut violations).await;

    for mut worker in system.workers.drain(..) {
        let _ = worker.kill().await;
    }
    Ok(Report {
        seed: config.seed,
        runtime: config.runtime,
        operations: config.operations,
        done,
        tasks: tasks.len(),
        workflows: flows.len(),
        queue_pauses: pauses.count(),
        runs: run_count,
        violations: violations.len(),
        first_violations: violations.into_iter().take(10).collect(),
        seconds: (started.elapsed().as_secs_f64() * 10.0).round() / 10.0,
    })
}

/// Cancels what a filter takes (held Sleep tasks, the waiting ones of a pattern, a task type
/// at one priority's worth of states): each task the list then finds cancelled since the ask
/// counts as cancelled when the call answered, which guarantee 4 holds it to. Every task the
/// call says it cancelled must be listed so (guarantee 14).
async fn cancel_many(
    client: &Client,
    rng: &mut Rng,
    tasks: &mut [Task],
    violations: &mut Vec<Violation>,
) {
    let states = |s: &[TaskState]| s.iter().map(|s| *s as i32).collect::<Vec<_>>();
    let filter = match rng.below(3) {
        0 => v1::TaskFilter {
            task: SLEEP.into(),
            states: states(&[TaskState::Scheduled]),
            ..Default::default()
        },
        1 => v1::TaskFilter {
            task: "examples.chaos.v1.Chaos/*ed".into(),
            states: states(&[TaskState::Queued, TaskState::Retrying]),
            ..Default::default()
        },
        _ => v1::TaskFilter {
            task: FLAKY.into(),
            ..Default::default()
        },
    };
    let asked = SystemTime::now();
    let Ok(cancelled) = client.cancel_many(filter.clone()).await else {
        return;
    };
    let answered = SystemTime::now();
    let listed = client
        .find_tasks(
            v1::TaskFilter {
                states: states(&[TaskState::Cancelled]),
                finished_after: Some((asked - Duration::from_secs(1)).into()),
                ..filter
            },
            100_000,
        )
        .await;
    let Ok(listed) = listed else { return };
    if (listed.len() as u64) < cancelled {
        violations.push(Violation {
            guarantee: 14,
            task: String::new(),
            what: format!(
                "CancelMany answered {cancelled} cancelled, a list finds {} cancelled since",
                listed.len()
            ),
        });
    }
    for info in listed {
        if let Some(task) = tasks.iter_mut().find(|t| t.id == info.task_id) {
            task.cancelled_at.get_or_insert(answered);
        }
    }
}

fn pick_index(rng: &mut Rng, len: usize) -> Option<usize> {
    (len > 0).then(|| rng.below(len as u64) as usize)
}

fn is_final(state: TaskState) -> bool {
    matches!(
        state,
        TaskState::Succeeded | TaskState::Failed | TaskState::Cancelled | TaskState::Expired
    )
}
