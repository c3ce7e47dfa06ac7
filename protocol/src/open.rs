//! Opening the broker: every stream and bucket created when missing or brought up to date
//! (widened, never narrowed), consumers bound, task types registered.

use std::time::Duration;

use async_nats::jetstream::{self, consumer, kv, stream};
use bytes::Bytes;
use prost::Message as _;

use super::layout::*;
use super::store::leader_last_message;
use super::*;
use taskwire::task::Name;
use taskwire::v1;

#[derive(Debug, Clone)]
pub struct Broker {
    /// The JetStream context everything goes through.
    pub jetstream: jetstream::Context,
    /// `TASKWIRE_TASKS`.
    pub tasks: stream::Stream,
    /// `TASKWIRE_RESULTS`.
    pub results: stream::Stream,
    /// `TASKWIRE_EVENTS`.
    pub events: stream::Stream,
    /// `TASKWIRE_DEAD`.
    pub dead: stream::Stream,
    /// `TASKWIRE_OUTCOMES`.
    pub outcomes: stream::Stream,
    /// `TASKWIRE_REGISTRY`.
    pub registry: kv::Store,
    /// `TASKWIRE_CANCELLED`.
    pub cancelled: kv::Store,
    /// `TASKWIRE_SCHEDULES`.
    pub schedules: kv::Store,
    /// `TASKWIRE_LIMITS`.
    pub limits: kv::Store,
    /// `TASKWIRE_SLOTS`.
    pub slots: kv::Store,
    /// `TASKWIRE_RATES`.
    pub rates: kv::Store,
    /// `TASKWIRE_WORKERS`.
    pub workers: kv::Store,
    /// `TASKWIRE_PAUSED`.
    pub paused: kv::Store,
    /// How long results are kept at most.
    pub result_ttl: Duration,
    /// Whether the tasks stream takes message schedules (it does unless a queue limit is set).
    pub message_schedules: bool,
    /// How reads that decide something are made.
    pub reads: Reads,
}

/// How reads that decide something (is there a result, which attempt is this, does this task
/// exist) are made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reads {
    /// Direct gets, which any replica answers: the fast way, exact on one server.
    Direct,
    /// Gets from the stream's leader, which has every acknowledged write: in a cluster, where a
    /// replica that lags (one just restarted, say) could answer an older state.
    Leader,
}

impl Reads {
    /// Leader reads when streams have more than one replica.
    pub fn for_replicas(replicas: usize) -> Self {
        if replicas > 1 {
            Self::Leader
        } else {
            Self::Direct
        }
    }
}

impl Broker {
    /// Opens the streams and buckets, creating those that do not exist. Existing ones are used as
    /// they are, so processes may start in any order.
    pub async fn open(jetstream: jetstream::Context, settings: &Settings) -> Result<Self, Error> {
        let tasks = ensure_stream(&jetstream, settings.tasks_stream()).await?;
        let results = ensure_stream(&jetstream, settings.results_stream()).await?;
        let events = ensure_stream(&jetstream, settings.events_stream()).await?;
        let dead = ensure_stream(&jetstream, settings.dead_stream()).await?;
        let outcomes = ensure_stream(&jetstream, settings.outcomes_stream()).await?;
        let registry = ensure_bucket(&jetstream, settings.registry_bucket()).await?;
        let cancelled = ensure_bucket(&jetstream, settings.cancelled_bucket()).await?;
        let schedules = ensure_bucket(&jetstream, settings.schedules_bucket()).await?;
        let [limits, slots, rates, workers, paused] = settings.limits_buckets();
        let workers = ensure_bucket(&jetstream, workers).await?;
        let paused = ensure_bucket(&jetstream, paused).await?;
        let limits = ensure_bucket(&jetstream, limits).await?;
        let slots = ensure_bucket(&jetstream, slots).await?;
        let rates = ensure_bucket(&jetstream, rates).await?;
        let message_schedules = tasks.cached_info().config.allow_message_schedules;
        Ok(Self {
            jetstream,
            tasks,
            results,
            events,
            dead,
            outcomes,
            registry,
            cancelled,
            schedules,
            limits,
            slots,
            rates,
            workers,
            paused,
            result_ttl: settings.result_ttl,
            message_schedules,
            reads: Reads::for_replicas(settings.replicas),
        })
    }

    /// One of the streams, by name.
    fn stream(&self, name: &str) -> Option<&stream::Stream> {
        match name {
            TASKS_STREAM => Some(&self.tasks),
            RESULTS_STREAM => Some(&self.results),
            EVENTS_STREAM => Some(&self.events),
            DEAD_STREAM => Some(&self.dead),
            OUTCOMES_STREAM => Some(&self.outcomes),
            _ => None,
        }
    }

    /// The last message of `stream` whose subject matches `filter` (wildcards allowed), read as
    /// [`Broker::reads`] says: a direct get, or from the stream's leader.
    pub async fn last_message(
        &self,
        stream: &str,
        filter: &str,
    ) -> Result<Option<StoredMessage>, async_nats::RequestError> {
        match (self.reads, self.stream(stream)) {
            (Reads::Leader, Some(handle)) => leader_last_message(handle, filter).await,
            _ => last_message(&self.jetstream.client(), stream, filter).await,
        }
    }

    /// The last message of `stream` on the literal `subject`: a direct get with the subject in
    /// the API subject (the form NATS permissions can limit to some subjects), or in a cluster
    /// a read from the stream's leader.
    pub async fn last_message_on(
        &self,
        stream: &str,
        subject: &str,
    ) -> Result<Option<StoredMessage>, async_nats::RequestError> {
        match (self.reads, self.stream(stream)) {
            (Reads::Leader, Some(handle)) => leader_last_message(handle, subject).await,
            _ => last_message_on(&self.jetstream.client(), stream, subject).await,
        }
    }

    /// The bucket of schema versions ([`SCHEMAS_BUCKET`]), created if missing. Only gateways
    /// use it, so workers need no permission for it.
    pub async fn schemas(&self, settings: &Settings) -> Result<kv::Store, Error> {
        ensure_bucket(&self.jetstream, settings.schemas_bucket()).await
    }

    /// The bucket of result partitions ([`GATEWAYS_BUCKET`]), created if missing. Only
    /// gateways use it.
    pub async fn gateways(&self, settings: &Settings) -> Result<kv::Store, Error> {
        ensure_bucket(&self.jetstream, settings.gateways_bucket()).await
    }

    /// The workflows stream ([`WORKFLOWS_STREAM`]), created if missing. Only gateways use it.
    pub async fn workflows(&self, settings: &Settings) -> Result<stream::Stream, Error> {
        ensure_stream(&self.jetstream, settings.workflows_stream()).await
    }

    /// `TASKWIRE_SAMPLES`, created if missing: only gateways open it (workers only publish to
    /// it), and a gateway without it draws no charts.
    pub async fn samples(&self, settings: &Settings) -> Result<stream::Stream, Error> {
        ensure_stream(&self.jetstream, settings.samples_stream()).await
    }

    /// The three durable consumers that advance workflows and families, created if missing: new
    /// workflows (on `workflows`), step results and child results (on the results stream).
    /// Every gateway pulls from all three; each message goes to one of them, and comes back if
    /// it is not acked within `ack_wait`.
    pub async fn workflow_consumers(
        &self,
        workflows: &stream::Stream,
        ack_wait: Duration,
    ) -> Result<[consumer::PullConsumer; 3], Error> {
        let config = |name: &str, filter: &str, description: &str| consumer::pull::Config {
            durable_name: Some(name.into()),
            description: Some(description.into()),
            filter_subject: filter.into(),
            ack_policy: consumer::AckPolicy::Explicit,
            ack_wait,
            max_deliver: -1,
            max_ack_pending: 10_000,
            ..Default::default()
        };
        let err = |e: &dyn std::fmt::Display| Error::Consumer {
            task: "workflows".into(),
            reason: e.to_string(),
        };
        let mut made = Vec::new();
        for (stream, name, filter, description) in [
            (
                workflows,
                crate::workflow::STARTS_CONSUMER,
                crate::workflow::SPECS,
                "taskwire: new workflows, whose first steps a gateway starts",
            ),
            (
                &self.results,
                crate::workflow::STEPS_CONSUMER,
                crate::workflow::STEP_RESULTS,
                "taskwire: results of workflow steps, whose next steps a gateway starts",
            ),
            (
                &self.results,
                crate::children::ENDED_CONSUMER,
                crate::children::CHILD_RESULTS,
                "taskwire: results of child tasks, whose waiting parents a gateway resumes",
            ),
        ] {
            let consumer = match stream
                .get_or_create_consumer(name, config(name, filter, description))
                .await
            {
                Ok(c) => c,
                Err(first) => stream.get_consumer(name).await.map_err(|_| err(&first))?,
            };
            made.push(consumer);
        }
        made.try_into().map_err(|_| err(&"three consumers"))
    }

    /// The durable pull consumer of a task type at a priority, created if missing. All workers
    /// of the type share it; `max_ack_pending` bounds the tasks in flight across all of them.
    pub async fn task_consumer(
        &self,
        name: &Name,
        priority: v1::Priority,
        ack_wait: Duration,
        max_ack_pending: i64,
    ) -> Result<consumer::Consumer<consumer::pull::Config>, Error> {
        let durable = consumer_name(name, priority);
        let config = consumer::pull::Config {
            durable_name: Some(durable.clone()),
            description: Some(format!(
                "taskwire: tasks of {name}, {} priority",
                priority_name(priority)
            )),
            filter_subject: subject::task_at(name, priority),
            ack_policy: consumer::AckPolicy::Explicit,
            ack_wait,
            max_deliver: -1,
            max_ack_pending,
            ..Default::default()
        };
        let err = |e: &dyn std::fmt::Display| Error::Consumer {
            task: name.to_string(),
            reason: e.to_string(),
        };
        match self.tasks.get_or_create_consumer(&durable, config).await {
            Ok(c) => Ok(c),
            Err(first) => self
                .tasks
                .get_consumer(&durable)
                .await
                .map_err(|_| err(&first)),
        }
    }

    /// Writes a task type into the registry.
    /// Retries for a while: in a cluster, a bucket just created may still be electing its leader.
    pub async fn register(&self, entry: &v1::TaskType) -> Result<(), Error> {
        let name = Name::parse(&entry.name).map_err(|e| Error::Registry(e.to_string()))?;
        let value: Bytes = entry.encode_to_vec().into();
        let mut backoff =
            crate::retry::Backoff::new(Duration::from_millis(50), Duration::from_secs(1))
                .for_at_most(Duration::from_secs(30));
        loop {
            match self.registry.put(name.token(), value.clone()).await {
                Ok(_) => return Ok(()),
                Err(e) => {
                    if !backoff.wait().await {
                        return Err(Error::Registry(e.to_string()));
                    }
                }
            }
        }
    }
}

async fn ensure_stream(
    js: &jetstream::Context,
    config: stream::Config,
) -> Result<stream::Stream, Error> {
    let name: &'static str = match config.name.as_str() {
        TASKS_STREAM => TASKS_STREAM,
        RESULTS_STREAM => RESULTS_STREAM,
        DEAD_STREAM => DEAD_STREAM,
        OUTCOMES_STREAM => OUTCOMES_STREAM,
        WORKFLOWS_STREAM => WORKFLOWS_STREAM,
        SAMPLES_STREAM => SAMPLES_STREAM,
        _ => EVENTS_STREAM,
    };
    let mut stream = match js.get_or_create_stream(config.clone()).await {
        Ok(stream) => stream,
        // Another process created it between our look-up and our create.
        Err(source) => js.get_stream(name).await.map_err(|_| Error::Stream {
            stream: name,
            reason: source.to_string(),
        })?,
    };
    // A stream made by an earlier version may lack subjects or features this one uses: add
    // them, keeping every other setting as it is.
    let existing = stream.cached_info().config.clone();
    let missing: Vec<String> = config
        .subjects
        .iter()
        .filter(|s| !existing.subjects.contains(s))
        .cloned()
        .collect();
    let wants_ttl = config.allow_message_ttl && !existing.allow_message_ttl;
    let wants_markers =
        config.subject_delete_marker_ttl.is_some() && existing.subject_delete_marker_ttl.is_none();
    let wants_republish = config.republish.is_some() && existing.republish != config.republish;
    // No limit of its own (the server's default applies) or a lower one: raised.
    let wants_consumers = config.max_consumers > 0 && existing.max_consumers < config.max_consumers;
    let wants_direct = config.allow_direct && !existing.allow_direct;
    if !missing.is_empty()
        || wants_ttl
        || wants_markers
        || wants_republish
        || wants_consumers
        || wants_direct
    {
        let mut updated = existing;
        // A subject this version widened (`taskwire.results.*` to `taskwire.results.>`) gives
        // way to the wider one.
        updated
            .subjects
            .retain(|old| !missing.iter().any(|new| subject_covers(new, old)));
        updated.subjects.extend(missing);
        updated.allow_message_ttl |= config.allow_message_ttl;
        updated.allow_direct |= config.allow_direct;
        if wants_markers {
            updated.subject_delete_marker_ttl = config.subject_delete_marker_ttl;
        }
        if wants_republish {
            updated.republish = config.republish.clone();
        }
        if wants_consumers {
            updated.max_consumers = config.max_consumers;
        }
        let reason = |e: &dyn std::fmt::Display| Error::Stream {
            stream: name,
            reason: format!("updating it to this version's layout: {e}"),
        };
        js.update_stream(updated).await.map_err(|e| reason(&e))?;
        stream = js.get_stream(name).await.map_err(|e| reason(&e))?;
    }
    Ok(stream)
}

/// Whether every subject `narrow` matches, `wide` matches too.
pub(crate) fn subject_covers(wide: &str, narrow: &str) -> bool {
    let (mut wide, mut narrow) = (wide.split('.'), narrow.split('.'));
    loop {
        match (wide.next(), narrow.next()) {
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(n)) if n != ">" => {}
            (Some(w), Some(n)) if w == n => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

async fn ensure_bucket(js: &jetstream::Context, config: kv::Config) -> Result<kv::Store, Error> {
    let bucket = config.bucket.clone();
    match js.get_key_value(&bucket).await {
        Ok(store) => Ok(store),
        Err(_) => match js.create_key_value(config).await {
            Ok(store) => Ok(store),
            // Another process created it in between.
            Err(create) => js
                .get_key_value(&bucket)
                .await
                .map_err(|_| Error::Registry(format!("bucket {bucket}: {create}"))),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wider_subject_covers_a_narrower_one() {
        assert!(subject_covers("taskwire.results.>", "taskwire.results.*"));
        assert!(subject_covers("taskwire.results.>", "taskwire.results.*.>"));
        assert!(subject_covers("taskwire.results.*", "taskwire.results.*"));
        assert!(!subject_covers("taskwire.results.*", "taskwire.results.>"));
        assert!(!subject_covers(
            "taskwire.results.*",
            "taskwire.results.a.b"
        ));
        assert!(!subject_covers("taskwire.events.>", "taskwire.results.*"));
    }
}
