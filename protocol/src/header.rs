//! Header names of the layout.

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
/// How many times a task that waited for its children was put back in line (a task message
/// the gateway resumed; absent on a task's first message).
pub const RESUME: &str = "Taskwire-Resume";
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
/// The IANA time zone a cron schedule is read in (nats-server 2.14); absent: UTC.
pub const SCHEDULE_TIME_ZONE: &str = "Nats-Schedule-Time-Zone";
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
