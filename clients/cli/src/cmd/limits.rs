//! `taskwire limits`: a task type's cluster-wide limits, shown or set.

use taskwire::v1;
use taskwire_client::Client;

use crate::Error;

/// The arguments of `taskwire limits`.
#[derive(Debug, clap::Args)]
pub struct Limits {
    /// Full task name.
    pub task: String,
    /// Most tasks running at once across all workers (0: no limit).
    #[arg(long)]
    pub concurrency: Option<u32>,
    /// Most tasks started per period across all workers: 10/s, 600/m, 5/h ("" : no limit).
    #[arg(long)]
    pub rate: Option<String>,
    /// Count --concurrency per value of this field of the arguments ("": for the task type).
    #[arg(long, value_name = "FIELD")]
    pub concurrency_key: Option<String>,
    /// Count --rate per value of this field of the arguments ("": for the task type).
    #[arg(long, value_name = "FIELD")]
    pub rate_key: Option<String>,
    /// Drop the override: the declared limits apply again.
    #[arg(long, conflicts_with_all = ["concurrency", "rate", "concurrency_key", "rate_key"])]
    pub clear: bool,
}

/// Shows the limits in force, or sets (or clears) the override first.
pub async fn run(client: &Client, args: Limits) -> Result<i32, Error> {
    let Limits {
        task,
        concurrency,
        rate,
        concurrency_key,
        rate_key,
        clear,
    } = args;
    let response = if clear {
        client.set_task_limits(&task, None).await?
    } else if concurrency.is_some()
        || rate.is_some()
        || concurrency_key.is_some()
        || rate_key.is_some()
    {
        let current = client.task_limits(&task).await?.limits.unwrap_or_default();
        let limits = v1::TaskLimits {
            max_concurrency: concurrency.unwrap_or(current.max_concurrency),
            rate_limit: rate.unwrap_or(current.rate_limit),
            concurrency_key_field: concurrency_key.unwrap_or(current.concurrency_key_field),
            rate_limit_key_field: rate_key.unwrap_or(current.rate_limit_key_field),
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
        "concurrency_key_field": limits.concurrency_key_field,
        "rate_limit_key_field": limits.rate_limit_key_field,
        "overridden": response.overridden,
    });
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(0)
}
