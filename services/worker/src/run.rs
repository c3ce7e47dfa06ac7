//! The pull loops and the life of one task on a worker.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, AckKind};
use bytes::Bytes;
use futures::{FutureExt as _, StreamExt as _};
use taskwire::broker::{self, Broker, header, subject};
use taskwire::service::Service;
use taskwire::task::{Id, Name, TaskType};
use taskwire::v1::TaskState;
use taskwire::{TaskContext, TaskError};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument as _;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use crate::cancels::Cancels;
use crate::limits::{Grant, Limits, Slot};
use crate::metrics::{self, Metrics};
use crate::{Builder, Error};

/// Most progress reports of one task waiting to be published.
const PROGRESS_QUEUE: usize = 256;

/// After a task's time limit, how long it has to notice its cancellation before it is abandoned.
const TIMEOUT_GRACE: Duration = Duration::from_secs(2);

/// One served task type and everything its pull loop and handlers share.
struct Served {
    task: TaskType,
    service: Arc<dyn Service>,
    client: async_nats::Client,
    broker: Broker,
    heartbeat: Duration,
    /// Fires when the grace period is over: running tasks are released.
    force: CancellationToken,
    on_result: Option<crate::ResultHook>,
    cancels: Arc<Cancels>,
    limits: Arc<Limits>,
    metrics: Arc<Metrics>,
    /// The counters of this task type.
    task_metrics: metrics::TaskMetrics,
}

pub(crate) async fn run(
    builder: Builder,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), Error> {
    let mut builder = builder;
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
                .find(|t| t.name.as_str() == def.name)
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
        refusals.connects(),
    )
    .await?;
    let limits = Limits::start(broker.clone(), stop.clone(), refusals.connects()).await?;
    let metrics = Metrics::new();
    // Ends with the worker, after the drain.
    let done = CancellationToken::new();
    if let Some(addr) = builder.metrics_addr {
        let listener = metrics::bind(addr).await?;
        tracing::info!(addr = %listener.local_addr().unwrap_or(addr), "metrics on /metrics");
        metrics::serve(listener, Arc::clone(&metrics), done.clone());
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
            metrics: Arc::clone(&metrics),
        });
        served_names.push(served.task.name.to_string());
        loops.push(tokio::spawn(pull_loop(
            served,
            consumers,
            concurrency,
            stop.clone(),
            tracker.clone(),
        )));
    }

    let heartbeat = metrics::heartbeat(
        broker.clone(),
        Arc::clone(&metrics),
        served_names,
        done.clone(),
    );
    if let Some(ready) = builder.ready.take() {
        ready();
    }
    shutdown.await;
    // Caught from now on: a second signal ends the drain.
    let second_signal = builder.signal_forces.then(taskwire::shutdown_signal);
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
        match second_signal {
            Some(signal) => signal.await,
            None => std::future::pending::<()>().await,
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
    // Acks and NAKs are plain publishes: make sure they left before the process does.
    let _ = client.flush().await;
    tracing::info!("worker stopped");
    Ok(())
}

/// Index of the normal priority level in [`broker::PRIORITIES`] (high, normal, low).
const NORMAL: usize = 1;
/// One pull round in this many looks at the lowest level first, so that a steady flow of
/// higher priority work never starves low priority tasks.
const LOW_FIRST_EVERY: u64 = 8;
/// After finding a high or low level empty while busy, how long it is not looked at again (the
/// normal level is always looked at). This bounds how late a worker busy with normal work
/// notices a new backlog at another level.
const QUIET: Duration = Duration::from_millis(200);
/// The same for a worker that found nothing anywhere: it waits on the normal level this long
/// before it looks at the others again.
const IDLE_PULL: Duration = Duration::from_secs(1);
/// The span of one attempt: a consumer span that continues the producer's trace (its
/// `traceparent` travels in the task's headers), linked to it as well when it is a retry.
fn process_span(served: &Served, message: &jetstream::Message) -> tracing::Span {
    let span = tracing::info_span!(
        "task",
        otel.name = %format!("process {}", served.task.name),
        otel.kind = "consumer",
        otel.status_code = tracing::field::Empty,
        otel.status_message = tracing::field::Empty,
        messaging.system = "nats",
        messaging.destination.name = %message.subject,
        messaging.operation.type = "process",
        messaging.operation.name = "process",
        messaging.message.id = tracing::field::Empty,
        taskwire.task.name = %served.task.name,
        taskwire.task.attempt = tracing::field::Empty,
        task = %served.task.name,
        task_id = tracing::field::Empty,
        attempt = tracing::field::Empty,
        trace_id = tracing::field::Empty,
    );
    let parent = taskwire::propagation::extract_nats(message.headers.as_ref());
    if taskwire::propagation::is_valid(&parent) {
        use opentelemetry::trace::TraceContextExt as _;
        let producer = parent.span().span_context().clone();
        let _ = span.set_parent(parent);
        let redelivered = message.info().is_ok_and(|i| i.delivered > 1)
            || message
                .headers
                .as_ref()
                .and_then(|h| h.get(header::ATTEMPT))
                .is_some_and(|a| a.as_str() != "1");
        if redelivered {
            span.add_link(producer.clone());
        }
        span.record("trace_id", tracing::field::display(producer.trace_id()));
    } else {
        use opentelemetry::trace::TraceContextExt as _;
        let own = span.context();
        let own = own.span().span_context().clone();
        if own.is_valid() {
            span.record("trace_id", tracing::field::display(own.trace_id()));
        }
    }
    span
}

/// Marks the current attempt's span as failed.
fn span_error(message: &str) {
    let span = tracing::Span::current();
    span.record("otel.status_code", "ERROR");
    span.record("otel.status_message", message);
}

/// How long a worker keeps trying to create or find a consumer at start: in a cluster, a
/// stream electing a leader, or a busy one creating replicated consumers, can take a while.
const CONSUMER_PATIENCE: Duration = Duration::from_secs(60);

/// The consumer of a task type at a priority, tried again until [`CONSUMER_PATIENCE`] runs out;
/// at once an error when NATS refused something (a permission: trying again cannot help).
async fn task_consumer(
    broker: &Broker,
    refusals: &broker::Refusals,
    name: &Name,
    priority: taskwire::v1::Priority,
    ack_wait: Duration,
) -> Result<jetstream::consumer::PullConsumer, Error> {
    let deadline = Instant::now() + CONSUMER_PATIENCE;
    let mut delay = Duration::from_millis(100);
    loop {
        match broker.task_consumer(name, priority, ack_wait, 10_000).await {
            Ok(consumer) => return Ok(consumer),
            Err(e) => {
                if let Some(why) = refusals.explain() {
                    return Err(Error::Refused(format!("{e} ({why})")));
                }
                if Instant::now() >= deadline {
                    return Err(e.into());
                }
                tracing::warn!(task = %name, error = %e, "cannot create the task's consumer yet; trying again");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
        }
    }
}

/// Most tasks asked for in one pull request.
const MAX_BATCH: usize = 1000;
/// How much longer than its expiry (a no-wait pull: none) the worker waits for a pull's end
/// before giving it up.
const PULL_SLACK: Duration = Duration::from_secs(5);

/// Pulls only as many tasks as there are free slots, so that no task waits in this worker
/// unstarted while its ack wait runs out (and another worker gets it too). Each round takes what
/// is waiting at the high level first, then normal, then low (one round in eight starts at low);
/// when nothing waits anywhere it waits on the normal level for a second.
async fn pull_loop(
    served: Arc<Served>,
    consumers: Vec<jetstream::consumer::PullConsumer>,
    concurrency: usize,
    stop: CancellationToken,
    tracker: TaskTracker,
) {
    let slots = Arc::new(Semaphore::new(concurrency));
    let mut quiet_until = [Instant::now(); 3];
    let mut round: u64 = 0;
    let mut idle = true;
    loop {
        let first = tokio::select! {
            () = stop.cancelled() => return,
            slot = Arc::clone(&slots).acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => return,
            },
        };
        // Every slot free now goes into this round.
        let mut reserved = first;
        let more = slots.available_permits().min(MAX_BATCH - 1);
        if more > 0
            && let Ok(extra) = Arc::clone(&slots).try_acquire_many_owned(more as u32)
        {
            reserved.merge(extra);
        }
        // Cluster-wide limits: take slots and starts for as many as may run. An idle worker
        // waits for one task first, and asks the limits when it is in hand.
        let mut grant = if idle && served.limits.limited(&served.task) {
            if let Some(one) = reserved.split(1) {
                reserved = one;
            }
            served.limits.deferred(&served.task)
        } else {
            match served
                .limits
                .acquire(&served.task, reserved.num_permits(), &stop)
                .await
            {
                Some(grant) => grant,
                None => return,
            }
        };
        if grant.allowed() < reserved.num_permits()
            && let Some(keep) = reserved.split(grant.allowed())
        {
            reserved = keep;
        }
        round += 1;
        let order = if round.is_multiple_of(LOW_FIRST_EVERY) {
            [2, 1, 0]
        } else {
            [0, 1, 2]
        };
        let now = Instant::now();
        let quiet_at_start = quiet_until;
        let due = |level: usize| level == NORMAL || now >= quiet_at_start[level];
        let mut started = 0;
        let mut failed = false;
        for (position, &level) in order.iter().enumerate() {
            if reserved.num_permits() == 0 {
                break;
            }
            if !due(level) {
                continue;
            }
            // Nothing started yet and no other level to look at after this one: the waiting
            // pull below serves the normal level in one request.
            if level == NORMAL && started == 0 && !order[position + 1..].iter().any(|l| due(*l)) {
                break;
            }
            let fetched = consumers[level]
                .fetch()
                .max_messages(reserved.num_permits())
                .messages()
                .await;
            let mut messages = match fetched {
                Ok(messages) => messages,
                Err(e) => {
                    tracing::warn!(task = %served.task.name, error = %e, "cannot pull; retrying");
                    failed = true;
                    break;
                }
            };
            let mut got = 0;
            // The server answers a no-wait pull at once (an expiry would make it wait for
            // tasks in flight); a reply lost with a broken connection would leave it open
            // forever, so the client stops waiting after a bound.
            let bound = tokio::time::Instant::now() + PULL_SLACK;
            while let Ok(Some(next)) = tokio::time::timeout_at(bound, messages.next()).await {
                match next {
                    Ok(message) => {
                        got += 1;
                        start(&served, &tracker, &mut reserved, &mut grant, message).await;
                    }
                    Err(e) => {
                        tracing::debug!(task = %served.task.name, error = %e, "pull interrupted");
                        break;
                    }
                }
            }
            if got == 0 && level != NORMAL {
                // An idle worker looks less often than a busy one.
                let quiet = if started == 0 { IDLE_PULL } else { QUIET };
                quiet_until[level] = Instant::now() + quiet;
            }
            started += got;
        }
        if failed {
            drop(reserved);
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(Duration::from_secs(1)) => continue,
            }
        }
        idle = started == 0;
        if started > 0 {
            // Unused slots return to the pool; the next round looks again at once.
            continue;
        }
        // Nothing waits at the other levels: wait on the normal level, where most tasks arrive,
        // until it is time to look at the others again.
        let next_look = quiet_until[0].min(quiet_until[2]);
        let expires = next_look
            .saturating_duration_since(Instant::now())
            .clamp(Duration::from_millis(50), IDLE_PULL);
        let batch = consumers[NORMAL]
            .batch()
            .max_messages(reserved.num_permits())
            .expires(expires)
            .messages()
            .await;
        let mut messages = match batch {
            Ok(messages) => messages,
            Err(e) => {
                tracing::warn!(task = %served.task.name, error = %e, "cannot pull; retrying");
                drop(reserved);
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            }
        };
        let bound = tokio::time::Instant::now() + expires + PULL_SLACK;
        loop {
            let next = tokio::select! {
                () = stop.cancelled() => {
                    release_prefetched(&served, &mut messages).await;
                    return;
                }
                () = tokio::time::sleep_until(bound) => {
                    tracing::debug!(task = %served.task.name, "the pull outlived its expiry; pulling again");
                    break;
                }
                next = messages.next() => next,
            };
            match next {
                Some(Ok(message)) => {
                    idle = false;
                    start(&served, &tracker, &mut reserved, &mut grant, message).await;
                }
                Some(Err(e)) => {
                    tracing::debug!(task = %served.task.name, error = %e, "pull interrupted");
                    break;
                }
                // The request is complete or expired; unused slots return to the pool.
                None => break,
            }
        }
    }
}

/// Starts a pulled task in one of the reserved slots.
async fn start(
    served: &Arc<Served>,
    tracker: &TaskTracker,
    reserved: &mut tokio::sync::OwnedSemaphorePermit,
    grant: &mut Grant,
    message: jetstream::Message,
) {
    let Some(slot) = reserved.split(1) else {
        // More than asked for: hand it back.
        let _ = message.ack_with(AckKind::Nak(None)).await;
        return;
    };
    // Held until the task is done, like the local slot.
    let cluster_slot: Option<Slot> = match grant.take(reserved.num_permits()).await {
        Ok(slot) => slot,
        Err(wait) => {
            // The rate allows no start now (another worker counted first): back to the queue
            // until it does, unstarted, so no attempt is used.
            let _ = message.ack_with(AckKind::Nak(Some(wait))).await;
            return;
        }
    };
    let slot_lost = cluster_slot.as_ref().map(Slot::lost);
    let served = Arc::clone(served);
    tracker.spawn(async move {
        let span = process_span(&served, &message);
        handle(&served, message, slot_lost).instrument(span).await;
        drop(cluster_slot);
        drop(slot);
    });
}

/// On shutdown, hands back the tasks that were fetched but not started: NAKed, another worker
/// gets them at once instead of after the ack wait. Stops when nothing more arrives for a
/// moment.
async fn release_prefetched(served: &Served, messages: &mut jetstream::consumer::pull::Batch) {
    let mut released = 0;
    while let Ok(Some(Ok(message))) =
        tokio::time::timeout(Duration::from_millis(100), messages.next()).await
    {
        let _ = message.ack_with(AckKind::Nak(None)).await;
        released += 1;
    }
    if released > 0 {
        tracing::info!(task = %served.task.name, released, "released fetched tasks that had not started");
    }
}

/// What became of one attempt.
enum Outcome {
    Done(Result<Vec<u8>, TaskError>),
    Panicked(String),
    TimedOut(Duration),
    /// Cancelled on request and abandoned after the grace period.
    Cancelled,
    Released,
}

async fn handle(
    served: &Served,
    message: jetstream::Message,
    slot_lost: Option<CancellationToken>,
) {
    let name = &served.task.name;
    let Some(id) = task_id(name, &message) else {
        // Not a taskwire task: it can never run, so it must not block the queue. It is kept as
        // a dead letter under an id made from its place in the stream.
        let sequence = message
            .info()
            .map(|i| i.stream_sequence)
            .unwrap_or_default();
        let id = Id::parse(&format!("poison-{sequence}")).unwrap_or_else(|_| Id::generate());
        tracing::error!(task = %name, subject = %message.subject, dead_letter = %id, "message without a valid task id; moving it to the dead letters");
        let stored = store_dead(
            served,
            &message,
            &id,
            1,
            "poison",
            "the message has no valid Taskwire-Task-Id header",
        )
        .await;
        if stored.is_some()
            && let Err(e) = message.ack_with(AckKind::Term).await
        {
            tracing::warn!(task = %name, error = %e, "terminating a poison message failed; it comes back and is moved again");
        }
        return;
    };
    // Attempts count runs, not deliveries: a first delivery is the header's attempt; a
    // redelivery follows the last run that started (each start is stored as a `running` event
    // before the handler runs), so deliveries that never started the handler (released at a
    // drain, pulled by a request the client gave up) do not count.
    let first_attempt = message
        .headers
        .as_ref()
        .and_then(|h| h.get(header::ATTEMPT))
        .and_then(|v| v.as_str().parse::<u32>().ok())
        .unwrap_or(1)
        .max(1);
    let deliveries = message.info().map(|i| i.delivered.max(1)).unwrap_or(1);
    let attempt = if deliveries <= 1 {
        first_attempt
    } else {
        match last_started(served, &id).await {
            Ok(Some(started)) => started.saturating_add(1).max(first_attempt),
            Ok(None) => first_attempt,
            Err(e) => {
                put_back(
                    served,
                    &message,
                    &id,
                    "cannot tell which attempt this is",
                    &e,
                )
                .await;
                return;
            }
        }
    };
    let span = tracing::Span::current();
    span.record("task_id", tracing::field::display(&id));
    span.record("attempt", attempt);
    span.record("messaging.message.id", tracing::field::display(&id));
    span.record("taskwire.task.attempt", attempt);
    // The task's declared options, as its submitter changed them.
    let options = broker::Overrides::read(message.headers.as_ref()).apply(&served.task.options);
    let max_attempts = options.max_attempts;

    let ttl = options.result_ttl;
    // Cancelled before it started: it never runs.
    if served.cancels.is_cancelled(&id) {
        tracing::info!(task = %name, task_id = %id, "cancelled before it started");
        let body = broker::failure_body("cancelled on request", false);
        finish(
            served,
            message,
            &id,
            attempt,
            TaskState::Cancelled,
            body,
            ttl,
        )
        .await;
        return;
    }
    // Not started in time: it never runs.
    if past_expiry(&message) {
        tracing::info!(task = %name, task_id = %id, "expired before it started");
        let body = broker::failure_body("not started before its expiry time", false);
        finish(served, message, &id, attempt, TaskState::Expired, body, ttl).await;
        return;
    }

    // A run cut short (a worker killed mid-task) used its attempt: with none left the task
    // fails for good rather than running again.
    if attempt > max_attempts {
        // Unless the cut-short run stored its outcome before it died (and missed its ack):
        // then there is nothing to fail.
        match has_result(served, &id).await {
            Ok(false) => {}
            Ok(true) => {
                if let Err(e) = message.ack().await {
                    tracing::debug!(task = %name, task_id = %id, error = %e, "ack of a finished task failed; it comes back and is acked again");
                }
                return;
            }
            Err(e) => {
                put_back(
                    served,
                    &message,
                    &id,
                    "cannot tell whether the task has a result",
                    &e,
                )
                .await;
                return;
            }
        }
        tracing::warn!(task = %name, task_id = %id, attempt, max_attempts, "its last attempt was cut short; failing it");
        let error = format!(
            "attempt {} of {max_attempts} was cut short (its worker stopped before it ended) and no attempt is left",
            attempt - 1
        );
        let failure = Failure {
            reason: "lost",
            error: &error,
            retryable: false,
        };
        fail_for_good(served, message, &id, attempt - 1, failure, ttl).await;
        return;
    }

    // A task whose outcome is stored never runs: a redelivery after a crash that followed the
    // result, a task cancelled before this worker heard of it, a keyed task stored again. At
    // the same time the start is stored, so that a redelivery knows this attempt ran.
    let (stored, started) = tokio::join!(
        has_result(served, &id),
        mark_started(served, &message, &id, attempt)
    );
    match stored {
        Ok(false) => {}
        Ok(true) => {
            if let Err(e) = message.ack().await {
                tracing::debug!(task = %name, task_id = %id, error = %e, "ack of a finished task failed; it comes back and is acked again");
            }
            return;
        }
        Err(e) => {
            // Unknown whether it may run: hand it back rather than risk a second run.
            put_back(
                served,
                &message,
                &id,
                "cannot tell whether the task has a result",
                &e,
            )
            .await;
            return;
        }
    }
    match started {
        Ok(true) => {}
        Ok(false) => {
            // Another delivery started this attempt (an earlier one of this message, whose
            // count a broker restart may have forgotten, or another copy of the task): it runs
            // it and keeps it in progress, so this one is left alone (neither acked nor handed
            // back, which would let a third delivery start a second attempt beside the first).
            // If that worker died, the ack wait brings the task back as the next attempt.
            tracing::info!(task = %name, task_id = %id, attempt, "another delivery of the task started this attempt; leaving it to that one");
            return;
        }
        Err(e) => {
            put_back(
                served,
                &message,
                &id,
                "cannot store the start of the attempt",
                &e,
            )
            .await;
            return;
        }
    }

    // The looks above wait on the broker, which an outage may stretch: a task whose time ran
    // out meanwhile does not start either.
    if past_expiry(&message) {
        tracing::info!(task = %name, task_id = %id, "expired before it started");
        let body = broker::failure_body("not started before its expiry time", false);
        finish(served, message, &id, attempt, TaskState::Expired, body, ttl).await;
        return;
    }

    let tracked = served.cancels.track(&id);
    let token = CancellationToken::new();
    let deadline = options.timeout.map(|t| Instant::now() + t);
    let progress = Progress::new(served, &id, attempt);
    let ctx = TaskContext::new(id.clone(), name.clone(), attempt, max_attempts)
        .with_deadline(deadline)
        .with_cancellation(token.clone())
        .with_progress_sink(progress.sink());
    let running = served.task_metrics.start();
    let outcome = run_attempt(
        served,
        &message,
        ctx,
        token,
        options.timeout,
        &tracked.token,
        slot_lost.unwrap_or_default(),
    )
    .await;
    // Progress reports go out before the result, so that watchers see them in order (unless
    // the task kept its context alive past its end).
    drop(running);
    progress.flush().await;
    if tracked.token.is_cancelled() && !matches!(outcome, Outcome::Released) {
        tracing::info!(task = %name, task_id = %id, "stopped on cancel");
        let body = broker::failure_body("cancelled on request", false);
        finish(
            served,
            message,
            &id,
            attempt,
            TaskState::Cancelled,
            body,
            ttl,
        )
        .await;
        return;
    }

    match outcome {
        Outcome::Done(Ok(output)) => {
            finish(
                served,
                message,
                &id,
                attempt,
                TaskState::Succeeded,
                output.into(),
                ttl,
            )
            .await;
        }
        Outcome::Done(Err(err)) => {
            failed(served, message, &id, attempt, &options, err, false).await;
        }
        Outcome::TimedOut(limit) => {
            let err = TaskError::retryable(format!("timed out after {limit:?}"));
            failed(served, message, &id, attempt, &options, err, true).await;
        }
        Outcome::Panicked(text) => {
            tracing::error!(task = %name, task_id = %id, attempt, panic = %text, "task panicked");
            span_error(&text);
            let error = format!("task panicked: {text}");
            let failure = Failure {
                reason: "panic",
                error: &error,
                retryable: false,
            };
            fail_for_good(served, message, &id, attempt, failure, ttl).await;
        }
        Outcome::Cancelled | Outcome::Released => {
            tracing::info!(task = %name, task_id = %id, "released for another worker");
            let _ = message.ack_with(AckKind::Nak(None)).await;
        }
    }
}

/// The id of a task message: its id header, or for a task a schedule submitted, one made from
/// the schedule and the message's place in the stream.
fn task_id(name: &Name, message: &jetstream::Message) -> Option<Id> {
    let headers = message.headers.as_ref()?;
    if let Some(id) = headers.get(header::TASK_ID) {
        return Id::parse(id.as_str()).ok();
    }
    let schedule = headers.get(header::SCHEDULE_NAME)?;
    let next = headers.get(header::SCHEDULE_NEXT).map(|v| v.as_str());
    let sequence = message.info().ok()?.stream_sequence;
    Some(broker::scheduled_task_id(
        name,
        schedule.as_str(),
        next,
        sequence,
    ))
}

/// Whether the task's expiry time (`Taskwire-Expires-At`) has passed.
fn past_expiry(message: &jetstream::Message) -> bool {
    broker::expires_at(message.headers.as_ref()).is_some_and(|at| broker::now_micros() > at)
}

/// Publishes a running task's progress reports as events, in the order it made them. Most
/// tasks report nothing, so the publisher starts with the first report.
struct Progress {
    client: async_nats::Client,
    name: Name,
    id: Id,
    attempt: u32,
    publisher: std::sync::Mutex<Option<ProgressPublisher>>,
}

struct ProgressPublisher {
    tx: tokio::sync::mpsc::Sender<taskwire::v1::TaskProgress>,
    sent: tokio::task::JoinHandle<()>,
}

impl Progress {
    fn new(served: &Served, id: &Id, attempt: u32) -> Arc<Self> {
        Arc::new(Self {
            client: served.client.clone(),
            name: served.task.name.clone(),
            id: id.clone(),
            attempt,
            publisher: std::sync::Mutex::new(None),
        })
    }

    fn sink(self: &Arc<Self>) -> taskwire::ProgressSink {
        let progress = Arc::clone(self);
        Arc::new(move |report| progress.report(report))
    }

    fn report(&self, report: taskwire::v1::TaskProgress) {
        let mut publisher = self.publisher.lock().unwrap_or_else(|e| e.into_inner());
        let publisher = publisher.get_or_insert_with(|| {
            let (tx, mut rx) =
                tokio::sync::mpsc::channel::<taskwire::v1::TaskProgress>(PROGRESS_QUEUE);
            let (client, name, id, attempt) = (
                self.client.clone(),
                self.name.clone(),
                self.id.clone(),
                self.attempt,
            );
            let sent = tokio::spawn(async move {
                while let Some(progress) = rx.recv().await {
                    let mut headers =
                        broker::event_headers(&name, &id, TaskState::Running, attempt);
                    headers.insert(header::PROGRESS, "1");
                    let _ = client
                        .publish_with_headers(
                            subject::event(&name, &id),
                            headers,
                            broker::progress_body(&progress),
                        )
                        .await;
                }
            });
            ProgressPublisher { tx, sent }
        });
        // A task reporting faster than the broker takes the reports loses the surplus, not
        // memory.
        if publisher.tx.try_send(report).is_err() {
            tracing::debug!(task = %self.name, task_id = %self.id, "progress report dropped: too many waiting");
        }
    }

    /// Waits (a little) until every report so far is published, so that watchers see them
    /// before the result.
    async fn flush(&self) {
        let publisher = self
            .publisher
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(ProgressPublisher { tx, sent }) = publisher {
            drop(tx);
            let _ = tokio::time::timeout(Duration::from_secs(1), sent).await;
        }
    }
}

async fn run_attempt(
    served: &Served,
    message: &jetstream::Message,
    ctx: TaskContext,
    token: CancellationToken,
    limit: Option<Duration>,
    cancelled: &CancellationToken,
    slot_lost: CancellationToken,
) -> Outcome {
    let deadline = ctx.deadline();
    let call = served
        .service
        .call(served.task.name.as_str(), ctx, message.payload.clone());
    let mut call = std::pin::pin!(AssertUnwindSafe(call).catch_unwind());
    let mut heartbeat = tokio::time::interval_at(
        tokio::time::Instant::now() + served.heartbeat,
        served.heartbeat,
    );
    let far = Instant::now() + Duration::from_secs(365 * 24 * 3600);
    let mut abandon_at = tokio::time::Instant::from_std(deadline.unwrap_or(far));
    let mut timed_out = false;
    let mut cancel_seen = false;
    let mut slot_gone = false;
    loop {
        tokio::select! {
            result = &mut call => {
                if slot_gone {
                    // Whatever it answered, it was stopped: it runs again in a slot of its own.
                    return Outcome::Released;
                }
                return match result {
                    Ok(done) if timed_out && done.is_err() => Outcome::TimedOut(limit.unwrap_or_default()),
                    Ok(done) => Outcome::Done(done),
                    Err(panic) => Outcome::Panicked(panic_text(&panic)),
                };
            }
            _ = heartbeat.tick() => {
                let _ = message.ack_with(AckKind::Progress).await;
            }
            () = cancelled.cancelled(), if !cancel_seen => {
                // Cancelled on request: tell the task to stop, and give it a moment to do so.
                cancel_seen = true;
                token.cancel();
                abandon_at = abandon_at.min(tokio::time::Instant::now() + TIMEOUT_GRACE);
            }
            () = slot_lost.cancelled(), if !slot_gone => {
                // Its concurrency slot could not be kept (NATS unreachable): stop before the
                // slot's lease runs out and another worker may start a task in it.
                slot_gone = true;
                token.cancel();
                abandon_at = abandon_at.min(tokio::time::Instant::now() + TIMEOUT_GRACE);
            }
            () = tokio::time::sleep_until(abandon_at) => {
                if slot_gone {
                    return Outcome::Released;
                }
                if cancel_seen {
                    return Outcome::Cancelled;
                }
                if timed_out {
                    return Outcome::TimedOut(limit.unwrap_or_default());
                }
                // Tell the task to stop, and give it a moment to do so.
                timed_out = true;
                token.cancel();
                abandon_at = tokio::time::Instant::now() + TIMEOUT_GRACE;
            }
            () = served.force.cancelled() => {
                token.cancel();
                return Outcome::Released;
            }
        }
    }
}

fn panic_text(panic: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic without a message".to_owned()
    }
}

/// The attempt of the last run of the task that started (its `running` event, or a later
/// progress or retry event of that run); `None` when none did since it was queued (or
/// replayed).
async fn last_started(served: &Served, id: &Id) -> Result<Option<u32>, async_nats::RequestError> {
    let last = served
        .broker
        .last_message_on(
            broker::EVENTS_STREAM,
            &subject::event(&served.task.name, id),
        )
        .await?;
    Ok(last.and_then(|m| {
        let state = m
            .headers
            .get(header::STATE)
            .map(|v| v.as_str().to_owned())?;
        let attempt: u32 = m.headers.get(header::ATTEMPT)?.as_str().parse().ok()?;
        (matches!(state.as_str(), "running" | "retrying") && attempt > 0).then_some(attempt)
    }))
}

/// Stores the start of an attempt as a `running` event, acknowledged before the handler runs.
/// False when another delivery of the task stored this attempt's start first.
async fn mark_started(
    served: &Served,
    message: &jetstream::Message,
    id: &Id,
    attempt: u32,
) -> Result<bool, async_nats::jetstream::context::PublishError> {
    let name = &served.task.name;
    let mut headers = broker::event_headers(name, id, TaskState::Running, attempt);
    if let Some(parent) = message.headers.as_ref().and_then(|h| h.get("traceparent")) {
        headers.insert("traceparent", parent.as_str());
    }
    // One start per attempt: a second delivery of the task racing this one (its ack wait ran
    // out while this worker was still getting ready) finds the start taken.
    headers.insert(
        header::MSG_ID,
        format!("{id}.start.{}.{attempt}", series(message)).as_str(),
    );
    let ack = served
        .broker
        .jetstream
        .publish_with_headers(subject::event(name, id), headers, Bytes::new())
        .await?
        .await?;
    Ok(!ack.duplicate)
}

/// Hands a task back unstarted, for a moment: it does not use an attempt.
async fn put_back(
    served: &Served,
    message: &jetstream::Message,
    id: &Id,
    why: &str,
    error: &(dyn std::fmt::Display + Sync),
) {
    let name = &served.task.name;
    tracing::warn!(task = %name, task_id = %id, error = %error, "{why}; putting the task back");
    if let Err(e) = message
        .ack_with(AckKind::Nak(Some(Duration::from_secs(1))))
        .await
    {
        tracing::debug!(task = %name, task_id = %id, error = %e, "NAK failed; the task comes back after its ack wait");
    }
}

/// The state of the task's stored result (`None`: it has none); an expiry marker, which says
/// a result ran out, counts as an outcome too.
async fn stored_outcome(
    served: &Served,
    id: &Id,
) -> Result<Option<String>, async_nats::RequestError> {
    // The subject in the API subject: the form NATS permissions can limit to the results of
    // this worker's own task types.
    let subject = subject::result(&served.task.name, id);
    let found = served
        .broker
        .last_message_on(broker::RESULTS_STREAM, &subject)
        .await?;
    Ok(found.map(|m| {
        m.headers
            .get(header::STATE)
            .map(|v| v.as_str().to_owned())
            .unwrap_or_default()
    }))
}

async fn has_result(served: &Served, id: &Id) -> Result<bool, async_nats::RequestError> {
    stored_outcome(served, id)
        .await
        .map(|found| found.is_some())
}

async fn failed(
    served: &Served,
    message: jetstream::Message,
    id: &Id,
    attempt: u32,
    options: &taskwire::task::Options,
    err: TaskError,
    timed_out: bool,
) {
    let name = &served.task.name;
    span_error(err.message());
    if err.is_retryable() && attempt < options.max_attempts {
        let delay = jitter(options.backoff(attempt));
        tracing::info!(task = %name, task_id = %id, attempt, ?delay, error = %err, "retrying");
        served.metrics.retried(name.as_str());
        let _ = served
            .client
            .publish_with_headers(
                subject::event(name, id),
                broker::event_headers(name, id, TaskState::Retrying, attempt),
                broker::failure_body(err.message(), true),
            )
            .await;
        let _ = message.ack_with(AckKind::Nak(Some(delay))).await;
        return;
    }
    tracing::info!(task = %name, task_id = %id, attempt, error = %err, "failed");
    let reason = if err.is_poison() {
        "poison"
    } else if timed_out {
        "timeout"
    } else if err.is_retryable() {
        "exhausted"
    } else {
        "permanent"
    };
    let failure = Failure {
        reason,
        error: err.message(),
        retryable: err.is_retryable(),
    };
    fail_for_good(served, message, id, attempt, failure, options.result_ttl).await;
}

/// Which series of attempts a task message belongs to: 0, or the replay count.
fn series(message: &jetstream::Message) -> String {
    message
        .headers
        .as_ref()
        .and_then(|h| h.get(header::REPLAY))
        .map_or_else(|| "0".to_owned(), |v| v.as_str().to_owned())
}

/// Spreads retries of tasks that failed together: the delay, give or take a fifth.
fn jitter(delay: Duration) -> Duration {
    // The clock's nanoseconds are random enough to spread retries; no generator needed.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    let factor = 0.8 + f64::from(nanos % 1000) / 2500.0;
    delay.mul_f64(factor)
}

/// Why a task failed for good: the dead letter's reason, the error, whether it was retryable.
struct Failure<'a> {
    reason: &'a str,
    error: &'a str,
    retryable: bool,
}

/// Ends a task failed for good: its dead letter, then its failed result, then the ack. When the
/// result slot turns out to be taken by another outcome (a delivery of the same task that ran
/// elsewhere and succeeded), the letter is taken back: a task has a dead letter only if it
/// failed.
async fn fail_for_good(
    served: &Served,
    message: jetstream::Message,
    id: &Id,
    attempt: u32,
    failure: Failure<'_>,
    ttl: Option<Duration>,
) {
    let Failure {
        reason,
        error,
        retryable,
    } = failure;
    let Some(letter) = store_dead(served, &message, id, attempt, reason, error).await else {
        return;
    };
    let body = broker::failure_body(error, retryable);
    let stored = finish(served, message, id, attempt, TaskState::Failed, body, ttl).await;
    if let (Stored::Taken, Some(sequence)) = (stored, letter) {
        // Read and deleted through a short outage. Unknown (no answer) counts as failed: a
        // letter too many is better than none.
        let failed = patiently(served, || stored_outcome(served, id), |_| true)
            .await
            .ok()
            .flatten()
            .is_none_or(|state| state == broker::state_name(TaskState::Failed));
        if failed {
            return;
        }
        // An answer, even a refusal (the letter gone already), is not asked again.
        let unanswered = |e: &jetstream::stream::DeleteMessageError| {
            !matches!(
                e.kind(),
                jetstream::stream::DeleteMessageErrorKind::JetStream(_)
            )
        };
        let dead = &served.broker.dead;
        if let Err(e) = patiently(served, || dead.delete_message(sequence), unanswered).await {
            tracing::warn!(task = %served.task.name, task_id = %id, error = %e, "could not take back the dead letter of a task that did not fail");
        }
    }
}

/// `call()`, tried again for about ten seconds while it fails in a way `again` accepts (unless
/// the worker is forced to stop); the last failure is returned.
async fn patiently<T, E, F: Future<Output = Result<T, E>>>(
    served: &Served,
    mut call: impl FnMut() -> F,
    again: impl Fn(&E) -> bool,
) -> Result<T, E> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut delay = Duration::from_millis(200);
    loop {
        match call().await {
            Err(e)
                if again(&e)
                    && !served.force.is_cancelled()
                    && Instant::now() + delay < deadline =>
            {
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
            done => return done,
        }
    }
}

/// Keeps a task that failed for good as a dead letter, before its failed result is stored, so
/// that every failed task can be found and replayed. `None` when it could not be stored before
/// the worker had to stop (the task is then left to be redelivered), else where it is stored
/// (none when the broker refused it for good).
async fn store_dead(
    served: &Served,
    message: &jetstream::Message,
    id: &Id,
    attempt: u32,
    reason: &str,
    error: &str,
) -> Option<Option<u64>> {
    let name = &served.task.name;
    let headers = broker::dead_headers(message.headers.as_ref(), name, id, attempt, reason, error);
    let stored = store(
        served,
        id,
        "dead letter",
        subject::dead(name, id),
        headers,
        message.payload.clone(),
    )
    .await;
    match stored {
        Stored::Yes {
            duplicate,
            sequence,
        } => {
            if !duplicate {
                served.metrics.dead_lettered(name.as_str(), reason);
            }
            Some(Some(sequence))
        }
        // Nothing will ever store it: the failed result still ends the task, saying why.
        Stored::Refused(ref why) => {
            tracing::error!(task = %name, task_id = %id, error = %why, "the broker refuses this dead letter; the task ends failed without one");
            Some(None)
        }
        Stored::Taken => Some(None),
        Stored::GaveUp => None,
    }
}

/// What became of a message the worker had to store.
enum Stored {
    /// Stored now (at `sequence`); `duplicate` when an earlier publish of it had been stored
    /// already.
    Yes { duplicate: bool, sequence: u64 },
    /// The subject had its one message already (a result stored before).
    Taken,
    /// Refused for good (too large, a header or feature the stream refuses): trying again
    /// cannot help.
    Refused(String),
    /// Not stored before the worker had to stop.
    GaveUp,
}

/// Publishes until JetStream has stored the message (retrying through broker outages), the
/// subject turns out to be taken, the broker refuses it for good, or the worker is forced to
/// stop.
async fn store(
    served: &Served,
    id: &Id,
    what: &'static str,
    subject: String,
    headers: async_nats::HeaderMap,
    body: Bytes,
) -> Stored {
    let name = &served.task.name;
    let mut delay = Duration::from_millis(100);
    loop {
        let published = match served
            .broker
            .jetstream
            .publish_with_headers(subject.clone(), headers.clone(), body.clone())
            .await
        {
            Ok(ack) => ack.await,
            Err(e) => Err(e),
        };
        match published {
            Ok(ack) => {
                return Stored::Yes {
                    duplicate: ack.duplicate,
                    sequence: ack.sequence,
                };
            }
            Err(e) if broker::is_wrong_last_sequence(&e) => return Stored::Taken,
            Err(e) => {
                if let Some(why) = broker::permanent_refusal(&e) {
                    return Stored::Refused(why);
                }
                if served.force.is_cancelled() {
                    tracing::warn!(task = %name, task_id = %id, error = %e, "{what} not stored before exit; the task will be redelivered");
                    return Stored::GaveUp;
                }
                tracing::warn!(task = %name, task_id = %id, error = %e, "storing the {what} failed; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// Stores the result, then acks the task. Until the result is stored the task is not acked, so
/// a worker that dies in between leaves it to be redelivered. A result the broker refuses for
/// good (larger than its max payload, say) ends the task failed for good instead, with a dead
/// letter saying why. Returns what became of the result.
async fn finish(
    served: &Served,
    message: jetstream::Message,
    id: &Id,
    attempt: u32,
    state: TaskState,
    body: Bytes,
    ttl: Option<Duration>,
) -> Stored {
    let name: &Name = &served.task.name;
    let stored = match store_result(served, &message, id, attempt, state, body, ttl).await {
        Stored::Refused(why) => {
            let error = format!(
                "the task's {} result could not be stored: {why}",
                broker::state_name(state)
            );
            tracing::error!(task = %name, task_id = %id, attempt, error = %error, "result refused");
            if store_dead(served, &message, id, attempt, "permanent", &error)
                .await
                .is_none()
            {
                return Stored::GaveUp;
            }
            let body = broker::failure_body(&error, false);
            let failed =
                store_result(served, &message, id, attempt, TaskState::Failed, body, ttl).await;
            if let Stored::Refused(why) = &failed {
                // Not even a short failed result is accepted (a stream that refuses every
                // message): redelivering would only run the task again to the same end.
                tracing::error!(task = %name, task_id = %id, error = %why, "the broker refuses every result of this task; dropping it");
                if let Err(e) = message.ack_with(AckKind::Term).await {
                    tracing::warn!(task = %name, task_id = %id, error = %e, "terminating the task failed; it will be redelivered");
                }
                return failed;
            }
            failed
        }
        stored => stored,
    };
    match stored {
        Stored::Yes {
            duplicate: false, ..
        } => {
            served.metrics.completed(name.as_str(), state);
            if let Some(hook) = &served.on_result {
                hook(id, state);
            }
        }
        // Stored by an earlier publish, or the task had a result already (cancelled, or
        // stored by an earlier delivery).
        Stored::Yes {
            duplicate: true, ..
        }
        | Stored::Taken
        | Stored::Refused(_) => {}
        Stored::GaveUp => return stored,
    }
    if let Err(e) = message.ack().await {
        tracing::warn!(task = %name, task_id = %id, error = %e, "ack failed; a redelivery will find the stored result");
    }
    stored
}

/// Publishes a task's result, once per task and series of attempts.
async fn store_result(
    served: &Served,
    message: &jetstream::Message,
    id: &Id,
    attempt: u32,
    state: TaskState,
    body: Bytes,
    ttl: Option<Duration>,
) -> Stored {
    let name: &Name = &served.task.name;
    let headers = broker::result_headers(name, id, state, attempt, &series(message), ttl);
    let destination = subject::result(name, id);
    let span = tracing::info_span!(
        "publish",
        otel.name = "publish taskwire.results",
        otel.kind = "producer",
        messaging.system = "nats",
        messaging.destination.name = %destination,
        messaging.operation.type = "publish",
        messaging.operation.name = "publish",
        messaging.message.id = %id,
        taskwire.task.name = %name,
        taskwire.task.state = broker::state_name(state),
    );
    async {
        let mut headers = headers;
        // The result names the trace, for `taskwire inspect task` and the dashboard: this
        // span's, or without trace export here, the producer's.
        taskwire::propagation::inject_nats(&mut headers);
        if headers.get("traceparent").is_none()
            && let Some(parent) = message.headers.as_ref().and_then(|h| h.get("traceparent"))
        {
            headers.insert("traceparent", parent.as_str());
        }
        store(served, id, "result", destination, headers, body).await
    }
    .instrument(span)
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_within_a_fifth() {
        for _ in 0..1000 {
            let d = jitter(Duration::from_secs(10));
            assert!(
                d >= Duration::from_secs(8) && d <= Duration::from_secs(12),
                "{d:?}"
            );
        }
    }
}
