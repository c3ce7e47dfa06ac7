//! Implementations of the example contracts for workers under test.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use taskwire_examples::chaos::v1::{
    Chaos, ChaosServer, ChargeArgs, ChargeResult, FlakyArgs, FlakyResult, PanicArgs, PanicResult,
    SleepArgs, SleepResult, SpawnArgs, SpawnResult, StepsArgs, StepsDone, StepsResult,
};

/// Where this process logs every run of a chaos task (see [`log_runs_to`]).
static RUN_LOG: std::sync::OnceLock<Mutex<std::fs::File>> = std::sync::OnceLock::new();

/// Appends a line for the start and the end of every run of a chaos task to `path`:
/// `start <task id> <attempt> <unix micros> <pid>` and `end …` alike, one write a line (several
/// worker processes may share the file). The model test and the drills read it.
pub fn log_runs_to(path: &std::path::Path) -> std::io::Result<()> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    let _ = RUN_LOG.set(Mutex::new(file));
    Ok(())
}

/// One run of a chaos task, logged at its start and (on drop, however it ends) its end.
struct Run {
    id: String,
    attempt: u32,
}

impl Run {
    fn start(ctx: &TaskContext) -> Self {
        let run = Self {
            id: ctx.id().to_string(),
            attempt: ctx.attempt(),
        };
        run.log("start");
        run
    }

    fn log(&self, event: &str) {
        let Some(log) = RUN_LOG.get() else { return };
        let micros = SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_micros())
            .unwrap_or_default();
        use std::io::Write as _;
        let line = format!(
            "{event} {} {} {micros} {}\n",
            self.id,
            self.attempt,
            std::process::id()
        );
        let mut file = log.lock().unwrap_or_else(|e| e.into_inner());
        // A lost line shows as a run the model cannot account for: it says so.
        let _ = file.write_all(line.as_bytes());
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        self.log("end");
    }
}

/// What the chaos tasks of this process did, by label, for tests that run a worker in process.
static JOURNAL: Mutex<Vec<(String, &'static str, SystemTime)>> = Mutex::new(Vec::new());

fn note(label: &str, what: &'static str) {
    if !label.is_empty() {
        JOURNAL.lock().unwrap_or_else(|e| e.into_inner()).push((
            label.to_owned(),
            what,
            SystemTime::now(),
        ));
    }
}

/// How many times tasks labelled `label` did `what`.
pub fn journal_count(label: &str, what: &str) -> usize {
    JOURNAL
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .filter(|(l, w, _)| l == label && *w == what)
        .count()
}

/// The most tasks whose label starts with `prefix` that were running at the same moment.
pub fn max_overlap(prefix: &str) -> usize {
    let mut changes: Vec<(SystemTime, i64)> = JOURNAL
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .filter(|(l, _, _)| l.starts_with(prefix))
        .map(|(_, w, t)| (*t, if *w == "started" { 1 } else { -1 }))
        .collect();
    // An end and a start at the same instant: the end first.
    changes.sort();
    let (mut running, mut most) = (0i64, 0i64);
    for (_, change) in changes {
        running += change;
        most = most.max(running);
    }
    most as usize
}

/// When tasks whose label starts with `prefix` started.
pub fn start_times(prefix: &str) -> Vec<SystemTime> {
    JOURNAL
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .filter(|(l, w, _)| l.starts_with(prefix) && *w == "started")
        .map(|(_, _, t)| *t)
        .collect()
}

/// When the task labelled `label` first did `what`.
pub fn journal_time(label: &str, what: &str) -> Option<SystemTime> {
    JOURNAL
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .find(|(l, w, _)| l == label && *w == what)
        .map(|(_, _, t)| *t)
}

/// The labels of the Sleep and Steps tasks of this process that did `what` (`started`,
/// `finished`, `cancelled`: saw its cancellation token fire), in order.
pub fn journal(what: &str) -> Vec<String> {
    JOURNAL
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .filter(|(_, w, _)| *w == what)
        .map(|(label, _, _)| label.clone())
        .collect()
}
use taskwire::{TaskContext, TaskError};
use taskwire_examples::magic::v1::{AddArgs, AddResult, Magic, MagicServer};

/// `Magic.Add`: the sum of three numbers.
#[derive(Debug, Default)]
pub struct MagicTasks;

impl Magic for MagicTasks {
    async fn add(&self, _ctx: TaskContext, args: AddArgs) -> Result<AddResult, TaskError> {
        Ok(AddResult {
            sum: args.arg1 + args.arg2 + args.arg3,
        })
    }
}

/// A Sleep task whose label starts with this answers a result of over [`OVERSIZED_BYTES`].
pub const OVERSIZED_RESULT: &str = "oversized-result";
const OVERSIZED_BYTES: usize = 2 * 1024 * 1024;

/// `Chaos`: slow, panicking and failing on purpose.
#[derive(Debug, Default)]
pub struct ChaosTasks {
    runs: Mutex<HashMap<String, u32>>,
}

impl Chaos for ChaosTasks {
    async fn sleep(&self, ctx: TaskContext, args: SleepArgs) -> Result<SleepResult, TaskError> {
        let _run = Run::start(&ctx);
        note(&args.label, "started");
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(args.millis)) => {
                note(&args.label, "finished");
                // A result larger than any NATS server takes, for the tests of results the
                // broker refuses.
                let label = if args.label.starts_with(OVERSIZED_RESULT) {
                    args.label.repeat(OVERSIZED_BYTES / args.label.len() + 1)
                } else {
                    args.label
                };
                Ok(SleepResult {
                    label,
                    attempt: ctx.attempt(),
                })
            }
            () = ctx.cancelled() => {
                note(&args.label, "cancelled");
                Err(TaskError::retryable("stopped while sleeping"))
            }
        }
    }

    async fn limited(&self, ctx: TaskContext, args: SleepArgs) -> Result<SleepResult, TaskError> {
        self.sleep(ctx, args).await
    }

    async fn paced(&self, ctx: TaskContext, args: SleepArgs) -> Result<SleepResult, TaskError> {
        self.sleep(ctx, args).await
    }

    async fn steps(&self, ctx: TaskContext, args: StepsArgs) -> Result<StepsResult, TaskError> {
        let _run = Run::start(&ctx);
        note(&args.label, "started");
        for done in 1..=args.steps {
            tokio::select! {
                () = tokio::time::sleep(Duration::from_millis(args.step_millis)) => {}
                () = ctx.cancelled() => {
                    note(&args.label, "cancelled");
                    return Err(TaskError::retryable("stopped between steps"));
                }
            }
            ctx.progress_details(
                done as f32 * 100.0 / args.steps as f32,
                format!("step {done} of {}", args.steps),
                &StepsDone {
                    done,
                    left: args.steps - done,
                },
            );
        }
        note(&args.label, "finished");
        Ok(StepsResult {
            label: args.label,
            steps: args.steps,
        })
    }

    async fn panic(&self, ctx: TaskContext, args: PanicArgs) -> Result<PanicResult, TaskError> {
        let _run = Run::start(&ctx);
        panic!("{}", args.message);
    }

    async fn spawn(&self, ctx: TaskContext, args: SpawnArgs) -> Result<SpawnResult, TaskError> {
        let _run = Run::start(&ctx);
        let mut children = Vec::new();
        for i in 0..args.count {
            let child = SleepArgs {
                millis: args.child_millis,
                label: format!("{}-{i}", args.label),
            };
            let id = ctx
                .submit_child("examples.chaos.v1.Chaos/Sleep", &child)
                .await
                .map_err(|e| TaskError::retryable(format!("child {i}: {}", e.message())))?;
            children.push(id.to_string());
            tokio::time::sleep(Duration::from_millis(args.gap_millis)).await;
        }
        if args.fail_first && ctx.attempt() == 1 {
            return Err(TaskError::retryable("spawn: the first attempt fails"));
        }
        let mut labels = Vec::new();
        if args.wait {
            for child in ctx.wait_for_children().await? {
                let result = <SleepResult as prost::Message>::decode(child.result.as_slice())
                    .map_err(|e| TaskError::permanent(format!("a child's result: {e}")))?;
                labels.push(result.label);
            }
        }
        Ok(SpawnResult {
            children,
            attempt: ctx.attempt(),
            labels,
        })
    }

    async fn charge(&self, ctx: TaskContext, args: ChargeArgs) -> Result<ChargeResult, TaskError> {
        let _run = Run::start(&ctx);
        Ok(ChargeResult {
            order_id: args.order_id,
        })
    }

    async fn flaky(&self, ctx: TaskContext, args: FlakyArgs) -> Result<FlakyResult, TaskError> {
        let _run = Run::start(&ctx);
        if args.permanent {
            return Err(TaskError::permanent("flaky: failed for good"));
        }
        let run = if args.key.is_empty() {
            ctx.attempt()
        } else {
            let mut runs = self.runs.lock().unwrap_or_else(|e| e.into_inner());
            let n = runs.entry(args.key.clone()).or_default();
            *n += 1;
            *n
        };
        if args.succeed_on_attempt != 0 && run >= args.succeed_on_attempt {
            return Ok(FlakyResult {
                attempt: ctx.attempt(),
            });
        }
        let err = TaskError::retryable(format!("flaky: attempt {} failed", ctx.attempt()));
        Err(match args.retry_after_ms {
            0 => err,
            ms => err.retry_after(Duration::from_millis(u64::from(ms))),
        })
    }
}

/// The magic service, ready to serve.
pub fn magic() -> MagicServer<MagicTasks> {
    MagicServer::new(MagicTasks)
}

/// The chaos service, ready to serve.
pub fn chaos() -> ChaosServer<ChaosTasks> {
    ChaosServer::new(ChaosTasks::default())
}

use taskwire_examples::flow::v1::{
    Flow, FlowServer, Numbers, Parts, Reported, ScaleArgs, SlowArgs, SplitArgs, Total, Totals,
};

/// `Flow`: the example implementation, each run noted in the journal under its task id
/// (`journal_count(task_id, "sum")`), every on_failure report in [`flow_reports`].
#[derive(Debug, Default)]
pub struct FlowTasks(taskwire_examples::flow_tasks::FlowTasks);

static FLOW_REPORTS: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// What the on_failure steps of this process said: `<workflow> <step> <error>`, in order.
pub fn flow_reports() -> Vec<String> {
    FLOW_REPORTS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone()
}

fn flow_note(ctx: &TaskContext, method: &'static str) {
    note(ctx.id().as_str(), method);
}

impl Flow for FlowTasks {
    async fn sum(&self, ctx: TaskContext, args: Numbers) -> Result<Total, TaskError> {
        flow_note(&ctx, "sum");
        self.0.sum(ctx, args).await
    }

    async fn scale(&self, ctx: TaskContext, args: ScaleArgs) -> Result<Total, TaskError> {
        flow_note(&ctx, "scale");
        self.0.scale(ctx, args).await
    }

    async fn double(&self, ctx: TaskContext, args: Total) -> Result<Total, TaskError> {
        flow_note(&ctx, "double");
        self.0.double(ctx, args).await
    }

    async fn collect(&self, ctx: TaskContext, args: Totals) -> Result<Total, TaskError> {
        flow_note(&ctx, "collect");
        self.0.collect(ctx, args).await
    }

    async fn slow(&self, ctx: TaskContext, args: SlowArgs) -> Result<Total, TaskError> {
        flow_note(&ctx, "slow");
        let done = self.0.slow(ctx.clone(), args).await;
        if ctx.is_cancelled() {
            flow_note(&ctx, "slow-cancelled");
        }
        done
    }

    async fn split(&self, ctx: TaskContext, args: SplitArgs) -> Result<Parts, TaskError> {
        flow_note(&ctx, "split");
        self.0.split(ctx, args).await
    }

    async fn report(
        &self,
        ctx: TaskContext,
        args: taskwire::v1::WorkflowFailure,
    ) -> Result<Reported, TaskError> {
        flow_note(&ctx, "report");
        let line = format!(
            "{} {} {}",
            args.workflow_id,
            args.step,
            args.error
                .as_ref()
                .map(|e| e.message.as_str())
                .unwrap_or_default()
        );
        FLOW_REPORTS
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(line);
        self.0.report(ctx, args).await
    }
}

/// The flow service, ready to serve.
pub fn flow() -> FlowServer<FlowTasks> {
    FlowServer::new(FlowTasks::default())
}
