//! One module per subcommand of `taskwire`, and the argument types several of them share.

pub mod bench;
pub mod dead;
pub mod dev;
pub mod find;
pub mod health;
pub mod inspect;
pub mod k8s;
pub mod limits;
pub mod queue;
pub mod schedule;
pub mod submit;
pub mod task;
pub mod types;
pub mod worker;
pub mod workflow;

use std::time::{Duration, SystemTime};

use clap::ValueEnum;
use taskwire::v1;
use taskwire_client::SubmitOptions;

/// When a task may run: delay, priority, expiry.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct When {
    /// Run no earlier than this long from now (e.g. 30s, 5m).
    #[arg(long = "in", value_name = "DURATION", value_parser = humantime::parse_duration, conflicts_with = "at")]
    pub countdown: Option<Duration>,
    /// Run no earlier than this time (RFC 3339, e.g. 2026-12-01T09:00:00Z).
    #[arg(long, value_name = "TIME", value_parser = humantime::parse_rfc3339_weak)]
    pub at: Option<SystemTime>,
    /// Which tasks start first when there is a backlog.
    #[arg(long, value_enum)]
    pub priority: Option<Priority>,
    /// Never start the task later than this long after it is due; it expires instead.
    #[arg(long, value_parser = humantime::parse_duration, conflicts_with = "expires_at")]
    pub ttl: Option<Duration>,
    /// Never start the task after this time (RFC 3339).
    #[arg(long, value_name = "TIME", value_parser = humantime::parse_rfc3339_weak)]
    pub expires_at: Option<SystemTime>,
    /// Keep the result this long (at most the broker's result TTL).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub result_ttl: Option<Duration>,
}

/// A priority level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Priority {
    High,
    Normal,
    Low,
}

impl Priority {
    pub(crate) fn proto(self) -> v1::Priority {
        match self {
            Priority::High => v1::Priority::High,
            Priority::Normal => v1::Priority::Normal,
            Priority::Low => v1::Priority::Low,
        }
    }
}

impl When {
    pub(crate) fn apply(self, options: SubmitOptions) -> SubmitOptions {
        SubmitOptions {
            countdown: self.countdown,
            not_before: self.at,
            priority: self.priority.map(Priority::proto),
            ttl: self.ttl,
            expires_at: self.expires_at,
            result_ttl: self.result_ttl,
            ..options
        }
    }
}

/// A duration written in a file (`30s`, `5m`), or what is wrong with it, said by `at`.
pub(crate) fn file_duration(
    what: &str,
    text: Option<&str>,
    at: &dyn Fn(String) -> anyhow::Error,
) -> Result<Option<Duration>, anyhow::Error> {
    text.map(|t| {
        humantime::parse_duration(t)
            .map_err(|e| at(format!("{what} {t:?} is not a duration such as 30s: {e}")))
    })
    .transpose()
}

/// A priority written in a file (`high`, `normal`, `low`), or what is wrong with it.
pub(crate) fn file_priority(
    text: Option<&str>,
    at: &dyn Fn(String) -> anyhow::Error,
) -> Result<Option<v1::Priority>, anyhow::Error> {
    text.map(|text| {
        Priority::from_str(text, true)
            .map(Priority::proto)
            .map_err(|_| at(format!("priority {text:?} is not high, normal or low")))
    })
    .transpose()
}
