//! The example worker: serves `examples.magic.v1.Magic`, whose `Add` task sums three numbers
//! (with `--flow`, also the tasks of the workflow examples).
//! Copy it to start a worker of your own: implement the generated trait, serve it, done.

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use taskwire::config::EXIT_USAGE;
use taskwire::{TaskContext, TaskError};
use taskwire_examples::magic::v1::{AddArgs, AddResult, Magic, MagicServer};
use taskwire_worker::Builder;

/// The task implementation.
struct MyMagic;

impl Magic for MyMagic {
    async fn add(&self, _ctx: TaskContext, args: AddArgs) -> Result<AddResult, TaskError> {
        let sum = args
            .arg1
            .checked_add(args.arg2)
            .and_then(|s| s.checked_add(args.arg3))
            .ok_or_else(|| TaskError::permanent("the sum does not fit in 64 bits"))?;
        Ok(AddResult { sum })
    }
}

/// The environment's settings (`TASKWIRE_*`, read by `Builder::from_env`), which these flags
/// override.
#[derive(Debug, Parser)]
#[command(
    name = "taskwire-magic-worker",
    version,
    about = "Example taskwire worker serving examples.magic.v1.Magic; configured by TASKWIRE_* variables, which these flags override"
)]
struct Args {
    /// NATS server URL(s), comma separated (TASKWIRE_NATS_URL).
    #[arg(long)]
    nats_url: Option<String>,
    /// Tasks run at once (TASKWIRE_CONCURRENCY).
    #[arg(long)]
    concurrency: Option<usize>,
    /// Ack wait of the task consumer, when this worker creates it (TASKWIRE_ACK_WAIT).
    #[arg(long, value_parser = humantime::parse_duration)]
    ack_wait: Option<Duration>,
    /// How long running tasks may finish after SIGTERM (TASKWIRE_GRACE).
    #[arg(long, value_parser = humantime::parse_duration)]
    grace: Option<Duration>,
    /// Serve Prometheus metrics on http://ADDR/metrics (TASKWIRE_METRICS_ADDR).
    #[arg(long)]
    metrics_addr: Option<std::net::SocketAddr>,
    /// Also serve this many generated task types (`examples.many.v1.ManyNNNN/TaskN`, each
    /// answering its argument back): what many task types cost, as `taskwire bench
    /// --task-types` measures it.
    #[arg(long, default_value_t = 0)]
    many_task_types: usize,
    /// Also serve `examples.flow.v1.Flow`, the tasks of the workflow examples.
    #[arg(long)]
    flow: bool,
}

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let _telemetry = taskwire::telemetry::init("info", "taskwire-worker");
    let args = Args::parse();
    // Every problem in the environment's settings at once.
    let mut worker = match Builder::from_env() {
        Ok(builder) => builder,
        Err(problems) => {
            eprintln!("taskwire-magic-worker: {problems}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    if let Some(url) = args.nats_url {
        worker = worker.nats(url);
    }
    if let Some(n) = args.concurrency {
        worker = worker.concurrency(n);
    }
    if let Some(ack_wait) = args.ack_wait {
        worker = worker.ack_wait(ack_wait);
    }
    if let Some(grace) = args.grace {
        worker = worker.grace(grace);
    }
    if args.metrics_addr.is_some() {
        worker = worker.metrics_addr(args.metrics_addr);
    }
    let mut worker = worker
        .second_signal_forces(true)
        .serve(MagicServer::new(MyMagic));
    for service in taskwire_examples::many::services(args.many_task_types) {
        worker = worker.serve(service);
    }
    if args.flow {
        worker = worker.serve(taskwire_examples::flow::v1::FlowServer::new(
            taskwire_examples::flow_tasks::FlowTasks,
        ));
    }
    match worker.run(taskwire::shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("taskwire-magic-worker: {e}");
            ExitCode::FAILURE
        }
    }
}
