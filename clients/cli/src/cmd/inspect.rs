//! `taskwire inspect`: queues, workers, one task.

use clap::Subcommand;
use taskwire_client::Client;

use crate::Error;
use crate::output::{info_json, seconds, time_text};

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

/// Prints what the command asks for, as a table or JSON.
pub async fn run(client: &Client, command: InspectCommand) -> Result<i32, Error> {
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
                        "paused": q.paused, "paused_since": time_text(&q.paused_since),
                        "paused_reason": q.paused_reason,
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
                "{:width$}  {:8}  {:>8}  {:>9}  {:>11}  {:>5}  {:>7}  {:>6}  STATE",
                "TASK",
                "PRIORITY",
                "QUEUED",
                "IN FLIGHT",
                "REDELIVERED",
                "DEAD",
                "WORKERS",
                "OLDEST"
            );
            for q in &queues {
                let oldest = seconds(&q.oldest_waiting);
                println!(
                    "{:width$}  {:8}  {:>8}  {:>9}  {:>11}  {:>5}  {:>7}  {:>6}  {}",
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
                    if q.paused { "paused" } else { "running" },
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
                        "paused": w.paused,
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
            println!("state     {}", taskwire_protocol::state_name(info.state()));
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
                    taskwire_protocol::state_name(event.state()),
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
                    taskwire_protocol::state_name(result.state()),
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
