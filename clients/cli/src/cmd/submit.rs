//! `taskwire submit` and `taskwire submit-many`.

use std::io::{BufRead as _, Write as _};
use std::time::Duration;

use taskwire::v1;
use taskwire_client::{Client, SubmitOptions};

use super::When;
use crate::Error;
use crate::output::print_result;

/// The arguments of `taskwire submit`.
#[derive(Debug, clap::Args)]
pub struct Submit {
    /// Full task name, e.g. examples.magic.v1.Magic/Add.
    pub task: String,
    /// Arguments as proto3 JSON, e.g. '{"arg1":1,"arg2":2,"arg3":3}'.
    #[arg(default_value = "{}")]
    pub args: String,
    /// Wait for the result and print it as JSON.
    #[arg(long)]
    pub wait: bool,
    /// How long --wait waits.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// Idempotency key: the same key within the duplicate window gives the same task.
    #[arg(long)]
    pub key: Option<String>,
    /// Attempts in all, overriding the task's option.
    #[arg(long)]
    pub max_attempts: Option<u32>,
    /// Time limit of one attempt, overriding the task's option (e.g. 30s).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub time_limit: Option<Duration>,
    #[command(flatten)]
    pub when: When,
}

/// `taskwire submit`: the task's id, or with `--wait` its result.
pub async fn submit(client: &Client, args: Submit) -> Result<i32, Error> {
    let Submit {
        task,
        args,
        wait,
        timeout,
        key,
        max_attempts,
        time_limit,
        when,
    } = args;
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

/// `taskwire submit-many`: one id (or error) per line of the file; exits 1 when any was
/// refused.
pub async fn submit_many(client: &Client, requests: Vec<v1::SubmitRequest>) -> Result<i32, Error> {
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
pub fn read_jsonl(file: &str) -> Result<Vec<v1::SubmitRequest>, Error> {
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
        let priority = super::file_priority(parsed.priority.as_deref(), &at)?;
        let options = SubmitOptions {
            idempotency_key: parsed.key,
            max_attempts: parsed.max_attempts,
            countdown: super::file_duration("countdown", parsed.countdown.as_deref(), &at)?,
            ttl: super::file_duration("ttl", parsed.ttl.as_deref(), &at)?,
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
