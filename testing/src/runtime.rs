//! The worker runtimes under test, as real processes, and the run log they keep.
//!
//! Both test workers (the Rust `taskwire-test-worker` and the Python
//! `clients/python/examples/worker.py`) serve the magic and chaos services, and with
//! `TASKWIRE_RUN_LOG` set append a line `start|end <task id> <attempt> <µs since the epoch>
//! <pid>` for every run of a handler.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::process::Child;

/// A worker runtime.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Runtime {
    /// `taskwire-test-worker`.
    Rust,
    /// `clients/python/examples/worker.py` (with `TASKWIRE_PYTHON`): the Python worker package,
    /// on the worker runtime.
    Python,
    /// `clients/python/examples/plain_worker.py`: a plain grpcio server of the contracts, with
    /// nothing from taskwire's Python package, served by the worker runtime beside it.
    Plain,
    /// `clients/typescript/dist/examples/worker.js` (built by `clients/typescript/check.sh
    /// build`; node from `TASKWIRE_NODE`, else `node`): the TypeScript worker package, on the
    /// worker runtime.
    TypeScript,
}

/// A test worker of `runtime` as a real process, killed when dropped. `env` adds to or
/// overrides `TASKWIRE_NATS_URL` and a quiet log.
pub fn worker(runtime: Runtime, nats_url: &str, env: &[(&str, &str)]) -> anyhow::Result<Child> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let python_dir = root.join("clients/python");
    let generated = python_dir.join("tests/gen");
    let mut command = match runtime {
        Runtime::Rust => return crate::worker_process(nats_url, env),
        Runtime::TypeScript => {
            let node = std::env::var("TASKWIRE_NODE").unwrap_or_else(|_| "node".to_owned());
            let script = root.join("clients/typescript/dist/examples/worker.js");
            anyhow::ensure!(
                script.exists(),
                "{} is missing: run bash clients/typescript/check.sh build",
                script.display()
            );
            let mut command = tokio::process::Command::new(node);
            command
                .arg(script)
                .env("TASKWIRE_WORKER_BIN", crate::bin("taskwire-worker")?);
            command
        }
        Runtime::Python => {
            let mut command = tokio::process::Command::new(python());
            command
                .arg(python_dir.join("examples/worker.py"))
                .env("TASKWIRE_WORKER_BIN", crate::bin("taskwire-worker")?)
                .env(
                    "PYTHONPATH",
                    format!("{}:{}", python_dir.display(), generated.display()),
                );
            command
        }
        Runtime::Plain => {
            let mut command = plain_server();
            command.arg("--runtime").arg(crate::bin("taskwire-worker")?);
            command
        }
    };
    // Quiet unless the caller's environment asks for more.
    let python_log = std::env::var("TASKWIRE_PY_LOG").unwrap_or_else(|_| "ERROR".to_owned());
    Ok(command
        .env("TASKWIRE_LOG", "warn")
        .env("TASKWIRE_PY_LOG", python_log)
        .env("TASKWIRE_NATS_URL", nats_url)
        .envs(env.iter().copied())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()?)
}

/// `clients/python/examples/plain_worker.py`, the plain grpcio server of the example contracts,
/// with the generated modules alone on its path (not taskwire's package); arguments to add.
pub fn plain_server() -> tokio::process::Command {
    let python_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../clients/python");
    let mut command = tokio::process::Command::new(python());
    command
        .arg(python_dir.join("examples/plain_worker.py"))
        .env(
            "PYTHONPATH",
            format!(
                "{}:{}",
                python_dir.join("tests/gen").display(),
                python_dir.join("tests/gen_plain").display()
            ),
        );
    command
}

/// `clients/python/examples/worker.py --serve`: the Python worker's handlers served on their
/// own (no runtime), as a runtime beside them calls them; the address to add.
pub fn python_handlers() -> tokio::process::Command {
    let python_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../clients/python");
    let mut command = tokio::process::Command::new(python());
    command
        .arg(python_dir.join("examples/worker.py"))
        .arg("--serve")
        .env(
            "PYTHONPATH",
            format!(
                "{}:{}",
                python_dir.display(),
                python_dir.join("tests/gen").display()
            ),
        );
    command
}

/// The Python of `TASKWIRE_PYTHON` (the project's venv under `make test`), else `python3`.
fn python() -> String {
    std::env::var("TASKWIRE_PYTHON").unwrap_or_else(|_| "python3".to_owned())
}

/// One run a worker logged.
#[derive(Debug, Clone)]
pub struct Run {
    /// The attempt the run was.
    pub attempt: u32,
    /// When the handler started.
    pub start: SystemTime,
    /// When it ended, if it did.
    pub end: Option<SystemTime>,
}

/// The runs in a run log, by task id, in the order they started.
pub fn read_runs(path: &Path) -> anyhow::Result<HashMap<String, Vec<Run>>> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e.into()),
    };
    let mut runs: HashMap<String, Vec<Run>> = HashMap::new();
    let at = |micros: &str| -> Option<SystemTime> {
        Some(UNIX_EPOCH + Duration::from_micros(micros.parse().ok()?))
    };
    let mut lines: Vec<(SystemTime, &str, &str, u32)> = text
        .lines()
        .filter_map(|line| {
            let mut parts = line.split(' ');
            let (event, id, attempt, time) =
                (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
            Some((at(time)?, event, id, attempt.parse().ok()?))
        })
        .collect();
    lines.sort_by_key(|(time, ..)| *time);
    for (time, event, id, attempt) in lines {
        let list = runs.entry(id.to_owned()).or_default();
        match event {
            "start" => list.push(Run {
                attempt,
                start: time,
                end: None,
            }),
            _ => {
                if let Some(run) = list
                    .iter_mut()
                    .rev()
                    .find(|r| r.attempt == attempt && r.end.is_none())
                {
                    run.end = Some(time);
                }
            }
        }
    }
    Ok(runs)
}
