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

mod connect;
pub mod env;
pub mod header;
mod layout;
mod message;
mod store;
pub mod subject;

pub use connect::{NatsAuth, Refusals, servers};
pub use layout::{
    Broker, CANCELLED_BUCKET, DEAD_STREAM, EVENTS_STREAM, Error, LIMITS_BUCKET, PRIORITIES,
    RATES_BUCKET, REGISTRY_BUCKET, RESULTS_STREAM, Reads, SCHEDULES_BUCKET, SCHEMAS_BUCKET,
    SLOT_LEASE, SLOTS_BUCKET, Settings, TASKS_STREAM, WORKER_TTL, WORKERS_BUCKET, consumer_name,
    priority_name,
};
pub use message::{
    Overrides, dead_headers, delayed_headers, event_headers, expires_at, failure_body,
    is_expiry_marker, now_micros, parse_state, priority_of, progress_body, replay_headers,
    result_headers, result_msg_id, schedule_headers, scheduled_at, scheduled_task_id, state_name,
    task_headers, task_info, trace_id,
};
pub use store::{
    StoredMessage, is_wrong_last_sequence, last_message, last_message_on, next_message,
    permanent_refusal, publish_error_code,
};
