//! Streams, consumers and buckets: their names and settings ([`Settings`]), from which
//! [`crate::Broker::open`] creates them or brings them up to date.

use std::time::Duration;

use async_nats::jetstream::{kv, stream};

use super::*;
use taskwire::config::Problems;
use taskwire::task::Name;
use taskwire::v1;

/// Stream of queued tasks.
pub const TASKS_STREAM: &str = "TASKWIRE_TASKS";

/// Stream of task results.
pub const RESULTS_STREAM: &str = "TASKWIRE_RESULTS";

/// Consumers the tasks stream may have: three per task type (one per priority level), so
/// 10,000 task types. nats-server 2.15 limits a stream that sets no limit of its own to 1,000
/// consumers, which would stop at 333 task types.
pub const MAX_TASK_CONSUMERS: i32 = 30_000;

/// Stream of task state changes.
pub const EVENTS_STREAM: &str = "TASKWIRE_EVENTS";

/// Stream of dead letters: tasks that failed for good, kept for inspection and replay.
pub const DEAD_STREAM: &str = "TASKWIRE_DEAD";

/// Stream of the outcomes other than success, one record per task with its state in the
/// subject: what finds the few failed or cancelled tasks among many kept results.
pub const OUTCOMES_STREAM: &str = "TASKWIRE_OUTCOMES";

/// Stream of workflows: each one's definition, end and joins (see [`crate::workflow`]).
pub const WORKFLOWS_STREAM: &str = "TASKWIRE_WORKFLOWS";

/// Stream of counts over time (see [`crate::samples`]).
pub const SAMPLES_STREAM: &str = "TASKWIRE_SAMPLES";

/// KV bucket of task types, written by workers at start.
pub const REGISTRY_BUCKET: &str = "TASKWIRE_REGISTRY";

/// KV bucket of every schema version workers have registered: key `<task token>.<fingerprint>`,
/// value the `taskwire.v1.TaskType` registered with it. Written and read by gateways only, to
/// accept producers of an earlier version that is compatible with the current one.
pub const SCHEMAS_BUCKET: &str = "TASKWIRE_SCHEMAS";

/// KV bucket of the result partitions gateways hold: key `partition-<n>`, value the holder's
/// name, refreshed while it lives (see [`crate::partition`]). Gateways only.
pub const GATEWAYS_BUCKET: &str = "TASKWIRE_GATEWAYS";

/// How long a gateway holds its result partition without refreshing it.
pub const GATEWAY_TTL: Duration = Duration::from_secs(15);

/// KV bucket of cancelled task ids, watched by every worker.
pub const CANCELLED_BUCKET: &str = "TASKWIRE_CANCELLED";

/// KV bucket of schedule definitions, by name.
pub const SCHEDULES_BUCKET: &str = "TASKWIRE_SCHEDULES";

/// KV bucket of task limits set through the Admin API, by task token.
pub const LIMITS_BUCKET: &str = "TASKWIRE_LIMITS";

/// KV bucket of paused queues: key the task token, value a `taskwire.v1.QueuePause` naming the
/// priorities paused; every worker follows it.
pub const PAUSED_BUCKET: &str = "TASKWIRE_PAUSED";

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

    pub(crate) fn tasks_stream(&self) -> stream::Config {
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
            // Lists of the tasks not finished read it a page at a time.
            allow_direct: true,
            max_consumers: MAX_TASK_CONSUMERS,
            ..Default::default()
        }
    }

    pub(crate) fn results_stream(&self) -> stream::Config {
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

    pub(crate) fn events_stream(&self) -> stream::Config {
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

    pub(crate) fn outcomes_stream(&self) -> stream::Config {
        stream::Config {
            name: OUTCOMES_STREAM.into(),
            description: Some(
                "taskwire: outcomes other than success, by state, as long as results".into(),
            ),
            subjects: vec![subject::OUTCOMES.into()],
            retention: stream::RetentionPolicy::Limits,
            storage: stream::StorageType::File,
            num_replicas: self.replicas,
            max_messages_per_subject: 1,
            max_age: self.result_ttl,
            duplicate_window: self.duplicate_window,
            allow_direct: true,
            // Kept as long as the result they stand for (a task's own result TTL).
            allow_message_ttl: true,
            ..Default::default()
        }
    }

    pub(crate) fn dead_stream(&self) -> stream::Config {
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

    pub(crate) fn cancelled_bucket(&self) -> kv::Config {
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

    pub(crate) fn schedules_bucket(&self) -> kv::Config {
        kv::Config {
            bucket: SCHEDULES_BUCKET.into(),
            description: "taskwire: schedule definitions".into(),
            history: 1,
            storage: stream::StorageType::File,
            num_replicas: self.replicas,
            ..Default::default()
        }
    }

    pub(crate) fn limits_buckets(&self) -> [kv::Config; 5] {
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
            bucket(
                PAUSED_BUCKET,
                "taskwire: queues paused through the Admin API",
                Duration::ZERO,
            ),
        ]
    }

    pub(crate) fn schemas_bucket(&self) -> kv::Config {
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

    pub(crate) fn workflows_stream(&self) -> stream::Config {
        stream::Config {
            name: WORKFLOWS_STREAM.into(),
            description: Some("taskwire: workflows, their ends and joins".into()),
            subjects: vec![crate::workflow::WORKFLOWS.into()],
            retention: stream::RetentionPolicy::Limits,
            storage: stream::StorageType::File,
            num_replicas: self.replicas,
            // A definition and an end are stored once; a join is replaced as it grows.
            max_messages_per_subject: 1,
            max_age: self.result_ttl,
            duplicate_window: self.duplicate_window,
            max_message_size: self.max_message_bytes,
            allow_direct: true,
            ..Default::default()
        }
    }

    pub(crate) fn samples_stream(&self) -> stream::Config {
        stream::Config {
            name: SAMPLES_STREAM.into(),
            description: Some("taskwire: counts over time for the dashboard's charts".into()),
            subjects: vec![crate::samples::ALL.into()],
            retention: stream::RetentionPolicy::Limits,
            storage: stream::StorageType::File,
            num_replicas: self.replicas,
            max_age: crate::samples::KEPT,
            // One queue-depth sample a slot, whichever gateway stores it first.
            duplicate_window: crate::samples::SPAN * 6,
            allow_direct: true,
            ..Default::default()
        }
    }

    pub(crate) fn gateways_bucket(&self) -> kv::Config {
        kv::Config {
            bucket: GATEWAYS_BUCKET.into(),
            description: "taskwire: result partitions held by live gateways".into(),
            history: 1,
            max_age: GATEWAY_TTL,
            storage: stream::StorageType::File,
            num_replicas: self.replicas,
            ..Default::default()
        }
    }

    pub(crate) fn registry_bucket(&self) -> kv::Config {
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
