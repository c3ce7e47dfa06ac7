//! Compiles the gateway API in `proto/taskwire/v1`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    taskwire_build::configure()
        .own_messages(true)
        .grpc_package("taskwire.v1")
        .client(false)
        .compile(
            &[
                "proto/taskwire/v1/options.proto",
                "proto/taskwire/v1/tasks.proto",
                "proto/taskwire/v1/schedules.proto",
                "proto/taskwire/v1/worker.proto",
                "proto/taskwire/v1/workflows.proto",
            ],
            &["proto"],
        )?;
    Ok(())
}
