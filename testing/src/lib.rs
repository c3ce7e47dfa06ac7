//! Test support for taskwire: real processes and real ports, never a mock broker.
//!
//! - [`NatsServer`]: a nats-server (>= 2.14) on a free loopback port with a temporary file
//!   store, killed on drop. If none is found, the error says how to get one (`make tools`).
//! - [`Gateway`] and [`Worker`]: the gateway and a worker in-process on port 0, stopped on drop.
//! - [`bin`]: the project's binaries, to run as real processes (`make test` builds them first).
//! - [`tasks`]: implementations of the example contracts for workers under test.
//!
//! ```no_run
//! # async fn run() -> anyhow::Result<()> {
//! use taskwire_testing::{Gateway, NatsServer, Worker, tasks};
//! let nats = NatsServer::start_temporary().await?;
//! let gateway = Gateway::start(&nats.url()).await?;
//! let _worker = Worker::start(&nats.url(), |w| w.serve(tasks::magic())).await?;
//! // gRPC on gateway.url()
//! # Ok(())
//! # }
//! ```

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use taskwire_gateway::Config;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use taskwire_supervisor::{NatsCluster, NatsServer, Ports, http_get, terminate, wait_for_task};

/// Loopback, on a port the listener chooses: for the HTTP address of a gateway or worker under
/// test, which then says the port it got (see [`Gateway::http_addr`], [`worker_process_ports`]).
pub const LOOPBACK_ANY_PORT: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 0);

pub mod chaos;
pub mod model;
pub mod runtime;
pub mod tasks;

/// A gateway serving in this process on a free port.
#[derive(Debug)]
pub struct Gateway {
    url: String,
    http_addr: Option<SocketAddr>,
    stop: CancellationToken,
    handle: Option<JoinHandle<Result<(), taskwire_gateway::Error>>>,
}

impl Gateway {
    /// A gateway with the default settings.
    pub async fn start(nats_url: &str) -> anyhow::Result<Self> {
        Self::start_with(Config::new(nats_url)).await
    }

    /// A gateway with these settings. Returns once it answers gRPC calls.
    /// With an HTTP address on port 0 ([`LOOPBACK_ANY_PORT`]), the port it got is
    /// [`Gateway::http_addr`].
    pub async fn start_with(mut config: Config) -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let ports = tempfile::tempdir()?;
        let ports_file = ports.path().join("ports.json");
        config.ports_file = Some(ports_file.clone());
        let stop = CancellationToken::new();
        let signal = stop.clone();
        let tls = config.tls.is_some();
        let handle = tokio::spawn(async move {
            taskwire_gateway::serve(listener, config, async move { signal.cancelled().await }).await
        });
        let mut gateway = Self {
            url,
            http_addr: None,
            stop,
            handle: Some(handle),
        };
        gateway.wait_ready(tls).await?;
        gateway.http_addr = eventually_some("the gateway's ports file", || {
            Ports::read(&ports_file).map(|p| p.http)
        })
        .await?;
        Ok(gateway)
    }

    /// The address of its dashboard and `/metrics`, when it serves them.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http_addr
    }

    /// Waits until the gateway answers its (always open) health service; with TLS, only until
    /// it has started (the listener is bound already, so later connections wait for it).
    async fn wait_ready(&mut self, tls: bool) -> anyhow::Result<()> {
        let start = Instant::now();
        loop {
            if let Some(handle) = self.handle.take_if(|h| h.is_finished()) {
                handle.await??;
                anyhow::bail!("the gateway stopped before it served");
            }
            if tls {
                if start.elapsed() > Duration::from_millis(200) {
                    return Ok(());
                }
            } else if let Ok(channel) = tonic::transport::Endpoint::from_shared(self.url.clone())?
                .connect()
                .await
                && let Ok(answer) = tonic_health::pb::health_client::HealthClient::new(channel)
                    .check(tonic_health::pb::HealthCheckRequest::default())
                    .await
                && answer.into_inner().status()
                    == tonic_health::pb::health_check_response::ServingStatus::Serving
            {
                return Ok(());
            }
            if start.elapsed() > Duration::from_secs(20) {
                anyhow::bail!("the gateway at {} did not answer within 20s", self.url);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        self.url.clone()
    }

    /// Stops the gateway and waits for it.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.stop.cancel();
        if let Some(handle) = self.handle.take() {
            handle.await??;
        }
        Ok(())
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// A worker running in this process.
#[derive(Debug)]
pub struct Worker {
    stop: CancellationToken,
    handle: Option<JoinHandle<Result<(), taskwire_worker::Error>>>,
}

impl Worker {
    /// Starts a worker configured by `configure` (which adds services); short ack wait and grace
    /// for tests. Returns once its consumers exist and its tasks are registered.
    pub async fn start(
        nats_url: &str,
        configure: impl FnOnce(taskwire_worker::Builder) -> taskwire_worker::Builder,
    ) -> anyhow::Result<Self> {
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let builder = configure(
            taskwire_worker::Worker::builder()
                .nats(nats_url)
                .ack_wait(Duration::from_secs(5))
                .grace(Duration::from_secs(5)),
        )
        .on_ready(move || {
            let _ = ready_tx.send(());
        });
        let stop = CancellationToken::new();
        let signal = stop.clone();
        let mut handle =
            tokio::spawn(async move { builder.run(async move { signal.cancelled().await }).await });
        tokio::select! {
            ready = ready_rx => if ready.is_err() {
                // The worker returned before it was ready: report why.
                (&mut handle).await??;
                anyhow::bail!("the worker stopped before it was ready");
            },
            result = &mut handle => {
                result??;
                anyhow::bail!("the worker stopped before it was ready");
            }
        }
        Ok(Self {
            stop,
            handle: Some(handle),
        })
    }

    /// Stops pulling, drains, and waits for the worker to return.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.stop.cancel();
        if let Some(handle) = self.handle.take() {
            handle.await??;
        }
        Ok(())
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.stop.cancel();
        if let Some(handle) = self.handle.take() {
            handle.abort();
        }
    }
}

/// Gateway settings that know every example task from the start, without a worker.
pub fn examples_config(nats_url: &str) -> Config {
    let mut config = Config::new(nats_url);
    config
        .descriptor_sets
        .push(taskwire_examples::FILE_DESCRIPTOR_SET.to_vec());
    config
}

/// The test worker (magic and chaos services) as a real process, killed when dropped. `env`
/// adds to or overrides `TASKWIRE_NATS_URL` and a quiet log.
pub fn worker_process(
    nats_url: &str,
    env: &[(&str, &str)],
) -> anyhow::Result<tokio::process::Child> {
    Ok(tokio::process::Command::new(bin("taskwire-test-worker")?)
        .env("TASKWIRE_NATS_URL", nats_url)
        .env("TASKWIRE_LOG", "warn")
        .envs(env.iter().copied())
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()?)
}

/// The test worker as a real process with `env` (see [`worker_process`]), once it is ready:
/// with the addresses it serves (`/metrics` when `TASKWIRE_METRICS_ADDR` is given, port 0
/// being [`LOOPBACK_ANY_PORT`]).
pub async fn worker_process_ports(
    nats_url: &str,
    env: &[(&str, &str)],
) -> anyhow::Result<(tokio::process::Child, Ports)> {
    let ports = tempfile::tempdir()?;
    let file = ports.path().join("ports.json");
    let file_name = file.display().to_string();
    let mut env = env.to_vec();
    env.push((taskwire_supervisor::ENV_PORTS_FILE, &file_name));
    let mut child = worker_process(nats_url, &env)?;
    let ports = taskwire_supervisor::wait_for_ports(&mut child, &file, WAIT_FOR_PROCESS).await?;
    Ok((child, ports))
}

/// The gateway binary as a real process with `env` (which names NATS), killed when dropped,
/// listening on `addr`, or when `None` on a loopback port of its choosing; with its gRPC
/// address, once it listens.
pub async fn gateway_process(
    env: &[(&str, &str)],
    addr: Option<SocketAddr>,
) -> anyhow::Result<(tokio::process::Child, SocketAddr)> {
    let ports = tempfile::tempdir()?;
    let file = ports.path().join("ports.json");
    let mut child = tokio::process::Command::new(bin("taskwire-gateway")?)
        .env("TASKWIRE_LOG", "warn")
        .envs(env.iter().copied())
        .env(
            "TASKWIRE_GATEWAY_ADDR",
            addr.unwrap_or(LOOPBACK_ANY_PORT).to_string(),
        )
        .env(taskwire_supervisor::ENV_PORTS_FILE, &file)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let ports = taskwire_supervisor::wait_for_ports(&mut child, &file, WAIT_FOR_PROCESS).await?;
    let addr = ports
        .grpc
        .ok_or_else(|| anyhow::anyhow!("the gateway wrote no gRPC address"))?;
    Ok((child, addr))
}

/// How long a process under test may take to start listening.
const WAIT_FOR_PROCESS: Duration = Duration::from_secs(30);

/// A binary of this workspace, built next to the test binary (`make test` builds them all).
pub fn bin(name: &str) -> anyhow::Result<PathBuf> {
    Ok(taskwire_supervisor::sibling_binary(name)?)
}

/// Messages in the tasks stream of the server at `nats_url`: queued, held by a schedule, or not
/// yet acked.
pub async fn tasks_in_stream(nats_url: &str) -> anyhow::Result<u64> {
    let js = async_nats::jetstream::new(async_nats::connect(nats_url).await?);
    let mut stream = js.get_stream(taskwire_protocol::TASKS_STREAM).await?;
    Ok(stream.info().await?.state.messages)
}

/// Waits until `check` holds, polling; fails with `what` after `limit`.
pub async fn eventually<F, Fut>(what: &str, limit: Duration, mut check: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if check().await {
            return Ok(());
        }
        if start.elapsed() > limit {
            anyhow::bail!("timed out after {limit:?} waiting until {what}");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Polls `read` until it gives something (its `Some`), for up to 20 s.
async fn eventually_some<T>(what: &str, mut read: impl FnMut() -> Option<T>) -> anyhow::Result<T> {
    let start = Instant::now();
    loop {
        if let Some(value) = read() {
            return Ok(value);
        }
        if start.elapsed() > Duration::from_secs(20) {
            anyhow::bail!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
