//! `taskwire workflow`: workflows from a JSON file.
//!
//! ```json
//! {
//!   "chain": [
//!     {"name": "sum", "task": "examples.flow.v1.Flow/Sum", "args": {"values": [1, 2, 3]}},
//!     {"name": "double", "task": "examples.flow.v1.Flow/Double"},
//!     {"name": "scale", "task": "examples.flow.v1.Flow/Scale", "args": {"factor": 10},
//!      "fields": ["total -> value"]}
//!   ]
//! }
//! ```
//!
//! `chain` runs each step after the one before it; `steps` runs each after the steps its
//! `after` names (a step with several takes their results into its `collect` field; one with
//! `for_each` runs a task per element of that field of the result it takes). A step may
//! also give `max_attempts`, `timeout`, `priority` and `ttl`; the workflow `on_failure` (a step
//! whose task takes a `taskwire.v1.WorkflowFailure`), `let_running_finish` and `key`.

use std::time::Duration;

use clap::Subcommand;
use taskwire::v1::{self, StepState, WorkflowState};
use taskwire_client::{Client, SubmitOptions};

use super::{file_duration, file_priority};
use crate::Error;
use crate::output::{info_json, time_text};

/// `taskwire workflow ...`.
#[derive(Debug, Subcommand)]
pub enum WorkflowCommand {
    /// Submit the workflow in FILE (- for standard input); prints its id, or with --wait its
    /// state once it ended.
    Submit {
        file: String,
        /// Wait for the workflow to end (up to --timeout) and print it.
        #[arg(long)]
        wait: bool,
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        timeout: Duration,
    },
    /// Print a workflow and each step's state as JSON.
    Get { id: String },
    /// Wait for a workflow to end and print it; exits 1 unless it succeeded.
    Wait {
        id: String,
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        timeout: Duration,
    },
    /// Follow a workflow until it ends: its state as a JSON line on every change; exits 1
    /// unless it succeeded.
    Watch { id: String },
    /// Cancel a workflow: no further step starts, running ones are told to stop.
    Cancel { id: String },
}

pub async fn run(client: &Client, command: WorkflowCommand) -> Result<i32, Error> {
    match command {
        WorkflowCommand::Submit {
            file,
            wait,
            timeout,
        } => {
            let (workflow, key) = read(&file)?;
            let (id, duplicate) = client.submit_workflow_keyed(workflow, &key).await?;
            if duplicate {
                eprintln!("taskwire: the key names workflow {id}, submitted before");
            }
            if !wait {
                println!("{id}");
                return Ok(0);
            }
            print_ended(&client.wait_workflow(&id, timeout, true).await?)
        }
        WorkflowCommand::Get { id } => {
            let info = client.workflow(&id, true).await?;
            println!("{}", serde_json::to_string_pretty(&workflow_json(&info))?);
            Ok(0)
        }
        WorkflowCommand::Wait { id, timeout } => {
            print_ended(&client.wait_workflow(&id, timeout, true).await?)
        }
        WorkflowCommand::Watch { id } => {
            let mut changes = client.watch_workflow(&id, true).await?;
            let mut last = None;
            while let Some(info) = changes
                .message()
                .await
                .map_err(taskwire_client::Error::Status)?
            {
                println!("{}", workflow_json(&info));
                last = Some(info);
            }
            Ok(i32::from(last.is_none_or(|info| {
                info.state() != WorkflowState::Succeeded
            })))
        }
        WorkflowCommand::Cancel { id } => {
            let info = client.cancel_workflow(&id).await?;
            println!("{}", serde_json::to_string_pretty(&workflow_json(&info))?);
            Ok(0)
        }
    }
}

fn print_ended(info: &v1::WorkflowInfo) -> Result<i32, Error> {
    println!("{}", serde_json::to_string_pretty(&workflow_json(info))?);
    Ok(i32::from(info.state() != WorkflowState::Succeeded))
}

fn state_name(state: WorkflowState) -> &'static str {
    match state {
        WorkflowState::Running | WorkflowState::Unspecified => "running",
        WorkflowState::Succeeded => "succeeded",
        WorkflowState::Failed => "failed",
        WorkflowState::Cancelled => "cancelled",
    }
}

/// A workflow as a JSON object: its state and each step's.
pub fn workflow_json(info: &v1::WorkflowInfo) -> serde_json::Value {
    let steps: Vec<serde_json::Value> = info
        .steps
        .iter()
        .map(|step| {
            let mut out = serde_json::json!({
                "name": step.name,
                "task": step.task,
                "task_id": step.task_id,
                "state": match step.state() {
                    StepState::Waiting | StepState::Unspecified => "waiting",
                    StepState::Skipped => "skipped",
                    StepState::Submitted => step
                        .info
                        .as_ref()
                        .map_or("queued", |i| taskwire_protocol::state_name(i.state())),
                },
            });
            if step.on_failure {
                out["on_failure"] = true.into();
            }
            if step.elements > 0 {
                out["elements"] = step.elements.into();
                out["elements_succeeded"] = step.elements_succeeded.into();
            }
            if let Some(task) = &step.info {
                let task = info_json(task);
                for key in ["result", "error", "attempt"] {
                    if let Some(value) = task.get(key) {
                        out[key] = value.clone();
                    }
                }
            }
            out
        })
        .collect();
    let mut out = serde_json::json!({
        "id": info.workflow_id,
        "state": state_name(info.state()),
        "steps": steps,
        "created_at": time_text(&info.created_at),
        "trace_id": info.trace_id,
    });
    if !info.failed_step.is_empty() {
        out["failed_step"] = info.failed_step.clone().into();
    }
    if let Some(error) = &info.error {
        out["error"] = error.message.clone().into();
    }
    if info.ended_at.is_some() {
        out["ended_at"] = time_text(&info.ended_at).into();
    }
    out
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    chain: Vec<StepLine>,
    #[serde(default)]
    steps: Vec<StepLine>,
    on_failure: Option<StepLine>,
    #[serde(default)]
    let_running_finish: bool,
    #[serde(default)]
    key: String,
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct StepLine {
    name: String,
    task: String,
    #[serde(default)]
    after: Vec<String>,
    args: Option<serde_json::Value>,
    #[serde(default)]
    fields: Vec<String>,
    #[serde(default)]
    collect: String,
    #[serde(default)]
    for_each: String,
    max_attempts: Option<u32>,
    timeout: Option<String>,
    priority: Option<String>,
    ttl: Option<String>,
}

/// The workflow in `file` and its idempotency key; every problem named with the step.
fn read(file: &str) -> Result<(taskwire_client::workflow::Workflow, String), Error> {
    use taskwire_client::workflow::{Step, Workflow};
    let text = if file == "-" {
        std::io::read_to_string(std::io::stdin())?
    } else {
        std::fs::read_to_string(file).map_err(|e| anyhow::anyhow!("cannot read {file}: {e}"))?
    };
    let parsed: File = serde_json::from_str(&text).map_err(|e| {
        anyhow::anyhow!(
            "{file}: {e} (expected {{\"chain\": [{{\"name\": ..., \"task\": \"pkg.Service/Method\", \"args\": {{...}}}}, ...]}} or \"steps\"); nothing was submitted"
        )
    })?;
    let chain = !parsed.chain.is_empty();
    if chain && !parsed.steps.is_empty() {
        anyhow::bail!("{file}: give \"chain\" or \"steps\", not both; nothing was submitted");
    }
    let step = |line: StepLine| -> Result<Step, Error> {
        let at = |what: String| {
            anyhow::anyhow!(
                "{file}: step {:?}: {what}; nothing was submitted",
                line.name
            )
        };
        let priority = file_priority(line.priority.as_deref(), &at)?;
        let options = SubmitOptions {
            max_attempts: line.max_attempts,
            timeout: file_duration("timeout", line.timeout.as_deref(), &at)?,
            ttl: file_duration("ttl", line.ttl.as_deref(), &at)?,
            priority,
            ..SubmitOptions::default()
        };
        let mut step = Step::new(line.name.clone(), line.task.clone()).options(options);
        if let Some(args) = &line.args {
            step = step.args_json(args.to_string());
        }
        for after in &line.after {
            step = step.after(after.clone());
        }
        for mapping in &line.fields {
            let Some((from, to)) = mapping.split_once("->") else {
                return Err(at(format!(
                    "field {mapping:?} is not \"<result field> -> <input field>\", e.g. \"total -> value\""
                )));
            };
            let from = from.trim().rsplit('.').next().unwrap_or_default();
            let to = to.trim().rsplit('.').next().unwrap_or_default();
            step = step.field(from, to);
        }
        if !line.collect.is_empty() {
            step = step.collect(line.collect.clone());
        }
        if !line.for_each.is_empty() {
            step = step.for_each(line.for_each.clone());
        }
        Ok(step)
    };
    let lines = if chain { parsed.chain } else { parsed.steps };
    if lines.is_empty() {
        anyhow::bail!("{file}: the workflow has no steps; nothing was submitted");
    }
    let steps = lines.into_iter().map(step).collect::<Result<Vec<_>, _>>()?;
    let mut workflow = if chain {
        Workflow::chain(steps)
    } else {
        Workflow::of(steps)
    };
    if let Some(line) = parsed.on_failure {
        workflow = workflow.on_failure(step(line)?);
    }
    if parsed.let_running_finish {
        workflow = workflow.let_running_finish();
    }
    Ok((workflow, parsed.key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chain_file_runs_each_step_after_the_one_before() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let path = dir.path().join("w.json");
        std::fs::write(
            &path,
            r#"{"chain": [
                {"name": "sum", "task": "examples.flow.v1.Flow/Sum", "args": {"values": [1]}},
                {"name": "scale", "task": "examples.flow.v1.Flow/Scale", "args": {"factor": 2},
                 "fields": ["Total.total -> ScaleArgs.value"], "max_attempts": 2}
            ], "key": "k"}"#,
        )
        .expect("written");
        let (workflow, key) = read(path.to_str().expect("a path")).expect("read");
        let workflow = workflow.into_proto();
        assert_eq!(key, "k");
        assert_eq!(workflow.steps[1].after, vec!["sum".to_owned()]);
        assert_eq!(workflow.steps[1].fields[0].from, "total");
        assert_eq!(workflow.steps[1].fields[0].to, "value");
        assert_eq!(
            workflow.steps[1].options.as_ref().map(|o| o.max_attempts),
            Some(2)
        );
        std::fs::write(
            &path,
            r#"{"chain": [{"name": "a", "task": "x.y.Z/W", "fields": ["a"]}]}"#,
        )
        .expect("written");
        let err = read(path.to_str().expect("a path")).expect_err("a bad field");
        assert!(err.to_string().contains("step \"a\""), "{err}");
        std::fs::write(&path, r#"{"chian": []}"#).expect("written");
        let err = read(path.to_str().expect("a path")).expect_err("a typo");
        assert!(err.to_string().contains("chian"), "{err}");
    }
}
