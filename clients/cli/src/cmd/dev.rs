//! `taskwire dev`: the whole system on this machine, for trying things out.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use taskwire_supervisor::{self as stack, NatsServer, ProcessSpec};

/// Flags of `taskwire dev`.
#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    /// Where nats-server keeps its store and log.
    #[arg(long, default_value = ".taskwire/dev")]
    pub data_dir: PathBuf,
    /// NATS client port.
    #[arg(long, default_value_t = 4222)]
    pub nats_port: u16,
    /// gRPC address of the gateway.
    #[arg(long, default_value = "127.0.0.1:50051")]
    pub gateway_addr: SocketAddr,
    /// HTTP address of the gateway's /metrics.
    #[arg(long, default_value = "127.0.0.1:9090")]
    pub gateway_http_addr: SocketAddr,
    /// HTTP address of the worker's /metrics.
    #[arg(long, default_value = "127.0.0.1:9464")]
    pub worker_metrics_addr: SocketAddr,
}

/// Starts nats-server, the gateway and the example worker; stops them all on SIGINT/SIGTERM or
/// when one of them exits.
pub async fn run(options: Options) -> anyhow::Result<()> {
    let signal = taskwire::shutdown_signal();
    let store = options.data_dir.join("nats");
    let log = options.data_dir.join("nats.log");
    let mut nats = NatsServer::start(options.nats_port, &store, Some(&log)).await?;
    let nats_url = nats.url();
    let gateway_url = format!("http://{}", options.gateway_addr);
    let env = vec![
        ("TASKWIRE_NATS_URL".to_owned(), nats_url.clone()),
        (
            "TASKWIRE_GATEWAY_ADDR".to_owned(),
            options.gateway_addr.to_string(),
        ),
    ];
    let mut gateway_env = env.clone();
    gateway_env.push((
        "TASKWIRE_HTTP_ADDR".to_owned(),
        options.gateway_http_addr.to_string(),
    ));
    let mut worker_env = env;
    worker_env.push((
        "TASKWIRE_METRICS_ADDR".to_owned(),
        options.worker_metrics_addr.to_string(),
    ));
    let mut gateway = stack::spawn(&ProcessSpec {
        binary: "taskwire-gateway".into(),
        args: Vec::new(),
        env: gateway_env,
        inherit_output: true,
    })?;
    let mut worker = stack::spawn(&ProcessSpec {
        binary: "taskwire-magic-worker".into(),
        args: vec!["--flow".into()],
        env: worker_env,
        inherit_output: true,
    })?;
    let ready = stack::wait_for_task(
        &gateway_url,
        "examples.magic.v1.Magic/Add",
        Duration::from_secs(30),
    )
    .await;
    if let Err(e) = ready {
        stack::terminate(&mut worker, Duration::from_secs(5)).await;
        stack::terminate(&mut gateway, Duration::from_secs(5)).await;
        nats.stop().await;
        return Err(e.into());
    }
    println!(
        "\ntaskwire dev is up\n  nats      {nats_url}  (store {}, log {})\n  gateway   {gateway_url}  (gRPC: taskwire.v1.Tasks, Workflows, Schedules, Admin, health, reflection)\n            http://{}/metrics\n  worker    taskwire-magic-worker serving examples.magic.v1.Magic/Add and examples.flow.v1.Flow (the workflow examples)\n            http://{}/metrics\n\ntry:  taskwire submit examples.magic.v1.Magic/Add '{{\"arg1\":1,\"arg2\":2,\"arg3\":3}}' --wait\n      taskwire inspect queues\nCtrl-C stops everything.\n",
        store.display(),
        log.display(),
        options.gateway_http_addr,
        options.worker_metrics_addr,
    );
    let reason = tokio::select! {
        () = signal => "signal".to_owned(),
        status = gateway.wait() => format!("the gateway exited ({})", status.map(|s| s.to_string()).unwrap_or_default()),
        status = worker.wait() => format!("the worker exited ({})", status.map(|s| s.to_string()).unwrap_or_default()),
    };
    println!("stopping ({reason})");
    stack::terminate(&mut worker, Duration::from_secs(35)).await;
    stack::terminate(&mut gateway, Duration::from_secs(10)).await;
    nats.stop().await;
    println!("stopped");
    if reason == "signal" {
        Ok(())
    } else {
        anyhow::bail!("{reason}")
    }
}
