//! The fault drills, small: nothing accepted is lost and no task has two results. (The
//! outage drill, `outage_under_limit`, runs in `make chaos`; its small form is the meetings
//! test of `max_concurrency` across an outage.)

use taskwire_testing::chaos;

/// One drill at a time: each starts its own servers and processes, and two at once on a small
/// machine measure the machine more than the drill.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn drill(scenario: &str, tasks: usize) -> anyhow::Result<()> {
    drill_report(scenario, tasks).await.map(|_| ())
}

async fn drill_report(scenario: &str, tasks: usize) -> anyhow::Result<chaos::Report> {
    let _turn = ONE_AT_A_TIME.lock().await;
    let report = chaos::run(scenario, tasks).await?;
    println!("{}", serde_json::to_string(&report)?);
    assert!(report.submitted > 0, "{report:?}");
    assert_eq!(report.lost, 0, "{report:?}");
    assert_eq!(report.duplicate_results, 0, "{report:?}");
    assert_eq!(report.duplicate_dead_letters, 0, "{report:?}");
    assert_eq!(report.stray_dead_letters, 0, "{report:?}");
    assert_eq!(report.key_mismatches, 0, "{report:?}");
    assert!(report.most_at_once <= 5, "{report:?}");
    assert_eq!(
        report.succeeded + report.failed,
        report.submitted,
        "{report:?}"
    );
    // One stored result per task, whatever the workers went through.
    assert_eq!(
        report.results_in_stream as usize, report.submitted,
        "{report:?}"
    );
    Ok(report)
}

#[tokio::test]
async fn worker_sigkill() -> anyhow::Result<()> {
    drill("worker_sigkill", 300).await
}

#[tokio::test]
async fn long_task() -> anyhow::Result<()> {
    drill("long_task", 20).await
}

#[tokio::test]
async fn nats_restart() -> anyhow::Result<()> {
    drill("nats_restart", 300).await
}

#[tokio::test]
async fn gateway_sigkill() -> anyhow::Result<()> {
    drill("gateway_sigkill", 300).await
}

#[tokio::test]
async fn poison() -> anyhow::Result<()> {
    drill("poison", 200).await
}

#[tokio::test]
async fn worker_sigterm() -> anyhow::Result<()> {
    drill("worker_sigterm", 300).await
}

#[tokio::test]
async fn stream_full() -> anyhow::Result<()> {
    drill("stream_full", 100).await
}

#[tokio::test]
async fn cluster_leader_kill() -> anyhow::Result<()> {
    drill("cluster_leader_kill", 300).await
}

#[tokio::test]
async fn nats_kill_loop() -> anyhow::Result<()> {
    drill("nats_kill_loop", 400).await
}

#[tokio::test]
async fn delayed_failures() -> anyhow::Result<()> {
    drill("delayed_failures", 60).await
}

#[tokio::test]
async fn keys_across_restart() -> anyhow::Result<()> {
    drill("keys_across_restart", 200).await
}

#[tokio::test]
async fn workflow_chords() -> anyhow::Result<()> {
    // 30 chords of ten members: each workflow ends succeeded, its callback's one result
    // holding all ten members' results.
    let report = drill_report("workflow_chords", 300).await?;
    assert_eq!(report.failed, 0, "{report:?}");
    assert_eq!(report.refused, 0, "{report:?}");
    Ok(())
}
