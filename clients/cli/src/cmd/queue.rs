//! `taskwire queue pause|resume|purge TASK`: stop and start a task type's queue, or cancel
//! what waits in it.

use clap::Subcommand;
use taskwire_client::Client;

use super::Priority;
use crate::Error;
use crate::output::time_text;

/// `taskwire queue ...`.
#[derive(Debug, Subcommand)]
pub enum QueueCommand {
    /// Workers start none of the task type's tasks until it is resumed (what runs finishes);
    /// submitting still stores them. Every priority, or those given with --priority.
    Pause {
        /// Full task name.
        task: String,
        /// Only this priority (repeat for more).
        #[arg(long, value_enum)]
        priority: Vec<Priority>,
        /// Why, shown with the queue.
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Workers start the task type's tasks again: every priority, or those given.
    Resume {
        /// Full task name.
        task: String,
        /// Only this priority (repeat for more).
        #[arg(long, value_enum)]
        priority: Vec<Priority>,
    },
    /// Cancel every task waiting in the queue (a task running now finishes), at every priority
    /// or those given; prints how many. Safe to run again after a failure midway.
    Purge {
        /// Full task name.
        task: String,
        /// Only this priority (repeat for more).
        #[arg(long, value_enum)]
        priority: Vec<Priority>,
        /// Yes, cancel them: without it nothing is done.
        #[arg(long)]
        yes: bool,
    },
}

/// Pauses or resumes, then prints what is paused as JSON.
pub async fn run(client: &Client, command: QueueCommand) -> Result<i32, Error> {
    let response = match command {
        QueueCommand::Pause {
            task,
            priority,
            reason,
        } => {
            let priorities: Vec<_> = priority.iter().map(|p| p.proto()).collect();
            client.pause_queue(&task, &priorities, &reason).await?
        }
        QueueCommand::Resume { task, priority } => {
            let priorities: Vec<_> = priority.iter().map(|p| p.proto()).collect();
            client.resume_queue(&task, &priorities).await?
        }
        QueueCommand::Purge {
            task,
            priority,
            yes,
        } => {
            if !yes {
                anyhow::bail!(
                    "this cancels every task waiting in the queue of {task}; run it again with --yes to do so"
                );
            }
            let priorities: Vec<_> = priority.iter().map(|p| p.proto()).collect();
            let purged = client.purge_queue(&task, &priorities).await?;
            println!(
                "{}",
                serde_json::to_string_pretty(
                    &serde_json::json!({ "task": task, "purged": purged })
                )?
            );
            return Ok(0);
        }
    };
    let pause = response.pause.unwrap_or_default();
    let paused: Vec<&str> = pause
        .priorities()
        .map(taskwire_protocol::priority_name)
        .collect();
    let out = serde_json::json!({
        "task": response.task,
        "paused": paused,
        "since": if paused.is_empty() { serde_json::Value::Null } else { time_text(&pause.since).into() },
        "reason": pause.reason,
    });
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(0)
}
