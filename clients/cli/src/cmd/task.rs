//! One task: `taskwire get`, `wait`, `watch` and `cancel`.

use std::io::IsTerminal as _;
use std::time::Duration;

use taskwire::v1::TaskState;
use taskwire_client::Client;

use crate::Error;
use crate::output::{info_json, print_result, progress_bar};

/// `taskwire get`: the task's state and result as JSON.
pub async fn get(client: &Client, id: &str) -> Result<i32, Error> {
    let info = client.get(id, true).await?;
    println!("{}", serde_json::to_string_pretty(&info_json(&info))?);
    Ok(0)
}

/// `taskwire wait`: the task's result once it ends.
pub async fn wait(client: &Client, id: &str, timeout: Duration) -> Result<i32, Error> {
    let info = client.wait(id, timeout, true).await?;
    print_result(&info)
}

/// `taskwire cancel`: the cancelled task as JSON.
pub async fn cancel(client: &Client, id: &str) -> Result<i32, Error> {
    let info = client.cancel(id).await?;
    println!("{}", serde_json::to_string_pretty(&info_json(&info))?);
    Ok(0)
}

/// Follows a task until it ends, drawing its progress; returns the exit code.
pub async fn watch(client: &Client, id: &str) -> Result<i32, Error> {
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
                    taskwire_protocol::state_name(info.state()),
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
