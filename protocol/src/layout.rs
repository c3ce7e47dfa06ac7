//! Streams, consumers and buckets: their names and settings, created or brought up to date
//! at start ([`Broker::connect`]).

use std::time::Duration;

use async_nats::jetstream::{self, consumer, kv, stream};
use bytes::Bytes;
use prost::Message as _;

use super::store::leader_last_message;
use super::*;
use taskwire::config::Problems;
use taskwire::task::Name;
use taskwire::v1;

/// Stream of queued tasks.
pub const TASKS_STREAM: &str = "TASKWIRE_TASKS";

/// Stream of task results.
pub const RESULTS_STREAM: &str = "TASKWIRE_RESULTS";

/// Stream of task state changes.
pub const EVENTS_STREAM: &str = "TASKWIRE_EVENTS";

/// Stream of dead letters: tasks that failed for good, kept for inspection and replay.
pub const DEAD_STREAM: &str = "TASKWIRE_DEAD";

/// KV bucket of task types, written by workers at start.
pub const REGISTRY_BUCKET: &str = "TASKWIRE_REGISTRY";

/// KV bucket of every schema version workers have registered: key `<task token>.<fingerprint>`,
/// value the `taskwire.v1.TaskType` registered with it. Written and read by gateways only, to
/// accept producers of an earlier version that is compatible with the current one.
pub const SCHEMAS_BUCKET: &str = "TASKWIRE_SCHEMAS";

/// KV bucket of cancelled task ids, watched by every worker.
pub const CANCELLED_BUCKET: &str = "TASKWIRE_CANCELLED";

/// KV bucket of schedule definitions, by name.
pub const SCHEDULES_BUCKET: &str = "TASKWIRE_SCHEDULES";

/// KV bucket of task limits set through the Admin API, by task token.
pub const LIMITS_BUCKET: &str = "TASKWIRE_LIMITS";

/// KV bucket of the slots of tasks with a concurrency limit: `<task token>.<n>`, held by the
/// worker running a task and refreshed while it runs; a dead worker's slot runs out.
pub const SLOTS_BUCKET: &str = "TASKWIRE_SLOTS";

/// KV bucket of the starts counted per window for tasks with a rate limit:
/// `<task token>.<window>`.
pub const RATES_BUCKET: &str = "TASKWIRE_RATES";

/// KV bucket of worker heartbeats: key the worker id, value a `taskwire.v1.WorkerInfo`.
pub const WORKERS_BUCKET: &str = "TASKWIRE_WORKERS";

/// How long a worker stays listed without a heartbeat.
pub const WORKER_TTL: Duration = Duration::from_secs(15);

/// How long a concurrency slot lasts without a refresh.
pub const SLOT_LEASE: Duration = Duration::from_secs(20);

/// The priority levels, highest first.
pub const PRIORITIES: [v1::Priority; 3] =
    [v1::Priority::High, v1::Priority::Normal, v1::Priority::Low];

/// Settings of the streams and buckets, the same for every process that creates them.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Replicas of every stream: 1 on one server, 3 in a cluster.
    pub replicas: usize,
    /// How long results and events are kept.
    pub result_ttl: Duration,
    /// How long dead letters are kept.
    pub dead_ttl: Duration,
    /// Window in which a repeated `Nats-Msg-Id` (an idempotency key) is recognised.
    pub duplicate_window: Duration,
    /// Largest task message the tasks stream accepts, in bytes.
    pub max_message_bytes: i32,
    /// Most tasks queued per task type (-1: no limit). Beyond it Submit answers
    /// RESOURCE_EXHAUSTED and stores nothing.
    pub max_queued: i64,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            replicas: 1,
            result_ttl: Duration::from_secs(24 * 3600),
            dead_ttl: Duration::from_secs(7 * 24 * 3600),
            duplicate_window: Duration::from_secs(120),
            max_message_bytes: 1024 * 1024,
            max_queued: -1,
        }
    }
}

/// Why the broker could not be set up or used.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("could not create stream {stream}: {reason}")]
    Stream {
        stream: &'static str,
        reason: String,
    },
    #[error("could not open the task registry: {0}")]
    Registry(String),
    #[error("could not create the consumer of {task}: {reason}")]
    Consumer { task: String, reason: String },
}

impl Settings {
    /// Settings from their text (a variable's value or a flag; `None`: the default), every
    /// problem noted: the result TTL (a duration such as 24h), the replicas (1 to 5), the queue
    /// limit (a positive number of tasks, or -1 for none).
    pub fn parse(
        result_ttl: Option<&str>,
        replicas: Option<&str>,
        max_queued: Option<&str>,
        problems: &mut Problems,
    ) -> Self {
        let mut settings = Self::default();
        if let Some(text) = result_ttl {
            match humantime::parse_duration(text) {
                Ok(ttl) => settings.result_ttl = ttl,
                Err(e) => problems.push(format!(
                    "{}={text:?} is not a duration such as 24h: {e}",
                    env::RESULT_TTL
                )),
            }
        }
        if let Some(text) = replicas {
            match text.parse::<usize>() {
                Ok(n @ 1..=5) => settings.replicas = n,
                _ => problems.push(format!(
                    "{}={text:?} must be a number of replicas from 1 to 5",
                    env::REPLICAS
                )),
            }
        }
        if let Some(text) = max_queued {
            match text.parse::<i64>() {
                Ok(n) if n > 0 || n == -1 => settings.max_queued = n,
                _ => problems.push(format!(
                    "{}={text:?} must be a positive number of tasks, or -1 for no limit",
                    env::MAX_QUEUED
                )),
            }
        }
        settings
    }

    /// Settings from `TASKWIRE_RESULT_TTL`, `TASKWIRE_REPLICAS` and `TASKWIRE_MAX_QUEUED` (the
    /// defaults for those unset), every problem noted.
    pub fn read_env(problems: &mut Problems) -> Self {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        Self::parse(
            var(env::RESULT_TTL).as_deref(),
            var(env::REPLICAS).as_deref(),
            var(env::MAX_QUEUED).as_deref(),
            problems,
        )
    }

    fn tasks_stream(&self) -> stream::Config {
        stream::Config {
            name: TASKS_STREAM.into(),
            description: Some(
                "taskwire: queued tasks, one subject per task type and priority".into(),
            ),
            subjects: vec![
                subject::TASKS.into(),
                subject::TASKS_HIGH.into(),
                subject::TASKS_LOW.into(),
                subject::DELAYED.into(),
                subject::SCHEDULES.into(),
            ],
            retention: stream::RetentionPolicy::WorkQueue,
            storage: stream::StorageType::File,
            num_replicas: self.replicas,
            duplicate_window: self.duplicate_window,
            max_message_size: self.max_message_bytes,
            max_messages_per_subject: self.max_queued,
            discard: if self.max_queued > 0 {
                stream::DiscardPolicy::New
            } else {
                stream::DiscardPolicy::Old
            },
            discard_new_per_subject: self.max_queued > 0,
            // nats-server refuses message schedules on a stream that discards new messages:
            // a queue limit and server-side schedules exclude each other on this stream.
            allow_message_schedules: self.max_queued <= 0,
            allow_message_ttl: true,
            ..Default::default()
        }
    }

    fn results_stream(&self) -> stream::Config {
        stream::Config {
            name: RESULTS_STREAM.into(),
            description: Some("taskwire: one result per task id".into()),
            subjects: vec![subject::RESULTS.into()],
            retention: stream::RetentionPolicy::Limits,
            storage: stream::StorageType::File,
            num_replicas: self.replicas,
            max_messages_per_subject: 1,
            max_age: self.result_ttl,
            duplicate_window: self.duplicate_window,
            allow_direct: true,
            // Results may be kept for less than the stream's age (a task's result_ttl); when one
            // runs out, a marker says so for as long as the task's events are kept.
            allow_message_ttl: true,
            subject_delete_marker_ttl: Some(self.result_ttl),
            republish: Some(stream::Republish {
                source: subject::RESULTS_BY_TYPE.into(),
                destination: subject::STORED_RESULTS_MAPPING.into(),
                headers_only: false,
            }),
            ..Default::default()
        }
    }

    fn events_stream(&self) -> stream::Config {
        stream::Config {
            name: EVENTS_STREAM.into(),
            description: Some("taskwire: task state changes".into()),
            subjects: vec![subject::EVENTS.into()],
            retention: stream::RetentionPolicy::Limits,
            storage: stream::StorageType::File,
            num_replicas: self.replicas,
            max_messages_per_subject: 32,
            max_age: self.result_ttl,
            allow_direct: true,
            ..Default::default()
        }
    }

    fn dead_stream(&self) -> stream::Config {
        stream::Config {
            name: DEAD_STREAM.into(),
            description: Some("taskwire: tasks that failed for good, replayable".into()),
            subjects: vec![subject::DEAD.into()],
            retention: stream::RetentionPolicy::Limits,
            storage: stream::StorageType::File,
            num_replicas: self.replicas,
            max_age: self.dead_ttl,
            duplicate_window: self.duplicate_window,
            allow_direct: true,
            ..Default::default()
        }
    }

    fn cancelled_bucket(&self) -> kv::Config {
        kv::Config {
            bucket: CANCELLED_BUCKET.into(),
            description: "taskwire: cancelled task ids".into(),
            history: 1,
            max_age: self.result_ttl,
            storage: stream::StorageType::File,
            num_replicas: self.replicas,
            ..Default::default()
        }
    }

    fn schedules_bucket(&self) -> kv::Config {
        kv::Config {
            bucket: SCHEDULES_BUCKET.into(),
            description: "taskwire: schedule definitions".into(),
            history: 1,
            storage: stream::StorageType::File,
            num_replicas: self.replicas,
            ..Default::default()
        }
    }

    fn limits_buckets(&self) -> [kv::Config; 4] {
        let bucket = |name: &str, description: &str, max_age: Duration| kv::Config {
            bucket: name.into(),
            description: description.into(),
            history: 1,
            max_age,
            storage: stream::StorageType::File,
            num_replicas: self.replicas,
            ..Default::default()
        };
        [
            bucket(
                LIMITS_BUCKET,
                "taskwire: task limits set through the Admin API",
                Duration::ZERO,
            ),
            bucket(
                SLOTS_BUCKET,
                "taskwire: concurrency slots held by running tasks",
                SLOT_LEASE,
            ),
            bucket(
                RATES_BUCKET,
                "taskwire: task starts counted per rate window",
                Duration::from_secs(2 * 3600),
            ),
            bucket(
                WORKERS_BUCKET,
                "taskwire: heartbeats of live workers",
                WORKER_TTL,
            ),
        ]
    }

    fn schemas_bucket(&self) -> kv::Config {
        kv::Config {
            bucket: SCHEMAS_BUCKET.into(),
            description: "taskwire: schema versions workers registered, by task and fingerprint"
                .into(),
            history: 1,
            storage: stream::StorageType::File,
            num_replicas: self.replicas,
            ..Default::default()
        }
    }

    fn registry_bucket(&self) -> kv::Config {
        kv::Config {
            bucket: REGISTRY_BUCKET.into(),
            description: "taskwire: task types published by workers".into(),
            history: 1,
            storage: stream::StorageType::File,
            num_replicas: self.replicas,
            ..Default::default()
        }
    }
}

/// Handles on the streams and buckets, created if missing.
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
        let registry = ensure_bucket(&jetstream, settings.registry_bucket()).await?;
        let cancelled = ensure_bucket(&jetstream, settings.cancelled_bucket()).await?;
        let schedules = ensure_bucket(&jetstream, settings.schedules_bucket()).await?;
        let [limits, slots, rates, workers] = settings.limits_buckets();
        let workers = ensure_bucket(&jetstream, workers).await?;
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
            registry,
            cancelled,
            schedules,
            limits,
            slots,
            rates,
            workers,
            result_ttl: settings.result_ttl,
            message_schedules,
            reads: Reads::for_replicas(settings.replicas),
        })
    }

    /// One of the four streams, by name.
    fn stream(&self, name: &str) -> Option<&stream::Stream> {
        match name {
            TASKS_STREAM => Some(&self.tasks),
            RESULTS_STREAM => Some(&self.results),
            EVENTS_STREAM => Some(&self.events),
            DEAD_STREAM => Some(&self.dead),
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
        let mut delay = Duration::from_millis(50);
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            match self.registry.put(name.token(), value.clone()).await {
                Ok(_) => return Ok(()),
                Err(_) if std::time::Instant::now() < deadline => {
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(1));
                }
                Err(e) => return Err(Error::Registry(e.to_string())),
            }
        }
    }
}

/// The name of the durable consumer of a task type at a priority.
pub fn consumer_name(name: &Name, priority: v1::Priority) -> String {
    match priority {
        v1::Priority::High => format!("{}-high", name.consumer()),
        v1::Priority::Low => format!("{}-low", name.consumer()),
        v1::Priority::Normal | v1::Priority::Unspecified => name.consumer(),
    }
}

/// The text of a priority: `high`, `normal` or `low`.
pub fn priority_name(priority: v1::Priority) -> &'static str {
    match priority {
        v1::Priority::High => "high",
        v1::Priority::Low => "low",
        v1::Priority::Normal | v1::Priority::Unspecified => "normal",
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
    if !missing.is_empty() || wants_ttl || wants_markers || wants_republish {
        let mut updated = existing;
        // A subject this version widened (`taskwire.results.*` to `taskwire.results.>`) gives
        // way to the wider one.
        updated
            .subjects
            .retain(|old| !missing.iter().any(|new| subject_covers(new, old)));
        updated.subjects.extend(missing);
        updated.allow_message_ttl |= config.allow_message_ttl;
        if wants_markers {
            updated.subject_delete_marker_ttl = config.subject_delete_marker_ttl;
        }
        if wants_republish {
            updated.republish = config.republish.clone();
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
