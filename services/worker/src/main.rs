//! `taskwire-worker`: the worker runtime as a process, serving the task services of an upstream
//! gRPC server (a worker in any language) by calling it for each attempt. Configuration comes
//! from `TASKWIRE_*` variables, each overridable by a flag; every problem in it is reported at
//! once (exit 64). SIGINT or SIGTERM drains it; a second signal ends the drain.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use taskwire::config::{EXIT_USAGE, Problems};
use taskwire_worker::upstream::{Address, Descriptors, Upstream};
use taskwire_worker::{Builder, env};

/// The settings of the upstream, and the worker settings a flag overrides (the others come
/// from the environment, as `Builder::from_env` reads them).
#[derive(Debug, Parser)]
#[command(
    name = "taskwire-worker",
    version,
    about = "The taskwire worker runtime: serves the task services of an upstream gRPC server, calling it for each attempt"
)]
struct Args {
    /// The upstream gRPC server: unix:///path/to.sock or http://127.0.0.1:PORT.
    #[arg(long, env = env::UPSTREAM)]
    upstream: String,
    /// Descriptor set files of the upstream's services, instead of its reflection.
    #[arg(long, env = env::DESCRIPTORS, value_delimiter = ',')]
    descriptors: Vec<PathBuf>,
    /// Proto files of the upstream's services, instead of its reflection.
    #[arg(long = "proto", env = env::PROTOS, value_delimiter = ',')]
    protos: Vec<PathBuf>,
    /// Folders the imports of --proto files are found in.
    #[arg(long, env = env::PROTO_PATH, value_delimiter = ',')]
    proto_path: Vec<PathBuf>,
    /// Serve only these services of the upstream (full names); all by default.
    #[arg(long = "service", env = env::SERVICES, value_delimiter = ',')]
    services: Vec<String>,
    /// Serve only these tasks of those services (full names, package.Service/Method); all by
    /// default.
    #[arg(long = "task", env = env::TASKS, value_delimiter = ',')]
    tasks: Vec<String>,
    /// What the upstream is, as the worker's heartbeat names it (its address by default).
    #[arg(long, env = env::UPSTREAM_NAME)]
    upstream_name: Option<String>,
    /// Where the task context service for the upstream's handlers listens.
    #[arg(long, env = env::CONTEXT_ADDR, default_value = "127.0.0.1:0")]
    context_addr: String,
    /// NATS server URL(s), comma separated (TASKWIRE_NATS_URL).
    #[arg(long)]
    nats_url: Option<String>,
    /// Tasks of one type run at once (TASKWIRE_CONCURRENCY).
    #[arg(long)]
    concurrency: Option<usize>,
    /// How long running tasks may finish after SIGTERM (TASKWIRE_GRACE).
    #[arg(long, value_parser = humantime::parse_duration)]
    grace: Option<Duration>,
    /// Stop when standard input closes, handing running tasks back at once: for a process that
    /// starts the runtime as its child and serves its handlers, so that the runtime never
    /// outlives them.
    #[arg(long)]
    exit_with_stdin: bool,
}

impl Args {
    /// The worker builder, or every problem in the flags and the environment at once.
    fn builder(self) -> Result<(Builder, bool), Problems> {
        let mut problems = Problems::new();
        let builder = match Builder::from_env() {
            Ok(builder) => Some(builder),
            Err(found) => {
                for problem in found.iter() {
                    problems.push(problem);
                }
                None
            }
        };
        let address = problems.take(
            self.upstream
                .parse::<Address>()
                .map_err(|e| format!("{}: {e}", env::UPSTREAM)),
        );
        let context_addr = problems.take(self.context_addr.parse::<SocketAddr>().map_err(|e| {
            format!(
                "{}={:?} is not an address such as 127.0.0.1:0: {e}",
                env::CONTEXT_ADDR,
                self.context_addr
            )
        }));
        if !self.descriptors.is_empty() && !self.protos.is_empty() {
            problems.push(format!(
                "give the upstream's services either as descriptor sets ({}) or as proto files ({}), not both",
                env::DESCRIPTORS,
                env::PROTOS
            ));
        }
        if !self.proto_path.is_empty() && self.protos.is_empty() {
            problems.push(format!(
                "{} is where the imports of {} are found; name the proto files too",
                env::PROTO_PATH,
                env::PROTOS
            ));
        }
        let (Some(mut builder), Some(address), Some(context_addr), true) =
            (builder, address, context_addr, problems.is_empty())
        else {
            return Err(problems);
        };
        let descriptors = if !self.descriptors.is_empty() {
            Descriptors::Sets(self.descriptors)
        } else if !self.protos.is_empty() {
            let includes = if self.proto_path.is_empty() {
                vec![PathBuf::from(".")]
            } else {
                self.proto_path
            };
            Descriptors::Protos {
                files: self.protos,
                includes,
            }
        } else {
            Descriptors::Reflection
        };
        let mut upstream = Upstream::new(address)
            .descriptors(descriptors)
            .services(self.services)
            .tasks(self.tasks)
            .context_addr(context_addr);
        if let Some(name) = self.upstream_name {
            upstream = upstream.name(name);
        }
        if let Some(url) = self.nats_url {
            builder = builder.nats(url);
        }
        if let Some(n) = self.concurrency {
            builder = builder.concurrency(n);
        }
        if let Some(grace) = self.grace {
            builder = builder.grace(grace);
        }
        Ok((
            builder.upstream(upstream).second_signal_forces(true),
            self.exit_with_stdin,
        ))
    }
}

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let _telemetry = taskwire::telemetry::init("info", "taskwire-worker");
    let (worker, exit_with_stdin) = match Args::parse().builder() {
        Ok(found) => found,
        Err(problems) => {
            eprintln!("taskwire-worker: {problems}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let signal = taskwire::shutdown_signal();
    // Standard input closed: what started this process is gone, and with it the handlers the
    // tasks are served by. It stops at once, releasing what runs to other workers.
    let gone = tokio_util::sync::CancellationToken::new();
    let worker = if exit_with_stdin {
        let closed = gone.clone();
        tokio::spawn(async move {
            stdin_closed().await;
            tracing::info!("standard input closed; stopping");
            closed.cancel();
        });
        worker.force_when(gone.clone().cancelled_owned())
    } else {
        worker
    };
    let shutdown = async move {
        tokio::select! {
            () = signal => {}
            () = gone.cancelled() => {}
        }
    };
    match worker.run(shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("taskwire-worker: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Completes when standard input reaches its end (what started this process is gone). Read on
/// a thread of its own: a read in Tokio's blocking pool would keep the process from exiting.
async fn stdin_closed() {
    let (closed, on_close) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        use std::io::Read as _;
        let mut stdin = std::io::stdin();
        let mut buffer = [0u8; 64];
        while let Ok(n) = stdin.read(&mut buffer) {
            if n == 0 {
                break;
            }
        }
        let _ = closed.send(());
    });
    // A dropped sender (the thread gone) means the same: no more input.
    let _ = on_close.await;
}
