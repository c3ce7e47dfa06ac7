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
use std::path::PathBuf;
use std::time::{Duration, Instant};

use taskwire_gateway::Config;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use taskwire_cli::stack::{NatsCluster, NatsServer, free_port, terminate};

pub mod chaos;
pub mod model;
pub mod runtime;
pub mod tasks;

/// A gateway serving in this process on a free port.
#[derive(Debug)]
pub struct Gateway {
    url: String,
    stop: CancellationToken,
    handle: Option<JoinHandle<Result<(), taskwire_gateway::Error>>>,
}

impl Gateway {
    /// A gateway with the default settings.
    pub async fn start(nats_url: &str) -> anyhow::Result<Self> {
        Self::start_with(Config::new(nats_url)).await
    }

    /// A gateway with these settings. Returns once it answers gRPC calls.
    pub async fn start_with(config: Config) -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let stop = CancellationToken::new();
        let signal = stop.clone();
        let tls = config.tls.is_some();
        let handle = tokio::spawn(async move {
            taskwire_gateway::serve(listener, config, async move { signal.cancelled().await }).await
        });
        let mut gateway = Self {
            url,
            stop,
            handle: Some(handle),
        };
        gateway.wait_ready(tls).await?;
        Ok(gateway)
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
        .push(taskwire::FILE_DESCRIPTOR_SET.to_vec());
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

/// A binary of this workspace, built next to the test binary (`make test` builds them all).
pub fn bin(name: &str) -> anyhow::Result<PathBuf> {
    Ok(taskwire_cli::stack::sibling_binary(name)?)
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
