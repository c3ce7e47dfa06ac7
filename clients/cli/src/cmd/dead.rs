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
        /// Replay every dead letter of this task type, or of the types a pattern with `*`
        /// matches ('*' for all), that the options below allow.
        #[arg(long, value_name = "TASK", conflicts_with = "ids")]
        all: Option<String>,
        /// With --all: only letters with this reason (exhausted, permanent, panic, timeout,
        /// poison).
        #[arg(long, requires = "all")]
        reason: Option<String>,
        /// With --all: only letters whose error holds this text (letter case aside).
        #[arg(long, requires = "all")]
        error: Option<String>,
        /// With --all: only letters of tasks that died within this long (1h, 30m).
        #[arg(long, requires = "all", value_parser = humantime::parse_duration)]
        since: Option<std::time::Duration>,
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
        DeadCommand::Replay {
            ids,
            all,
            reason,
            error,
            since,
        } => {
            if ids.is_empty() && all.is_none() {
                anyhow::bail!("name the task ids to replay, or --all TASK ('*' for every type)");
            }
            let dead_after = since
                .map(|d| {
                    std::time::SystemTime::now()
                        .checked_sub(d)
                        .ok_or_else(|| anyhow::anyhow!("--since {d:?} reaches before 1970"))
                })
                .transpose()?
                .map(prost_types::Timestamp::from);
            let task = match all.as_deref() {
                Some("*") | None => String::new(),
                Some(task) => task.to_owned(),
            };
            let replayed = client
                .replay_dead_letters_matching(taskwire::v1::ReplayDeadLettersRequest {
                    task_ids: ids,
                    task,
                    all: all.is_some(),
                    reason: reason.unwrap_or_default(),
                    error_contains: error.unwrap_or_default(),
                    dead_after,
                    dead_before: None,
                })
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
