//! `taskwire worker`: the worker runtime, `taskwire-worker`, by this command's name. It serves
//! the task services of an upstream gRPC server (`taskwire worker --upstream
//! unix:///path/to.sock`); every argument goes to it as given.

use std::ffi::OsString;
use std::os::unix::process::CommandExt as _;

/// The arguments of `taskwire-worker` (`taskwire worker --help` lists them).
#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub args: Vec<OsString>,
}

/// Becomes `taskwire-worker` (the one beside this binary, else the one on PATH), so that its
/// signals, output and exit code are the runtime's own. Returns only when that fails.
pub fn run(options: Options) -> anyhow::Error {
    let binary = taskwire_supervisor::sibling_binary("taskwire-worker")
        .unwrap_or_else(|_| "taskwire-worker".into());
    let error = std::process::Command::new(&binary)
        .args(options.args)
        .exec();
    anyhow::anyhow!(
        "cannot start the worker runtime {}: {error}; build it (cargo build -p taskwire-worker) or put taskwire-worker on PATH",
        binary.display()
    )
}
