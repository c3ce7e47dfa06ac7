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

pub mod bench;
pub mod dev;
pub mod health;
pub mod k8s;
pub mod stack;

use std::io::{BufRead as _, IsTerminal as _, Write as _};
use std::time::{Duration, SystemTime};

use clap::{Parser, Subcommand, ValueEnum};
use taskwire::v1::{self, TaskInfo, TaskState};
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
        #[command(flatten)]
        when: When,
    },
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
    /// List the registered task types with their input and output messages.
    Tasks,
    /// Tasks submitted on a cron expression or an interval: create, list, get, pause, resume,
    /// delete.
    #[command(subcommand)]
    Schedule(ScheduleCommand),
    /// Show a task type's cluster-wide limits, or set them (overriding its proto options).
    Limits {
        /// Full task name.
        task: String,
        /// Most tasks running at once across all workers (0: no limit).
        #[arg(long)]
        concurrency: Option<u32>,
        /// Most tasks started per period across all workers: 10/s, 600/m, 5/h ("" : no limit).
        #[arg(long)]
        rate: Option<String>,
        /// Drop the override: the declared limits apply again.
        #[arg(long, conflicts_with_all = ["concurrency", "rate"])]
        clear: bool,
    },
    /// Look at the system: queues, workers, one task.
    #[command(subcommand)]
    Inspect(InspectCommand),
    /// Tasks that failed for good: list, replay, purge.
    #[command(subcommand)]
    Dead(DeadCommand),
    /// Run nats-server, the gateway and the example worker until Ctrl-C.
    Dev(dev::Options),
    /// Push tasks through a local system and print throughput and latency as JSON.
    Bench(bench::Options),
    /// Exit 0 when a gateway (gRPC health) or a worker (HTTP /healthz) is serving.
    Health(health::Options),
    /// Kubernetes objects generated from the task contracts.
    #[command(subcommand)]
    K8s(k8s::Command),
}

/// When a task may run: delay, priority, expiry.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct When {
    /// Run no earlier than this long from now (e.g. 30s, 5m).
    #[arg(long = "in", value_name = "DURATION", value_parser = humantime::parse_duration, conflicts_with = "at")]
    pub countdown: Option<Duration>,
    /// Run no earlier than this time (RFC 3339, e.g. 2026-12-01T09:00:00Z).
    #[arg(long, value_name = "TIME", value_parser = humantime::parse_rfc3339_weak)]
    pub at: Option<SystemTime>,
    /// Which tasks start first when there is a backlog.
    #[arg(long, value_enum)]
    pub priority: Option<Priority>,
    /// Never start the task later than this long after it is due; it expires instead.
    #[arg(long, value_parser = humantime::parse_duration, conflicts_with = "expires_at")]
    pub ttl: Option<Duration>,
    /// Never start the task after this time (RFC 3339).
    #[arg(long, value_name = "TIME", value_parser = humantime::parse_rfc3339_weak)]
    pub expires_at: Option<SystemTime>,
    /// Keep the result this long (at most the broker's result TTL).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub result_ttl: Option<Duration>,
}

/// A priority level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Priority {
    High,
    Normal,
    Low,
}

impl Priority {
    fn proto(self) -> v1::Priority {
        match self {
            Priority::High => v1::Priority::High,
            Priority::Normal => v1::Priority::Normal,
            Priority::Low => v1::Priority::Low,
        }
    }
}

impl When {
    fn apply(self, options: SubmitOptions) -> SubmitOptions {
        SubmitOptions {
            countdown: self.countdown,
            not_before: self.at,
            priority: self.priority.map(Priority::proto),
            ttl: self.ttl,
            expires_at: self.expires_at,
            result_ttl: self.result_ttl,
            ..options
        }
    }
}

/// `taskwire inspect ...`.
#[derive(Debug, Subcommand)]
pub enum InspectCommand {
    /// Per task and priority: queued, in flight, redelivered, dead letters, oldest waiting.
    Queues {
        /// JSON lines instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// The workers alive now, with what they serve and run.
    Workers {
        /// JSON lines instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// One task: state, attempts, timings, last error, result.
    Task {
        /// Task id.
        id: String,
        /// JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

fn seconds(d: &Option<prost_types::Duration>) -> f64 {
    d.as_ref()
        .map_or(0.0, |d| d.seconds as f64 + f64::from(d.nanos) / 1e9)
}

fn time_text(t: &Option<prost_types::Timestamp>) -> String {
    t.as_ref().map(|t| t.to_string()).unwrap_or_default()
}

async fn inspect(client: &Client, command: InspectCommand) -> Result<i32, Error> {
    match command {
        InspectCommand::Queues { json } => {
            let queues = client.queues().await?;
            if json {
                for q in &queues {
                    let line = serde_json::json!({
                        "task": q.task, "priority": q.priority, "queued": q.queued,
                        "in_flight": q.in_flight, "redelivered": q.redelivered,
                        "waiting_pulls": q.waiting_pulls, "dead_letters": q.dead_letters,
                        "workers": q.workers, "delivered_total": q.delivered_total,
                        "oldest_waiting_seconds": seconds(&q.oldest_waiting),
                    });
                    println!("{line}");
                }
                return Ok(0);
            }
            if queues.is_empty() {
                eprintln!("no task types registered yet: start a worker");
                return Ok(0);
            }
            let width = queues
                .iter()
                .map(|q| q.task.len())
                .max()
                .unwrap_or(4)
                .max(4);
            println!(
                "{:width$}  {:8}  {:>8}  {:>9}  {:>11}  {:>5}  {:>7}  OLDEST",
                "TASK", "PRIORITY", "QUEUED", "IN FLIGHT", "REDELIVERED", "DEAD", "WORKERS"
            );
            for q in &queues {
                let oldest = seconds(&q.oldest_waiting);
                println!(
                    "{:width$}  {:8}  {:>8}  {:>9}  {:>11}  {:>5}  {:>7}  {}",
                    q.task,
                    q.priority,
                    q.queued,
                    q.in_flight,
                    q.redelivered,
                    if q.priority == "normal" {
                        q.dead_letters.to_string()
                    } else {
                        String::new()
                    },
                    q.workers,
                    if oldest > 0.0 {
                        format!("{oldest:.1}s")
                    } else {
                        "-".to_owned()
                    },
                );
            }
            Ok(0)
        }
        InspectCommand::Workers { json } => {
            let workers = client.workers().await?;
            if json {
                for w in &workers {
                    let line = serde_json::json!({
                        "id": w.id, "host": w.host, "pid": w.pid, "tasks": w.tasks,
                        "running": w.running, "succeeded": w.succeeded, "failed": w.failed,
                        "started_at": time_text(&w.started_at),
                        "heartbeat_at": time_text(&w.heartbeat_at), "version": w.version,
                    });
                    println!("{line}");
                }
                return Ok(0);
            }
            if workers.is_empty() {
                eprintln!("no worker is alive");
                return Ok(0);
            }
            println!(
                "{:32}  {:16}  {:>7}  {:>7}  {:>9}  {:>6}  {:24}  TASKS",
                "ID", "HOST", "PID", "RUNNING", "SUCCEEDED", "FAILED", "LAST HEARTBEAT"
            );
            for w in &workers {
                println!(
                    "{:32}  {:16}  {:>7}  {:>7}  {:>9}  {:>6}  {:24}  {}",
                    w.id,
                    w.host,
                    w.pid,
                    w.running,
                    w.succeeded,
                    w.failed,
                    time_text(&w.heartbeat_at),
                    w.tasks.join(",")
                );
            }
            Ok(0)
        }
        InspectCommand::Task { id, json } => {
            let info = client.get(&id, true).await?;
            let history = client.task_history(&id).await?;
            let events: Vec<serde_json::Value> = history.events.iter().map(info_json).collect();
            if json {
                let mut out = info_json(&info);
                out["events"] = serde_json::Value::Array(events);
                if let Some(traced) = std::iter::once(&info)
                    .chain(history.events.iter())
                    .find(|i| !i.trace_id.is_empty())
                {
                    out["trace_id"] = traced.trace_id.clone().into();
                }
                println!("{}", serde_json::to_string_pretty(&out)?);
                return Ok(0);
            }
            println!("task      {}", info.task_id);
            println!("type      {}", info.task);
            println!("state     {}", taskwire::broker::state_name(info.state()));
            println!("attempt   {}", info.attempt);
            let trace = std::iter::once(&info)
                .chain(history.events.iter())
                .chain(history.result.iter())
                .find(|i| !i.trace_id.is_empty())
                .map(|i| i.trace_id.clone());
            if let Some(trace) = &trace {
                println!("trace     {trace}");
            }
            for event in &history.events {
                let mut line = format!(
                    "  {:24}  {:9}  attempt {}",
                    time_text(&event.updated_at),
                    taskwire::broker::state_name(event.state()),
                    event.attempt
                );
                if let Some(p) = &event.progress {
                    line.push_str(&format!("  {:.0}% {}", p.percent, p.message));
                }
                if let Some(e) = &event.error {
                    line.push_str(&format!("  error: {}", e.message));
                }
                println!("{line}");
            }
            if let Some(result) = &history.result {
                println!(
                    "  {:24}  {:9}  attempt {}",
                    time_text(&result.updated_at),
                    taskwire::broker::state_name(result.state()),
                    result.attempt
                );
            }
            if let Some(error) = &info.error {
                println!("error     {}", error.message);
            }
            if !info.result_json.is_empty() {
                println!("result    {}", info.result_json);
            }
            Ok(0)
        }
    }
}

/// `taskwire schedule ...`.
#[derive(Debug, Subcommand)]
pub enum ScheduleCommand {
    /// Create a schedule that submits TASK with ARGS on every tick.
    Create {
        /// The schedule's name: letters, digits, `-` or `_`.
        name: String,
        /// Full task name, e.g. examples.magic.v1.Magic/Add.
        task: String,
        /// Arguments as proto3 JSON.
        #[arg(default_value = "{}")]
        args: String,
        /// Cron expression in UTC: five fields, six with seconds first, or @hourly, @daily...
        #[arg(long, required_unless_present = "every", conflicts_with = "every")]
        cron: Option<String>,
        /// Fixed interval instead, e.g. 30s or 5m.
        #[arg(long, value_parser = humantime::parse_duration)]
        every: Option<Duration>,
        /// Priority of the tasks it submits.
        #[arg(long, value_enum)]
        priority: Option<Priority>,
        /// Attempts of each task.
        #[arg(long)]
        max_attempts: Option<u32>,
    },
    /// List the schedules as JSON lines.
    List,
    /// Print one schedule as JSON.
    Get { name: String },
    /// Stop a schedule from firing until resumed.
    Pause { name: String },
    /// Let a paused schedule fire again.
    Resume { name: String },
    /// Delete a schedule.
    Delete { name: String },
}

/// A schedule as a JSON object.
pub fn schedule_json(schedule: &v1::Schedule) -> serde_json::Value {
    let mut out = serde_json::json!({
        "name": schedule.name,
        "task": schedule.task,
        "paused": schedule.paused,
    });
    match &schedule.when {
        Some(v1::schedule::When::Cron(cron)) => out["cron"] = cron.clone().into(),
        Some(v1::schedule::When::Every(every)) => {
            out["every"] = format!("{}s", every.seconds).into();
        }
        None => {}
    }
    if let Some(v1::schedule::Args::ArgsJson(json)) = &schedule.args
        && let Ok(args) = serde_json::from_str::<serde_json::Value>(json)
    {
        out["args"] = args;
    }
    if let Some(time) = &schedule.created_at {
        out["created_at"] = time.to_string().into();
    }
    out
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

/// Connects to the gateway with the TLS and token settings of the environment
/// (`TASKWIRE_TOKEN`, `TASKWIRE_TLS_CA`, `TASKWIRE_TLS_CLIENT_CERT`, `TASKWIRE_TLS_CLIENT_KEY`).
async fn connect(gateway: &str) -> Result<Client, Error> {
    let options = taskwire_client::ConnectOptions::from_env()?;
    Ok(Client::connect_with(gateway, options).await?)
}

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
            when,
        } => {
            let client = connect(&cli.gateway).await?;
            let options = when.apply(SubmitOptions {
                idempotency_key: key,
                max_attempts,
                timeout: time_limit,
                ..SubmitOptions::default()
            });
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
        Command::SubmitMany { file } => {
            let requests = read_jsonl(&file)?;
            let client = connect(&cli.gateway).await?;
            let count = requests.len();
            let response = client.submit_many(requests).await?;
            let mut out = std::io::stdout().lock();
            for (line, result) in response.results.iter().enumerate() {
                if result.task_id.is_empty() {
                    writeln!(out, "error line {}: {}", line + 1, result.error)?;
                } else {
                    writeln!(out, "{}", result.task_id)?;
                }
            }
            eprintln!(
                "submitted {} of {count} task(s), {} refused",
                response.submitted, response.refused
            );
            Ok(if response.refused > 0 { 1 } else { 0 })
        }
        Command::Watch { id } => {
            let client = connect(&cli.gateway).await?;
            watch(&client, &id).await
        }
        Command::Get { id } => {
            let client = connect(&cli.gateway).await?;
            let info = client.get(&id, true).await?;
            println!("{}", serde_json::to_string_pretty(&info_json(&info))?);
            Ok(0)
        }
        Command::Wait { id, timeout } => {
            let client = connect(&cli.gateway).await?;
            let info = client.wait(&id, timeout, true).await?;
            print_result(&info)
        }
        Command::Cancel { id } => {
            let client = connect(&cli.gateway).await?;
            let info = client.cancel(&id).await?;
            println!("{}", serde_json::to_string_pretty(&info_json(&info))?);
            Ok(0)
        }
        Command::Tasks => {
            let client = connect(&cli.gateway).await?;
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
        Command::Limits {
            task,
            concurrency,
            rate,
            clear,
        } => {
            let client = connect(&cli.gateway).await?;
            let response = if clear {
                client.set_task_limits(&task, None).await?
            } else if concurrency.is_some() || rate.is_some() {
                let current = client.task_limits(&task).await?.limits.unwrap_or_default();
                let limits = v1::TaskLimits {
                    max_concurrency: concurrency.unwrap_or(current.max_concurrency),
                    rate_limit: rate.unwrap_or(current.rate_limit),
                };
                client.set_task_limits(&task, Some(limits)).await?
            } else {
                client.task_limits(&task).await?
            };
            let limits = response.limits.unwrap_or_default();
            let out = serde_json::json!({
                "task": response.task,
                "max_concurrency": limits.max_concurrency,
                "rate_limit": limits.rate_limit,
                "overridden": response.overridden,
            });
            println!("{}", serde_json::to_string_pretty(&out)?);
            Ok(0)
        }
        Command::Inspect(command) => {
            let client = connect(&cli.gateway).await?;
            inspect(&client, command).await
        }
        Command::Schedule(command) => {
            let client = connect(&cli.gateway).await?;
            let print = |s: &v1::Schedule| -> Result<i32, Error> {
                println!("{}", serde_json::to_string_pretty(&schedule_json(s))?);
                Ok(0)
            };
            match command {
                ScheduleCommand::Create {
                    name,
                    task,
                    args,
                    cron,
                    every,
                    priority,
                    max_attempts,
                } => {
                    let when = match (cron, every) {
                        (Some(cron), _) => v1::schedule::When::Cron(cron),
                        (None, Some(every)) => v1::schedule::When::Every(
                            prost_types::Duration::try_from(every)
                                .map_err(|e| anyhow::anyhow!("--every: {e}"))?,
                        ),
                        (None, None) => anyhow::bail!("give --cron or --every"),
                    };
                    let options = SubmitOptions {
                        priority: priority.map(Priority::proto),
                        max_attempts,
                        ..SubmitOptions::default()
                    };
                    let created = client
                        .create_schedule(v1::Schedule {
                            name,
                            task,
                            when: Some(when),
                            args: Some(v1::schedule::Args::ArgsJson(args)),
                            options: Some(options.into_proto()),
                            ..Default::default()
                        })
                        .await?;
                    print(&created)
                }
                ScheduleCommand::List => {
                    for schedule in client.schedules().await? {
                        println!("{}", schedule_json(&schedule));
                    }
                    Ok(0)
                }
                ScheduleCommand::Get { name } => print(&client.schedule(&name).await?),
                ScheduleCommand::Pause { name } => print(&client.pause_schedule(&name).await?),
                ScheduleCommand::Resume { name } => print(&client.resume_schedule(&name).await?),
                ScheduleCommand::Delete { name } => {
                    client.delete_schedule(&name).await?;
                    eprintln!("deleted schedule {name}");
                    Ok(0)
                }
            }
        }
        Command::Dead(command) => {
            let client = connect(&cli.gateway).await?;
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
        Command::Health(options) => health::run(options).await.map(|()| 0),
        Command::K8s(command) => k8s::run(command).map(|()| 0),
    }
}

/// One line of a `submit-many` file.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    task: String,
    #[serde(default)]
    args: Option<serde_json::Value>,
    #[serde(default)]
    key: Option<String>,
    #[serde(default)]
    priority: Option<String>,
    #[serde(default)]
    countdown: Option<String>,
    #[serde(default)]
    ttl: Option<String>,
    #[serde(default)]
    max_attempts: Option<u32>,
}

/// Reads and checks a whole `submit-many` file before anything is sent: a bad line stops it
/// with the line's number, and nothing is submitted.
fn read_jsonl(file: &str) -> Result<Vec<v1::SubmitRequest>, Error> {
    let reader: Box<dyn std::io::BufRead> = if file == "-" {
        Box::new(std::io::stdin().lock())
    } else {
        let f =
            std::fs::File::open(file).map_err(|e| anyhow::anyhow!("cannot open {file}: {e}"))?;
        Box::new(std::io::BufReader::new(f))
    };
    let mut requests = Vec::new();
    for (n, line) in reader.lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let at =
            |what: String| anyhow::anyhow!("{file} line {}: {what}; nothing was submitted", n + 1);
        let parsed: Line = serde_json::from_str(&line).map_err(|e| {
            at(format!(
                "{e} (expected {{\"task\": \"pkg.Service/Method\", \"args\": {{...}}}})"
            ))
        })?;
        let duration = |what: &str, text: &Option<String>| -> Result<Option<Duration>, Error> {
            text.as_deref()
                .map(|t| {
                    humantime::parse_duration(t)
                        .map_err(|e| at(format!("{what} {t:?} is not a duration such as 30s: {e}")))
                })
                .transpose()
        };
        let priority = match parsed.priority.as_deref() {
            None => None,
            Some(text) => Some(
                Priority::from_str(text, true)
                    .map_err(|_| at(format!("priority {text:?} is not high, normal or low")))?
                    .proto(),
            ),
        };
        let options = SubmitOptions {
            idempotency_key: parsed.key,
            max_attempts: parsed.max_attempts,
            countdown: duration("countdown", &parsed.countdown)?,
            ttl: duration("ttl", &parsed.ttl)?,
            priority,
            ..SubmitOptions::default()
        };
        let args = parsed
            .args
            .unwrap_or_else(|| serde_json::Value::Object(Default::default()));
        requests.push(taskwire_client::request_json(
            &parsed.task,
            &args.to_string(),
            options,
        ));
    }
    if requests.is_empty() {
        anyhow::bail!("{file} holds no task: write one JSON object per line");
    }
    Ok(requests)
}

/// Follows a task until it ends, drawing its progress; returns the exit code.
async fn watch(client: &Client, id: &str) -> Result<i32, Error> {
    let mut changes = client.watch(id, true).await?;
    let tty = std::io::stderr().is_terminal();
    let mut last_line = String::new();
    let mut last = None;
    while let Some(info) = changes.next().await? {
        let line = match &info.progress {
            Some(p) if info.state() == TaskState::Running => {
                format!(
                    "running   {} {:5.1}%  {}",
                    progress_bar(p.percent),
                    p.percent,
                    p.message
                )
            }
            _ => {
                let mut text = format!(
                    "{:9} attempt {}",
                    taskwire::broker::state_name(info.state()),
                    info.attempt
                );
                if let Some(t) = &info.not_before
                    && info.state() == TaskState::Scheduled
                {
                    text.push_str(&format!(", due {t}"));
                }
                text
            }
        };
        if line != last_line {
            if tty && last_line.starts_with("running   [") {
                eprint!("\r\x1b[2K");
            } else if tty && !last_line.is_empty() {
                eprintln!();
            }
            if tty {
                eprint!("{line}");
            } else {
                eprintln!("{line}");
            }
            last_line = line;
        }
        last = Some(info);
    }
    if tty {
        eprintln!();
    }
    match last {
        Some(info) if taskwire_client::is_final(info.state()) => print_result(&info),
        _ => anyhow::bail!("the gateway ended the watch of {id} before the task ended"),
    }
}

fn progress_bar(percent: f32) -> String {
    let filled = ((percent.clamp(0.0, 100.0) / 100.0) * 30.0).round() as usize;
    format!("[{}{}]", "#".repeat(filled), ".".repeat(30 - filled))
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
    if let Some(progress) = &info.progress {
        out["progress"] =
            serde_json::json!({ "percent": progress.percent, "message": progress.message });
    }
    if let Some(time) = &info.not_before {
        out["not_before"] = serde_json::Value::String(time.to_string());
    }
    out
}
