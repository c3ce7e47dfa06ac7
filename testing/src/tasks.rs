//! Implementations of the example contracts for workers under test.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use taskwire::examples::chaos::v1::{
    Chaos, ChaosServer, ChargeArgs, ChargeResult, FlakyArgs, FlakyResult, PanicArgs, PanicResult,
    SleepArgs, SleepResult,
};
use taskwire::examples::magic::v1::{AddArgs, AddResult, Magic, MagicServer};
use taskwire::{TaskContext, TaskError};

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

/// `Chaos`: slow, panicking and failing on purpose.
#[derive(Debug, Default)]
pub struct ChaosTasks {
    runs: Mutex<HashMap<String, u32>>,
}

impl Chaos for ChaosTasks {
    async fn sleep(&self, ctx: TaskContext, args: SleepArgs) -> Result<SleepResult, TaskError> {
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(args.millis)) => Ok(SleepResult {
                label: args.label,
                attempt: ctx.attempt(),
            }),
            () = ctx.cancelled() => Err(TaskError::retryable("stopped while sleeping")),
        }
    }

    async fn panic(&self, _ctx: TaskContext, args: PanicArgs) -> Result<PanicResult, TaskError> {
        panic!("{}", args.message);
    }

    async fn charge(&self, _ctx: TaskContext, args: ChargeArgs) -> Result<ChargeResult, TaskError> {
        Ok(ChargeResult {
            order_id: args.order_id,
        })
    }

    async fn flaky(&self, ctx: TaskContext, args: FlakyArgs) -> Result<FlakyResult, TaskError> {
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
        Err(TaskError::retryable(format!(
            "flaky: attempt {} failed",
            ctx.attempt()
        )))
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
