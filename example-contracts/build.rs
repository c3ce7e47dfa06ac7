//! Generates the example contracts in `proto/examples`: messages, worker traits and producer
//! stubs.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    taskwire_build::configure()
        .worker(true)
        .client(true)
        .compile(
            &[
                "../proto/examples/magic/v1/magic.proto",
                "../proto/examples/chaos/v1/chaos.proto",
                "../proto/examples/flow/v1/flow.proto",
            ],
            &["../proto"],
        )?;
    Ok(())
}
