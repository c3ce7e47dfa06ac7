//! `taskwire worker` is the worker runtime by the command's name: its flags, its checks, its
//! exit codes.

use std::process::Command;

#[test]
fn taskwire_worker_runs_the_worker_runtime() -> anyhow::Result<()> {
    let help = Command::new(env!("CARGO_BIN_EXE_taskwire"))
        .args(["worker", "--help"])
        .output()?;
    assert!(help.status.success(), "{help:?}");
    let text = String::from_utf8(help.stdout)?;
    assert!(
        text.contains("--upstream") && text.contains("taskwire-worker"),
        "{text}"
    );

    // A wrong upstream address is the runtime's configuration error: exit 64, saying what to
    // write instead.
    let wrong = Command::new(env!("CARGO_BIN_EXE_taskwire"))
        .args(["worker", "--upstream", "127.0.0.1:1"])
        .output()?;
    assert_eq!(wrong.status.code(), Some(64), "{wrong:?}");
    let said = String::from_utf8(wrong.stderr)?;
    assert!(said.contains("unix:///path/to.sock"), "{said}");
    Ok(())
}
