//! `max_concurrency` across a NATS outage.

use super::*;

#[tokio::test]
async fn max_concurrency_holds_across_a_nats_outage_longer_than_the_slot_lease()
-> anyhow::Result<()> {
    use nix::sys::signal::{Signal, kill};
    use taskwire_examples::chaos::v1::SleepResult as Slept;

    let nats = NatsServer::start_temporary().await?;
    let gateway = Gateway::start(&nats.url()).await?;
    let _a = Worker::start(&nats.url(), |w| w.serve(tasks::chaos())).await?;
    let _b = Worker::start(&nats.url(), |w| w.serve(tasks::chaos())).await?;
    let client = Client::connect(gateway.url()).await?;
    let mut handles = Vec::new();
    for i in 0..8 {
        handles.push(
            client
                .submit::<Slept>(
                    "examples.chaos.v1.Chaos/Limited",
                    &SleepArgs {
                        millis: 45_000,
                        label: format!("outage-{i}"),
                    },
                    SubmitOptions::default(),
                )
                .await?,
        );
    }
    eventually("the limit's five tasks to start", WAIT, || async {
        tasks::start_times("outage-").len() >= 5
    })
    .await?;
    // NATS stops answering for longer than a slot's lease (20 s): nobody can refresh a slot.
    let pid = nix::unistd::Pid::from_raw(nats.pid().expect("running") as i32);
    kill(pid, Signal::SIGSTOP)?;
    tokio::time::sleep(Duration::from_secs(25)).await;
    kill(pid, Signal::SIGCONT)?;
    // The tasks whose slots could not be kept were stopped before their leases ran out...
    let stopped = tasks::journal("cancelled")
        .iter()
        .filter(|l| l.starts_with("outage-"))
        .count();
    assert!(stopped >= 5, "{stopped} of the running tasks were stopped");
    // ...so that, whoever takes the slots after the outage, never more than five ran at once.
    eventually(
        "five tasks to run again",
        Duration::from_secs(60),
        || async { tasks::start_times("outage-").len() >= 10 },
    )
    .await?;
    let most = tasks::max_overlap("outage-");
    assert!(most <= 5, "{most} Limited tasks ran at once");
    for handle in &handles {
        let _ = handle.cancel().await;
    }
    Ok(())
}
