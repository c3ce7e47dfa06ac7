//! The system a benchmark runs against: a gateway and one worker (the example worker in Rust,
//! or the Python one) as child processes on a given NATS.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context as _;
use taskwire_client::Client;
use taskwire_supervisor::{self as stack, Ports, ProcessSpec};
use tokio::process::Child;

use super::TASK;

/// Which worker serves the benchmark's task.
#[derive(Debug, Clone)]
pub(super) enum WorkerKind {
    /// `taskwire-magic-worker`, serving besides its task this many generated task types.
    Rust { many_task_types: usize },
    /// The Python example worker: this interpreter running this script, which starts the
    /// worker runtime beside it.
    Python {
        interpreter: String,
        script: PathBuf,
    },
    /// The TypeScript example worker: this node running this script, which starts the worker
    /// runtime beside it.
    Node { node: String, script: PathBuf },
}

/// A running gateway and worker.
pub(super) struct Stack {
    gateway: Child,
    pub(super) gateway_pid: Option<u32>,
    pub(super) gateway_url: String,
    /// Its HTTP address (metrics, dashboard).
    pub(super) gateway_http: Option<std::net::SocketAddr>,
    pub(super) client: Client,
    worker: Option<Child>,
    pub(super) worker_pid: Option<u32>,
    env: Vec<(String, String)>,
    _ports: tempfile::TempDir,
}

impl Stack {
    /// Starts a gateway on `nats_url` (streams with `replicas` copies) and waits until it
    /// listens.
    pub(super) async fn start(
        nats_url: &str,
        replicas: usize,
        worker_concurrency: usize,
    ) -> anyhow::Result<Self> {
        let env = vec![
            ("TASKWIRE_NATS_URL".to_owned(), nats_url.to_owned()),
            ("TASKWIRE_LOG".to_owned(), "warn".to_owned()),
            ("TASKWIRE_REPLICAS".to_owned(), replicas.to_string()),
            (
                "TASKWIRE_CONCURRENCY".to_owned(),
                worker_concurrency.to_string(),
            ),
        ];
        // The gateway listens on ports of its choosing and says which in its ports file.
        let ports = tempfile::tempdir()?;
        let ports_file = ports.path().join("gateway.json");
        let mut gateway_env = env.clone();
        gateway_env.extend([
            ("TASKWIRE_GATEWAY_ADDR".to_owned(), "127.0.0.1:0".to_owned()),
            ("TASKWIRE_HTTP_ADDR".to_owned(), "127.0.0.1:0".to_owned()),
            (
                stack::ENV_PORTS_FILE.to_owned(),
                ports_file.display().to_string(),
            ),
        ]);
        let mut gateway = stack::spawn(&ProcessSpec {
            binary: "taskwire-gateway".into(),
            args: Vec::new(),
            env: gateway_env,
            inherit_output: false,
        })?;
        let Ports {
            grpc: Some(gateway_addr),
            http: gateway_http,
        } = stack::wait_for_ports(&mut gateway, &ports_file, Duration::from_secs(60)).await?
        else {
            anyhow::bail!("the gateway wrote no gRPC address to its ports file");
        };
        let gateway_url = format!("http://{gateway_addr}");
        let client = Client::connect(gateway_url.clone()).await?;
        Ok(Self {
            gateway_pid: gateway.id(),
            gateway,
            gateway_url,
            gateway_http,
            client,
            worker: None,
            worker_pid: None,
            env,
            _ports: ports,
        })
    }

    /// The Rust worker's process settings, for a backlog run to start it itself.
    pub(super) fn rust_worker_spec(&self, many_task_types: usize) -> ProcessSpec {
        ProcessSpec {
            binary: "taskwire-magic-worker".into(),
            args: vec![format!("--many-task-types={many_task_types}")],
            env: self.env.clone(),
            inherit_output: false,
        }
    }

    /// Starts a worker and waits until the gateway lists the benchmark's task, and `also`.
    pub(super) async fn start_worker(
        &mut self,
        kind: &WorkerKind,
        also: Option<&str>,
        waited: Duration,
    ) -> anyhow::Result<()> {
        self.stop_worker().await;
        let child = match kind {
            WorkerKind::Rust { many_task_types } => {
                stack::spawn(&self.rust_worker_spec(*many_task_types))?
            }
            WorkerKind::Python {
                interpreter: program,
                script,
            }
            | WorkerKind::Node {
                node: program,
                script,
            } => tokio::process::Command::new(program)
                .arg(script)
                .envs(self.env.iter().map(|(k, v)| (k, v)))
                // The runtime this benchmark's build made.
                .env(
                    "TASKWIRE_WORKER_BIN",
                    taskwire_supervisor::sibling_binary("taskwire-worker")?,
                )
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .with_context(|| format!("starting the worker {}", script.display()))?,
        };
        self.worker_pid = child.id();
        self.worker = Some(child);
        for task in [Some(TASK), also].into_iter().flatten() {
            stack::wait_for_task(&self.gateway_url, task, waited).await?;
        }
        Ok(())
    }

    /// The peak memory of the worker so far, MiB (with the runtime it started, if any).
    pub(super) fn worker_rss_mib(&self) -> f64 {
        let own = self.worker_pid.and_then(stack::peak_rss_mib).unwrap_or(0.0);
        let runtime = self
            .worker_pid
            .and_then(stack::child_of)
            .and_then(stack::peak_rss_mib)
            .unwrap_or(0.0);
        own + runtime
    }

    /// The peak memory of the gateway so far, MiB.
    pub(super) fn gateway_rss_mib(&self) -> f64 {
        self.gateway_pid
            .and_then(stack::peak_rss_mib)
            .unwrap_or(0.0)
    }

    /// Starts the gateway's peak memory over from its present size (Linux: `clear_refs`), so that
    /// a later [`Self::gateway_rss_mib`] is the peak of what came after.
    pub(super) fn reset_gateway_peak(&self) {
        if let Some(pid) = self.gateway_pid {
            let _ = std::fs::write(format!("/proc/{pid}/clear_refs"), "5");
        }
    }

    /// Both peaks so far, as the report names them.
    pub(super) fn memory_report(&self, report: &mut serde_json::Map<String, serde_json::Value>) {
        for (key, mib) in [
            ("gateway_rss_mib", self.gateway_rss_mib()),
            ("worker_rss_mib", self.worker_rss_mib()),
        ] {
            report.insert(key.into(), super::round(mib, 1).into());
        }
    }

    /// Stops the worker (SIGTERM, then its drain).
    pub(super) async fn stop_worker(&mut self) {
        if let Some(mut worker) = self.worker.take() {
            stack::terminate(&mut worker, Duration::from_secs(15)).await;
        }
        self.worker_pid = None;
    }

    /// Stops the worker and the gateway.
    pub(super) async fn stop(mut self) {
        self.stop_worker().await;
        stack::terminate(&mut self.gateway, Duration::from_secs(10)).await;
    }
}
