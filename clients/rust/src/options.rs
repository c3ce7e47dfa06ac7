//! Submit options (keys, delays, priorities, expiry, attempts) and the requests they make.

use std::time::{Duration, SystemTime};

use taskwire::v1;

/// Options of one submission.
#[derive(Debug, Clone, Default)]
pub struct SubmitOptions {
    /// The same key for the same task type gives the same task, stored once, for as long as
    /// its state or result is kept.
    pub idempotency_key: Option<String>,
    /// Overrides the task's declared `max_attempts`.
    pub max_attempts: Option<u32>,
    /// Overrides the task's declared time limit of one attempt.
    pub timeout: Option<Duration>,
    /// Overrides the task's declared first retry delay.
    pub backoff_initial: Option<Duration>,
    /// Overrides the task's declared longest retry delay.
    pub backoff_max: Option<Duration>,
    /// Run no earlier than this time.
    pub not_before: Option<SystemTime>,
    /// Run no earlier than this long after submit.
    pub countdown: Option<Duration>,
    /// Which tasks start first when there is a backlog.
    pub priority: Option<v1::Priority>,
    /// Never start after this time.
    pub expires_at: Option<SystemTime>,
    /// Never start later than this long after submit (or after `not_before`).
    pub ttl: Option<Duration>,
    /// How long the result is kept.
    pub result_ttl: Option<Duration>,
}

/// A submission of typed arguments, for [`Client::submit_many`].
pub fn request(
    task: &str,
    args: &impl prost::Message,
    options: SubmitOptions,
) -> v1::SubmitRequest {
    v1::SubmitRequest {
        task: task.to_owned(),
        args: Some(v1::submit_request::Args::ArgsProto(args.encode_to_vec())),
        options: Some(options.into_proto()),
        ..Default::default()
    }
}

/// A submission of arguments as proto3 JSON, for [`Client::submit_many`].
pub fn request_json(task: &str, json: &str, options: SubmitOptions) -> v1::SubmitRequest {
    v1::SubmitRequest {
        task: task.to_owned(),
        args: Some(v1::submit_request::Args::ArgsJson(json.to_owned())),
        options: Some(options.into_proto()),
        ..Default::default()
    }
}

/// Most tasks a gateway takes in one SubmitMany call; [`Client::submit_many`] splits larger
/// batches.
pub const SUBMIT_MANY_CALL: usize = 10_000;

impl SubmitOptions {
    /// Sets the idempotency key.
    pub fn idempotency_key(mut self, key: impl Into<String>) -> Self {
        self.idempotency_key = Some(key.into());
        self
    }

    /// Sets the attempts.
    pub fn max_attempts(mut self, n: u32) -> Self {
        self.max_attempts = Some(n);
        self
    }

    /// Sets the time limit of one attempt.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Sets the retry delays: `initial`, doubling up to `max`.
    pub fn backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.backoff_initial = Some(initial);
        self.backoff_max = Some(max);
        self
    }

    /// Runs the task no earlier than `at`.
    pub fn not_before(mut self, at: SystemTime) -> Self {
        self.not_before = Some(at);
        self
    }

    /// Runs the task no earlier than `delay` from now (Celery's countdown).
    pub fn countdown(mut self, delay: Duration) -> Self {
        self.countdown = Some(delay);
        self
    }

    /// Sets the priority.
    pub fn priority(mut self, priority: v1::Priority) -> Self {
        self.priority = Some(priority);
        self
    }

    /// The task is never started after `at`; it ends as expired instead.
    pub fn expires_at(mut self, at: SystemTime) -> Self {
        self.expires_at = Some(at);
        self
    }

    /// The task is never started later than `ttl` after it is due; it ends as expired instead.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// Keeps the result this long.
    pub fn result_ttl(mut self, ttl: Duration) -> Self {
        self.result_ttl = Some(ttl);
        self
    }

    /// The options as the gateway API spells them.
    pub fn into_proto(self) -> v1::SubmitOptions {
        let duration =
            |d: Option<Duration>| d.and_then(|d| prost_types::Duration::try_from(d).ok());
        v1::SubmitOptions {
            idempotency_key: self.idempotency_key.unwrap_or_default(),
            max_attempts: self.max_attempts.unwrap_or_default(),
            timeout: duration(self.timeout),
            backoff_initial: duration(self.backoff_initial),
            backoff_max: duration(self.backoff_max),
            not_before: self.not_before.map(prost_types::Timestamp::from),
            countdown: duration(self.countdown),
            priority: self.priority.unwrap_or_default() as i32,
            expires_at: self.expires_at.map(prost_types::Timestamp::from),
            ttl: duration(self.ttl),
            result_ttl: duration(self.result_ttl),
        }
    }
}
