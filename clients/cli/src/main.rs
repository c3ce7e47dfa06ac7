//! `taskwire`: the command line. Parses arguments and hands over to the library; every failure
//! is printed as one line and exits non-zero.

use std::process::ExitCode;

use clap::Parser;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let _telemetry = taskwire::telemetry::init("warn", "taskwire-cli");
    let cli = taskwire_cli::Cli::parse();
    match taskwire_cli::run(cli).await {
        Ok(code) => ExitCode::from(code as u8),
        Err(e) => {
            eprintln!("taskwire: {e:#}");
            ExitCode::FAILURE
        }
    }
}
