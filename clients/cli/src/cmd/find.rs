//! `taskwire tasks list` and `taskwire tasks cancel`: the tasks that match a filter, listed or
//! cancelled in bulk.

use std::io::IsTerminal as _;
use std::time::{Duration, SystemTime};

use clap::{Args, Subcommand, ValueEnum};
use taskwire::v1::{self, TaskState};
use taskwire_client::Client;

use crate::Error;
use crate::output::info_json;

/// `taskwire tasks ...`.
#[derive(Debug, Subcommand)]
pub enum TasksCommand {
    /// The registered task types with their input and output messages (what `taskwire tasks`
    /// alone prints).
    Types,
    /// The tasks the broker keeps that match the filter: those not finished first, in the order
    /// they were stored, then the finished ones in the order they finished.
    List {
        #[command(flatten)]
        filter: FilterArgs,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// Output: a table, or one JSON object per line.
        #[arg(long, short = 'o', value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Cancel every task that matches the filter and has not finished; prints how many.
    Cancel {
        #[command(flatten)]
        filter: FilterArgs,
        /// Cancel without asking (needed when standard input is no terminal).
        #[arg(long)]
        yes: bool,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
}

/// Which tasks: every option given must hold.
#[derive(Debug, Args)]
pub struct FilterArgs {
    /// A task type, or a pattern where `*` stands for any run of characters ('examples.*').
    #[arg(long)]
    task: Option<String>,
    /// In one of these states (repeat, or separate with commas): queued, scheduled, running,
    /// retrying, succeeded, failed, cancelled, expired.
    #[arg(long, value_delimiter = ',')]
    state: Vec<String>,
    /// Changed within this long (1h, 30m): finished then, for finished states only; else
    /// submitted then.
    #[arg(long, value_parser = humantime::parse_duration)]
    since: Option<Duration>,
    /// Submitted at or after this time (RFC 3339, e.g. 2026-12-07T10:00:00Z).
    #[arg(long, value_parser = humantime::parse_rfc3339_weak)]
    submitted_after: Option<SystemTime>,
    /// Submitted at or before this time.
    #[arg(long, value_parser = humantime::parse_rfc3339_weak)]
    submitted_before: Option<SystemTime>,
    /// Finished at or after this time.
    #[arg(long, value_parser = humantime::parse_rfc3339_weak)]
    finished_after: Option<SystemTime>,
    /// Finished at or before this time.
    #[arg(long, value_parser = humantime::parse_rfc3339_weak)]
    finished_before: Option<SystemTime>,
    /// The error message holds this text (letter case aside).
    #[arg(long)]
    error: Option<String>,
    /// The task this idempotency key names (with --task naming its type).
    #[arg(long)]
    key: Option<String>,
    /// The steps of this workflow.
    #[arg(long)]
    workflow: Option<String>,
    /// The tasks this one submitted from its context.
    #[arg(long)]
    parent: Option<String>,
}

const FINISHED: [TaskState; 4] = [
    TaskState::Succeeded,
    TaskState::Failed,
    TaskState::Cancelled,
    TaskState::Expired,
];

impl FilterArgs {
    fn to_filter(&self) -> Result<v1::TaskFilter, Error> {
        let mut states = Vec::new();
        for text in &self.state {
            let state = taskwire_protocol::parse_state(text.trim());
            if state == TaskState::Unspecified {
                anyhow::bail!(
                    "--state {text:?} is none of queued, scheduled, running, retrying, waiting, succeeded, failed, cancelled, expired"
                );
            }
            states.push(state);
        }
        let stamp = |t: Option<SystemTime>| t.map(prost_types::Timestamp::from);
        // The gateway counts `--since` back from its own clock: the finish time for finished
        // states, else the submit time.
        let within = self
            .since
            .map(|since| {
                prost_types::Duration::try_from(since)
                    .map_err(|_| anyhow::anyhow!("--since {since:?} is too long"))
            })
            .transpose()?;
        let filter = v1::TaskFilter {
            task: self.task.clone().unwrap_or_default(),
            states: states.iter().map(|s| *s as i32).collect(),
            submitted_after: stamp(self.submitted_after),
            submitted_before: stamp(self.submitted_before),
            finished_after: stamp(self.finished_after),
            finished_before: stamp(self.finished_before),
            error_contains: self.error.clone().unwrap_or_default(),
            idempotency_key: self.key.clone().unwrap_or_default(),
            workflow_id: self.workflow.clone().unwrap_or_default(),
            parent_id: self.parent.clone().unwrap_or_default(),
            within,
        };
        Ok(filter)
    }
}

/// Runs `taskwire tasks ...`.
pub async fn run(client: &Client, command: TasksCommand) -> Result<i32, Error> {
    match command {
        TasksCommand::Types => crate::cmd::types::list(client).await,
        TasksCommand::List {
            filter,
            limit,
            output,
        } => {
            let tasks = client.find_tasks(filter.to_filter()?, limit).await?;
            match output {
                Output::Json => {
                    for info in &tasks {
                        println!("{}", info_json(info));
                    }
                }
                Output::Table => {
                    println!(
                        "{:32}  {:10}  {:>7}  {:24}  TASK",
                        "ID", "STATE", "ATTEMPT", "UPDATED"
                    );
                    for info in &tasks {
                        println!(
                            "{:32}  {:10}  {:>7}  {:24}  {}",
                            info.task_id,
                            taskwire_protocol::state_name(info.state()),
                            info.attempt,
                            info.updated_at
                                .as_ref()
                                .map(|t| t.to_string())
                                .unwrap_or_default(),
                            info.task
                        );
                    }
                    eprintln!("{} task(s)", tasks.len());
                }
            }
            Ok(0)
        }
        TasksCommand::Cancel { filter, yes } => {
            let filter = filter.to_filter()?;
            if !yes {
                if !std::io::stdin().is_terminal() {
                    anyhow::bail!(
                        "cancelling by filter cancels every matching task that has not finished: add --yes"
                    );
                }
                let shown = client.find_tasks(filter.clone(), 1000).await?;
                let open = shown
                    .iter()
                    .filter(|t| !FINISHED.contains(&t.state()))
                    .count();
                let more = if shown.len() == 1000 { " or more" } else { "" };
                eprint!("cancel {open}{more} task(s) that have not finished? [y/N] ");
                let mut answer = String::new();
                std::io::stdin().read_line(&mut answer)?;
                if !matches!(answer.trim(), "y" | "Y" | "yes") {
                    eprintln!("nothing cancelled");
                    return Ok(1);
                }
            }
            let cancelled = client.cancel_many(filter).await?;
            println!("cancelled {cancelled} task(s)");
            Ok(0)
        }
    }
}
