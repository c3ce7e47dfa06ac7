//! What a submission asks, checked: where and when the task waits (priority, delay, expiry),
//! the submitter's changes to its options, and its idempotency key.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use taskwire::v1;
use taskwire_protocol as broker;

use crate::Error;

/// Where and when a task waits for a worker.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Placement {
    pub(crate) priority: v1::Priority,
    /// Held by the broker until then.
    pub(crate) not_before: Option<SystemTime>,
    /// Not started after then, in microseconds since the Unix epoch.
    pub(crate) expires_at: Option<u64>,
}

/// Furthest ahead a task may be delayed.
pub(crate) const MAX_DELAY: Duration = Duration::from_secs(30 * 24 * 3600);

/// How far in the past a not_before time may be (clock skew between machines); it then runs at
/// once.
pub(crate) const PAST_TOLERANCE: Duration = Duration::from_secs(60);

pub(crate) fn micros(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or_default()
}

/// Checks when, at which priority and until when the task may run.
pub(crate) fn placement(options: &v1::SubmitOptions, now: SystemTime) -> Result<Placement, Error> {
    let bad = |text: String| Error::BadRequest(text);
    let priority = v1::Priority::try_from(options.priority).map_err(|_| {
        bad(format!(
            "priority {} is not a priority; use 1 (high), 2 (normal) or 3 (low), or leave it unset for normal",
            options.priority
        ))
    })?;
    let time = |what: &str, ts: &prost_types::Timestamp| -> Result<SystemTime, Error> {
        SystemTime::try_from(*ts).map_err(|_| bad(format!("{what} is not a valid time: {ts:?}")))
    };
    let duration = |what: &str, d: &prost_types::Duration| -> Result<Duration, Error> {
        let d = Duration::try_from(*d).map_err(|_| {
            bad(format!(
                "{what} is negative; give a positive duration of at most 30 days"
            ))
        })?;
        if d > MAX_DELAY {
            return Err(bad(format!(
                "{what} is {}; the most is 30 days",
                humantime::format_duration(d)
            )));
        }
        Ok(d)
    };
    let not_before = match (&options.not_before, &options.countdown) {
        (Some(_), Some(_)) => {
            return Err(bad("give not_before or countdown, not both".into()));
        }
        (Some(ts), None) => {
            let at = time("not_before", ts)?;
            if at + PAST_TOLERANCE < now {
                return Err(bad(format!(
                    "not_before is {} in the past; give a time from now on (a minute of clock skew is tolerated)",
                    humantime::format_duration(Duration::from_secs(
                        now.duration_since(at).unwrap_or_default().as_secs()
                    ))
                )));
            }
            if at > now + MAX_DELAY {
                return Err(bad("not_before is more than 30 days ahead".into()));
            }
            (at > now).then_some(at)
        }
        (None, Some(d)) => {
            let d = duration("countdown", d)?;
            (!d.is_zero()).then(|| now + d)
        }
        (None, None) => None,
    };
    let start = not_before.unwrap_or(now);
    let expires_at = match (&options.expires_at, &options.ttl) {
        (Some(_), Some(_)) => return Err(bad("give expires_at or ttl, not both".into())),
        (Some(ts), None) => {
            let at = time("expires_at", ts)?;
            if at <= now {
                return Err(bad(
                    "expires_at is in the past; the task could never run".into()
                ));
            }
            if at <= start {
                return Err(bad(
                    "expires_at is before the task's not_before time; the task could never run"
                        .into(),
                ));
            }
            Some(at)
        }
        (None, Some(d)) => {
            let d = duration("ttl", d)?;
            if d.is_zero() {
                return Err(bad("ttl is zero; give a positive duration".into()));
            }
            Some(start + d)
        }
        (None, None) => None,
    };
    Ok(Placement {
        priority: if priority == v1::Priority::Unspecified {
            v1::Priority::Normal
        } else {
            priority
        },
        not_before,
        expires_at: expires_at.map(micros),
    })
}

/// Most tasks one SubmitMany call takes (its answer then stays under 1 MiB).
pub const MAX_SUBMIT_MANY: usize = 10_000;

/// Longest idempotency key accepted, in bytes.
pub(crate) const MAX_KEY_LEN: usize = 256;

/// Most attempts a submitter may ask for.
pub(crate) const MAX_ATTEMPTS: u32 = 100;

/// Longest time limit or retry delay a submitter may ask for.
pub(crate) const MAX_OVERRIDE: Duration = Duration::from_secs(24 * 3600);

/// The submitter's changes to the task's options, checked. Results are kept at most
/// `max_result_ttl`.
pub(crate) fn overrides(
    options: &v1::SubmitOptions,
    max_result_ttl: Duration,
) -> Result<broker::Overrides, Error> {
    if options.max_attempts > MAX_ATTEMPTS {
        return Err(Error::BadRequest(format!(
            "max_attempts is {}; it must be 1 to {MAX_ATTEMPTS} (0 keeps the task's own)",
            options.max_attempts
        )));
    }
    let duration =
        |what: &str, value: &Option<prost_types::Duration>| -> Result<Option<Duration>, Error> {
            let Some(value) = value else { return Ok(None) };
            let bad = |why: &str| {
                Error::BadRequest(format!(
                    "{what} {why}; give a positive duration of at most 24h"
                ))
            };
            let d = Duration::try_from(*value).map_err(|_| bad("is negative"))?;
            if d.is_zero() {
                return Err(bad("is zero"));
            }
            if d > MAX_OVERRIDE {
                return Err(bad("is longer than 24h"));
            }
            Ok(Some(d))
        };
    let result_ttl = match &options.result_ttl {
        None => None,
        Some(value) => {
            let bad = |why: String| {
                Error::BadRequest(format!(
                    "result_ttl {why}; give a positive duration of at most {} (TASKWIRE_RESULT_TTL)",
                    humantime::format_duration(max_result_ttl)
                ))
            };
            let d = Duration::try_from(*value).map_err(|_| bad("is negative".into()))?;
            if d < Duration::from_secs(1) {
                return Err(bad("is less than a second".into()));
            }
            if d > max_result_ttl {
                return Err(bad(format!(
                    "is {}, longer than the broker keeps results",
                    humantime::format_duration(d)
                )));
            }
            Some(d)
        }
    };
    Ok(broker::Overrides {
        max_attempts: (options.max_attempts > 0).then_some(options.max_attempts),
        timeout: duration("timeout", &options.timeout)?,
        backoff_initial: duration("backoff_initial", &options.backoff_initial)?,
        backoff_max: duration("backoff_max", &options.backoff_max)?,
        result_ttl,
    })
}

/// Checks an idempotency key: it becomes part of the task's id, and is echoed in errors.
pub(crate) fn check_key(key: &str) -> Result<(), Error> {
    if key.len() > MAX_KEY_LEN {
        return Err(Error::BadRequest(format!(
            "the idempotency key is {} bytes; the limit is {MAX_KEY_LEN}",
            key.len()
        )));
    }
    if let Some(c) = key.chars().find(|c| c.is_control()) {
        return Err(Error::BadRequest(format!(
            "the idempotency key holds the control character {c:?}; use printable characters only"
        )));
    }
    Ok(())
}

/// The idempotency key a task option takes from a field of the arguments.
pub(crate) fn key_from_field(
    field: &str,
    message: &prost_reflect::DynamicMessage,
) -> Option<String> {
    if field.is_empty() {
        return None;
    }
    let value = message.get_field_by_name(field)?;
    let key = match value.as_ref() {
        prost_reflect::Value::String(s) => s.clone(),
        prost_reflect::Value::I32(n) => n.to_string(),
        prost_reflect::Value::I64(n) => n.to_string(),
        prost_reflect::Value::U32(n) => n.to_string(),
        prost_reflect::Value::U64(n) => n.to_string(),
        other => format!("{other:?}"),
    };
    (!key.is_empty()).then_some(key)
}
