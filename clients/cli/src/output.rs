//! How the command prints what it got: tasks as JSON, results, times and durations.

use taskwire::v1::{TaskInfo, TaskState};

use crate::Error;

/// Prints a finished task's result JSON; a failed or cancelled task is reported on stderr and
/// exits 1.
pub(crate) fn print_result(info: &TaskInfo) -> Result<i32, Error> {
    match info.state() {
        TaskState::Succeeded => {
            println!("{}", info.result_json);
            Ok(0)
        }
        state => {
            let reason = info
                .error
                .as_ref()
                .map(|e| e.message.as_str())
                .unwrap_or("no reason given");
            eprintln!(
                "taskwire: task {} {}: {}",
                info.task_id,
                taskwire_protocol::state_name(state),
                reason
            );
            Ok(1)
        }
    }
}

/// A task's state as a JSON object.
pub fn info_json(info: &TaskInfo) -> serde_json::Value {
    let mut out = serde_json::json!({
        "id": info.task_id,
        "task": info.task,
        "state": taskwire_protocol::state_name(info.state()),
        "attempt": info.attempt,
    });
    if let Some(time) = &info.updated_at {
        out["updated_at"] = serde_json::Value::String(time.to_string());
    }
    if let Some(time) = &info.submitted_at {
        out["submitted_at"] = serde_json::Value::String(time.to_string());
    }
    if !info.result_json.is_empty()
        && let Ok(result) = serde_json::from_str::<serde_json::Value>(&info.result_json)
    {
        out["result"] = result;
    }
    if let Some(error) = &info.error {
        out["error"] =
            serde_json::json!({ "message": error.message, "retryable": error.retryable });
    }
    if let Some(progress) = &info.progress {
        out["progress"] =
            serde_json::json!({ "percent": progress.percent, "message": progress.message });
    }
    if let Some(time) = &info.not_before {
        out["not_before"] = serde_json::Value::String(time.to_string());
    }
    if !info.parent_id.is_empty() {
        out["parent_id"] = info.parent_id.clone().into();
    }
    if !info.children.is_empty() {
        out["children"] = info
            .children
            .iter()
            .map(|c| serde_json::json!({ "id": c.task_id, "task": c.task }))
            .collect();
    }
    out
}

/// A protobuf duration in seconds (0 when absent).
pub(crate) fn seconds(d: &Option<prost_types::Duration>) -> f64 {
    d.as_ref()
        .map_or(0.0, |d| d.seconds as f64 + f64::from(d.nanos) / 1e9)
}

/// A protobuf timestamp as RFC 3339 (empty when absent).
pub(crate) fn time_text(t: &Option<prost_types::Timestamp>) -> String {
    t.as_ref().map(|t| t.to_string()).unwrap_or_default()
}

/// A 30-character progress bar.
pub(crate) fn progress_bar(percent: f32) -> String {
    let filled = ((percent.clamp(0.0, 100.0) / 100.0) * 30.0).round() as usize;
    format!("[{}{}]", "#".repeat(filled), ".".repeat(30 - filled))
}
