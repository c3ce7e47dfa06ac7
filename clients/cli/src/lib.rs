//! The `taskwire` command: submit and follow tasks through a gateway, run a whole local system
//! (`taskwire dev`), and measure it (`taskwire bench`).
//!
//! ```text
//! taskwire dev
//! taskwire submit examples.magic.v1.Magic/Add '{"arg1":1,"arg2":2,"arg3":3}' --wait
//! taskwire submit examples.magic.v1.Magic/Add '{"arg1":1}' --in 30s --priority high
//! taskwire watch 0193f1c2...
//! taskwire submit-many tasks.jsonl
//! taskwire get 0193f1c2...
//! taskwire tasks
//! ```

pub mod cmd;
mod output;

use std::time::Duration;

use clap::{Parser, Subcommand};
use taskwire_client::Client;

/// Environment variables of the command.
pub mod env {
    /// The gateway the command talks to.
    pub const GATEWAY_URL: &str = "TASKWIRE_GATEWAY_URL";
}

/// The command line.
#[derive(Debug, Parser)]
#[command(
    name = "taskwire",
    version,
    about = "Submit, follow and run taskwire tasks"
)]
pub struct Cli {
    /// Gateway URL.
    #[arg(long, global = true, env = env::GATEWAY_URL, default_value = "http://127.0.0.1:50051")]
    pub gateway: String,
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Submit a task with JSON arguments; prints its id, or its result with --wait.
    Submit(cmd::submit::Submit),
    /// Submit the tasks of a JSON lines file (or - for standard input) in one call. Each line:
    /// {"task": "pkg.Service/Method", "args": {...}, "key": "...", "priority": "high",
    /// "countdown": "30s", "ttl": "1h", "max_attempts": 3}. Prints one id (or error) per line.
    SubmitMany {
        /// The file.
        file: String,
    },
    /// Follow a task's state and progress live until it ends; prints its result.
    Watch {
        /// Task id.
        id: String,
    },
    /// Print a task's state and result as JSON.
    Get {
        /// Task id.
        id: String,
    },
    /// Wait for a task's result and print it as JSON.
    Wait {
        /// Task id.
        id: String,
        /// How long to wait.
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        timeout: Duration,
    },
    /// Cancel a task that has not finished.
    Cancel {
        /// Task id.
        id: String,
    },
    /// Tasks: `taskwire tasks` lists the registered task types; `tasks list` finds tasks by
    /// type, state, time, error, key, workflow or parent; `tasks cancel` cancels all that match.
    Tasks {
        #[command(subcommand)]
        command: Option<cmd::find::TasksCommand>,
    },
    /// Tasks submitted on a cron expression or an interval: create, list, get, pause, resume,
    /// delete.
    #[command(subcommand)]
    Schedule(cmd::schedule::ScheduleCommand),
    /// Workflows: steps that feed each other, from a JSON file: submit, get, wait, cancel.
    #[command(subcommand)]
    Workflow(cmd::workflow::WorkflowCommand),
    /// Show a task type's cluster-wide limits, or set them (overriding its proto options).
    Limits(cmd::limits::Limits),
    /// Pause or resume a task type's queue: workers start none of its tasks while it is paused.
    #[command(subcommand)]
    Queue(cmd::queue::QueueCommand),
    /// Look at the system: queues, workers, one task.
    #[command(subcommand)]
    Inspect(cmd::inspect::InspectCommand),
    /// Tasks that failed for good: list, replay, purge.
    #[command(subcommand)]
    Dead(cmd::dead::DeadCommand),
    /// Run nats-server, the gateway and the example worker until Ctrl-C.
    Dev(cmd::dev::Options),
    /// Push tasks through a local system and print throughput and latency as JSON.
    Bench(cmd::bench::Options),
    /// Exit 0 when a gateway (gRPC health) or a worker (HTTP /healthz) is serving.
    Health(cmd::health::Options),
    /// Kubernetes objects generated from the task contracts.
    #[command(subcommand)]
    K8s(cmd::k8s::Command),
    /// The worker runtime (`taskwire-worker`): serves the task services of an upstream gRPC
    /// server, `taskwire worker --upstream unix:///path/to.sock`.
    #[command(disable_help_flag = true)]
    Worker(cmd::worker::Options),
}

/// What the command failed with; printed as one line.
pub type Error = anyhow::Error;

/// Connects to the gateway with the TLS and token settings of the environment
/// (`TASKWIRE_TOKEN`, `TASKWIRE_TLS_CA`, `TASKWIRE_TLS_CLIENT_CERT`, `TASKWIRE_TLS_CLIENT_KEY`).
async fn connect(gateway: &str) -> Result<Client, Error> {
    let options = taskwire_client::ConnectOptions::from_env()?;
    Ok(Client::connect_with(gateway, options).await?)
}

/// Runs the command line; returns the exit code.
pub async fn run(cli: Cli) -> Result<i32, Error> {
    let gateway = cli.gateway;
    match cli.command {
        Command::Submit(args) => cmd::submit::submit(&connect(&gateway).await?, args).await,
        Command::SubmitMany { file } => {
            // The whole file is checked before anything is sent.
            let requests = cmd::submit::read_jsonl(&file)?;
            cmd::submit::submit_many(&connect(&gateway).await?, requests).await
        }
        Command::Watch { id } => cmd::task::watch(&connect(&gateway).await?, &id).await,
        Command::Get { id } => cmd::task::get(&connect(&gateway).await?, &id).await,
        Command::Wait { id, timeout } => {
            cmd::task::wait(&connect(&gateway).await?, &id, timeout).await
        }
        Command::Cancel { id } => cmd::task::cancel(&connect(&gateway).await?, &id).await,
        Command::Tasks { command } => match command {
            None => cmd::types::list(&connect(&gateway).await?).await,
            Some(command) => cmd::find::run(&connect(&gateway).await?, command).await,
        },
        Command::Limits(args) => cmd::limits::run(&connect(&gateway).await?, args).await,
        Command::Inspect(command) => cmd::inspect::run(&connect(&gateway).await?, command).await,
        Command::Queue(command) => cmd::queue::run(&connect(&gateway).await?, command).await,
        Command::Schedule(command) => cmd::schedule::run(&connect(&gateway).await?, command).await,
        Command::Workflow(command) => cmd::workflow::run(&connect(&gateway).await?, command).await,
        Command::Dead(command) => cmd::dead::run(&connect(&gateway).await?, command).await,
        Command::Dev(options) => cmd::dev::run(options).await.map(|()| 0),
        Command::Bench(options) => cmd::bench::run(options).await.map(|()| 0),
        Command::Health(options) => cmd::health::run(options).await.map(|()| 0),
        Command::K8s(command) => cmd::k8s::run(command).map(|()| 0),
        Command::Worker(options) => Err(cmd::worker::run(options)),
    }
}
