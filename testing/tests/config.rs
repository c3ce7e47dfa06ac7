//! A process with a wrong configuration stops before it starts anything, naming every problem
//! at once (exit 64), not only the first.

use taskwire_testing::bin;

/// Runs `binary` with `env` (and nothing of the caller's `TASKWIRE_*`); its exit code and
/// standard error.
fn run(binary: &str, env: &[(&str, &str)]) -> anyhow::Result<(Option<i32>, String)> {
    let mut command = std::process::Command::new(bin(binary)?);
    for (name, _) in std::env::vars() {
        if name.starts_with("TASKWIRE_") {
            command.env_remove(name);
        }
    }
    let out = command
        .envs(env.iter().copied())
        // Nothing listens there: a process that got past its configuration would not get far.
        .env("TASKWIRE_NATS_URL", "nats://127.0.0.1:9")
        .stdin(std::process::Stdio::null())
        .output()?;
    Ok((
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

#[test]
fn the_gateway_names_every_problem_in_its_configuration() -> anyhow::Result<()> {
    let (code, stderr) = run(
        "taskwire-gateway",
        &[
            ("TASKWIRE_REPLICAS", "9"),
            ("TASKWIRE_RESULT_TTL", "forever"),
            ("TASKWIRE_HTTP_ADDR", "nowhere"),
            ("TASKWIRE_MAX_PAYLOAD", "-1"),
            ("TASKWIRE_GATEWAY_ADDR", "127.0.0.1:0"),
        ],
    )?;
    assert_eq!(code, Some(64), "{stderr}");
    assert!(stderr.contains("has 4 problems"), "{stderr}");
    for named in [
        "TASKWIRE_REPLICAS=\"9\"",
        "TASKWIRE_RESULT_TTL=\"forever\"",
        "TASKWIRE_HTTP_ADDR=\"nowhere\"",
        "TASKWIRE_MAX_PAYLOAD=\"-1\"",
    ] {
        assert!(stderr.contains(named), "{named} not named: {stderr}");
    }
    Ok(())
}

#[test]
fn workers_name_every_problem_in_their_configuration() -> anyhow::Result<()> {
    for binary in ["taskwire-test-worker", "taskwire-magic-worker"] {
        let (code, stderr) = run(
            binary,
            &[
                ("TASKWIRE_CONCURRENCY", "0"),
                ("TASKWIRE_ACK_WAIT", "soon"),
                ("TASKWIRE_MAX_QUEUED", "0"),
                ("TASKWIRE_METRICS_ADDR", "here"),
            ],
        )?;
        assert_eq!(code, Some(64), "{binary}: {stderr}");
        assert!(stderr.contains("has 4 problems"), "{binary}: {stderr}");
        for named in [
            "TASKWIRE_CONCURRENCY=\"0\"",
            "TASKWIRE_ACK_WAIT=\"soon\"",
            "TASKWIRE_MAX_QUEUED=\"0\"",
            "TASKWIRE_METRICS_ADDR=\"here\"",
        ] {
            assert!(
                stderr.contains(named),
                "{binary}: {named} not named: {stderr}"
            );
        }
    }
    Ok(())
}
