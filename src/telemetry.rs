//! Log set-up, the same for every taskwire process: lines on stderr, filtered by `TASKWIRE_LOG`
//! (e.g. `info` or `taskwire_worker=debug`); human-readable by default, one JSON object a line
//! with `TASKWIRE_LOG_FORMAT=json`. Inside a task, every line carries the task's name, id and
//! attempt (the worker runs each task in a `task` span).

/// Variable that holds the log filter.
pub const ENV_LOG: &str = "TASKWIRE_LOG";
/// Variable that picks the format: `text` (the default) or `json`.
pub const ENV_LOG_FORMAT: &str = "TASKWIRE_LOG_FORMAT";

/// Installs the global subscriber; `default` is the filter when `TASKWIRE_LOG` is unset.
pub fn init(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env(ENV_LOG)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let json = std::env::var(ENV_LOG_FORMAT).is_ok_and(|f| f.eq_ignore_ascii_case("json"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if json {
        builder
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .try_init()
    } else {
        builder.try_init()
    };
}
