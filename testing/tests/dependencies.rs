//! A producer needs the contracts and the client only: neither brings the NATS client or the
//! OpenTelemetry SDK along.

#[test]
fn a_producer_only_project_pulls_in_no_broker_and_no_telemetry_sdk() -> anyhow::Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = std::process::Command::new(cargo)
        .current_dir(&root)
        .args([
            "tree",
            "--offline",
            "-p",
            "taskwire-client",
            "-p",
            "taskwire",
            "-e",
            "normal",
            "--prefix",
            "none",
        ])
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "cargo tree failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tree = String::from_utf8(out.stdout)?;
    assert!(tree.contains("taskwire-client"), "{tree}");
    for unwanted in ["async-nats ", "opentelemetry_sdk ", "opentelemetry-otlp "] {
        assert!(
            !tree.lines().any(|l| l.starts_with(unwanted)),
            "{unwanted}in the producer's tree:\n{tree}"
        );
    }
    Ok(())
}
