//! `taskwire-gateway`: the gRPC gateway as a process. Configuration comes from `TASKWIRE_*`
//! variables, each overridable by a flag; every problem in it is reported at once (exit 64).
//! SIGINT or SIGTERM stops it gracefully.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use taskwire::config::{EXIT_USAGE, Problems};
use taskwire_gateway::{Config, env};

/// Every setting as given (flag, else variable, else default); read in one place,
/// [`Args::config`], which checks them all.
#[derive(Debug, Parser)]
#[command(
    name = "taskwire-gateway",
    version,
    about = "The taskwire gRPC gateway"
)]
struct Args {
    /// NATS server URL(s), comma separated.
    #[arg(long, env = env::NATS_URL, default_value = "nats://127.0.0.1:4222")]
    nats_url: String,
    /// Address to serve gRPC on.
    #[arg(long, env = env::GATEWAY_ADDR, default_value = "127.0.0.1:50051")]
    addr: String,
    /// Largest task arguments accepted, in bytes.
    #[arg(long, env = env::MAX_PAYLOAD, default_value_t = taskwire_gateway::DEFAULT_MAX_PAYLOAD.to_string())]
    max_payload: String,
    /// How long results are kept (applies when the results stream is created).
    #[arg(long, env = taskwire_protocol::env::RESULT_TTL, default_value = "24h")]
    result_ttl: String,
    /// Stream replicas, 1 to 5 (applies when the streams are created).
    #[arg(long, env = taskwire_protocol::env::REPLICAS, default_value = "1")]
    replicas: String,
    /// Most tasks queued per task type, -1 for no limit (applies when the streams are created).
    #[arg(long, env = taskwire_protocol::env::MAX_QUEUED, default_value = "-1")]
    max_queued: String,
    /// Descriptor set files of task types to know without a worker, comma separated.
    #[arg(long, env = env::DESCRIPTOR_SETS, value_delimiter = ',')]
    descriptor_sets: Vec<String>,
    /// Address of the HTTP server with /metrics (e.g. 0.0.0.0:9090); "off" for none.
    #[arg(long, env = env::HTTP_ADDR, default_value = "off")]
    http_addr: String,
    /// Most concurrent calls per client connection.
    #[arg(long, env = env::MAX_STREAMS, default_value_t = taskwire_gateway::DEFAULT_MAX_CONCURRENT_STREAMS.to_string())]
    max_streams: String,
    /// Longest time to answer a call (a streaming call: to start its stream).
    #[arg(long, env = env::REQUEST_TIMEOUT, default_value = "330s")]
    request_timeout: String,
    /// File to write the addresses served to once listening (JSON), for a supervisor that
    /// starts the gateway on port 0.
    #[arg(long, env = taskwire_protocol::ports::ENV)]
    ports_file: Option<std::path::PathBuf>,
}

impl Args {
    /// The gateway's configuration and its gRPC address, or every problem found in them (and
    /// in the credentials, TLS and token settings of the environment).
    fn config(self) -> Result<(Config, SocketAddr), Problems> {
        let mut problems = Problems::new();
        let addr = problems.take(self.addr.parse::<SocketAddr>().map_err(|e| {
            format!(
                "{}={:?} is not an address such as 127.0.0.1:50051: {e}",
                env::GATEWAY_ADDR,
                self.addr
            )
        }));
        let max_payload = problems.take(self.max_payload.parse::<usize>().map_err(|e| {
            format!(
                "{}={:?} is not a number of bytes: {e}",
                env::MAX_PAYLOAD,
                self.max_payload
            )
        }));
        let broker = taskwire_protocol::Settings::parse(
            Some(&self.result_ttl),
            Some(&self.replicas),
            Some(&self.max_queued),
            &mut problems,
        );
        let max_streams = problems.take(self.max_streams.parse::<u32>().map_err(|e| {
            format!(
                "{}={:?} is not a number of calls: {e}",
                env::MAX_STREAMS,
                self.max_streams
            )
        }));
        let request_timeout = problems.take(duration(env::REQUEST_TIMEOUT, &self.request_timeout));
        let http_addr = match self.http_addr.as_str() {
            "off" | "" => Some(None),
            text => problems.take(text.parse().map(Some).map_err(|e| {
                format!(
                    "{}={text:?} is not an address such as 127.0.0.1:9090: {e}",
                    env::HTTP_ADDR
                )
            })),
        };
        let mut descriptor_sets = Vec::new();
        for path in &self.descriptor_sets {
            if let Some(bytes) = problems.take(std::fs::read(path).map_err(|e| {
                format!(
                    "{}: cannot read descriptor set {path}: {e}",
                    env::DESCRIPTOR_SETS
                )
            })) {
                descriptor_sets.push(bytes);
            }
        }
        let nats_auth = problems.take(taskwire_protocol::NatsAuth::from_env());
        let tls = problems.take(taskwire_gateway::Tls::from_env());
        let tokens = problems.take(taskwire_gateway::auth::Tokens::from_env());
        let http_token = problems.take(taskwire_gateway::auth::http_token_from_env());
        let (
            Some(addr),
            Some(max_payload),
            Some(max_streams),
            Some(request_timeout),
            Some(http_addr),
            Some(nats_auth),
            Some(tls),
            Some(tokens),
            Some(http_token),
        ) = (
            addr,
            max_payload,
            max_streams,
            request_timeout,
            http_addr,
            nats_auth,
            tls,
            tokens,
            http_token,
        )
        else {
            return Err(problems);
        };
        let mut config = Config::new(self.nats_url);
        config.max_payload = max_payload;
        config.broker = broker;
        config.descriptor_sets = descriptor_sets;
        config.http_addr = http_addr;
        config.nats_auth = nats_auth;
        config.tls = tls;
        config.tokens = tokens.map(std::sync::Arc::new);
        config.http_token = http_token;
        config.max_concurrent_streams = max_streams;
        config.request_timeout = request_timeout;
        config.ports_file = self.ports_file.filter(|p| !p.as_os_str().is_empty());
        problems.or_value((config, addr))
    }
}

fn duration(name: &str, text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text)
        .map_err(|e| format!("{name}={text:?} is not a duration such as 30s: {e}"))
}

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let _telemetry = taskwire::telemetry::init("info", "taskwire-gateway");
    let (config, addr) = match Args::parse().config() {
        Ok(config) => config,
        Err(problems) => {
            eprintln!("taskwire-gateway: {problems}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    match run(config, addr).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("taskwire-gateway: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(config: Config, addr: SocketAddr) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))?;
    println!("taskwire-gateway listening on {}", listener.local_addr()?);
    let signal = taskwire::shutdown_signal();
    taskwire_gateway::serve(listener, config, async move {
        signal.await;
        tracing::info!("shutting down");
    })
    .await?;
    Ok(())
}
