//! The bridge: the worker runtime serves the task services of an *upstream* gRPC server (a
//! worker written in any language, as a plain gRPC server of its task contracts) and runs each
//! attempt by calling the task's method on it.
//!
//! The runtime learns the services and their task options from the upstream's gRPC server
//! reflection, or from descriptor sets or proto files given at start, and registers them as any
//! worker does. Everything a worker does with the broker (pulls, attempts, settlement, limits,
//! rates, cancels, heartbeats, drain) stays here; the upstream only answers calls:
//!
//! ```no_run
//! use taskwire_worker::{Worker, upstream::Upstream};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let upstream = Upstream::new("unix:///tmp/worker.sock".parse()?);
//! Worker::builder()
//!     .upstream(upstream)
//!     .run(taskwire::shutdown_signal())
//!     .await?;
//! # Ok(())
//! # }
//! ```
//!
//! A call carries the arguments' bytes unchanged and gives back the result's bytes unchanged;
//! its metadata names the task, the attempt and the trace (see [`metadata`]); its deadline is
//! the attempt's time limit; a cancel, the time limit and a forced stop cancel it; its status
//! decides between success, another attempt and failure ([`call::task_error`]). While the
//! upstream does not answer its health check, no task starts and no attempt is used.

mod address;
mod call;
mod context;
mod files;
mod handlers;
mod health;
mod reflection;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use taskwire::service::{Service, TaskDef};
use taskwire::task::TaskType;
use tokio_util::sync::CancellationToken;

pub use address::Address;
pub use call::metadata;
pub use health::Health;

/// Where the runtime learns what the upstream serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Descriptors {
    /// The upstream's gRPC server reflection.
    Reflection,
    /// Encoded `FileDescriptorSet` files (`protoc --include_imports --descriptor_set_out`,
    /// `buf build -o`).
    Sets(Vec<PathBuf>),
    /// Proto files, compiled at start, with the folders their imports are found in
    /// (taskwire's own protos and Google's are built in).
    Protos {
        /// The proto files.
        files: Vec<PathBuf>,
        /// Where imports are looked up.
        includes: Vec<PathBuf>,
    },
}

/// An upstream gRPC server whose task services a worker serves.
#[derive(Debug, Clone)]
pub struct Upstream {
    address: Address,
    descriptors: Descriptors,
    services: Vec<String>,
    tasks: Vec<String>,
    context_addr: std::net::SocketAddr,
    name: Option<String>,
}

/// Why the upstream's services cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The descriptors could not be read.
    #[error("the upstream at {address}: {reason}")]
    Descriptors { address: String, reason: String },
    /// The upstream serves nothing to serve as tasks.
    #[error(
        "the upstream at {address} serves no task service{filter}: it lists {listed:?}; give its protos with --proto or --descriptors, or name the services with --service"
    )]
    NoServices {
        address: String,
        filter: String,
        listed: Vec<String>,
    },
    /// The context service could not listen.
    #[error("the task context service cannot listen on {addr}: {reason}")]
    Context { addr: String, reason: String },
}

impl Upstream {
    /// The server at `address`, its services learnt by reflection, all of them served.
    pub fn new(address: Address) -> Self {
        Self {
            address,
            descriptors: Descriptors::Reflection,
            services: Vec::new(),
            tasks: Vec::new(),
            context_addr: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
            name: None,
        }
    }

    /// What the upstream is, as the worker's heartbeat names it beside the runtime's version
    /// (say `python taskwire/0.1.0`); its address by default.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Where the services are described instead of the upstream's reflection.
    pub fn descriptors(mut self, descriptors: Descriptors) -> Self {
        self.descriptors = descriptors;
        self
    }

    /// Serves only these services (full names, `package.Service`); all when empty.
    pub fn services(mut self, services: Vec<String>) -> Self {
        self.services = services;
        self
    }

    /// Serves only these tasks (full names, `package.Service/Method`) of the services served;
    /// all when empty. Their services are served without naming them with
    /// [`Upstream::services`].
    pub fn tasks(mut self, tasks: Vec<String>) -> Self {
        self.tasks = tasks;
        self
    }

    /// Where the `taskwire.v1.TaskContext` service listens (loopback, a free port by default).
    pub fn context_addr(mut self, addr: std::net::SocketAddr) -> Self {
        self.context_addr = addr;
        self
    }

    /// The upstream's address.
    pub fn address(&self) -> &Address {
        &self.address
    }

    /// Connects (waiting for the upstream to answer), learns its services and starts the
    /// context service and the health checks, which end with `stop`.
    pub(crate) async fn start(self, stop: CancellationToken) -> Result<Bridge, Error> {
        let address = self.address.to_string();
        let health = Health::new();
        let lost = {
            let health = health.clone();
            Arc::new(move |why: &str| health.lost(why)) as Arc<dyn Fn(&str) + Send + Sync>
        };
        let channel = self.address.channel(lost);
        health.check(channel.clone(), stop.clone());
        let listener = tokio::net::TcpListener::bind(self.context_addr)
            .await
            .map_err(|e| Error::Context {
                addr: self.context_addr.to_string(),
                reason: e.to_string(),
            })?;
        let attempts = context::serve(listener, stop.clone());
        let (set, listed) = self.describe(&channel, &health, &stop).await?;
        let shared = Shared {
            set: Bytes::from(set),
            handlers: Arc::new(handlers::Handlers::start(channel.clone(), call::MAX_RESULT)),
            channel,
            attempts,
            health: health.clone(),
        };
        let services = self.forwards(&shared, listed.as_deref())?;
        self.serves_all_named(&services)?;
        let name = self.name.clone().unwrap_or(address);
        Ok(Bridge {
            services,
            health,
            name,
        })
    }

    /// A service to serve for each of the upstream's services that is asked for (all, or those
    /// `--service` and `--task` name) and that it lists, with the tasks asked for.
    fn forwards(
        &self,
        shared: &Shared,
        listed: Option<&[String]>,
    ) -> Result<Vec<Arc<dyn Service>>, Error> {
        let address = self.address.to_string();
        let failed = |reason: String| Error::Descriptors {
            address: address.clone(),
            reason,
        };
        // The task types with their options, checked; their pool is the set's.
        let types = TaskType::all_in(&shared.set).map_err(|e| failed(e.to_string()))?;
        let Some(pool) = types.first().map(|t| t.input.parent_pool().clone()) else {
            return Err(self.serves_nothing(listed));
        };
        let of_task = |service: &str| {
            self.tasks
                .iter()
                .any(|t| t.split_once('/').is_some_and(|(s, _)| s == service))
        };
        let wanted = |service: &str| {
            !matches!(
                service,
                "taskwire.v1.TaskContext" | "taskwire.v1.TaskHandlers"
            ) && ((self.services.is_empty() && self.tasks.is_empty())
                || self.services.iter().any(|s| s == service)
                || of_task(service))
                && listed.is_none_or(|l| l.iter().any(|s| s == service))
        };
        let mut services: Vec<Arc<dyn Service>> = Vec::new();
        for service in pool.services().filter(|s| wanted(s.full_name())) {
            let mut tasks = Vec::new();
            for method in service.methods() {
                if method.is_client_streaming() || method.is_server_streaming() {
                    return Err(failed(format!(
                        "{}/{} is a streaming rpc; a task takes one message and returns one (serve only other services with --service)",
                        service.full_name(),
                        method.name()
                    )));
                }
                let name = format!("{}/{}", service.full_name(), method.name());
                let asked = self.tasks.is_empty()
                    || !of_task(service.full_name())
                    || self.tasks.contains(&name);
                if asked && types.iter().any(|t| t.name.as_str() == name) {
                    tasks.push(TaskDef {
                        name: name.into(),
                        input_type: method.input().full_name().to_owned().into(),
                        output_type: method.output().full_name().to_owned().into(),
                    });
                }
            }
            services.push(Arc::new(call::Forward {
                name: service.full_name().to_owned(),
                tasks,
                file_descriptor_set: shared.set.clone(),
                channel: shared.channel.clone(),
                attempts: Arc::clone(&shared.attempts),
                health: shared.health.clone(),
                handlers: Arc::clone(&shared.handlers),
            }));
        }
        if services.is_empty() {
            return Err(self.serves_nothing(listed));
        }
        Ok(services)
    }

    /// Every service and task named with `--service` and `--task` is served, or an error that
    /// lists what is.
    fn serves_all_named(&self, services: &[Arc<dyn Service>]) -> Result<(), Error> {
        let address = self.address.to_string();
        for named in &self.tasks {
            if !services
                .iter()
                .any(|s| s.tasks().iter().any(|t| t.name == named.as_str()))
            {
                return Err(Error::Descriptors {
                    address,
                    reason: format!(
                        "it does not serve the task {named} (asked for with --task); it serves {:?}",
                        services
                            .iter()
                            .flat_map(|s| s.tasks().iter().map(|t| t.name.to_string()))
                            .collect::<Vec<_>>()
                    ),
                });
            }
        }
        for named in &self.services {
            if !services.iter().any(|s| s.name() == named) {
                return Err(Error::Descriptors {
                    address,
                    reason: format!(
                        "it does not serve {named} (asked for with --service); it serves {:?}",
                        services.iter().map(|s| s.name()).collect::<Vec<_>>()
                    ),
                });
            }
        }
        Ok(())
    }

    fn serves_nothing(&self, listed: Option<&[String]>) -> Error {
        Error::NoServices {
            address: self.address.to_string(),
            filter: if self.services.is_empty() {
                String::new()
            } else {
                format!(" named {:?}", self.services)
            },
            listed: listed.map(<[String]>::to_vec).unwrap_or_default(),
        }
    }

    /// The descriptor set of the upstream's services, and with reflection the services it
    /// lists. Reflection waits for the upstream to answer.
    async fn describe(
        &self,
        channel: &tonic::transport::Channel,
        health: &Health,
        stop: &CancellationToken,
    ) -> Result<(Vec<u8>, Option<Vec<String>>), Error> {
        let address = self.address.to_string();
        let failed = |reason: String| Error::Descriptors {
            address: address.clone(),
            reason,
        };
        match &self.descriptors {
            Descriptors::Sets(paths) => {
                let mut files = files::Files::default();
                for path in paths {
                    let bytes = std::fs::read(path)
                        .map_err(|e| failed(format!("cannot read {}: {e}", path.display())))?;
                    files
                        .add_set(&bytes)
                        .map_err(|e| failed(format!("{}: {e}", path.display())))?;
                }
                let missing = files.missing();
                if !missing.is_empty() {
                    return Err(failed(format!(
                        "the descriptor sets lack files they import: {missing:?} (write them with their imports: protoc --include_imports, buf build)"
                    )));
                }
                Ok((files.encode(), None))
            }
            Descriptors::Protos { files, includes } => {
                let set =
                    taskwire_build::describe(files, includes).map_err(|e| failed(e.to_string()))?;
                Ok((set, None))
            }
            Descriptors::Reflection => {
                let mut waited = Duration::ZERO;
                loop {
                    if health.down().is_none() {
                        match reflection::services(channel).await {
                            Ok(listed) => {
                                let set = reflection::descriptor_set(channel, &listed)
                                    .await
                                    .map_err(|e| failed(e.reason))?;
                                return Ok((set, Some(listed)));
                            }
                            Err(e) if e.not_served => return Err(failed(e.reason)),
                            Err(e) => {
                                tracing::debug!(reason = %e, "reflection not answered yet");
                            }
                        }
                    }
                    if waited >= Duration::from_secs(5) && waited.as_secs() % 10 == 5 {
                        tracing::warn!(upstream = %address, reason = ?health.down(), "waiting for the upstream to answer");
                    }
                    let step = Duration::from_millis(250);
                    tokio::select! {
                        () = stop.cancelled() => return Err(failed("stopped before it answered".to_owned())),
                        () = tokio::time::sleep(step) => {}
                    }
                    waited += step;
                }
            }
        }
    }
}

/// What every served service of one upstream shares.
struct Shared {
    /// The descriptor set of them all, as registered.
    set: Bytes,
    channel: tonic::transport::Channel,
    attempts: Arc<context::Attempts>,
    health: Health,
    handlers: Arc<handlers::Handlers>,
}

/// A started bridge: the services to serve and the upstream's health.
pub(crate) struct Bridge {
    pub(crate) services: Vec<Arc<dyn Service>>,
    pub(crate) health: Health,
    /// What the upstream is (its name, else its address).
    pub(crate) name: String,
}
