//! Cluster-wide limits: a concurrency limit is never exceeded however many workers run, a rate
//! limit paces starts across workers, and the Admin API overrides both at run time.

use std::time::Duration;

use taskwire::v1;
use taskwire_client::Client;
use taskwire_examples::chaos::v1::ChaosClient;
use taskwire_examples::chaos::v1::SleepArgs;
use taskwire_testing::{Gateway, NatsServer, Worker, tasks};

const WAIT: Duration = Duration::from_secs(60);
const LIMITED: &str = "examples.chaos.v1.Chaos/Limited";

async fn three_workers(nats: &NatsServer) -> anyhow::Result<Vec<Worker>> {
    let mut workers = Vec::new();
    for _ in 0..3 {
        workers
            .push(Worker::start(&nats.url(), |w| w.serve(tasks::chaos()).concurrency(10)).await?);
    }
    Ok(workers)
}

async fn run_limited(chaos: &ChaosClient, prefix: &str, n: usize) -> anyhow::Result<()> {
    let mut handles = Vec::new();
    for i in 0..n {
        handles.push(
            chaos
                .limited(SleepArgs {
                    millis: 150,
                    label: format!("{prefix}{i}"),
                })
                .await?,
        );
    }
    for handle in handles {
        handle.get(WAIT).await?;
    }
    Ok(())
}

#[tokio::test]
async fn a_concurrency_limit_holds_across_three_workers_and_can_be_overridden() -> anyhow::Result<()>
{
    let nats = NatsServer::start_temporary().await?;
    let gateway = Gateway::start(&nats.url()).await?;
    let _workers = three_workers(&nats).await?;
    let client = Client::connect(gateway.url()).await?;
    let chaos = ChaosClient::new(client.clone());

    // Declared in the proto: at most five at once.
    let limits = client.task_limits(LIMITED).await?;
    assert_eq!(limits.limits.as_ref().map(|l| l.max_concurrency), Some(5));
    assert!(!limits.overridden);
    run_limited(&chaos, "limited-", 40).await?;
    let most = tasks::max_overlap("limited-");
    println!("max concurrent observed: {most} (limit 5, 3 workers of 10)");
    assert!(most <= 5, "{most} ran at once");
    assert!(most >= 2, "the workers ran tasks side by side: {most}");

    // Overridden through the Admin API: the workers follow.
    let set = client
        .set_task_limits(
            LIMITED,
            Some(v1::TaskLimits {
                max_concurrency: 2,
                rate_limit: String::new(),
            }),
        )
        .await?;
    assert!(set.overridden);
    // Workers learn the override from their watch of the limits bucket.
    tokio::time::sleep(Duration::from_secs(2)).await;
    run_limited(&chaos, "overridden-", 20).await?;
    let most = tasks::max_overlap("overridden-");
    println!("max concurrent observed: {most} (override 2)");
    assert!(most <= 2, "{most} ran at once");

    // Cleared: the declared limit again.
    let cleared = client.set_task_limits(LIMITED, None).await?;
    assert!(!cleared.overridden);
    assert_eq!(cleared.limits.map(|l| l.max_concurrency), Some(5));

    let err = client
        .set_task_limits(
            LIMITED,
            Some(v1::TaskLimits {
                max_concurrency: 0,
                rate_limit: "fast".into(),
            }),
        )
        .await
        .expect_err("bad rate");
    assert_eq!(err.code(), Some(tonic::Code::InvalidArgument), "{err}");
    assert!(err.to_string().contains("rate_limit"), "{err}");
    Ok(())
}

#[tokio::test]
async fn a_rate_limit_paces_starts_across_workers() -> anyhow::Result<()> {
    let nats = NatsServer::start_temporary().await?;
    let gateway = Gateway::start(&nats.url()).await?;
    let _workers = three_workers(&nats).await?;
    let client = Client::connect(gateway.url()).await?;
    let chaos = ChaosClient::new(client.clone());

    // Declared: 20 a second. Sixty quick tasks need three windows at least.
    let mut handles = Vec::new();
    for i in 0..60 {
        handles.push(
            chaos
                .paced(SleepArgs {
                    millis: 1,
                    label: format!("paced-{i}"),
                })
                .await?,
        );
    }
    for handle in handles {
        handle.get(WAIT).await?;
    }
    let mut starts = tasks::start_times("paced-");
    starts.sort();
    assert_eq!(starts.len(), 60);
    let span = starts[59].duration_since(starts[0])?;
    println!(
        "rate observed: {:.1}/s over {span:?} (limit 20/s)",
        59.0 / span.as_secs_f64()
    );
    // Any 21 starts in a row span at least a second, less the moments between counting a
    // start and running its task: no second window's worth at a window's edge.
    let closest = starts
        .windows(21)
        .map(|w| w[20].duration_since(w[0]).unwrap_or_default())
        .min()
        .unwrap_or_default();
    assert!(
        closest >= Duration::from_millis(900),
        "21 starts within {closest:?}"
    );
    Ok(())
}
