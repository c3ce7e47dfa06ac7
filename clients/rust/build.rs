//! Generates the typed producer stubs of the example contracts; their messages come from the
//! `taskwire` crate.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    taskwire_build::configure()
        .worker(false)
        .client(true)
        .extern_path(".examples", "::taskwire::examples")
        .compile(
            &[
                "../../proto/examples/magic/v1/magic.proto",
                "../../proto/examples/chaos/v1/chaos.proto",
            ],
            &["../../proto"],
        )?;
    Ok(())
}
