//! The JetStream layout that the gateway and the workers agree on: streams, consumers, the
//! registry, subjects, headers and the shape of task, event and result messages.
//!
//! | what | where |
//! | --- | --- |
//! | tasks | stream `TASKWIRE_TASKS`, `taskwire.tasks.<task>` (normal priority), `taskwire.tasks-high.<task>`, `taskwire.tasks-low.<task>`, work queue, one durable pull consumer per task and priority |
//! | delayed tasks | stream `TASKWIRE_TASKS`, `taskwire.delayed.<id>`: a message schedule (`@at`) that the server turns into the task at its time |
//! | schedules | stream `TASKWIRE_TASKS`, `taskwire.schedules.<name>`: a message schedule (cron or `@every`) that the server turns into a task on every tick; its definition in KV bucket `TASKWIRE_SCHEDULES` |
//! | cancellations | KV bucket `TASKWIRE_CANCELLED`, key `<id>`, kept for the result TTL; workers watch it |
//! | results | stream `TASKWIRE_RESULTS`, `taskwire.results.<id>.<token>`, one message per task id, kept for the result TTL; each stored result republished on `taskwire.stored.results.<id>.<token>` for waiters |
//! | state changes | stream `TASKWIRE_EVENTS`, `taskwire.events.<id>.<task>` |
//! | dead letters | stream `TASKWIRE_DEAD`, `taskwire.dead.<id>.<task>`: the task as submitted, with the reason and last error |
//! | task types | KV bucket `TASKWIRE_REGISTRY`, key `<task>`, value a `taskwire.v1.TaskType` |
//! | schema versions seen | KV bucket `TASKWIRE_SCHEMAS`, key `<task>.<fingerprint>` (gateways only) |
//!
//! Every name, header and setting is defined here once; nothing else builds a subject or a
//! header set.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::HeaderMap;
use async_nats::jetstream::{self, consumer, kv, stream};
use bytes::Bytes;
use prost::Message as _;

use crate::task::{Id, Name};
use crate::v1;

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

/// Subjects of the layout.
pub mod subject {
    use crate::task::{Id, Name};

    use crate::v1::Priority;

    /// Every task subject of normal priority.
    pub const TASKS: &str = "taskwire.tasks.>";
    /// Every task subject of high priority.
    pub const TASKS_HIGH: &str = "taskwire.tasks-high.>";
    /// Every task subject of low priority.
    pub const TASKS_LOW: &str = "taskwire.tasks-low.>";
    /// Every delayed task (a message schedule).
    pub const DELAYED: &str = "taskwire.delayed.>";
    /// Every schedule (a repeating message schedule).
    pub const SCHEDULES: &str = "taskwire.schedules.>";
    /// Every result subject (`>`: results stored as `taskwire.results.<id>` by earlier
    /// versions stay readable).
    pub const RESULTS: &str = "taskwire.results.>";
    /// The results the stream republishes: `taskwire.results.<id>.<token>`.
    pub const RESULTS_BY_TYPE: &str = "taskwire.results.*.>";
    /// Where the results stream republishes each result it stored (and only those): waiters
    /// listen here, so a publish the stream refused, or a forged one, never reaches them.
    /// Each on `taskwire.stored.results.<id>.<token>`.
    pub const STORED_RESULTS: &str = "taskwire.stored.results.>";
    /// The republish destination of [`RESULTS_BY_TYPE`], keeping the id and the token.
    pub const STORED_RESULTS_MAPPING: &str = "taskwire.stored.results.{{wildcard(1)}}.>";
    /// Every event subject.
    pub const EVENTS: &str = "taskwire.events.>";
    /// Every dead letter subject.
    pub const DEAD: &str = "taskwire.dead.>";

    /// Where tasks of this type queue at normal priority:
    /// `taskwire.tasks.examples.magic.v1.Magic.Add`.
    pub fn task(name: &Name) -> String {
        format!("taskwire.tasks.{}", name.token())
    }

    /// Where tasks of this type queue at a priority.
    pub fn task_at(name: &Name, priority: Priority) -> String {
        match priority {
            Priority::High => format!("taskwire.tasks-high.{}", name.token()),
            Priority::Low => format!("taskwire.tasks-low.{}", name.token()),
            Priority::Normal | Priority::Unspecified => task(name),
        }
    }

    /// Where the broker keeps a schedule.
    pub fn schedule(name: &str) -> String {
        format!("taskwire.schedules.{name}")
    }

    /// Where the broker holds a delayed task until its time.
    pub fn delayed(id: &Id) -> String {
        format!("taskwire.delayed.{id}")
    }

    /// Where the result of a task is stored: id first, then the task token, so that NATS
    /// permissions can let a worker store and read the results of its own task types only.
    pub fn result(name: &Name, id: &Id) -> String {
        format!("taskwire.results.{id}.{}", name.token())
    }

    /// Matches the result of one task whatever its type: a task id has one result, checked
    /// against this subject when a result is stored.
    pub fn result_of(id: &Id) -> String {
        format!("taskwire.results.{id}.>")
    }

    /// Where the state changes of a task are stored. The id comes first: a task token has a
    /// varying number of parts, so only this order lets one filter find a task's events by id
    /// (`taskwire.events.<id>.>`) and another all events of a type
    /// (`taskwire.events.*.examples.magic.v1.Magic.Add`).
    pub fn event(name: &Name, id: &Id) -> String {
        format!("taskwire.events.{id}.{}", name.token())
    }

    /// Matches the state changes of one task whatever its type.
    pub fn events_of(id: &Id) -> String {
        format!("taskwire.events.{id}.>")
    }

    /// Where a task that failed for good is kept (id first, as for events).
    pub fn dead(name: &Name, id: &Id) -> String {
        format!("taskwire.dead.{id}.{}", name.token())
    }

    /// Matches the dead letter of one task.
    pub fn dead_of(id: &Id) -> String {
        format!("taskwire.dead.{id}.>")
    }

    /// Matches the dead letters of one task type.
    pub fn dead_of_type(name: &Name) -> String {
        format!("taskwire.dead.*.{}", name.token())
    }
}

/// Header names of the layout.
pub mod header {
    /// The task id.
    pub const TASK_ID: &str = "Taskwire-Task-Id";
    /// The full task name.
    pub const TASK: &str = "Taskwire-Task";
    /// Attempts allowed for this task when the submitter overrode the declared option.
    pub const MAX_ATTEMPTS: &str = "Taskwire-Max-Attempts";
    /// Time limit of one attempt in milliseconds, when the submitter overrode it.
    pub const TIMEOUT_MS: &str = "Taskwire-Timeout-Ms";
    /// First retry delay in milliseconds, when the submitter overrode it.
    pub const BACKOFF_INITIAL_MS: &str = "Taskwire-Backoff-Initial-Ms";
    /// Longest retry delay in milliseconds, when the submitter overrode it.
    pub const BACKOFF_MAX_MS: &str = "Taskwire-Backoff-Max-Ms";
    /// When the task was submitted, in microseconds since the Unix epoch.
    pub const SUBMITTED_AT: &str = "Taskwire-Submitted-At";
    /// State of an event or result: `queued`, `running`, `retrying`, `succeeded`, `failed`, `cancelled`.
    pub const STATE: &str = "Taskwire-State";
    /// On a task: the number of its first delivery (1, or more for a task put back in line);
    /// on an event or result: the attempt it belongs to.
    pub const ATTEMPT: &str = "Taskwire-Attempt";
    /// How many times a dead task was put back in line.
    pub const REPLAY: &str = "Taskwire-Replay";
    /// Why a task is a dead letter: `exhausted`, `permanent`, `panic`, `timeout`, `poison` or
    /// `lost`.
    pub const DEAD_REASON: &str = "Taskwire-Dead-Reason";
    /// The last error of a dead letter, on one line.
    pub const ERROR: &str = "Taskwire-Error";
    /// On a task: the time after which it is not started, in microseconds since the Unix epoch.
    pub const EXPIRES_AT: &str = "Taskwire-Expires-At";
    /// On a task a schedule submitted: the schedule's name. Such a task has no id header; its
    /// id is made from the schedule and its place in the stream.
    pub const SCHEDULE_NAME: &str = "Taskwire-Schedule";
    /// On a task of high or low priority: `high` or `low`, so that a replay keeps it.
    pub const PRIORITY: &str = "Taskwire-Priority";
    /// On a scheduled event: when the task becomes due, in microseconds since the Unix epoch.
    pub const NOT_BEFORE: &str = "Taskwire-Not-Before";
    /// On a task: how long its result is kept, in milliseconds, when the submitter said.
    pub const RESULT_TTL_MS: &str = "Taskwire-Result-Ttl-Ms";
    /// On an event: the body is a `taskwire.v1.TaskProgress`.
    pub const PROGRESS: &str = "Taskwire-Progress";
    /// JetStream's de-duplication id.
    pub const MSG_ID: &str = "Nats-Msg-Id";
    /// A message schedule: `@at <RFC 3339 time>`, `@every <duration>` or a cron expression.
    pub const SCHEDULE: &str = "Nats-Schedule";
    /// Where a message schedule publishes.
    pub const SCHEDULE_TARGET: &str = "Nats-Schedule-Target";
    /// How long the stream keeps this message, in seconds.
    pub const TTL: &str = "Nats-TTL";
    /// Set on the marker the stream leaves when a message's time ran out.
    pub const MARKER_REASON: &str = "Nats-Marker-Reason";
    /// On a message a schedule fired: the time of the schedule's next tick.
    pub const SCHEDULE_NEXT: &str = "Nats-Schedule-Next";
    /// JetStream's optimistic concurrency check on the subject's last sequence.
    pub const EXPECTED_LAST_SUBJECT_SEQUENCE: &str = "Nats-Expected-Last-Subject-Sequence";
    /// The subject (wildcards allowed) the last-sequence check is made against, when it is not
    /// the message's own.
    pub const EXPECTED_LAST_SUBJECT_SEQUENCE_SUBJECT: &str =
        "Nats-Expected-Last-Subject-Sequence-Subject";
}

/// Environment variables of the stream settings, read by every process that may create them.
pub mod env {
    /// How long results and events are kept, as a duration (`24h`).
    pub const RESULT_TTL: &str = "TASKWIRE_RESULT_TTL";
    /// Stream replicas: 1 on one server, 3 in a cluster.
    pub const REPLICAS: &str = "TASKWIRE_REPLICAS";
    /// Most tasks queued per task type; a full queue refuses new tasks.
    pub const MAX_QUEUED: &str = "TASKWIRE_MAX_QUEUED";
    /// A NATS `.creds` file.
    pub const NATS_CREDS: &str = "TASKWIRE_NATS_CREDS";
    /// A file holding an nkey seed.
    pub const NATS_NKEY: &str = "TASKWIRE_NATS_NKEY";
    /// A NATS user (with `TASKWIRE_NATS_PASSWORD`).
    pub const NATS_USER: &str = "TASKWIRE_NATS_USER";
    /// The NATS user's password.
    pub const NATS_PASSWORD: &str = "TASKWIRE_NATS_PASSWORD";
    /// CA certificate(s) for TLS to NATS.
    pub const NATS_CA: &str = "TASKWIRE_NATS_CA";
    /// Client certificate for TLS to NATS (with `TASKWIRE_NATS_KEY`).
    pub const NATS_CERT: &str = "TASKWIRE_NATS_CERT";
    /// Key of the client certificate.
    pub const NATS_KEY: &str = "TASKWIRE_NATS_KEY";
    /// The subject prefix of this process's reply inboxes (default `_INBOX`), so that NATS
    /// permissions can give each user replies under its own prefix only.
    pub const NATS_INBOX_PREFIX: &str = "TASKWIRE_NATS_INBOX_PREFIX";
}

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
    /// The defaults, overridden by `TASKWIRE_RESULT_TTL` and `TASKWIRE_REPLICAS`.
    pub fn from_env() -> Result<Self, String> {
        let mut settings = Self::default();
        if let Ok(text) = std::env::var(env::RESULT_TTL) {
            settings.result_ttl = humantime::parse_duration(&text).map_err(|e| {
                format!(
                    "{}={text:?} is not a duration such as 24h: {e}",
                    env::RESULT_TTL
                )
            })?;
        }
        if let Ok(text) = std::env::var(env::REPLICAS) {
            settings.replicas = match text.parse::<usize>() {
                Ok(n @ 1..=5) => n,
                _ => {
                    return Err(format!(
                        "{}={text:?} must be a number of replicas from 1 to 5",
                        env::REPLICAS
                    ));
                }
            };
        }
        if let Ok(text) = std::env::var(env::MAX_QUEUED) {
            settings.max_queued = match text.parse::<i64>() {
                Ok(n) if n > 0 || n == -1 => n,
                _ => {
                    return Err(format!(
                        "{}={text:?} must be a positive number of tasks, or -1 for no limit",
                        env::MAX_QUEUED
                    ));
                }
            };
        }
        Ok(settings)
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
fn subject_covers(wide: &str, narrow: &str) -> bool {
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

/// How a process authenticates to NATS and secures the connection: a `.creds` file, an nkey
/// seed, or a user and password, and TLS with a CA and optionally a client certificate. Read
/// from `TASKWIRE_NATS_CREDS`, `TASKWIRE_NATS_NKEY` (a file holding the seed),
/// `TASKWIRE_NATS_USER` / `TASKWIRE_NATS_PASSWORD`, `TASKWIRE_NATS_CA`, `TASKWIRE_NATS_CERT` and
/// `TASKWIRE_NATS_KEY`, and the inbox prefix from `TASKWIRE_NATS_INBOX_PREFIX`; the gateway, the
/// workers and the CLI use the same settings.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct NatsAuth {
    /// A `.creds` file (user JWT and nkey seed).
    pub creds_file: Option<std::path::PathBuf>,
    /// A file holding an nkey seed (`SU…`).
    pub nkey_file: Option<std::path::PathBuf>,
    /// A user and password.
    pub user_password: Option<(String, String)>,
    /// CA certificate(s) to trust (PEM); turns TLS on.
    pub ca_file: Option<std::path::PathBuf>,
    /// Client certificate and key (PEM) for servers that verify clients.
    pub client_cert: Option<(std::path::PathBuf, std::path::PathBuf)>,
    /// Subject prefix of reply inboxes instead of `_INBOX`, e.g. `_INBOX.magic-worker`.
    pub inbox_prefix: Option<String>,
}

impl std::fmt::Debug for NatsAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Paths only: never the password.
        f.debug_struct("NatsAuth")
            .field("creds_file", &self.creds_file)
            .field("nkey_file", &self.nkey_file)
            .field("user", &self.user_password.as_ref().map(|(user, _)| user))
            .field("ca_file", &self.ca_file)
            .field("client_cert", &self.client_cert)
            .field("inbox_prefix", &self.inbox_prefix)
            .finish()
    }
}

impl NatsAuth {
    /// The settings in the environment. Errors name the variable to fix.
    pub fn from_env() -> Result<Self, String> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let path = |name: &str| var(name).map(std::path::PathBuf::from);
        let mut auth = Self {
            creds_file: path(env::NATS_CREDS),
            nkey_file: path(env::NATS_NKEY),
            ca_file: path(env::NATS_CA),
            inbox_prefix: var(env::NATS_INBOX_PREFIX),
            ..Self::default()
        };
        if let Some(prefix) = &auth.inbox_prefix {
            check_inbox_prefix(prefix)
                .map_err(|why| format!("{}={prefix:?} {why}", env::NATS_INBOX_PREFIX))?;
        }
        match (var(env::NATS_USER), var(env::NATS_PASSWORD)) {
            (Some(user), Some(password)) => auth.user_password = Some((user, password)),
            (None, None) => {}
            _ => {
                return Err(format!(
                    "set both {} and {}, or neither",
                    env::NATS_USER,
                    env::NATS_PASSWORD
                ));
            }
        }
        match (path(env::NATS_CERT), path(env::NATS_KEY)) {
            (Some(cert), Some(key)) => auth.client_cert = Some((cert, key)),
            (None, None) => {}
            _ => {
                return Err(format!(
                    "set both {} and {}, or neither",
                    env::NATS_CERT,
                    env::NATS_KEY
                ));
            }
        }
        let ways = [
            auth.creds_file.is_some(),
            auth.nkey_file.is_some(),
            auth.user_password.is_some(),
        ];
        if ways.iter().filter(|w| **w).count() > 1 {
            return Err(format!(
                "set one of {}, {} and {}/{}",
                env::NATS_CREDS,
                env::NATS_NKEY,
                env::NATS_USER,
                env::NATS_PASSWORD
            ));
        }
        Ok(auth)
    }

    /// `options` with these settings applied. Files are read now, so a missing or empty one
    /// stops the process at start rather than at the first reconnect.
    pub async fn apply(
        &self,
        mut options: async_nats::ConnectOptions,
    ) -> Result<async_nats::ConnectOptions, String> {
        if let Some(file) = &self.creds_file {
            options = options
                .credentials_file(file)
                .await
                .map_err(|e| format!("{}={}: {e}", env::NATS_CREDS, file.display()))?;
        }
        if let Some(file) = &self.nkey_file {
            let seed = std::fs::read_to_string(file)
                .map_err(|e| format!("{}={}: {e}", env::NATS_NKEY, file.display()))?;
            let seed = seed.trim();
            if !seed.starts_with('S') {
                return Err(format!(
                    "{}={} does not hold an nkey seed (a line starting with S)",
                    env::NATS_NKEY,
                    file.display()
                ));
            }
            options = options.nkey(seed.to_owned());
        }
        if let Some((user, password)) = &self.user_password {
            options = options.user_and_password(user.clone(), password.clone());
        }
        for (name, file) in [
            (env::NATS_CA, self.ca_file.as_ref()),
            (env::NATS_CERT, self.client_cert.as_ref().map(|c| &c.0)),
            (env::NATS_KEY, self.client_cert.as_ref().map(|c| &c.1)),
        ] {
            if let Some(file) = file
                && !file.is_file()
            {
                return Err(format!("{name}={}: no such file", file.display()));
            }
        }
        if let Some(ca) = &self.ca_file {
            options = options.add_root_certificates(ca.clone()).require_tls(true);
        }
        if let Some((cert, key)) = &self.client_cert {
            options = options
                .add_client_certificate(cert.clone(), key.clone())
                .require_tls(true);
        }
        if let Some(prefix) = &self.inbox_prefix {
            check_inbox_prefix(prefix).map_err(|why| format!("inbox prefix {prefix:?} {why}"))?;
            options = options.custom_inbox_prefix(prefix);
        }
        Ok(options)
    }
}

/// The permission errors NATS reported on a connection. A request whose subject the user may
/// not publish to, or whose reply it may not receive, only times out; what NATS refused says
/// what to fix.
/// It also counts the connection's (re)connects, so that followers of buckets can read them
/// again at once after a broker restart.
#[derive(Clone, Debug)]
pub struct Refusals(
    std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    std::sync::Arc<tokio::sync::watch::Sender<u64>>,
);

impl Default for Refusals {
    fn default() -> Self {
        Self(
            std::sync::Arc::default(),
            std::sync::Arc::new(tokio::sync::watch::Sender::new(0)),
        )
    }
}

/// Most permission errors a connection remembers.
const MAX_REFUSALS: usize = 16;

impl Refusals {
    /// `options` recording the permission errors of the connection they make.
    pub fn watch(&self, options: async_nats::ConnectOptions) -> async_nats::ConnectOptions {
        let seen = self.clone();
        options.event_callback(move |event| {
            let seen = seen.clone();
            async move {
                if let async_nats::Event::Connected = &event {
                    seen.1.send_modify(|n| *n += 1);
                }
                if let async_nats::Event::ServerError(e) = &event {
                    let text = e.to_string();
                    if text.to_lowercase().contains("permissions violation") {
                        let mut seen = seen.0.lock().unwrap_or_else(|e| e.into_inner());
                        // The first ones explain; a long-lived process keeps no more.
                        if seen.len() < MAX_REFUSALS {
                            seen.push(text);
                        }
                    }
                }
            }
        })
    }

    /// Changes on every (re)connect of the connection from now on.
    pub fn connects(&self) -> tokio::sync::watch::Receiver<u64> {
        self.1.subscribe()
    }

    /// What NATS refused, with what to change; `None` when it refused nothing.
    pub fn explain(&self) -> Option<String> {
        let seen = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let first = seen.first()?;
        let hint = if seen
            .iter()
            .any(|s| s.to_lowercase().contains("subscription"))
        {
            format!(
                "its replies are refused: set {} to the inbox prefix this NATS user may subscribe to (e.g. _INBOX.<user>)",
                env::NATS_INBOX_PREFIX
            )
        } else {
            "check this NATS user's permissions (deploy/nats/accounts.conf)".to_owned()
        };
        Some(format!("NATS refused it: {first}; {hint}"))
    }
}

/// An inbox prefix is a literal subject: dot-separated tokens, none empty, no wildcards or
/// whitespace.
fn check_inbox_prefix(prefix: &str) -> Result<(), &'static str> {
    if prefix
        .split('.')
        .any(|t| t.is_empty() || t.chars().any(|c| c.is_whitespace() || c == '*' || c == '>'))
    {
        return Err(
            "is not a literal subject: use dot-separated tokens without spaces, `*` or `>` (for example _INBOX.magic-worker)",
        );
    }
    Ok(())
}

/// The servers of a NATS URL setting: one URL, or several separated by commas.
pub fn servers(url: &str) -> Vec<String> {
    url.split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(str::to_owned)
        .collect()
}

/// The text of a state in headers.
pub fn state_name(state: v1::TaskState) -> &'static str {
    match state {
        v1::TaskState::Unspecified => "unspecified",
        v1::TaskState::Queued => "queued",
        v1::TaskState::Running => "running",
        v1::TaskState::Retrying => "retrying",
        v1::TaskState::Succeeded => "succeeded",
        v1::TaskState::Failed => "failed",
        v1::TaskState::Cancelled => "cancelled",
        v1::TaskState::Scheduled => "scheduled",
        v1::TaskState::Expired => "expired",
    }
}

/// Reads a state written by [`state_name`].
pub fn parse_state(text: &str) -> v1::TaskState {
    match text {
        "queued" => v1::TaskState::Queued,
        "running" => v1::TaskState::Running,
        "retrying" => v1::TaskState::Retrying,
        "succeeded" => v1::TaskState::Succeeded,
        "failed" => v1::TaskState::Failed,
        "cancelled" => v1::TaskState::Cancelled,
        "scheduled" => v1::TaskState::Scheduled,
        "expired" => v1::TaskState::Expired,
        _ => v1::TaskState::Unspecified,
    }
}

/// Microseconds since the Unix epoch, as in [`header::SUBMITTED_AT`].
pub fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or_default()
}

/// What a submitter changed of a task's declared options, carried in the task's headers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Overrides {
    /// Attempts in all.
    pub max_attempts: Option<u32>,
    /// Time limit of one attempt.
    pub timeout: Option<Duration>,
    /// First retry delay.
    pub backoff_initial: Option<Duration>,
    /// Longest retry delay.
    pub backoff_max: Option<Duration>,
    /// How long the result is kept.
    pub result_ttl: Option<Duration>,
}

impl Overrides {
    fn write(&self, headers: &mut HeaderMap) {
        if let Some(n) = self.max_attempts {
            headers.insert(header::MAX_ATTEMPTS, n.to_string().as_str());
        }
        for (name, value) in [
            (header::TIMEOUT_MS, self.timeout),
            (header::BACKOFF_INITIAL_MS, self.backoff_initial),
            (header::BACKOFF_MAX_MS, self.backoff_max),
            (header::RESULT_TTL_MS, self.result_ttl),
        ] {
            if let Some(d) = value {
                headers.insert(name, d.as_millis().to_string().as_str());
            }
        }
    }

    /// Reads the overrides of a task message.
    pub fn read(headers: Option<&HeaderMap>) -> Self {
        let number = |name: &str| -> Option<u64> { headers?.get(name)?.as_str().parse().ok() };
        let millis = |name: &str| number(name).map(Duration::from_millis);
        Self {
            max_attempts: number(header::MAX_ATTEMPTS)
                .and_then(|n| u32::try_from(n).ok())
                .filter(|n| *n > 0),
            timeout: millis(header::TIMEOUT_MS),
            backoff_initial: millis(header::BACKOFF_INITIAL_MS),
            backoff_max: millis(header::BACKOFF_MAX_MS),
            result_ttl: millis(header::RESULT_TTL_MS),
        }
    }

    /// The declared options with these overrides applied.
    pub fn apply(&self, declared: &crate::task::Options) -> crate::task::Options {
        crate::task::Options {
            max_attempts: self.max_attempts.unwrap_or(declared.max_attempts),
            timeout: self.timeout.or(declared.timeout),
            backoff_initial: self.backoff_initial.unwrap_or(declared.backoff_initial),
            backoff_max: self.backoff_max.unwrap_or(declared.backoff_max),
            concurrency: declared.concurrency,
            result_ttl: self.result_ttl.or(declared.result_ttl),
            max_concurrency: declared.max_concurrency,
            rate_limit: declared.rate_limit,
        }
    }
}

/// The headers of a task message. `expires_at` is in microseconds since the Unix epoch.
///
/// The de-duplication id is the task id. A keyed task's id is made from its task type and key
/// (and the submitter's scope), so a key used by two task types gives two ids and two tasks;
/// a bare key as the de-duplication id would let one type's key swallow another's task, since
/// the stream de-duplicates across all its subjects.
pub fn task_headers(
    name: &Name,
    id: &Id,
    overrides: &Overrides,
    expires_at: Option<u64>,
) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(header::TASK_ID, id.as_str());
    headers.insert(header::TASK, name.as_str());
    headers.insert(header::MSG_ID, id.as_str());
    headers.insert(header::SUBMITTED_AT, now_micros().to_string().as_str());
    headers.insert(header::ATTEMPT, "1");
    if let Some(at) = expires_at {
        headers.insert(header::EXPIRES_AT, at.to_string().as_str());
    }
    overrides.write(&mut headers);
    headers
}

/// The headers of a schedule: those of the tasks it submits (without an id: each tick's task
/// gets its own), with the schedule `spec` and its target.
pub fn schedule_headers(
    name: &Name,
    schedule: &str,
    spec: &str,
    priority: v1::Priority,
    overrides: &Overrides,
) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(header::TASK, name.as_str());
    headers.insert(header::SCHEDULE_NAME, schedule);
    headers.insert(header::ATTEMPT, "1");
    if priority != v1::Priority::Normal && priority != v1::Priority::Unspecified {
        headers.insert(header::PRIORITY, priority_name(priority));
    }
    overrides.write(&mut headers);
    headers.insert(header::SCHEDULE, spec);
    headers.insert(
        header::SCHEDULE_TARGET,
        subject::task_at(name, priority).as_str(),
    );
    headers
}

/// The id of the task a schedule fired: from the schedule's name and the tick, which the fired
/// message's `Nats-Schedule-Next` (the time of the tick after it) names, so that a tick fired
/// twice (by a new stream leader that had not learnt of the first firing) is one task; without
/// that header, from the message's sequence in the tasks stream. The same on every redelivery,
/// different on every tick.
pub fn scheduled_task_id(name: &Name, schedule: &str, next: Option<&str>, sequence: u64) -> Id {
    let tick = match next {
        Some(next) => format!("next\0{next}"),
        None => sequence.to_string(),
    };
    Id::from_idempotency_key(name, &format!("schedule\0{schedule}\0{tick}"))
}

/// The expiry time of a task message, in microseconds since the Unix epoch.
pub fn expires_at(headers: Option<&HeaderMap>) -> Option<u64> {
    headers?.get(header::EXPIRES_AT)?.as_str().parse().ok()
}

/// Turns task headers into those of a message schedule that publishes the task to `target`
/// at `at` (rounded up to the next whole second: the server's granularity).
pub fn delayed_headers(mut task: HeaderMap, target: &str, at: SystemTime) -> HeaderMap {
    let since = at.duration_since(UNIX_EPOCH).unwrap_or_default();
    let whole = if since.subsec_nanos() > 0 {
        since.as_secs() + 1
    } else {
        since.as_secs()
    };
    let at = UNIX_EPOCH + Duration::from_secs(whole);
    task.insert(
        header::SCHEDULE,
        format!("@at {}", humantime::format_rfc3339_seconds(at)).as_str(),
    );
    task.insert(header::SCHEDULE_TARGET, target);
    task
}

/// When a delayed task's message schedule (`@at <time>`) publishes it.
pub fn scheduled_at(headers: &HeaderMap) -> Option<SystemTime> {
    let spec = headers.get(header::SCHEDULE)?.as_str();
    humantime::parse_rfc3339_weak(spec.strip_prefix("@at ")?.trim()).ok()
}

/// The headers of a state change event.
pub fn event_headers(name: &Name, id: &Id, state: v1::TaskState, attempt: u32) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(header::TASK_ID, id.as_str());
    headers.insert(header::TASK, name.as_str());
    headers.insert(header::STATE, state_name(state));
    headers.insert(header::ATTEMPT, attempt.to_string().as_str());
    headers
}

/// The headers of a result: stored only if the task has no result yet, whoever publishes it and
/// however often. `series` tells apart the results of a task's replays (its `Taskwire-Replay`),
/// whose de-duplication ids must differ.
pub fn result_headers(
    name: &Name,
    id: &Id,
    state: v1::TaskState,
    attempt: u32,
    series: &str,
    ttl: Option<Duration>,
) -> HeaderMap {
    let mut headers = event_headers(name, id, state, attempt);
    headers.insert(header::MSG_ID, result_msg_id(id, series).as_str());
    headers.insert(header::EXPECTED_LAST_SUBJECT_SEQUENCE, "0");
    headers.insert(
        header::EXPECTED_LAST_SUBJECT_SEQUENCE_SUBJECT,
        subject::result_of(id).as_str(),
    );
    if let Some(ttl) = ttl {
        let seconds = ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0);
        headers.insert(header::TTL, seconds.max(1).to_string().as_str());
    }
    headers
}

/// The de-duplication id of a task's result in a series of attempts (0, or its replay count).
pub fn result_msg_id(id: &Id, series: &str) -> String {
    format!("{id}.result.{series}")
}

/// Whether a stored message is the marker a result leaves when its time ran out.
pub fn is_expiry_marker(headers: &HeaderMap) -> bool {
    headers.get(header::MARKER_REASON).is_some()
}

/// The body of a progress event.
pub fn progress_body(progress: &v1::TaskProgress) -> Bytes {
    progress.encode_to_vec().into()
}

/// The body of a failed result or a retry event.
pub fn failure_body(message: &str, retryable: bool) -> Bytes {
    v1::TaskFailure {
        message: message.to_owned(),
        retryable,
    }
    .encode_to_vec()
    .into()
}

/// A task's state as an event or result message tells it.
pub fn task_info(
    id: &Id,
    headers: &HeaderMap,
    payload: &[u8],
    time: Option<SystemTime>,
) -> v1::TaskInfo {
    let mut state = headers
        .get(header::STATE)
        .map(|v| parse_state(v.as_str()))
        .unwrap_or_default();
    let micros_header = |name: &str| -> Option<SystemTime> {
        let micros: u64 = headers.get(name)?.as_str().parse().ok()?;
        Some(UNIX_EPOCH + Duration::from_micros(micros))
    };
    let not_before = micros_header(header::NOT_BEFORE);
    let now = SystemTime::now();
    // The broker released a scheduled task at its time: it is queued now.
    if state == v1::TaskState::Scheduled && not_before.is_some_and(|t| t <= now) {
        state = v1::TaskState::Queued;
    }
    // A task still waiting past its expiry never runs: whoever takes it next ends it as expired.
    if matches!(state, v1::TaskState::Queued | v1::TaskState::Scheduled)
        && micros_header(header::EXPIRES_AT).is_some_and(|t| t <= now)
    {
        state = v1::TaskState::Expired;
    }
    let mut info = v1::TaskInfo {
        task_id: id.to_string(),
        task: headers
            .get(header::TASK)
            .map(|v| v.as_str().to_owned())
            .unwrap_or_default(),
        state: state as i32,
        attempt: headers
            .get(header::ATTEMPT)
            .and_then(|v| v.as_str().parse().ok())
            .unwrap_or_default(),
        updated_at: time.map(prost_types::Timestamp::from),
        not_before: not_before.map(prost_types::Timestamp::from),
        trace_id: trace_id(headers).unwrap_or_default(),
        ..Default::default()
    };
    match state {
        v1::TaskState::Succeeded => info.result = payload.to_vec(),
        v1::TaskState::Failed
        | v1::TaskState::Retrying
        | v1::TaskState::Cancelled
        | v1::TaskState::Expired => {
            info.error = v1::TaskFailure::decode(payload).ok();
        }
        v1::TaskState::Running if headers.get(header::PROGRESS).is_some() => {
            info.progress = v1::TaskProgress::decode(payload).ok();
        }
        _ => {}
    }
    info
}

/// The trace id in a message's W3C `traceparent` header.
pub fn trace_id(headers: &HeaderMap) -> Option<String> {
    let parent = headers.get("traceparent")?;
    let id = parent.as_str().split('-').nth(1)?;
    (id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()) && id != "0".repeat(32))
        .then(|| id.to_owned())
}

/// A message read back from a stream by [`last_message`].
#[derive(Debug, Clone)]
pub struct StoredMessage {
    /// Its headers, the stream's own included.
    pub headers: HeaderMap,
    /// Its body.
    pub payload: Bytes,
    /// When the stream stored it.
    pub time: Option<SystemTime>,
    /// Its sequence in the stream.
    pub sequence: u64,
}

/// The last message of `stream` whose subject matches `filter`, which may hold wildcards; `None`
/// when there is none. A direct get, so any replica answers.
pub async fn last_message(
    client: &async_nats::Client,
    stream: &str,
    filter: &str,
) -> Result<Option<StoredMessage>, async_nats::RequestError> {
    direct_get(client, stream, format!(r#"{{"last_by_subj":"{filter}"}}"#)).await
}

/// The last message of `stream` on the literal `subject`, asked with the subject in the API
/// subject (`$JS.API.DIRECT.GET.<stream>.<subject>`): the form NATS permissions can limit to
/// some subjects (a worker may read the events of its own task types only).
pub async fn last_message_on(
    client: &async_nats::Client,
    stream: &str,
    subject: &str,
) -> Result<Option<StoredMessage>, async_nats::RequestError> {
    let response = client
        .request(
            format!("$JS.API.DIRECT.GET.{stream}.{subject}"),
            Bytes::new(),
        )
        .await?;
    stored_message(stream, response)
}

/// The last message of a stream on `filter`, read from the stream's leader.
async fn leader_last_message(
    stream: &stream::Stream,
    filter: &str,
) -> Result<Option<StoredMessage>, async_nats::RequestError> {
    use async_nats::jetstream::stream::LastRawMessageErrorKind;
    match stream.get_last_raw_message_by_subject(filter).await {
        Ok(message) => Ok(Some(StoredMessage {
            headers: message.headers,
            payload: message.payload,
            time: Some(message.time.into()),
            sequence: message.sequence,
        })),
        Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(None),
        // No leader answered (one is being elected): a time-out, which callers may try again.
        Err(e) => Err(async_nats::RequestError::with_source(
            match e.kind() {
                LastRawMessageErrorKind::Other => async_nats::RequestErrorKind::TimedOut,
                _ => async_nats::RequestErrorKind::Other,
            },
            format!(
                "reading {filter} from the leader of {}: {e}",
                stream.cached_info().config.name
            ),
        )),
    }
}

/// The first message of `stream` at or after sequence `from` whose subject matches `filter`.
pub async fn next_message(
    client: &async_nats::Client,
    stream: &str,
    filter: &str,
    from: u64,
) -> Result<Option<StoredMessage>, async_nats::RequestError> {
    direct_get(
        client,
        stream,
        format!(r#"{{"seq":{from},"next_by_subj":"{filter}"}}"#),
    )
    .await
}

async fn direct_get(
    client: &async_nats::Client,
    stream: &str,
    request: String,
) -> Result<Option<StoredMessage>, async_nats::RequestError> {
    let response = client
        .request(format!("$JS.API.DIRECT.GET.{stream}"), request.into())
        .await?;
    stored_message(stream, response)
}

/// A direct get's answer: the message, none (404), or an error for any other status.
fn stored_message(
    stream: &str,
    response: async_nats::Message,
) -> Result<Option<StoredMessage>, async_nats::RequestError> {
    match response.status {
        None | Some(async_nats::StatusCode::OK) => {}
        Some(async_nats::StatusCode::NOT_FOUND) => return Ok(None),
        // Anything else (no leader, a request the server refused) says nothing about the
        // message: the caller must not take it for "none".
        Some(status) => {
            return Err(async_nats::RequestError::with_source(
                async_nats::RequestErrorKind::Other,
                format!("direct get from {stream} answered {status}"),
            ));
        }
    }
    let headers = response.headers.unwrap_or_default();
    let time = headers
        .get("Nats-Time-Stamp")
        .and_then(|t| humantime::parse_rfc3339_weak(t.as_str()).ok());
    let sequence = headers
        .get("Nats-Sequence")
        .and_then(|s| s.as_str().parse().ok())
        .unwrap_or_default();
    Ok(Some(StoredMessage {
        headers,
        payload: response.payload,
        time,
        sequence,
    }))
}

/// The headers of a dead letter: the task's own, plus why it died. Stored once per task and
/// replay, however often the worker tries.
pub fn dead_headers(
    task: Option<&HeaderMap>,
    name: &Name,
    id: &Id,
    attempt: u32,
    reason: &str,
    error: &str,
) -> HeaderMap {
    let mut headers = HeaderMap::new();
    // The task's own headers, less those the server acts on: a task a message schedule fired
    // carries `Nats-Scheduler` and `Nats-Schedule-Next`, which a stream without schedules
    // refuses, and a TTL or an expected sequence would change how the dead letter is kept.
    for (name, values) in task.into_iter().flat_map(|h| h.iter()) {
        let text: &str = name.as_ref();
        if text.len() >= 5 && text[..5].eq_ignore_ascii_case("nats-") {
            continue;
        }
        for value in values {
            headers.append(name.clone(), value.clone());
        }
    }
    let replay = headers
        .get(header::REPLAY)
        .map(|v| v.as_str().to_owned())
        .unwrap_or_else(|| "0".to_owned());
    headers.insert(header::TASK_ID, id.as_str());
    headers.insert(header::TASK, name.as_str());
    headers.insert(header::ATTEMPT, attempt.to_string().as_str());
    headers.insert(header::DEAD_REASON, reason);
    let one_line: String = error
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(1000)
        .collect();
    headers.insert(header::ERROR, one_line.as_str());
    headers.insert(header::MSG_ID, format!("{id}.dead.{replay}").as_str());
    headers
}

/// The headers of a dead task put back in line: a new series of attempts under the same id.
pub fn replay_headers(dead: &HeaderMap, name: &Name, id: &Id) -> HeaderMap {
    let replay = dead
        .get(header::REPLAY)
        .and_then(|v| v.as_str().parse::<u32>().ok())
        .unwrap_or(0)
        + 1;
    let mut headers = HeaderMap::new();
    headers.insert(header::TASK_ID, id.as_str());
    headers.insert(header::TASK, name.as_str());
    headers.insert(header::ATTEMPT, "1");
    headers.insert(header::REPLAY, replay.to_string().as_str());
    headers.insert(header::MSG_ID, format!("{id}.replay.{replay}").as_str());
    headers.insert(header::SUBMITTED_AT, now_micros().to_string().as_str());
    if let Some(priority) = dead.get(header::PRIORITY) {
        headers.insert(header::PRIORITY, priority.as_str());
    }
    Overrides::read(Some(dead)).write(&mut headers);
    headers
}

/// The priority a task message names in its headers (normal when it names none).
pub fn priority_of(headers: &HeaderMap) -> v1::Priority {
    match headers.get(header::PRIORITY).map(|v| v.as_str()) {
        Some("high") => v1::Priority::High,
        Some("low") => v1::Priority::Low,
        _ => v1::Priority::Normal,
    }
}

/// Whether a publish failed because the subject already had a message (a result exists).
pub fn is_wrong_last_sequence(err: &jetstream::context::PublishError) -> bool {
    err.kind() == jetstream::context::PublishErrorKind::WrongLastSequence
}

/// The JetStream error code of a refused publish, when the server answered with one.
pub fn publish_error_code(err: &jetstream::context::PublishError) -> Option<u64> {
    let source = std::error::Error::source(err)?;
    source
        .downcast_ref::<jetstream::Error>()
        .map(|e| e.error_code().0)
}

/// JetStream error codes of refusals that can pass when tried again: the cluster or the
/// storage is busy, short of resources or electing a leader, or a limit is full for now.
const TRANSIENT_CODES: [u64; 12] = [
    10002, // account resources exceeded
    10004, // cluster incomplete
    10005, // no suitable peers
    10008, // JetStream temporarily unavailable
    10009, // cluster can not handle the request (no leader yet)
    10023, // insufficient resources
    10039, // JetStream not enabled for the account (yet)
    10041, // raft error
    10047, // storage resources exceeded
    10076, // JetStream not enabled (yet)
    10077, // the store failed (a limit that may clear)
    10158, // a publish with this message id is still being stored (its outcome comes next)
];

/// Why a failed publish will never pass however often it is tried (a message over the
/// server's max payload or the stream's message size, a feature the stream refuses, a header
/// the server rejects), or `None` when trying again may help (a time-out, a lost connection,
/// a cluster electing a leader). Decided on the error's kind and JetStream error code only.
pub fn permanent_refusal(err: &jetstream::context::PublishError) -> Option<String> {
    use jetstream::context::PublishErrorKind as Kind;
    match err.kind() {
        Kind::MaxPayloadExceeded | Kind::WrongLastMessageId => Some(err.to_string()),
        Kind::Other => match publish_error_code(err) {
            Some(code) if !TRANSIENT_CODES.contains(&code) => Some(err.to_string()),
            _ => None,
        },
        Kind::StreamNotFound
        | Kind::WrongLastSequence
        | Kind::TimedOut
        | Kind::BrokenPipe
        | Kind::MaxAckPending => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tick_fired_twice_is_one_task() {
        let name = crate::task::Name::parse("examples.chaos.v1.Chaos/Sleep").expect("valid");
        let next = Some("2026-11-29T22:22:06Z");
        let first = scheduled_task_id(&name, "nightly", next, 17);
        assert_eq!(first, scheduled_task_id(&name, "nightly", next, 42));
        assert_ne!(
            first,
            scheduled_task_id(&name, "nightly", Some("2026-11-29T22:22:07Z"), 18)
        );
        // The same id as every runtime makes (clients/python/tests/test_vectors.py).
        assert_eq!(first.to_string(), "800023c8c1e052b38052b5e8a7a968f2");
        assert_ne!(
            scheduled_task_id(&name, "nightly", None, 17),
            scheduled_task_id(&name, "nightly", None, 18)
        );
    }

    #[test]
    fn refusals_are_told_apart_by_their_jetstream_code() {
        let refused = |code: u64| {
            let answer = format!(r#"{{"code":400,"err_code":{code},"description":"refused"}}"#);
            let source: jetstream::Error = serde_json::from_str(&answer).expect("an API error");
            jetstream::context::PublishError::with_source(
                jetstream::context::PublishErrorKind::Other,
                source,
            )
        };
        // A cluster busy or electing, a message id still in process: tried again.
        for code in [10008, 10009, 10158] {
            assert_eq!(permanent_refusal(&refused(code)), None, "{code}");
        }
        // Too large, message schedules disabled: never passes.
        for code in [10054, 10188] {
            assert!(permanent_refusal(&refused(code)).is_some(), "{code}");
        }
    }

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

    #[test]
    fn a_result_is_stored_once_per_task_id_whatever_its_type() {
        let name = crate::task::Name::parse("examples.magic.v1.Magic/Add").expect("valid");
        let id = Id::parse("0123456789abcdef0123456789abcdef").expect("valid");
        assert_eq!(
            subject::result(&name, &id),
            "taskwire.results.0123456789abcdef0123456789abcdef.examples.magic.v1.Magic.Add"
        );
        let headers = result_headers(&name, &id, v1::TaskState::Succeeded, 1, "0", None);
        assert_eq!(
            headers
                .get(header::EXPECTED_LAST_SUBJECT_SEQUENCE_SUBJECT)
                .map(|v| v.as_str()),
            Some("taskwire.results.0123456789abcdef0123456789abcdef.>")
        );
        assert!(subject_covers(subject::RESULTS, subject::RESULTS_BY_TYPE));
    }
}
