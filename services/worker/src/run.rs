//! A worker's start and stop: the served task types, their consumers, the pull loops, the
//! drain.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self};
use taskwire::service::Service;
use taskwire::task::{Name, TaskType};
use taskwire_protocol::retry::Backoff;
use taskwire_protocol::{self as broker, Broker};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::cancels::Cancels;
use crate::limits::Limits;
use crate::metrics::{self, Metrics};
use crate::pauses::Pauses;
use crate::pull::{IDLE_PULL, NORMAL, PULL_SLACK, pull_loop};
use crate::{Builder, Error};

/// One served task type and everything its pull loop and handlers share.
pub(crate) struct Served {
    pub(crate) task: TaskType,
    pub(crate) service: Arc<dyn Service>,
    pub(crate) client: async_nats::Client,
    pub(crate) broker: Broker,
    pub(crate) heartbeat: Duration,
    /// Fires when the grace period is over: running tasks are released.
    pub(crate) force: CancellationToken,
    pub(crate) on_result: Option<crate::ResultHook>,
    pub(crate) cancels: Arc<Cancels>,
    pub(crate) limits: Arc<Limits>,
    pub(crate) pauses: Arc<Pauses>,
    pub(crate) metrics: Arc<Metrics>,
    /// The counters of this task type.
    pub(crate) task_metrics: metrics::TaskMetrics,
    /// The upstream's health, when the tasks are served by calling one: while it is down no
    /// task starts.
    pub(crate) upstream: Option<crate::upstream::Health>,
}

pub(crate) async fn run(
    builder: Builder,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), Error> {
    let mut builder = builder;
    let mut shutdown = std::pin::pin!(shutdown);
    // The bridge's own background work (context service, health checks) ends with the worker.
    let bridge_stop = CancellationToken::new();
    let _bridge_stop = bridge_stop.clone().drop_guard();
    let mut upstream_health = None;
    let mut version = env!("CARGO_PKG_VERSION").to_owned();
    if let Some(upstream) = builder.upstream.take() {
        tracing::info!(upstream = %upstream.address(), "learning the upstream's services");
        let bridge = tokio::select! {
            bridge = upstream.start(bridge_stop.clone()) => bridge?,
            () = &mut shutdown => return Ok(()),
        };
        builder.services.extend(bridge.services);
        upstream_health = Some(bridge.health);
        version = format!("{version} serving {}", bridge.name);
    }
    if builder.services.is_empty() {
        return Err(Error::NoServices);
    }
    let mut served_types = Vec::new();
    for service in &builder.services {
        let types =
            TaskType::all_in(service.file_descriptor_set()).map_err(|e| Error::Descriptors {
                service: service.name().into(),
                reason: e.to_string(),
            })?;
        for def in service.tasks() {
            let task = types
                .iter()
                .find(|t| t.name.as_str() == def.name.as_ref())
                .cloned()
                .ok_or_else(|| Error::Descriptors {
                    service: service.name().into(),
                    reason: format!("its descriptor set does not describe {}", def.name),
                })?;
            served_types.push((task, Arc::clone(service)));
        }
    }

    let auth = match &builder.nats_auth {
        Some(auth) => auth.clone(),
        None => broker::NatsAuth::from_env().map_err(|reason| Error::Connect {
            url: builder.nats_url.clone(),
            reason,
        })?,
    };
    let options = async_nats::ConnectOptions::new()
        .name("taskwire-worker")
        .connection_timeout(Duration::from_secs(5));
    let options = auth.apply(options).await.map_err(|reason| Error::Connect {
        url: builder.nats_url.clone(),
        reason,
    })?;
    let refusals = broker::Refusals::default();
    let options = refusals.watch(options);
    let client = options
        .connect(broker::servers(&builder.nats_url))
        .await
        .map_err(|e| Error::Connect {
            url: builder.nats_url.clone(),
            reason: e.to_string(),
        })?;
    let jetstream = jetstream::ContextBuilder::new()
        .timeout(Duration::from_secs(10))
        .build(client.clone());
    let broker = match Broker::open(jetstream, &builder.broker).await {
        Ok(broker) => broker,
        Err(e) => {
            return Err(match refusals.explain() {
                Some(why) => Error::Refused(format!("{e} ({why})")),
                None => e.into(),
            });
        }
    };

    let stop = CancellationToken::new();
    let force = CancellationToken::new();
    let tracker = TaskTracker::new();
    let cancels = Cancels::start(
        broker.cancelled.clone(),
        broker.result_ttl,
        stop.clone(),
        &refusals,
    )
    .await?;
    let limits = Limits::start(broker.clone(), stop.clone(), &refusals).await?;
    let pauses = Pauses::start(&broker, stop.clone(), &refusals).await?;
    let metrics = Metrics::new();
    // Ends with the worker, after the drain.
    let done = CancellationToken::new();
    let mut ports = broker::ports::Ports::default();
    if let Some(addr) = builder.metrics_addr {
        let listener = metrics::bind(addr).await?;
        ports.http = Some(listener.local_addr().unwrap_or(addr));
        tracing::info!(addr = %listener.local_addr().unwrap_or(addr), "metrics on /metrics");
        metrics::serve(
            listener,
            Arc::clone(&metrics),
            upstream_health.clone(),
            done.clone(),
        );
    }
    let mut served_names = Vec::new();
    let mut loops = Vec::new();
    for (task, service) in served_types {
        let mut consumers = Vec::new();
        for priority in broker::PRIORITIES {
            consumers.push(
                task_consumer(&broker, &refusals, &task.name, priority, builder.ack_wait).await?,
            );
        }
        // In-progress acks follow the consumer's ack wait, which the first worker set.
        let ack_wait = consumers[NORMAL].cached_info().config.ack_wait;
        let entry = task.registry_entry(service.file_descriptor_set());
        broker.register(&entry).await?;
        let concurrency = task
            .options
            .concurrency
            .map_or(builder.concurrency, |n| n as usize);
        tracing::info!(task = %task.name, concurrency, "serving");
        let served = Arc::new(Served {
            task_metrics: metrics.for_task(task.name.as_str()),
            task,
            service,
            client: client.clone(),
            broker: broker.clone(),
            heartbeat: (ack_wait / 3).max(Duration::from_millis(50)),
            force: force.clone(),
            on_result: builder.on_result.clone(),
            cancels: Arc::clone(&cancels),
            limits: Arc::clone(&limits),
            pauses: Arc::clone(&pauses),
            metrics: Arc::clone(&metrics),
            upstream: upstream_health.clone(),
        });
        served_names.push(served.task.name.to_string());
        loops.push(tokio::spawn(pull_loop(
            served,
            consumers,
            concurrency,
            stop.clone(),
            tracker.clone(),
            refusals.connects(),
        )));
    }

    let heartbeat = metrics::heartbeat(
        broker.clone(),
        Arc::clone(&metrics),
        served_names,
        version,
        upstream_health.clone(),
        Arc::clone(&pauses),
        done.clone(),
    );
    if let Some(file) = &builder.ports_file {
        ports
            .write(file)
            .map_err(|e| Error::Metrics(e.to_string()))?;
    }
    if let Some(ready) = builder.ready.take() {
        ready();
    }
    shutdown.await;
    // Caught from now on: a second signal ends the drain.
    let second_signal = builder.signal_forces.then(taskwire::shutdown_signal);
    let forced = builder.force.take();
    tracing::info!(grace = ?builder.grace, "draining");
    stop.cancel();
    // Each pull loop ends within a pull's bound; one that does not is stopped, so that the
    // drain always ends.
    let loops_end = tokio::time::Instant::now() + IDLE_PULL + PULL_SLACK;
    for mut pull in loops {
        match tokio::time::timeout_at(loops_end, &mut pull).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "a pull loop failed"),
            Err(_) => {
                tracing::warn!("a pull loop did not stop in time; stopping it");
                pull.abort();
            }
        }
    }
    tracker.close();
    let second_signal = async {
        let signal = async {
            match second_signal {
                Some(signal) => signal.await,
                None => std::future::pending::<()>().await,
            }
        };
        let forced = async {
            match forced {
                Some(forced) => forced.await,
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            () = signal => {}
            () = forced => {}
        }
    };
    let drained = tokio::select! {
        drained = tokio::time::timeout(builder.grace, tracker.wait()) => drained.is_ok(),
        () = second_signal => false,
    };
    if !drained {
        tracing::warn!(
            running = tracker.len(),
            "releasing running tasks to other workers"
        );
        force.cancel();
        tracker.wait().await;
    }
    done.cancel();
    let _ = heartbeat.await;
    // Acks and NAKs are plain publishes: make sure they left before the process does; with
    // the broker gone they cannot, and the worker does not wait for it to come back.
    if tokio::time::timeout(Duration::from_secs(5), client.flush())
        .await
        .is_err()
    {
        tracing::warn!(
            "the broker did not take the last acks before the worker stopped; their tasks come back after their ack wait"
        );
    }
    tracing::info!("worker stopped");
    Ok(())
}

/// How long a worker keeps trying to create or find a consumer at start: in a cluster, a
/// stream electing a leader, or a busy one creating replicated consumers, can take a while.
pub(crate) const CONSUMER_PATIENCE: Duration = Duration::from_secs(60);

/// The consumer of a task type at a priority, tried again until [`CONSUMER_PATIENCE`] runs out;
/// at once an error when NATS refused something (a permission: trying again cannot help).
pub(crate) async fn task_consumer(
    broker: &Broker,
    refusals: &broker::Refusals,
    name: &Name,
    priority: taskwire::v1::Priority,
    ack_wait: Duration,
) -> Result<jetstream::consumer::PullConsumer, Error> {
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2))
        .for_at_most(CONSUMER_PATIENCE);
    loop {
        match broker.task_consumer(name, priority, ack_wait, 10_000).await {
            Ok(consumer) => return Ok(consumer),
            Err(e) => {
                if let Some(why) = refusals.explain() {
                    return Err(Error::Refused(format!("{e} ({why})")));
                }
                let Some(wait) = backoff.next_wait() else {
                    return Err(e.into());
                };
                tracing::warn!(task = %name, error = %e, "cannot create the task's consumer yet; trying again");
                tokio::time::sleep(wait).await;
            }
        }
    }
}
