//! The `taskwire` command: submit and follow tasks through a gateway, run a whole local system
//! (`taskwire dev`), and measure it (`taskwire bench`).
//!
//! ```text
//! taskwire dev
//! taskwire submit examples.magic.v1.Magic/Add '{"arg1":1,"arg2":2,"arg3":3}' --wait
//! taskwire get 0193f1c2...
//! taskwire tasks
//! ```

pub mod bench;
pub mod dev;
pub mod stack;

use std::time::Duration;

use clap::{Parser, Subcommand};
use taskwire::v1::{TaskInfo, TaskState};
use taskwire_client::{Client, SubmitOptions};

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
    Submit {
        /// Full task name, e.g. examples.magic.v1.Magic/Add.
        task: String,
        /// Arguments as proto3 JSON, e.g. '{"arg1":1,"arg2":2,"arg3":3}'.
        #[arg(default_value = "{}")]
        args: String,
        /// Wait for the result and print it as JSON.
        #[arg(long)]
        wait: bool,
        /// How long --wait waits.
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        timeout: Duration,
        /// Idempotency key: the same key within the duplicate window gives the same task.
        #[arg(long)]
        key: Option<String>,
        /// Attempts in all, overriding the task's option.
        #[arg(long)]
        max_attempts: Option<u32>,
        /// Time limit of one attempt, overriding the task's option (e.g. 30s).
        #[arg(long, value_parser = humantime::parse_duration)]
        time_limit: Option<Duration>,
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
    /// List the registered task types with their input and output messages.
    Tasks,
    /// Tasks that failed for good: list, replay, purge.
    #[command(subcommand)]
    Dead(DeadCommand),
    /// Run nats-server, the gateway and the example worker until Ctrl-C.
    Dev(dev::Options),
    /// Push tasks through a local system and print throughput and latency as JSON.
    Bench(bench::Options),
}

/// `taskwire dead ...`.
#[derive(Debug, Subcommand)]
pub enum DeadCommand {
    /// List dead letters, oldest first, as JSON lines.
    List {
        /// Only this task type.
        task: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Put dead tasks back in line under their own ids, with a new series of attempts.
    Replay {
        /// Task ids to replay.
        ids: Vec<String>,
        /// Replay every dead letter of this task type.
        #[arg(long, value_name = "TASK", conflicts_with = "ids")]
        all: Option<String>,
    },
    /// Delete dead letters.
    Purge {
        /// Only this task type.
        task: Option<String>,
    },
}

/// What the command failed with; printed as one line.
pub type Error = anyhow::Error;

/// Runs the command line; returns the exit code.
pub async fn run(cli: Cli) -> Result<i32, Error> {
    match cli.command {
        Command::Submit {
            task,
            args,
            wait,
            timeout,
            key,
            max_attempts,
            time_limit,
        } => {
            let client = Client::connect(cli.gateway).await?;
            let options = SubmitOptions {
                idempotency_key: key,
                max_attempts,
                timeout: time_limit,
                ..SubmitOptions::default()
            };
            if !wait {
                let submitted = client.submit_json(&task, &args, options).await?;
                println!("{}", submitted.task_id);
                return Ok(0);
            }
            let pending = client
                .submit_and_wait(
                    &task,
                    taskwire::v1::submit_request::Args::ArgsJson(args),
                    options,
                    timeout,
                    true,
                )
                .await?;
            print_result(&pending.finish().await?)
        }
        Command::Get { id } => {
            let client = Client::connect(cli.gateway).await?;
            let info = client.get(&id, true).await?;
            println!("{}", serde_json::to_string_pretty(&info_json(&info))?);
            Ok(0)
        }
        Command::Wait { id, timeout } => {
            let client = Client::connect(cli.gateway).await?;
            let info = client.wait(&id, timeout, true).await?;
            print_result(&info)
        }
        Command::Cancel { id } => {
            let client = Client::connect(cli.gateway).await?;
            let info = client.cancel(&id).await?;
            println!("{}", serde_json::to_string_pretty(&info_json(&info))?);
            Ok(0)
        }
        Command::Tasks => {
            let client = Client::connect(cli.gateway).await?;
            let types = client.task_types().await?;
            if types.is_empty() {
                eprintln!("no task types registered yet: start a worker");
                return Ok(0);
            }
            let width = types.iter().map(|t| t.name.len()).max().unwrap_or(4).max(4);
            println!("{:width$}  {:30}  OUTPUT", "TASK", "INPUT");
            for t in types {
                println!("{:width$}  {:30}  {}", t.name, t.input_type, t.output_type);
            }
            Ok(0)
        }
        Command::Dead(command) => {
            let client = Client::connect(cli.gateway).await?;
            match command {
                DeadCommand::List { task, limit } => {
                    for dead in client
                        .dead_letters(task.as_deref().unwrap_or(""), limit)
                        .await?
                    {
                        let line = serde_json::json!({
                            "id": dead.task_id,
                            "task": dead.task,
                            "reason": dead.reason,
                            "error": dead.error,
                            "attempt": dead.attempt,
                            "replays": dead.replays,
                            "dead_at": dead.dead_at.map(|t| t.to_string()),
                        });
                        println!("{line}");
                    }
                }
                DeadCommand::Replay { ids, all } => {
                    if ids.is_empty() && all.is_none() {
                        anyhow::bail!("name the task ids to replay, or --all TASK");
                    }
                    let replayed = client
                        .replay_dead_letters(ids, all.as_deref().unwrap_or(""), all.is_some())
                        .await?;
                    for id in &replayed {
                        println!("{id}");
                    }
                    eprintln!("replayed {} task(s)", replayed.len());
                }
                DeadCommand::Purge { task } => {
                    let purged = client
                        .purge_dead_letters(task.as_deref().unwrap_or(""))
                        .await?;
                    println!("purged {purged} dead letter(s)");
                }
            }
            Ok(0)
        }
        Command::Dev(options) => dev::run(options).await.map(|()| 0),
        Command::Bench(options) => bench::run(options).await.map(|()| 0),
    }
}

/// Prints a finished task's result JSON; a failed or cancelled task is reported on stderr and
/// exits 1.
fn print_result(info: &TaskInfo) -> Result<i32, Error> {
    match info.state() {
        TaskState::Succeeded => {
            println!("{}", info.result_json);
            Ok(0)
        }
        state => {
            let reason = info
                .error
                .as_ref()
                .map(|e| e.message.as_str())
                .unwrap_or("no reason given");
            eprintln!(
                "taskwire: task {} {}: {}",
                info.task_id,
                taskwire::broker::state_name(state),
                reason
            );
            Ok(1)
        }
    }
}

/// A task's state as a JSON object.
pub fn info_json(info: &TaskInfo) -> serde_json::Value {
    let mut out = serde_json::json!({
        "id": info.task_id,
        "task": info.task,
        "state": taskwire::broker::state_name(info.state()),
        "attempt": info.attempt,
    });
    if let Some(time) = &info.updated_at {
        out["updated_at"] = serde_json::Value::String(time.to_string());
    }
    if !info.result_json.is_empty()
        && let Ok(result) = serde_json::from_str::<serde_json::Value>(&info.result_json)
    {
        out["result"] = result;
    }
    if let Some(error) = &info.error {
        out["error"] =
            serde_json::json!({ "message": error.message, "retryable": error.retryable });
    }
    out
}
