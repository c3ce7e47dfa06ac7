//! `taskwire-gateway`: the gRPC gateway as a process. Configuration comes from `TASKWIRE_*`
//! variables, each overridable by a flag; SIGINT or SIGTERM stops it gracefully.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use taskwire_gateway::{Config, env};

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
    addr: SocketAddr,
    /// Largest task arguments accepted, in bytes.
    #[arg(long, env = env::MAX_PAYLOAD, default_value_t = taskwire_gateway::DEFAULT_MAX_PAYLOAD)]
    max_payload: usize,
    /// How long results are kept (applies when the results stream is created).
    #[arg(long, env = env::RESULT_TTL, default_value = "24h", value_parser = humantime_duration)]
    result_ttl: std::time::Duration,
    /// Stream replicas (applies when the streams are created).
    #[arg(long, env = env::REPLICAS, default_value_t = 1)]
    replicas: usize,
    /// Descriptor set files of task types to know without a worker, comma separated.
    #[arg(long, env = env::DESCRIPTOR_SETS, value_delimiter = ',')]
    descriptor_sets: Vec<PathBuf>,
    /// Address of the HTTP server with /metrics (e.g. 0.0.0.0:9090); "off" for none.
    #[arg(long, env = env::HTTP_ADDR, default_value = "off")]
    http_addr: String,
    /// Most concurrent calls per client connection.
    #[arg(long, env = env::MAX_STREAMS, default_value_t = taskwire_gateway::DEFAULT_MAX_CONCURRENT_STREAMS)]
    max_streams: u32,
    /// Longest time to answer a call (a streaming call: to start its stream).
    #[arg(long, env = env::REQUEST_TIMEOUT, default_value = "330s", value_parser = humantime_duration)]
    request_timeout: std::time::Duration,
}

fn humantime_duration(text: &str) -> Result<std::time::Duration, String> {
    humantime::parse_duration(text).map_err(|e| format!("expected a duration such as 24h: {e}"))
}

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let _telemetry = taskwire::telemetry::init("info", "taskwire-gateway");
    let args = Args::parse();
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("taskwire-gateway: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let mut config = Config::new(args.nats_url);
    config.max_payload = args.max_payload;
    config.broker = taskwire::broker::Settings::from_env().map_err(anyhow::Error::msg)?;
    config.nats_auth = taskwire::broker::NatsAuth::from_env().map_err(anyhow::Error::msg)?;
    config.tls = taskwire_gateway::Tls::from_env().map_err(anyhow::Error::msg)?;
    config.tokens = taskwire_gateway::auth::Tokens::from_env()
        .map_err(anyhow::Error::msg)?
        .map(std::sync::Arc::new);
    config.http_token =
        taskwire_gateway::auth::http_token_from_env().map_err(anyhow::Error::msg)?;
    config.max_concurrent_streams = args.max_streams;
    config.request_timeout = args.request_timeout;
    config.broker.result_ttl = args.result_ttl;
    config.broker.replicas = args.replicas;
    config.http_addr = match args.http_addr.as_str() {
        "off" | "" => None,
        text => Some(text.parse().map_err(|e| {
            anyhow::anyhow!(
                "{}={text:?} is not an address such as 127.0.0.1:9090: {e}",
                env::HTTP_ADDR
            )
        })?),
    };
    for path in &args.descriptor_sets {
        let bytes = std::fs::read(path)
            .map_err(|e| anyhow::anyhow!("cannot read descriptor set {}: {e}", path.display()))?;
        config.descriptor_sets.push(bytes);
    }
    let listener = tokio::net::TcpListener::bind(args.addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", args.addr))?;
    println!("taskwire-gateway listening on {}", listener.local_addr()?);
    let signal = taskwire::shutdown_signal();
    taskwire_gateway::serve(listener, config, async move {
        signal.await;
        tracing::info!("shutting down");
    })
    .await?;
    Ok(())
}
