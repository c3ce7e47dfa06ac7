//! The taskwire worker runtime: serves generated task services from NATS JetStream.
//!
//! For each task it serves, a worker pulls from the task's durable consumer (shared by every
//! worker of that task, so adding workers adds capacity), runs up to `concurrency` tasks at once,
//! and for each one: publishes a `running` event, runs the task with its time limit while sending
//! in-progress acks, publishes the result (stored at most once per task id) and waits for its
//! PubAck, and only then acks the task. A retryable failure with attempts left is NAKed with the
//! task's backoff, so the broker redelivers it later; a panic becomes a failed result.
//!
//! ```no_run
//! use taskwire_examples::magic::v1::{AddArgs, AddResult, Magic, MagicServer};
//! use taskwire::{TaskContext, TaskError};
//! use taskwire_worker::Worker;
//!
//! struct MyMagic;
//!
//! impl Magic for MyMagic {
//!     async fn add(&self, _ctx: TaskContext, args: AddArgs) -> Result<AddResult, TaskError> {
//!         Ok(AddResult { sum: args.arg1 + args.arg2 + args.arg3 })
//!     }
//! }
//!
//! # async fn run() -> Result<(), taskwire_worker::Error> {
//! Worker::builder()
//!     .nats("nats://127.0.0.1:4222")
//!     .serve(MagicServer::new(MyMagic))
//!     .run(taskwire::shutdown_signal())
//!     .await
//! # }
//! ```
//!
//! On shutdown the worker stops pulling, lets running tasks finish for up to the grace period,
//! then releases (NAKs) whatever is still running so another worker picks it up at once.

mod attempt;
mod cancels;
mod children;
mod limits;
mod metrics;
mod pauses;
mod progress;
mod pull;
mod rates;
mod run;
mod samples;
mod settle;
pub mod upstream;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use taskwire::config::Problems;
use taskwire::service::Service;
use taskwire_protocol as broker;

/// Environment variables a worker process reads.
pub mod env {
    /// NATS server URL(s), comma separated.
    pub const NATS_URL: &str = "TASKWIRE_NATS_URL";
    /// Tasks of one type a worker runs at once.
    pub const CONCURRENCY: &str = "TASKWIRE_CONCURRENCY";
    /// How long the broker waits for an ack before redelivering (used when the consumer is created).
    pub const ACK_WAIT: &str = "TASKWIRE_ACK_WAIT";
    /// How long running tasks may finish after SIGTERM.
    pub const GRACE: &str = "TASKWIRE_GRACE";
    /// Address of the Prometheus `/metrics` endpoint, e.g. `0.0.0.0:9464`.
    pub const METRICS_ADDR: &str = "TASKWIRE_METRICS_ADDR";
    /// The upstream gRPC server whose task services the `taskwire-worker` process serves,
    /// `unix:///path/to.sock` or `http://127.0.0.1:PORT`.
    pub const UPSTREAM: &str = "TASKWIRE_UPSTREAM";
    /// Descriptor set files describing the upstream's services (instead of its reflection),
    /// comma separated.
    pub const DESCRIPTORS: &str = "TASKWIRE_DESCRIPTORS";
    /// Proto files describing the upstream's services (instead of its reflection), comma
    /// separated.
    pub const PROTOS: &str = "TASKWIRE_PROTOS";
    /// Folders the imports of those proto files are found in, comma separated.
    pub const PROTO_PATH: &str = "TASKWIRE_PROTO_PATH";
    /// The upstream's services to serve (full names), comma separated; all when unset.
    pub const SERVICES: &str = "TASKWIRE_SERVICES";
    /// The upstream's tasks to serve (full names, `package.Service/Method`), comma separated;
    /// every task of the services served when unset.
    pub const TASKS: &str = "TASKWIRE_TASKS";
    /// Where the task context service for the upstream's handlers listens (default
    /// `127.0.0.1:0`, a free port).
    pub const CONTEXT_ADDR: &str = "TASKWIRE_CONTEXT_ADDR";
    /// What the upstream is, as the worker's heartbeat names it (say `python taskwire/0.1.0`).
    pub const UPSTREAM_NAME: &str = "TASKWIRE_UPSTREAM_NAME";
}

/// Why a worker could not run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the worker serves no task: add a service with .serve(...)")]
    NoServices,
    #[error(
        "cannot connect to NATS at {url}: {reason}; start nats-server or set TASKWIRE_NATS_URL"
    )]
    Connect { url: String, reason: String },
    #[error("the worker could not open the broker: {0}")]
    Refused(String),
    #[error("{0}")]
    Broker(#[from] broker::Error),
    #[error("service {service}: {reason}")]
    Descriptors { service: String, reason: String },
    #[error("metrics: {0}")]
    Metrics(String),
    #[error("cannot read the task limits: {0}")]
    Limits(String),
    #[error("cannot read the paused queues: {0}")]
    Pauses(String),
    #[error("cannot watch the cancellations bucket: {0}")]
    Cancellations(String),
    #[error("cannot pull tasks of {task}: {reason}")]
    Pull { task: String, reason: String },
    #[error("{0}")]
    Upstream(#[from] upstream::Error),
}

/// Called with a task's id and final state each time this worker stores a result.
pub type ResultHook = Arc<dyn Fn(&taskwire::task::Id, taskwire::v1::TaskState) + Send + Sync>;

/// Entry point: `Worker::builder()`.
#[derive(Debug)]
pub struct Worker;

impl Worker {
    /// A builder with the defaults: NATS on localhost, concurrency 100, ack wait 30 s, grace 30 s.
    pub fn builder() -> Builder {
        Builder {
            nats_url: "nats://127.0.0.1:4222".into(),
            services: Vec::new(),
            concurrency: 100,
            ack_wait: Duration::from_secs(30),
            grace: Duration::from_secs(30),
            broker: broker::Settings::default(),
            ready: None,
            on_result: None,
            signal_forces: false,
            force: None,
            metrics_addr: None,
            ports_file: None,
            nats_auth: None,
            upstream: None,
        }
    }
}

/// Worker settings and the services it serves.
pub struct Builder {
    nats_url: String,
    services: Vec<Arc<dyn Service>>,
    concurrency: usize,
    ack_wait: Duration,
    grace: Duration,
    broker: broker::Settings,
    ready: Option<Box<dyn FnOnce() + Send>>,
    on_result: Option<ResultHook>,
    signal_forces: bool,
    force: Option<std::pin::Pin<Box<dyn Future<Output = ()> + Send>>>,
    metrics_addr: Option<std::net::SocketAddr>,
    ports_file: Option<std::path::PathBuf>,
    nats_auth: Option<broker::NatsAuth>,
    upstream: Option<upstream::Upstream>,
}

impl std::fmt::Debug for Builder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Builder")
            .field("nats_url", &self.nats_url)
            .field(
                "services",
                &self.services.iter().map(|s| s.name()).collect::<Vec<_>>(),
            )
            .field("concurrency", &self.concurrency)
            .field("ack_wait", &self.ack_wait)
            .field("grace", &self.grace)
            .finish()
    }
}

impl Builder {
    /// A builder with every setting a worker process takes from its environment:
    /// `TASKWIRE_NATS_URL`, `TASKWIRE_CONCURRENCY`, `TASKWIRE_ACK_WAIT`, `TASKWIRE_GRACE`,
    /// `TASKWIRE_METRICS_ADDR` (`off` for none), `TASKWIRE_PORTS_FILE`, the stream settings
    /// ([`broker::Settings::read_env`]) and the NATS credentials and TLS
    /// ([`broker::NatsAuth::from_env`]); the defaults for those unset. Every problem is reported
    /// at once; a process exits with [`taskwire::config::EXIT_USAGE`] on them.
    pub fn from_env() -> Result<Self, Problems> {
        let mut problems = Problems::new();
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        let mut builder = Worker::builder();
        if let Some(url) = var(env::NATS_URL) {
            builder.nats_url = url;
        }
        if let Some(text) = var(env::CONCURRENCY) {
            match text.parse::<usize>() {
                Ok(n) if n > 0 => builder.concurrency = n,
                _ => problems.push(format!(
                    "{}={text:?} must be a number of tasks above 0",
                    env::CONCURRENCY
                )),
            }
        }
        let duration = |name: &str, problems: &mut Problems| {
            let text = var(name)?;
            problems.take(
                humantime::parse_duration(&text)
                    .map_err(|e| format!("{name}={text:?} is not a duration such as 30s: {e}")),
            )
        };
        if let Some(ack_wait) = duration(env::ACK_WAIT, &mut problems) {
            builder = builder.ack_wait(ack_wait);
        }
        if let Some(grace) = duration(env::GRACE, &mut problems) {
            builder.grace = grace;
        }
        match var(env::METRICS_ADDR).as_deref() {
            None | Some("off") => {}
            Some(text) => {
                builder.metrics_addr = problems.take(text.parse().map_err(|e| {
                    format!(
                        "{}={text:?} is not an address such as 0.0.0.0:9464: {e}",
                        env::METRICS_ADDR
                    )
                }));
            }
        }
        builder.ports_file = var(broker::ports::ENV).map(std::path::PathBuf::from);
        builder.broker = broker::Settings::read_env(&mut problems);
        builder.nats_auth = problems.take(broker::NatsAuth::from_env());
        problems.or_value(builder)
    }

    /// NATS server URL(s), comma separated.
    pub fn nats(mut self, url: impl Into<String>) -> Self {
        self.nats_url = url.into();
        self
    }

    /// Credentials and TLS for NATS; by default those of the environment
    /// ([`broker::NatsAuth::from_env`]).
    pub fn nats_auth(mut self, auth: broker::NatsAuth) -> Self {
        self.nats_auth = Some(auth);
        self
    }

    /// Serves every task of a generated service (`MagicServer::new(MyMagic)`).
    pub fn serve(mut self, service: impl Service) -> Self {
        self.services.push(Arc::new(service));
        self
    }

    /// Serves the task services of an upstream gRPC server, calling it for each attempt
    /// ([`upstream`]); beside the services given with [`Builder::serve`], if any.
    pub fn upstream(mut self, upstream: upstream::Upstream) -> Self {
        self.upstream = Some(upstream);
        self
    }

    /// Tasks of one type this worker runs at once, unless the task's `concurrency` option says
    /// otherwise.
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = n.max(1);
        self
    }

    /// How long the broker waits for an ack before it gives a task to another worker. Applies
    /// when the task's consumer is created. In-progress acks keep long tasks from redelivery.
    pub fn ack_wait(mut self, ack_wait: Duration) -> Self {
        self.ack_wait = ack_wait.max(Duration::from_millis(100));
        self
    }

    /// How long running tasks may finish after shutdown begins.
    pub fn grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    /// Where to write, once ready, the address of `/metrics` (JSON, see
    /// [`broker::ports::Ports`]), for what started the worker with port 0 there.
    pub fn ports_file(mut self, file: Option<std::path::PathBuf>) -> Self {
        self.ports_file = file;
        self
    }

    /// Serves Prometheus metrics on `http://<addr>/metrics`.
    pub fn metrics_addr(mut self, addr: Option<std::net::SocketAddr>) -> Self {
        self.metrics_addr = addr;
        self
    }

    /// Stream settings used if this worker is the first to create them.
    pub fn broker_settings(mut self, settings: broker::Settings) -> Self {
        self.broker = settings;
        self
    }

    /// Lets a SIGINT or SIGTERM during the drain end it at once: running tasks are released to
    /// other workers. For worker processes; off by default.
    pub fn second_signal_forces(mut self, enable: bool) -> Self {
        self.signal_forces = enable;
        self
    }

    /// Ends the drain at once when `force` completes (running tasks are released to other
    /// workers), as a second signal does with [`Builder::second_signal_forces`]: for a runtime
    /// whose upstream is gone, which has nothing left to wait for.
    pub fn force_when(mut self, force: impl Future<Output = ()> + Send + 'static) -> Self {
        self.force = Some(Box::pin(force));
        self
    }

    /// Calls `f` each time this worker stores a result (not when the task had one already):
    /// an audit trail of the results a worker produced.
    pub fn on_result(
        mut self,
        f: impl Fn(&taskwire::task::Id, taskwire::v1::TaskState) + Send + Sync + 'static,
    ) -> Self {
        self.on_result = Some(Arc::new(f));
        self
    }

    /// Calls `f` once the worker has registered its tasks and is about to pull.
    pub fn on_ready(mut self, f: impl FnOnce() + Send + 'static) -> Self {
        self.ready = Some(Box::new(f));
        self
    }

    /// Registers the task types, then serves them until `shutdown` completes, drains, and
    /// returns.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) -> Result<(), Error> {
        run::run(self, shutdown).await
    }
}
