//! The gateway's view of the task registry: task types that workers published to the KV bucket,
//! plus those from descriptor sets given at start. Kept current by a KV watch, so a new task type
//! needs no gateway restart.
//!
//! Every schema version a worker registers is also kept in `TASKWIRE_SCHEMAS`, so that a
//! producer built from an earlier version is accepted while that version stays compatible with
//! the workers' (a rolling upgrade that adds a field), and refused once it is not.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};

use async_nats::jetstream::kv;
use prost::Message as _;
use taskwire::task::{Name, TaskType};
use taskwire::v1;

use crate::Error;

/// Task types by full name.
#[derive(Debug)]
pub struct Registry {
    store: kv::Store,
    types: RwLock<HashMap<String, Arc<TaskType>>>,
    /// `TASKWIRE_SCHEMAS` (none when it cannot be opened: then only the workers' own version is
    /// accepted), and the keys this gateway has stored there.
    schemas: Option<kv::Store>,
    recorded: Mutex<HashSet<String>>,
    /// Whether a producer's version fits the workers': by task, producer's and workers'
    /// fingerprints.
    verdicts: Mutex<HashMap<VerdictKey, Result<(), String>>>,
}

/// A task's name, a producer's fingerprint and the workers'.
type VerdictKey = (String, String, String);

/// Verdicts kept before the cache starts again.
const MAX_VERDICTS: usize = 4096;

impl taskwire_protocol::follow::Follower for Registry {
    /// Learns every task type in the bucket. Types are never forgotten: those from descriptor
    /// sets stay, and a worker's entry outlives it.
    fn reset(self: &Arc<Self>, entries: Vec<kv::Entry>) {
        for entry in entries {
            taskwire_protocol::follow::Follower::apply(self, &entry);
        }
    }

    fn apply(self: &Arc<Self>, entry: &kv::Entry) {
        if entry.operation == kv::Operation::Put {
            self.learn(&entry.value);
        }
    }
}

impl Registry {
    /// Loads the bucket and keeps following it until `shutdown`.
    pub async fn start(
        store: kv::Store,
        schemas: Option<kv::Store>,
        fixed: Vec<TaskType>,
        shutdown: tokio_util::sync::CancellationToken,
        refusals: &taskwire_protocol::Refusals,
    ) -> Result<Arc<Self>, Error> {
        let registry = Arc::new(Self {
            store,
            types: RwLock::new(
                fixed
                    .into_iter()
                    .map(|t| (t.name.to_string(), Arc::new(t)))
                    .collect(),
            ),
            schemas,
            recorded: Mutex::new(HashSet::new()),
            verdicts: Mutex::new(HashMap::new()),
        });
        taskwire_protocol::follow::follow(registry.store.clone(), &registry, shutdown, refusals)
            .await
            .map_err(|e| Error::Broker(e.to_string()))?;
        Ok(registry)
    }

    fn learn(self: &Arc<Self>, value: &[u8]) -> Option<Arc<TaskType>> {
        let entry = match v1::TaskType::decode(value) {
            Ok(entry) => entry,
            Err(e) => {
                tracing::warn!(error = %e, "skipping a registry entry that does not decode");
                return None;
            }
        };
        match TaskType::from_registry_entry(&entry) {
            Ok(task_type) => {
                let task_type = Arc::new(task_type);
                tracing::debug!(task = %task_type.name, "task type registered");
                self.record(&task_type, value);
                self.types
                    .write()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(entry.name, Arc::clone(&task_type));
                Some(task_type)
            }
            Err(e) => {
                tracing::warn!(task = %entry.name, error = %e, "skipping a registry entry");
                None
            }
        }
    }

    /// Keeps a registered schema version in `TASKWIRE_SCHEMAS` (once per gateway and version;
    /// again after a failure).
    fn record(self: &Arc<Self>, task_type: &TaskType, value: &[u8]) {
        let Some(schemas) = self.schemas.clone() else {
            return;
        };
        let key = format!("{}.{}", task_type.name.token(), task_type.descriptor_hash);
        if !self
            .recorded
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key.clone())
        {
            return;
        }
        let value = bytes::Bytes::copy_from_slice(value);
        let registry = Arc::downgrade(self);
        tokio::spawn(async move {
            // Taken already (by this or another gateway) is as good as stored.
            if let Err(e) = schemas.create(&key, value).await
                && e.kind() != kv::CreateErrorKind::AlreadyExists
            {
                tracing::warn!(key, error = %e, "cannot keep a schema version; trying again when it is registered again");
                if let Some(registry) = registry.upgrade() {
                    registry
                        .recorded
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .remove(&key);
                }
            }
        });
    }

    /// Whether a producer whose schema fingerprint is `producer` may submit `task_type`: the
    /// same version as the workers', or an earlier one that workers registered and that is
    /// compatible with theirs ([`taskwire::schema::compatible`]). No fingerprint is not checked.
    pub async fn check_schema(&self, task_type: &TaskType, producer: &str) -> Result<(), Error> {
        let current = &task_type.descriptor_hash;
        if producer.is_empty() || producer == current {
            return Ok(());
        }
        // Twelve hex digits name a version well enough to tell which build is which.
        let short = |hash: &str| hash.chars().take(12).collect::<String>();
        let refuse = |reason: String| Error::SchemaMismatch {
            task: task_type.name.to_string(),
            producer: short(producer),
            registered: short(current),
            reason,
        };
        if producer.len() != 64
            || !producer
                .bytes()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        {
            return Err(refuse(
                "the producer's is not a schema fingerprint (64 lower-case hex digits)".to_owned(),
            ));
        }
        let cache_key = (
            task_type.name.to_string(),
            producer.to_owned(),
            current.clone(),
        );
        let known = self
            .verdicts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&cache_key)
            .cloned();
        let verdict = match known {
            Some(verdict) => verdict,
            None => {
                let Some(earlier) = self.earlier(task_type, producer).await? else {
                    // Not kept (yet): asked again next time, as a worker may register it.
                    return Err(refuse(
                        "no worker has registered the producer's version".to_owned(),
                    ));
                };
                // Decided by the two versions alone, so kept.
                let verdict = taskwire::schema::compatible(
                    &earlier.input,
                    &earlier.output,
                    &task_type.input,
                    &task_type.output,
                );
                let mut verdicts = self.verdicts.lock().unwrap_or_else(|e| e.into_inner());
                if verdicts.len() >= MAX_VERDICTS {
                    verdicts.clear();
                }
                verdicts.insert(cache_key, verdict.clone());
                verdict
            }
        };
        verdict.map_err(refuse)
    }

    /// The version of `task_type` whose fingerprint is `producer`, as a worker registered it.
    async fn earlier(
        &self,
        task_type: &TaskType,
        producer: &str,
    ) -> Result<Option<TaskType>, Error> {
        let Some(schemas) = &self.schemas else {
            return Ok(None);
        };
        let key = format!("{}.{producer}", task_type.name.token());
        let value = match schemas.get(&key).await {
            Ok(Some(value)) => value,
            Ok(None) => return Ok(None),
            Err(e) => return Err(Error::BrokerDown(e.to_string())),
        };
        let earlier = v1::TaskType::decode(value)
            .map_err(|e| e.to_string())
            .and_then(|entry| TaskType::from_registry_entry(&entry).map_err(|e| e.to_string()));
        match earlier {
            Ok(earlier) => Ok(Some(earlier)),
            Err(e) => {
                tracing::warn!(key, error = %e, "a kept schema version does not decode");
                Ok(None)
            }
        }
    }

    /// The task type of `name`; a miss asks the bucket directly, in case the watch lags behind a
    /// worker that has just started.
    pub async fn get(self: &Arc<Self>, name: &Name) -> Result<Arc<TaskType>, Error> {
        if let Some(t) = self
            .types
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name.as_str())
        {
            return Ok(Arc::clone(t));
        }
        match self.store.get(name.token()).await {
            Ok(Some(value)) => self
                .learn(&value)
                .ok_or_else(|| Error::UnknownTask(name.to_string())),
            Ok(None) => Err(Error::UnknownTask(name.to_string())),
            Err(e) => Err(Error::BrokerDown(e.to_string())),
        }
    }

    /// Every known task type, by name.
    pub fn list(&self) -> Vec<Arc<TaskType>> {
        let mut types: Vec<_> = self
            .types
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        types.sort_by(|a, b| a.name.cmp(&b.name));
        types
    }
}
