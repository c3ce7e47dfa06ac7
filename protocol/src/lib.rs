//! The JetStream layout that the gateway and the workers agree on: streams, consumers, the
//! registry, subjects, headers and the shape of task, event and result messages.
//!
//! | what | where |
//! | --- | --- |
//! | tasks | stream `TASKWIRE_TASKS`, `taskwire.tasks.<task>` (normal priority), `taskwire.tasks-high.<task>`, `taskwire.tasks-low.<task>`, work queue, one durable pull consumer per task and priority |
//! | delayed tasks | stream `TASKWIRE_TASKS`, `taskwire.delayed.<id>`: a message schedule (`@at`) that the server turns into the task at its time |
//! | schedules | stream `TASKWIRE_TASKS`, `taskwire.schedules.<name>`: a message schedule (cron or `@every`) that the server turns into a task on every tick; its definition in KV bucket `TASKWIRE_SCHEDULES` |
//! | cancellations | KV bucket `TASKWIRE_CANCELLED`, key `<id>`, kept for the result TTL; workers watch it |
//! | results | stream `TASKWIRE_RESULTS`, `taskwire.results.<id>.<token>`, one message per task id, kept for the result TTL; each stored result republished on `taskwire.stored.results.<partition>.<id>.<token>` for the gateway that waits |
//! | state changes | stream `TASKWIRE_EVENTS`, `taskwire.events.<id>.<task>` |
//! | dead letters | stream `TASKWIRE_DEAD`, `taskwire.dead.<id>.<task>`: the task as submitted, with the reason and last error |
//! | paused queues | KV bucket `TASKWIRE_PAUSED`, key `<task>`, value a `taskwire.v1.QueuePause` (the priorities paused); workers follow it |
//! | task types | KV bucket `TASKWIRE_REGISTRY`, key `<task>`, value a `taskwire.v1.TaskType` |
//! | schema versions seen | KV bucket `TASKWIRE_SCHEMAS`, key `<task>.<fingerprint>` (gateways only) |
//! | result partitions held | KV bucket `TASKWIRE_GATEWAYS`, key `partition-<n>`, kept while its gateway lives (gateways only) |
//! | workflows | stream `TASKWIRE_WORKFLOWS`, `taskwire.workflows.<id>.spec`, `.end`, `.join.<step>` (gateways only); step `n`'s task is `<id>-<n>`, its result on `taskwire.results.<id>-<n>.workflow-step.<token>` |
//! | child tasks | stream `TASKWIRE_WORKFLOWS`, `taskwire.workflows.<id>.parent`, `.children.<child>`, `.ended.<child>`, `.waiting` (gateways only); a child's id is `child-<hex>`, its result on `taskwire.results.<child>.child-task.<token>`; runtimes ask gateways on `taskwire.children.submit`, `.wait`, `.park` |
//!
//! Every name, header and setting is defined here once; nothing else builds a subject or a
//! header set.

pub mod children;
mod connect;
pub mod env;
pub mod follow;
pub mod header;
mod layout;
mod message;
mod open;
pub mod partition;
pub mod pause;
pub mod ports;
pub mod retry;
pub mod samples;
mod store;
pub mod subject;
pub mod trace;
pub mod workflow;

pub use connect::{NatsAuth, Refusals, servers};
pub use layout::{
    CANCELLED_BUCKET, DEAD_STREAM, EVENTS_STREAM, Error, GATEWAY_TTL, GATEWAYS_BUCKET,
    LIMITS_BUCKET, MAX_TASK_CONSUMERS, OUTCOMES_STREAM, PAUSED_BUCKET, PRIORITIES, RATES_BUCKET,
    REGISTRY_BUCKET, RESULTS_STREAM, SAMPLES_STREAM, SCHEDULES_BUCKET, SCHEMAS_BUCKET, SLOT_LEASE,
    SLOTS_BUCKET, Settings, TASKS_STREAM, WORKER_TTL, WORKERS_BUCKET, WORKFLOWS_STREAM,
    consumer_name, priority_name,
};
pub use message::{
    DeadLetter, DeadReason, Event, MessageError, Overrides, ResultMessage, TaskMessage,
    delayed_headers, expires_at, failure_body, is_expiry_marker, now_micros, parse_state,
    priority_of, progress_body, result_msg_id, schedule_headers, scheduled_at, scheduled_task_id,
    state_name, task_info, trace_id,
};
pub use open::{Broker, Reads};
pub use store::{
    ReadFrom, StoredMessage, is_wrong_last_sequence, last_message, last_message_on, next_message,
    next_messages, permanent_refusal, publish_error_code,
};

/// The protocol as `testing/vectors/protocol.json` writes it down, which every runtime checks
/// itself against.
#[cfg(test)]
mod vectors {
    use super::*;
    use taskwire::task::{Id, Name};
    use taskwire::v1::Priority;

    fn vectors() -> serde_json::Value {
        serde_json::from_str(include_str!("../../testing/vectors/protocol.json"))
            .expect("testing/vectors/protocol.json is JSON")
    }

    fn text(value: &serde_json::Value) -> &str {
        value.as_str().expect("a string")
    }

    #[test]
    fn workflow_steps_are_named_as_the_vectors_say() {
        let v = vectors();
        let w = &v["workflows"];
        assert_eq!(text(&w["stream"]), WORKFLOWS_STREAM);
        assert_eq!(text(&w["step_results"]), workflow::STEP_RESULTS);
        for case in w["steps"].as_array().expect("steps") {
            let id = Id::parse(text(&case["workflow"])).expect("an id");
            let step = case["step"].as_u64().expect("a step") as usize;
            let task_id = workflow::step_id(&id, step);
            assert_eq!(task_id.as_str(), text(&case["task_id"]));
            assert_eq!(
                workflow::step_of(task_id.as_str()),
                Some((id.clone(), step))
            );
            let name = Name::parse(text(&case["task"])).expect("a name");
            assert_eq!(
                subject::result(&name, &task_id),
                text(&case["result_subject"])
            );
            assert_eq!(workflow::spec(&id), text(&case["spec"]));
            assert_eq!(workflow::end(&id), text(&case["end"]));
            assert_eq!(workflow::join(&id, &step.to_string()), text(&case["join"]));
        }
        for plain in w["not_steps"].as_array().expect("ids") {
            assert_eq!(workflow::step_of(text(plain)), None, "{plain}");
        }
    }

    #[test]
    fn children_are_named_as_the_vectors_say() {
        let v = vectors();
        let c = &v["children"];
        assert_eq!(text(&c["submit"]), children::SUBMIT);
        assert_eq!(text(&c["wait"]), children::WAIT);
        assert_eq!(text(&c["park"]), children::PARK);
        assert_eq!(text(&c["child_results"]), children::CHILD_RESULTS);
        assert_eq!(text(&c["resume_header"]), header::RESUME);
        for case in c["children"].as_array().expect("children") {
            let parent = Id::parse(text(&case["parent"])).expect("an id");
            let name = Name::parse(text(&case["task"])).expect("a name");
            let child = children::child_id(&parent, &name, text(&case["key"]));
            assert_eq!(child.as_str(), text(&case["child_id"]));
            assert!(children::is_child(child.as_str()));
            assert_eq!(
                subject::result(&name, &child),
                text(&case["result_subject"])
            );
            assert_eq!(children::parent(&child), text(&case["parent_record"]));
            assert_eq!(
                children::child(&parent, &child),
                text(&case["child_record"])
            );
            assert_eq!(children::ended(&parent, &child), text(&case["ended"]));
            assert_eq!(children::waiting(&parent), text(&case["waiting"]));
        }
        for other in c["not_children"].as_array().expect("ids") {
            assert!(!children::is_child(text(other)), "{other}");
        }
    }

    #[test]
    fn streams_and_headers_are_named_as_the_vectors_say() {
        let v = vectors();
        let streams = &v["streams"];
        assert_eq!(text(&streams["tasks"]), TASKS_STREAM);
        assert_eq!(text(&streams["results"]), RESULTS_STREAM);
        assert_eq!(text(&streams["events"]), EVENTS_STREAM);
        assert_eq!(text(&streams["dead"]), DEAD_STREAM);
        assert_eq!(text(&streams["outcomes"]), OUTCOMES_STREAM);
        let headers = &v["headers"];
        for (key, ours) in [
            ("task_id", header::TASK_ID),
            ("task", header::TASK),
            ("attempt", header::ATTEMPT),
            ("state", header::STATE),
            ("replay", header::REPLAY),
            ("schedule_name", header::SCHEDULE_NAME),
            ("schedule_next", header::SCHEDULE_NEXT),
            ("expires_at", header::EXPIRES_AT),
            ("progress", header::PROGRESS),
            ("dead_reason", header::DEAD_REASON),
            ("error", header::ERROR),
            ("max_attempts", header::MAX_ATTEMPTS),
            ("timeout_ms", header::TIMEOUT_MS),
            ("backoff_initial_ms", header::BACKOFF_INITIAL_MS),
            ("backoff_max_ms", header::BACKOFF_MAX_MS),
            ("result_ttl_ms", header::RESULT_TTL_MS),
            ("msg_id", header::MSG_ID),
            (
                "expected_last_subject_sequence",
                header::EXPECTED_LAST_SUBJECT_SEQUENCE,
            ),
            (
                "expected_last_subject_sequence_subject",
                header::EXPECTED_LAST_SUBJECT_SEQUENCE_SUBJECT,
            ),
            ("ttl", header::TTL),
        ] {
            assert_eq!(text(&headers[key]), ours, "{key}");
        }
        assert_eq!(
            headers.as_object().map(|h| h.len()),
            Some(20),
            "a header in the vectors that this test does not check"
        );
    }

    #[test]
    fn subjects_consumers_and_message_ids_are_as_the_vectors_say() {
        let v = vectors();
        for case in v["tasks"].as_array().expect("tasks") {
            let name = Name::parse(text(&case["task"])).expect("a task name");
            let id = Id::parse(text(&case["id"])).expect("an id");
            assert_eq!(text(&case["token"]), name.token());
            for (level, priority) in [
                ("high", Priority::High),
                ("normal", Priority::Normal),
                ("low", Priority::Low),
            ] {
                assert_eq!(
                    text(&case["queues"][level]),
                    subject::task_at(&name, priority)
                );
                assert_eq!(
                    text(&case["consumers"][level]),
                    consumer_name(&name, priority)
                );
            }
            assert_eq!(text(&case["result"]), subject::result(&name, &id));
            assert_eq!(text(&case["results_of_id"]), subject::result_of(&id));
            assert_eq!(text(&case["event"]), subject::event(&name, &id));
            assert_eq!(text(&case["dead"]), subject::dead(&name, &id));
            for (series, msg_id) in case["result_msg_id"].as_object().expect("message ids") {
                assert_eq!(text(msg_id), result_msg_id(&id, series));
            }
        }
        for case in v["scheduled_ids"].as_array().expect("scheduled ids") {
            let name = Name::parse(text(&case["task"])).expect("a task name");
            let id = scheduled_task_id(
                &name,
                text(&case["schedule"]),
                case["next"].as_str(),
                case["sequence"].as_u64().expect("a sequence"),
            );
            assert_eq!(text(&case["id"]), id.to_string());
        }
    }

    #[test]
    fn stored_results_fall_in_the_partitions_nats_server_computed() {
        let v = vectors();
        let partitions = &v["result_partitions"];
        assert_eq!(
            text(&partitions["mapping"]),
            subject::STORED_RESULTS_MAPPING
        );
        assert_eq!(
            partitions["count"].as_u64(),
            Some(u64::from(partition::RESULT_PARTITIONS))
        );
        for case in partitions["ids"].as_array().expect("ids") {
            let id = Id::parse(text(&case["id"])).expect("an id");
            assert_eq!(
                Some(u64::from(partition::partition_of(&id))),
                case["partition"].as_u64(),
                "{id}"
            );
        }
    }

    #[test]
    fn dead_letter_reasons_are_those_of_the_vectors() {
        let v = vectors();
        let reasons: Vec<&str> = v["dead_reasons"]
            .as_array()
            .expect("reasons")
            .iter()
            .map(text)
            .collect();
        let ours: Vec<&str> = DeadReason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(reasons, ours);
        for reason in DeadReason::ALL {
            assert_eq!(DeadReason::parse(reason.as_str()), Some(reason));
        }
    }

    #[test]
    fn the_codes_tried_again_are_those_of_the_vectors() {
        let v = vectors();
        let codes: Vec<u64> = v["transient_codes"]
            .as_array()
            .expect("codes")
            .iter()
            .filter_map(serde_json::Value::as_u64)
            .collect();
        assert_eq!(codes, store::TRANSIENT_CODES);
    }
}
