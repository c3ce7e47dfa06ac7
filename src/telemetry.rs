//! Log set-up, the same for every taskwire process: human-readable lines on stderr, filtered
//! by `TASKWIRE_LOG` (e.g. `info` or `taskwire_worker=debug`).

/// Variable that holds the log filter.
pub const ENV_LOG: &str = "TASKWIRE_LOG";

/// Installs the global subscriber; `default` is the filter when `TASKWIRE_LOG` is unset.
pub fn init(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env(ENV_LOG)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
