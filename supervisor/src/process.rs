//! Gateway and worker processes: found next to the running binary, started with their
//! settings, told apart by the addresses they write to their ports file, stopped with signals.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};

use crate::Error;

pub use taskwire_protocol::ports::{ENV as ENV_PORTS_FILE, Ports};

/// Sends SIGTERM and waits up to `grace`; then SIGKILL. (Elsewhere than Unix: kills at once.)
pub async fn terminate(child: &mut Child, grace: Duration) -> Option<std::process::ExitStatus> {
    #[cfg(unix)]
    if let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) {
        use nix::sys::signal::{self, Signal};
        let _ = signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGTERM);
        if let Ok(status) = tokio::time::timeout(grace, child.wait()).await {
            return status.ok();
        }
    }
    #[cfg(not(unix))]
    let _ = grace;
    let _ = child.kill().await;
    child.wait().await.ok()
}

/// A binary that ships next to the running one (`taskwire-gateway` beside `taskwire`).
pub fn sibling_binary(name: &str) -> Result<PathBuf, Error> {
    let exe = std::env::current_exe()?;
    let mut dirs = Vec::new();
    if let Some(dir) = exe.parent() {
        dirs.push(dir.to_path_buf());
        // Test binaries live in target/<profile>/deps.
        if let Some(parent) = dir.parent() {
            dirs.push(parent.to_path_buf());
        }
    }
    let file = format!("{name}{}", std::env::consts::EXE_SUFFIX);
    dirs.iter()
        .map(|d| d.join(&file))
        .find(|p| p.is_file())
        .ok_or_else(|| Error::Spawn {
            what: name.into(),
            reason: format!(
                "it is not next to {}; build every binary first (`cargo build --workspace --bins`, which `make` does)",
                exe.display()
            ),
        })
}

/// Settings of a gateway or worker child process.
#[derive(Debug, Clone, Default)]
pub struct ProcessSpec {
    /// Binary name, looked up next to the running binary.
    pub binary: String,
    /// Extra arguments.
    pub args: Vec<String>,
    /// Extra environment.
    pub env: Vec<(String, String)>,
    /// Pass stdout and stderr through (else discard them).
    pub inherit_output: bool,
}

/// Spawns a taskwire process that dies with its parent's handle.
pub fn spawn(spec: &ProcessSpec) -> Result<Child, Error> {
    let path = sibling_binary(&spec.binary)?;
    let mut command = Command::new(&path);
    command
        .args(&spec.args)
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .kill_on_drop(true);
    if !spec.inherit_output {
        command.stdout(Stdio::null()).stderr(Stdio::null());
    }
    command.spawn().map_err(|e| Error::Spawn {
        what: path.display().to_string(),
        reason: e.to_string(),
    })
}

/// Waits until `child`, started with `TASKWIRE_PORTS_FILE` = `file`, has written the addresses
/// it listens on there; an error when it exits first or takes longer than `waited`.
pub async fn wait_for_ports(
    child: &mut Child,
    file: &Path,
    waited: Duration,
) -> Result<Ports, Error> {
    let start = Instant::now();
    loop {
        if let Some(ports) = Ports::read(file) {
            return Ok(ports);
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(Error::Spawn {
                what: "a taskwire process".into(),
                reason: format!("it exited with {status} before it listened"),
            });
        }
        if start.elapsed() > waited {
            return Err(Error::NotReady {
                what: "a taskwire process".into(),
                waited,
                hint: format!(" (no addresses in {})", file.display()),
            });
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until a gateway at `endpoint` lists `task` (so a worker serving it has registered).
pub async fn wait_for_task(endpoint: &str, task: &str, waited: Duration) -> Result<(), Error> {
    let start = Instant::now();
    while start.elapsed() < waited {
        if let Ok(client) = taskwire_client::Client::connect(endpoint).await
            && let Ok(types) = client.task_types().await
            && types.iter().any(|t| t.name == task)
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(Error::NotReady {
        what: format!("the gateway at {endpoint}"),
        waited,
        hint: format!(" with task {task} registered"),
    })
}

/// The first child process of `pid` (from `/proc/<pid>/task/<pid>/children`): the worker
/// runtime a Python or TypeScript worker started beside it.
pub fn child_of(pid: u32) -> Option<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Peak resident memory of a process in MiB, from /proc (Linux).
pub fn peak_rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// The body of `GET http://{host}{path}` in plain HTTP/1.0, which the server answers and closes:
/// for the monitoring endpoints of nats-server (`/connz`, `/varz`) and the gateway's `/metrics`
/// and dashboard API. An answer other than 200 is an error naming it.
pub async fn http_get(host: &str, path: &str) -> Result<String, Error> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = tokio::net::TcpStream::connect(host).await?;
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n").as_bytes())
        .await?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await?;
    let text = String::from_utf8_lossy(&answer);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return Err(Error::Io(std::io::Error::other(format!(
            "no body in the answer to GET {path} from {host}"
        ))));
    };
    let status = head.lines().next().unwrap_or_default();
    if !(status.starts_with("HTTP/1.0 200") || status.starts_with("HTTP/1.1 200")) {
        return Err(Error::Io(std::io::Error::other(format!(
            "GET {path} from {host}: {status}"
        ))));
    }
    Ok(body.to_owned())
}
