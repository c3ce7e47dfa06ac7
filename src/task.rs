//! Task names, ids, options and the descriptors that describe a task type.
//!
//! A task is named after its rpc: `examples.magic.v1.Magic/Add`. On NATS the name becomes one
//! subject suffix, `examples.magic.v1.Magic.Add`, and one consumer name,
//! `examples-magic-v1-Magic-Add` (proto identifiers have no `-`, so the mapping is one to one).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use prost_reflect::{DescriptorPool, MessageDescriptor, Value};

use crate::v1;

/// Why a task name, id or option was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("invalid task name `{name}`: {reason}")]
    Name { name: String, reason: &'static str },
    #[error("invalid task id `{id}`: {reason}")]
    Id { id: String, reason: &'static str },
    #[error("invalid option `{option}` of task {task}: {reason}")]
    Option {
        task: String,
        option: &'static str,
        reason: String,
    },
    #[error("invalid descriptor set: {0}")]
    Descriptors(String),
}

/// A task's full name: `package.Service/Method`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Name(Arc<str>);

impl Name {
    /// Checks that `name` is `package.Service/Method` with parts that are valid subject tokens.
    pub fn parse(name: &str) -> Result<Self, Error> {
        let invalid = |reason| Error::Name {
            name: name.to_owned(),
            reason,
        };
        if let Some(reason) = taskwire_schema::task_name_problem(name) {
            return Err(invalid(reason));
        }
        Ok(Self(name.into()))
    }

    /// The name as written: `examples.magic.v1.Magic/Add`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The service part: `examples.magic.v1.Magic`.
    pub fn service(&self) -> &str {
        self.0.split_once('/').map_or(&self.0, |(s, _)| s)
    }

    /// The method part: `Add`.
    pub fn method(&self) -> &str {
        self.0.split_once('/').map_or("", |(_, m)| m)
    }

    /// The subject suffix: `examples.magic.v1.Magic.Add`.
    pub fn token(&self) -> String {
        self.0.replace('/', ".")
    }

    /// The durable consumer name: `examples-magic-v1-Magic-Add`.
    pub fn consumer(&self) -> String {
        self.0.replace(['.', '/'], "-")
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A task id: 1 to 64 letters, digits, `-` or `_`, so that it is one subject token.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Id(Arc<str>);

impl Id {
    /// A new, time-ordered id.
    pub fn generate() -> Self {
        Self(uuid::Uuid::now_v7().simple().to_string().into())
    }

    /// The id of the task submitted as `task` with this idempotency key: the same key always
    /// gives the same id.
    pub fn from_idempotency_key(task: &Name, key: &str) -> Self {
        let name = format!("{}\0{}", task.as_str(), key);
        Self(
            uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, name.as_bytes())
                .simple()
                .to_string()
                .into(),
        )
    }

    /// Checks an id that came from outside.
    pub fn parse(id: &str) -> Result<Self, Error> {
        let invalid = |reason| Error::Id {
            id: id.chars().take(80).collect(),
            reason,
        };
        if id.is_empty() {
            return Err(invalid("it is empty"));
        }
        if id.len() > 64 {
            return Err(invalid("longer than 64 characters"));
        }
        if !id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(invalid("only letters, digits, `-` and `_` are allowed"));
        }
        Ok(Self(id.into()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The default number of attempts of a task that declares none.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;
const DEFAULT_BACKOFF_INITIAL: Duration = Duration::from_secs(1);
const DEFAULT_BACKOFF_MAX: Duration = Duration::from_secs(300);

/// A task's options, checked and with defaults filled in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// Attempts in all, at least 1.
    pub max_attempts: u32,
    /// Time limit of one attempt.
    pub timeout: Option<Duration>,
    /// First retry delay.
    pub backoff_initial: Duration,
    /// Longest retry delay.
    pub backoff_max: Duration,
    /// Tasks of this type one worker runs at once, if the task says.
    pub concurrency: Option<u32>,
    /// How long a result is kept, if the task says; else the broker's result TTL.
    pub result_ttl: Option<Duration>,
    /// Most of these tasks running at once across all workers.
    pub max_concurrency: Option<u32>,
    /// Most of these tasks started per period across all workers.
    pub rate_limit: Option<Rate>,
    /// The field of the arguments `max_concurrency` counts by, if per value of it.
    pub concurrency_key_field: Option<String>,
    /// The field of the arguments `rate_limit` counts by, if per value of it.
    pub rate_limit_key_field: Option<String>,
}

/// A rate limit: at most `count` starts in any stretch of time `per` long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Starts allowed per period.
    pub count: u32,
    /// The period.
    pub per: Duration,
}

impl Rate {
    /// Reads `10/s`, `600/m` or `5/h`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let bad = || format!("`{text}` is not a rate such as \"10/s\", \"600/m\" or \"5/h\"");
        let (count, unit) = text.trim().split_once('/').ok_or_else(bad)?;
        let count: u32 = count.trim().parse().map_err(|_| bad())?;
        if count == 0 {
            return Err(format!(
                "`{text}` allows nothing; give at least 1 per period"
            ));
        }
        let per = match unit.trim() {
            "s" | "sec" | "second" => Duration::from_secs(1),
            "m" | "min" | "minute" => Duration::from_secs(60),
            "h" | "hour" => Duration::from_secs(3600),
            _ => return Err(bad()),
        };
        Ok(Self { count, per })
    }

    /// How much longer than its period a start stays counted: room for the moment between a
    /// worker counting a start and running the task (a twentieth of the period, at most 250 ms).
    pub fn margin(&self) -> Duration {
        (self.per / 20).min(Duration::from_millis(250))
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let unit = match self.per.as_secs() {
            1 => "s",
            60 => "m",
            _ => "h",
        };
        write!(f, "{}/{unit}", self.count)
    }
}

/// A limit's key field as declared: none when empty; refused without the limit it keys.
fn key_field(
    task: &Name,
    option: &'static str,
    field: &str,
    limited: bool,
    limit: &str,
) -> Result<Option<String>, Error> {
    if field.is_empty() {
        return Ok(None);
    }
    if !limited {
        return Err(Error::Option {
            task: task.to_string(),
            option,
            reason: unkeyed(limit),
        });
    }
    Ok(Some(field.to_owned()))
}

fn unkeyed(limit: &str) -> String {
    format!("it keys {limit}, which is not set; set {limit} too")
}

/// A limit's key field as an override sets it: none, or a field of `input` that can key a
/// limit ([`check_limit_key_field`]), with its limit set (`limited`).
pub fn check_limit_key(
    input: &MessageDescriptor,
    field: &str,
    limited: bool,
    limit: &str,
) -> Result<(), String> {
    if field.is_empty() {
        return Ok(());
    }
    if !limited {
        return Err(unkeyed(limit));
    }
    check_limit_key_field(input, field)
}

/// Whether `field` of `input` can key a limit: a field that is there, and one string, integer,
/// enum or bool (not repeated, not a map, not a message).
pub fn check_limit_key_field(input: &MessageDescriptor, field: &str) -> Result<(), String> {
    use prost_reflect::Kind;
    let Some(found) = input.get_field_by_name(field) else {
        return Err(format!("{} has no field `{field}`", input.full_name()));
    };
    if found.is_list() || found.is_map() || matches!(found.kind(), Kind::Message(_)) {
        return Err(format!(
            "`{field}` of {} is not a single string, integer, enum or bool",
            input.full_name()
        ));
    }
    if matches!(found.kind(), Kind::Bytes | Kind::Float | Kind::Double) {
        return Err(format!(
            "`{field}` of {} is {:?}; a limit counts by a string, integer, enum or bool",
            input.full_name(),
            found.kind()
        ));
    }
    Ok(())
}

/// The value of a limit's key field in encoded arguments, as text (the default value when
/// unset or when the arguments do not decode).
pub fn limit_key(input: &MessageDescriptor, args: &[u8], field: &str) -> String {
    let Ok(message) = prost_reflect::DynamicMessage::decode(input.clone(), args) else {
        return String::new();
    };
    match message.get_field_by_name(field).as_deref() {
        Some(Value::String(s)) => s.clone(),
        Some(Value::I32(n)) => n.to_string(),
        Some(Value::I64(n)) => n.to_string(),
        Some(Value::U32(n)) => n.to_string(),
        Some(Value::U64(n)) => n.to_string(),
        Some(Value::EnumNumber(n)) => n.to_string(),
        Some(Value::Bool(b)) => b.to_string(),
        _ => String::new(),
    }
}

impl Default for Options {
    fn default() -> Self {
        Self {
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            timeout: None,
            backoff_initial: DEFAULT_BACKOFF_INITIAL,
            backoff_max: DEFAULT_BACKOFF_MAX,
            concurrency: None,
            result_ttl: None,
            max_concurrency: None,
            rate_limit: None,
            concurrency_key_field: None,
            rate_limit_key_field: None,
        }
    }
}

impl Options {
    /// Checks the options as declared in a proto.
    pub fn from_proto(task: &Name, options: &v1::TaskOptions) -> Result<Self, Error> {
        let duration = |option: &'static str, text: &str| -> Result<Option<Duration>, Error> {
            if text.is_empty() {
                return Ok(None);
            }
            humantime::parse_duration(text)
                .map(Some)
                .map_err(|e| Error::Option {
                    task: task.to_string(),
                    option,
                    reason: format!("`{text}` is not a duration like \"10s\" or \"5m\": {e}"),
                })
        };
        let defaults = Self::default();
        Ok(Self {
            max_attempts: match options.max_attempts {
                0 => defaults.max_attempts,
                n => n,
            },
            timeout: duration("timeout", &options.timeout)?,
            backoff_initial: duration("backoff_initial", &options.backoff_initial)?
                .unwrap_or(defaults.backoff_initial),
            backoff_max: duration("backoff_max", &options.backoff_max)?
                .unwrap_or(defaults.backoff_max),
            concurrency: (options.concurrency > 0).then_some(options.concurrency),
            result_ttl: duration("result_ttl", &options.result_ttl)?,
            max_concurrency: (options.max_concurrency > 0).then_some(options.max_concurrency),
            rate_limit: if options.rate_limit.is_empty() {
                None
            } else {
                Some(
                    Rate::parse(&options.rate_limit).map_err(|reason| Error::Option {
                        task: task.to_string(),
                        option: "rate_limit",
                        reason,
                    })?,
                )
            },
            concurrency_key_field: key_field(
                task,
                "concurrency_key_field",
                &options.concurrency_key_field,
                options.max_concurrency > 0,
                "max_concurrency",
            )?,
            rate_limit_key_field: key_field(
                task,
                "rate_limit_key_field",
                &options.rate_limit_key_field,
                !options.rate_limit.is_empty(),
                "rate_limit",
            )?,
        })
    }

    /// The delay before attempt `attempt + 1` after attempt `attempt` failed: doubling from
    /// `backoff_initial`, at most `backoff_max`.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let factor = 2u32.saturating_pow(attempt.saturating_sub(1).min(20));
        self.backoff_initial
            .saturating_mul(factor)
            .min(self.backoff_max)
    }
}

/// A task type as found in a descriptor set: name, messages and declared options.
#[derive(Debug, Clone)]
pub struct TaskType {
    /// The task's name.
    pub name: Name,
    /// Its input message.
    pub input: MessageDescriptor,
    /// Its output message.
    pub output: MessageDescriptor,
    /// Its options as declared.
    pub declared: v1::TaskOptions,
    /// Its options, checked.
    pub options: Options,
    /// The fingerprint of its input and output schemas ([`crate::schema`]).
    pub descriptor_hash: String,
}

impl TaskType {
    /// Every task of every service in an encoded `FileDescriptorSet`, the gateway API's own
    /// services excepted.
    pub fn all_in(file_descriptor_set: &[u8]) -> Result<Vec<TaskType>, Error> {
        let pool = DescriptorPool::decode(file_descriptor_set)
            .map_err(|e| Error::Descriptors(e.to_string()))?;
        let extension = pool.get_extension_by_name("taskwire.v1.task");
        let mut tasks = Vec::new();
        for service in pool.services() {
            if service.package_name() == "taskwire.v1" {
                continue;
            }
            for method in service.methods() {
                let name = Name::parse(&format!("{}/{}", service.full_name(), method.name()))?;
                let declared = match &extension {
                    Some(ext) if method.options().has_extension(ext) => {
                        match method.options().get_extension(ext).as_ref() {
                            Value::Message(m) => m
                                .transcode_to::<v1::TaskOptions>()
                                .map_err(|e| Error::Descriptors(e.to_string()))?,
                            _ => v1::TaskOptions::default(),
                        }
                    }
                    _ => v1::TaskOptions::default(),
                };
                let options = Options::from_proto(&name, &declared)?;
                for (option, field) in [
                    ("concurrency_key_field", &declared.concurrency_key_field),
                    ("rate_limit_key_field", &declared.rate_limit_key_field),
                ] {
                    if !field.is_empty() {
                        check_limit_key_field(&method.input(), field).map_err(|reason| {
                            Error::Option {
                                task: name.to_string(),
                                option,
                                reason,
                            }
                        })?;
                    }
                }
                let key_field = &declared.idempotency_key_field;
                if !key_field.is_empty() && method.input().get_field_by_name(key_field).is_none() {
                    return Err(Error::Option {
                        task: name.to_string(),
                        option: "idempotency_key_field",
                        reason: format!(
                            "{} has no field `{key_field}`",
                            method.input().full_name()
                        ),
                    });
                }
                tasks.push(TaskType {
                    descriptor_hash: crate::schema::descriptor_hash(
                        &method.input(),
                        &method.output(),
                    ),
                    name,
                    input: method.input(),
                    output: method.output(),
                    declared,
                    options,
                });
            }
        }
        Ok(tasks)
    }

    /// The registry entry that tells the gateway about this task type.
    pub fn registry_entry(&self, file_descriptor_set: &[u8]) -> v1::TaskType {
        v1::TaskType {
            name: self.name.to_string(),
            input_type: self.input.full_name().to_owned(),
            output_type: self.output.full_name().to_owned(),
            file_descriptor_set: file_descriptor_set.to_vec(),
            options: Some(self.declared.clone()),
            descriptor_hash: self.descriptor_hash.clone(),
        }
    }

    /// Reads a registry entry back.
    pub fn from_registry_entry(entry: &v1::TaskType) -> Result<TaskType, Error> {
        Self::all_in(&entry.file_descriptor_set)?
            .into_iter()
            .find(|t| t.name.as_str() == entry.name)
            .ok_or_else(|| {
                Error::Descriptors(format!(
                    "the registry entry for {} does not describe that task",
                    entry.name
                ))
            })
    }
}

#[cfg(test)]
mod tests {

    /// The duration grammar every runtime shares (testing/vectors/durations.json, which the
    /// Python runtime's tests read too).
    #[test]
    fn durations_read_as_the_shared_vectors_say() {
        let vectors: serde_json::Value =
            serde_json::from_str(include_str!("../testing/vectors/durations.json"))
                .expect("the vectors are JSON");
        for case in vectors["cases"].as_array().expect("cases") {
            let text = case["text"].as_str().expect("text");
            let parsed = humantime::parse_duration(text).ok();
            let expected = case["millis"].as_u64();
            assert_eq!(parsed.map(|d| d.as_millis() as u64), expected, "{text:?}");
        }
    }

    use super::*;

    #[test]
    fn names_map_to_subjects_and_consumers() {
        let name = Name::parse("examples.magic.v1.Magic/Add").expect("valid");
        assert_eq!(name.token(), "examples.magic.v1.Magic.Add");
        assert_eq!(name.consumer(), "examples-magic-v1-Magic-Add");
        assert_eq!(name.service(), "examples.magic.v1.Magic");
        assert_eq!(name.method(), "Add");
        for bad in [
            "",
            "Magic/Add",
            "examples.magic.v1.Magic",
            "a.b.C/D.E",
            "a.*.C/D",
            "a..C/D",
        ] {
            assert!(Name::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn ids_are_single_tokens() {
        assert!(Id::parse(Id::generate().as_str()).is_ok());
        for bad in ["", "a.b", "a*", ">", "a b", &"x".repeat(65)] {
            assert!(Id::parse(bad).is_err(), "{bad}");
        }
        let name = Name::parse("a.b.C/D").expect("valid");
        assert_eq!(
            Id::from_idempotency_key(&name, "k1"),
            Id::from_idempotency_key(&name, "k1")
        );
        assert_ne!(
            Id::from_idempotency_key(&name, "k1"),
            Id::from_idempotency_key(&name, "k2")
        );
    }

    #[test]
    fn bad_options_are_refused() {
        let name = Name::parse("a.b.C/D").expect("valid");
        let err = Options::from_proto(
            &name,
            &v1::TaskOptions {
                timeout: "ten seconds".into(),
                ..Default::default()
            },
        )
        .expect_err("bad duration");
        assert!(err.to_string().contains("timeout"), "{err}");
    }

    #[test]
    fn rates_parse_exactly() {
        let r = Rate::parse("10/s").expect("valid");
        assert_eq!((r.count, r.per), (10, Duration::from_secs(1)));
        assert_eq!(r.margin(), Duration::from_millis(50));
        let r = Rate::parse("61/m").expect("valid");
        assert_eq!((r.count, r.per), (61, Duration::from_secs(60)));
        assert_eq!(r.margin(), Duration::from_millis(250));
        let r = Rate::parse("2/m").expect("valid");
        assert_eq!(r.to_string(), "2/m");
        for bad in ["", "10", "ten/s", "0/s", "10/d"] {
            assert!(Rate::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn backoff_doubles_up_to_the_limit() {
        let options = Options {
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_millis(350),
            ..Options::default()
        };
        assert_eq!(options.backoff(1), Duration::from_millis(100));
        assert_eq!(options.backoff(2), Duration::from_millis(200));
        assert_eq!(options.backoff(3), Duration::from_millis(350));
        assert_eq!(options.backoff(90), Duration::from_millis(350));
    }
}
