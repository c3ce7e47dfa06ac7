//! The example worker: serves `examples.magic.v1.Magic`, whose `Add` task sums three numbers.
//! Copy it to start a worker of your own: implement the generated trait, serve it, done.

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use taskwire::examples::magic::v1::{AddArgs, AddResult, Magic, MagicServer};
use taskwire::{TaskContext, TaskError};
use taskwire_worker::{Worker, env};

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

#[derive(Debug, Parser)]
#[command(
    name = "taskwire-magic-worker",
    version,
    about = "Example taskwire worker serving examples.magic.v1.Magic"
)]
struct Args {
    /// NATS server URL(s), comma separated.
    #[arg(long, env = env::NATS_URL, default_value = "nats://127.0.0.1:4222")]
    nats_url: String,
    /// Tasks run at once.
    #[arg(long, env = env::CONCURRENCY, default_value_t = 100)]
    concurrency: usize,
    /// Ack wait of the task consumer, when this worker creates it.
    #[arg(long, env = env::ACK_WAIT, default_value = "30s", value_parser = humantime::parse_duration)]
    ack_wait: Duration,
    /// How long running tasks may finish after SIGTERM.
    #[arg(long, env = env::GRACE, default_value = "30s", value_parser = humantime::parse_duration)]
    grace: Duration,
    /// Serve Prometheus metrics on http://ADDR/metrics.
    #[arg(long, env = env::METRICS_ADDR)]
    metrics_addr: Option<std::net::SocketAddr>,
}

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let _telemetry = taskwire::telemetry::init("info", "taskwire-worker");
    let args = Args::parse();
    let settings = match taskwire::broker::Settings::from_env() {
        Ok(settings) => settings,
        Err(e) => {
            eprintln!("taskwire-magic-worker: {e}");
            return ExitCode::from(64);
        }
    };
    let worker = Worker::builder()
        .broker_settings(settings)
        .nats(args.nats_url)
        .concurrency(args.concurrency)
        .ack_wait(args.ack_wait)
        .second_signal_forces(true)
        .grace(args.grace)
        .metrics_addr(args.metrics_addr)
        .serve(MagicServer::new(MyMagic));
    match worker.run(taskwire::shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("taskwire-magic-worker: {e}");
            ExitCode::FAILURE
        }
    }
}
