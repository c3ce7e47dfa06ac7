//! `taskwire health`: exits 0 when a gateway's gRPC health service answers SERVING, or when an
//! HTTP endpoint (a worker's `/healthz`) answers 200. For container health checks, where images
//! carry no curl or grpc_health_probe.

use std::time::Duration;

use anyhow::{Context as _, bail};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// What to check.
#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    /// A gateway's gRPC address, e.g. 127.0.0.1:50051: asks grpc.health.v1 about the server.
    #[arg(
        long,
        value_name = "ADDR",
        required_unless_present = "http",
        conflicts_with = "http"
    )]
    pub grpc: Option<String>,
    /// An HTTP URL, e.g. http://127.0.0.1:9464/healthz (a worker's metrics port).
    #[arg(long, value_name = "URL")]
    pub http: Option<String>,
    /// Give up after this long.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
}

/// Checks, and prints `serving` or fails with the reason.
pub async fn run(options: Options) -> anyhow::Result<()> {
    let check = async {
        match (&options.grpc, &options.http) {
            (Some(addr), _) => grpc(addr).await,
            (None, Some(url)) => http(url).await,
            (None, None) => bail!("give --grpc ADDR or --http URL"),
        }
    };
    tokio::time::timeout(options.timeout, check)
        .await
        .with_context(|| format!("no answer within {:?}", options.timeout))??;
    println!("serving");
    Ok(())
}

async fn grpc(addr: &str) -> anyhow::Result<()> {
    let endpoint = if addr.contains("://") {
        addr.to_owned()
    } else {
        format!("http://{addr}")
    };
    let channel = tonic::transport::Endpoint::from_shared(endpoint.clone())
        .with_context(|| format!("{addr} is not an address such as 127.0.0.1:50051"))?
        .connect()
        .await
        .with_context(|| format!("cannot connect to {endpoint}"))?;
    let answer = tonic_health::pb::health_client::HealthClient::new(channel)
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .context("health check failed")?
        .into_inner();
    let status = answer.status();
    if status != tonic_health::pb::health_check_response::ServingStatus::Serving {
        bail!("{endpoint} is {}", status.as_str_name());
    }
    Ok(())
}

async fn http(url: &str) -> anyhow::Result<()> {
    let rest = url
        .strip_prefix("http://")
        .with_context(|| format!("{url} is not an http:// URL"))?;
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let mut stream = tokio::net::TcpStream::connect(authority)
        .await
        .with_context(|| format!("cannot connect to {authority}"))?;
    let request = format!("GET /{path} HTTP/1.0\r\nHost: {authority}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut answer = Vec::new();
    stream.take(64 * 1024).read_to_end(&mut answer).await?;
    let answer = String::from_utf8_lossy(&answer);
    let status = answer.lines().next().unwrap_or_default();
    if status.split_whitespace().nth(1) != Some("200") {
        bail!("{url} answered {status:?}");
    }
    Ok(())
}
