//! `taskwire dead`: tasks that failed for good.

use clap::Subcommand;
use taskwire_client::Client;

use crate::Error;

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

/// Lists, replays or purges dead letters.
pub async fn run(client: &Client, command: DeadCommand) -> Result<i32, Error> {
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
