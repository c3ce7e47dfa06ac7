//! The taskwire gateway: a stateless gRPC server in front of NATS JetStream.
//!
//! Producers call `taskwire.v1.Tasks`. The gateway looks the task up in the registry that workers
//! publish, checks the arguments against the task's input message (protobuf bytes or JSON), and
//! stores the task on `taskwire.tasks.<task>`; `Submit` answers only after JetStream's PubAck.
//! `Get` and `Wait` read the result and event streams; `Wait` waits on the server, on the
//! result subject itself. Any number of gateways can run side by side.
//!
//! ```no_run
//! # async fn run() -> Result<(), taskwire_gateway::Error> {
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let config = taskwire_gateway::Config::new("nats://127.0.0.1:4222");
//! taskwire_gateway::serve(listener, config, async { let _ = tokio::signal::ctrl_c().await; }).await
//! # }
//! ```

mod admin;
pub mod auth;
mod cancel;
mod children;
mod cron;
mod dashboard;
mod dead;
pub mod direct;
mod error;
mod inspect;
mod list;
mod measure;
mod pauses;
pub mod payload;
mod reads;
mod reflection;
mod registry;
mod samples;
mod schedules;
mod submit;
mod tasks;
mod waiters;
mod workflows;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use taskwire::task::TaskType;
use taskwire::v1::admin_server::AdminServer;
use taskwire::v1::schedules_server::SchedulesServer;
use taskwire::v1::tasks_server::TasksServer;
use taskwire::v1::workflows_server::WorkflowsServer;
use taskwire_protocol::{self as broker, Broker};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::TcpIncoming;

pub use error::Error;
pub use registry::Registry;

/// Environment variables the gateway reads, each also a flag of `taskwire-gateway`.
pub mod env {
    /// NATS server URL(s), comma separated.
    pub const NATS_URL: &str = "TASKWIRE_NATS_URL";
    /// Address the gRPC server listens on.
    pub const GATEWAY_ADDR: &str = "TASKWIRE_GATEWAY_ADDR";
    /// Largest task arguments accepted, in bytes.
    pub const MAX_PAYLOAD: &str = "TASKWIRE_MAX_PAYLOAD";
    pub use taskwire_protocol::env::{REPLICAS, RESULT_TTL};
    /// Descriptor set files (`protoc -o` / `buf build -o`) of task types to know without a worker.
    pub const DESCRIPTOR_SETS: &str = "TASKWIRE_DESCRIPTOR_SETS";
    /// Address of the HTTP server with the dashboard and `/metrics`, e.g. `127.0.0.1:9090`.
    pub const HTTP_ADDR: &str = "TASKWIRE_HTTP_ADDR";
    /// Link from a task in the dashboard to its trace: a URL with `{trace_id}` in it.
    pub const TRACE_URL_TEMPLATE: &str = "TASKWIRE_TRACE_URL_TEMPLATE";
    /// PEM certificate chain of the gRPC port; with `TASKWIRE_TLS_KEY` turns TLS on.
    pub const TLS_CERT: &str = "TASKWIRE_TLS_CERT";
    /// PEM private key of that certificate.
    pub const TLS_KEY: &str = "TASKWIRE_TLS_KEY";
    /// PEM CA that client certificates must chain to: mutual TLS.
    pub const TLS_CLIENT_CA: &str = "TASKWIRE_TLS_CLIENT_CA";
    /// Most concurrent calls per connection.
    pub const MAX_STREAMS: &str = "TASKWIRE_MAX_STREAMS";
    /// Longest time to answer a call.
    pub const REQUEST_TIMEOUT: &str = "TASKWIRE_REQUEST_TIMEOUT";
}

/// Default largest task arguments: what fits in one NATS message with its headers.
pub const DEFAULT_MAX_PAYLOAD: usize = 1_000_000;
/// Room kept for a task's headers in one NATS message beside its arguments.
pub const HEADER_ROOM: usize = 8 * 1024;
/// Default most concurrent calls per connection.
pub const DEFAULT_MAX_CONCURRENT_STREAMS: u32 = 1024;
/// Default longest time to answer a call: a little over the longest `Wait`.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(330);
/// Longest server-side `Wait`.
pub const MAX_WAIT: Duration = Duration::from_secs(300);

/// Gateway settings.
#[derive(Clone)]
pub struct Config {
    /// NATS server URL(s), comma separated.
    pub nats_url: String,
    /// Largest task arguments accepted, in bytes.
    pub max_payload: usize,
    /// Streams and buckets, as created when missing.
    pub broker: broker::Settings,
    /// Encoded descriptor sets whose tasks are known from the start.
    pub descriptor_sets: Vec<Vec<u8>>,
    /// Where to serve Prometheus metrics (`/metrics`) over HTTP; none when unset.
    pub http_addr: Option<std::net::SocketAddr>,
    /// Credentials and TLS for the NATS connection.
    pub nats_auth: broker::NatsAuth,
    /// Bearer tokens and what each allows; every call is allowed when none.
    pub tokens: Option<Arc<auth::Tokens>>,
    /// The token the HTTP endpoints require (dashboard, `/metrics`); open when none.
    pub http_token: Option<String>,
    /// TLS (and with a client CA, mutual TLS) on the gRPC port.
    pub tls: Option<Tls>,
    /// Most concurrent HTTP/2 streams (calls) per connection.
    pub max_concurrent_streams: u32,
    /// Longest a call may take to answer (a streaming call: to start its stream).
    pub request_timeout: Duration,
    /// Where to write the addresses served once listening (`TASKWIRE_PORTS_FILE`), for
    /// what started the gateway on port 0.
    pub ports_file: Option<std::path::PathBuf>,
}

/// TLS of the gRPC port: the server's certificate chain and key, and for mutual TLS the CA
/// that client certificates must chain to (PEM).
#[derive(Clone)]
pub struct Tls {
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
    pub client_ca_pem: Option<Vec<u8>>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("mutual", &self.client_ca_pem.is_some())
            .finish_non_exhaustive()
    }
}

impl Tls {
    /// Reads `TASKWIRE_TLS_CERT`, `TASKWIRE_TLS_KEY` and `TASKWIRE_TLS_CLIENT_CA`; `None` when
    /// neither certificate nor key is set.
    pub fn from_env() -> Result<Option<Self>, String> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let read =
            |name: &str, path: &str| std::fs::read(path).map_err(|e| format!("{name}={path}: {e}"));
        match (var(env::TLS_CERT), var(env::TLS_KEY)) {
            (None, None) => {
                if var(env::TLS_CLIENT_CA).is_some() {
                    return Err(format!(
                        "{} needs {} and {}: mutual TLS is TLS with client certificates",
                        env::TLS_CLIENT_CA,
                        env::TLS_CERT,
                        env::TLS_KEY
                    ));
                }
                Ok(None)
            }
            (Some(cert), Some(key)) => Ok(Some(Self {
                cert_pem: read(env::TLS_CERT, &cert)?,
                key_pem: read(env::TLS_KEY, &key)?,
                client_ca_pem: var(env::TLS_CLIENT_CA)
                    .map(|ca| read(env::TLS_CLIENT_CA, &ca))
                    .transpose()?,
            })),
            _ => Err(format!("set both {} and {}", env::TLS_CERT, env::TLS_KEY)),
        }
    }
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Secrets (tokens, the HTTP token, NATS credentials' content) stay out of logs.
        f.debug_struct("Config")
            .field("nats_url", &self.nats_url)
            .field("max_payload", &self.max_payload)
            .field("broker", &self.broker)
            .field("descriptor_sets", &self.descriptor_sets.len())
            .field("http_addr", &self.http_addr)
            .field("nats_auth", &self.nats_auth)
            .field("tokens", &self.tokens.is_some())
            .field("http_token", &self.http_token.is_some())
            .field("tls", &self.tls)
            .field("max_concurrent_streams", &self.max_concurrent_streams)
            .field("request_timeout", &self.request_timeout)
            .field("ports_file", &self.ports_file)
            .finish()
    }
}

impl Config {
    /// Defaults for everything but the NATS URL.
    pub fn new(nats_url: impl Into<String>) -> Self {
        Self {
            nats_url: nats_url.into(),
            max_payload: DEFAULT_MAX_PAYLOAD,
            broker: broker::Settings::default(),
            descriptor_sets: Vec::new(),
            http_addr: None,
            nats_auth: broker::NatsAuth::default(),
            tokens: None,
            http_token: None,
            tls: None,
            max_concurrent_streams: DEFAULT_MAX_CONCURRENT_STREAMS,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            ports_file: None,
        }
    }
}

/// Shared state of the gRPC services.
#[derive(Debug)]
pub(crate) struct Gateway {
    client: async_nats::Client,
    broker: Broker,
    registry: Arc<Registry>,
    waiters: Arc<waiters::Waiters>,
    max_payload: usize,
    metrics: inspect::Metrics,
    /// Whether the workflows' stream and consumers are open.
    workflows: bool,
    /// Workflows read lately, with their plans: a definition is stored once and never changes.
    loaded: workflows::Cache,
    /// Tasks stored since the last sample, for the dashboard's charts.
    submitted: samples::Submitted,
}

/// Connects to NATS, opens the streams and the registry, and serves gRPC on `listener` until
/// `shutdown` completes; then stops accepting calls and lets those in flight finish.
pub async fn serve(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), Error> {
    if config.tokens.is_some() && config.http_addr.is_some() && config.http_token.is_none() {
        return Err(Error::Startup(format!(
            "tokens protect the gRPC port, but the dashboard and /metrics on {} would be open to anyone: set {} (or {}), or turn the HTTP server off",
            env::HTTP_ADDR,
            auth::env::HTTP_TOKEN,
            auth::env::HTTP_TOKEN_FILE
        )));
    }
    let mut fixed = Vec::new();
    for set in &config.descriptor_sets {
        fixed.extend(
            TaskType::all_in(set)
                .map_err(|e| Error::Startup(format!("bad descriptor set: {e}")))?,
        );
    }
    let options = async_nats::ConnectOptions::new()
        .name("taskwire-gateway")
        .connection_timeout(Duration::from_secs(5));
    let options = config
        .nats_auth
        .apply(options)
        .await
        .map_err(Error::Startup)?;
    let refusals = broker::Refusals::default();
    let options = refusals.watch(options);
    let client = options
        .connect(broker::servers(&config.nats_url))
        .await
        .map_err(|e| {
            Error::BrokerDown(format!(
                "cannot connect to {}: {e}; start nats-server or set {}",
                config.nats_url,
                env::NATS_URL
            ))
        })?;
    // A task is its arguments plus headers in one NATS message: arguments the server would
    // refuse must be refused by the gateway, with a clear error, before anything is stored.
    let server_max = client.server_info().max_payload;
    if config.max_payload.saturating_add(HEADER_ROOM) > server_max {
        return Err(Error::Startup(format!(
            "{}={} does not fit the NATS server's max_payload of {server_max} bytes with room for a task's headers ({HEADER_ROOM} bytes): set it to at most {} or raise max_payload in the server's configuration",
            env::MAX_PAYLOAD,
            config.max_payload,
            server_max.saturating_sub(HEADER_ROOM)
        )));
    }
    let jetstream = async_nats::jetstream::ContextBuilder::new()
        .timeout(Duration::from_secs(5))
        .build(client.clone());
    let broker =
        Broker::open(jetstream, &config.broker)
            .await
            .map_err(|e| match refusals.explain() {
                Some(why) => Error::Startup(format!("{e} ({why})")),
                None => Error::Startup(e.to_string()),
            })?;
    let stop = CancellationToken::new();
    let _stop_registry = stop.clone().drop_guard();
    // Without it (NATS permissions from before it existed, say) producers must match the
    // workers' schema version exactly.
    let schemas = match broker.schemas(&config.broker).await {
        Ok(schemas) => Some(schemas),
        Err(e) => {
            tracing::warn!(error = %e, "earlier schema versions are not kept: producers must match the workers' version exactly");
            None
        }
    };
    let registry = Registry::start(
        broker.registry.clone(),
        schemas,
        fixed,
        stop.clone(),
        &refusals,
    )
    .await?;
    // Without it (NATS permissions from before it existed, say) this gateway receives every
    // stored result, not only its own callers'.
    let gateways = match broker.gateways(&config.broker).await {
        Ok(bucket) => Some(bucket),
        Err(e) => {
            tracing::warn!(error = %e, "no result partition of its own: receiving every stored result");
            None
        }
    };
    let waiters = waiters::Waiters::start(&client, gateways, stop.clone()).await?;
    // Without them (NATS permissions from before workflows, say) Workflows answers
    // UNAVAILABLE and the rest works on.
    let workflow_consumers = match broker.workflows(&config.broker).await {
        Ok(stream) => broker
            .workflow_consumers(&stream, workflows::advance::ACK_WAIT)
            .await
            .map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    let gateway = Arc::new(Gateway {
        client,
        broker,
        registry,
        waiters,
        max_payload: config.max_payload,
        metrics: inspect::Metrics::new(),
        workflows: workflow_consumers.is_ok(),
        loaded: workflows::Cache::default(),
        submitted: samples::Submitted::default(),
    });
    // Without it (NATS permissions from before it existed, say) the dashboard draws no charts.
    match gateway.broker.samples(&config.broker).await {
        Ok(_) => samples::start(Arc::clone(&gateway), stop.clone()),
        Err(e) => tracing::warn!(error = %e, "no charts: the samples stream cannot be opened"),
    }
    match workflow_consumers {
        Ok([starts, steps, ended]) => {
            workflows::advance::start(Arc::clone(&gateway), [starts, steps, ended], stop.clone());
            children::start(Arc::clone(&gateway), stop.clone());
        }
        Err(e) => {
            tracing::warn!(error = %e, "workflows are not available: their stream or consumers cannot be opened")
        }
    }

    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<TasksServer<tasks::TasksService>>()
        .await;
    health
        .set_serving::<AdminServer<admin::AdminService>>()
        .await;
    health
        .set_serving::<SchedulesServer<schedules::SchedulesService>>()
        .await;
    health
        .set_serving::<WorkflowsServer<workflows::WorkflowsService>>()
        .await;

    let mut ports = broker::ports::Ports {
        grpc: listener.local_addr().ok(),
        http: None,
    };
    if let Some(addr) = config.http_addr {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|e| Error::Startup(format!("cannot listen on {addr} for HTTP: {e}")))?;
        ports.http = Some(listener.local_addr().unwrap_or(addr));
        tracing::info!(addr = %listener.local_addr().unwrap_or(addr), "metrics on /metrics");
        let token = config.http_token.as_deref().map(Arc::from);
        inspect::serve_http(listener, Arc::clone(&gateway), token, stop.clone());
    }
    if let Some(file) = &config.ports_file {
        ports
            .write(file)
            .map_err(|e| Error::Startup(e.to_string()))?;
    }
    let measured = Arc::clone(&gateway);
    let schedules = schedules::SchedulesService::new(Arc::clone(&gateway));
    let admin = admin::AdminService::new(Arc::clone(&gateway));
    let workflows = workflows::WorkflowsService::new(Arc::clone(&gateway));
    let service = tasks::TasksService::new(gateway);
    let max_message = config.max_payload.saturating_mul(4).max(4 * 1024 * 1024);
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    tracing::info!("gateway serving");
    // Paths no built-in service has go to the registered tasks themselves.
    let direct = Arc::clone(&measured);
    let routes = tonic::service::Routes::new(health_service)
        .add_service(reflection::Reflection::<reflection::V1>::new(Arc::clone(
            &measured,
        )))
        .add_service(reflection::Reflection::<reflection::V1Alpha>::new(
            Arc::clone(&measured),
        ))
        .add_service(TasksServer::new(service).max_decoding_message_size(max_message))
        .add_service(AdminServer::new(admin))
        .add_service(SchedulesServer::new(schedules))
        .add_service(WorkflowsServer::new(workflows).max_decoding_message_size(max_message))
        .into_axum_router()
        .fallback(move |request: axum::extract::Request| {
            let gateway = Arc::clone(&direct);
            async move { direct::call(gateway, request).await }
        });
    let mut server = tonic::transport::Server::builder()
        .max_concurrent_streams(config.max_concurrent_streams)
        .timeout(config.request_timeout)
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .tcp_keepalive(Some(Duration::from_secs(60)));
    if let Some(tls) = &config.tls {
        let mut settings = tonic::transport::ServerTlsConfig::new().identity(
            tonic::transport::Identity::from_pem(&tls.cert_pem, &tls.key_pem),
        );
        if let Some(ca) = &tls.client_ca_pem {
            settings = settings.client_ca_root(tonic::transport::Certificate::from_pem(ca));
        }
        server = server.tls_config(settings).map_err(|e| {
            Error::Startup(format!(
                "TLS: {e}; check TASKWIRE_TLS_CERT and TASKWIRE_TLS_KEY"
            ))
        })?;
    }
    let tokens = config.tokens.clone();
    server
        .layer(tower::layer::layer_fn(move |inner| {
            measure::Measure::new(inner, Arc::clone(&measured))
        }))
        .layer(tower::layer::layer_fn(move |inner| {
            auth::Auth::new(inner, tokens.clone())
        }))
        .add_routes(tonic::service::Routes::from(routes))
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
        .map_err(|e| Error::Startup(format!("gRPC server: {e}")))?;
    tracing::info!("gateway stopped");
    Ok(())
}

impl From<std::io::Error> for Error {
    fn from(err: std::io::Error) -> Self {
        Error::Startup(format!("I/O: {err}"))
    }
}
