//! `taskwire schedule`: tasks submitted on a cron expression or an interval.

use std::time::Duration;

use clap::Subcommand;
use taskwire::v1;
use taskwire_client::{Client, SubmitOptions};

use super::Priority;
use crate::Error;

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
        /// Cron expression: five fields, six with seconds first, or @hourly, @daily...
        #[arg(long, required_unless_present = "every", conflicts_with = "every")]
        cron: Option<String>,
        /// The IANA time zone the cron expression is read in, e.g. Europe/Berlin (default UTC).
        #[arg(long, requires = "cron")]
        time_zone: Option<String>,
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

/// Runs a schedule command; prints the schedule(s) as JSON.
pub async fn run(client: &Client, command: ScheduleCommand) -> Result<i32, Error> {
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
            time_zone,
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
                    time_zone: time_zone.unwrap_or_default(),
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
    if !schedule.time_zone.is_empty() {
        out["time_zone"] = schedule.time_zone.clone().into();
    }
    out["next_fires"] = schedule
        .next_fires
        .iter()
        .map(|t| serde_json::Value::from(t.to_string()))
        .collect();
    out
}
