//! The gateway's view of the task registry: task types that workers published to the KV bucket,
//! plus those from descriptor sets given at start. Kept current by a KV watch, so a new task type
//! needs no gateway restart.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use async_nats::jetstream::kv;
use futures::StreamExt as _;
use prost::Message as _;
use taskwire::task::{Name, TaskType};
use taskwire::v1;

use crate::Error;

/// Task types by full name.
#[derive(Debug)]
pub struct Registry {
    store: kv::Store,
    types: RwLock<HashMap<String, Arc<TaskType>>>,
}

impl Registry {
    /// Loads the bucket and keeps following it until `shutdown`.
    pub async fn start(
        store: kv::Store,
        fixed: Vec<TaskType>,
        shutdown: tokio_util::sync::CancellationToken,
    ) -> Result<Arc<Self>, Error> {
        let registry = Arc::new(Self {
            store,
            types: RwLock::new(
                fixed
                    .into_iter()
                    .map(|t| (t.name.to_string(), Arc::new(t)))
                    .collect(),
            ),
        });
        // Watch first, then load: an update in between is applied twice, never missed.
        let mut watch = registry
            .store
            .watch_all()
            .await
            .map_err(|e| Error::Broker(format!("cannot watch the task registry: {e}")))?;
        let mut keys = registry
            .store
            .keys()
            .await
            .map_err(|e| Error::Broker(format!("cannot list the task registry: {e}")))?;
        while let Some(key) = keys.next().await {
            let Ok(key) = key else { continue };
            if let Ok(Some(value)) = registry.store.get(key).await {
                registry.apply(&value);
            }
        }
        let weak = Arc::downgrade(&registry);
        tokio::spawn(async move {
            loop {
                let entry = tokio::select! {
                    () = shutdown.cancelled() => return,
                    entry = watch.next() => entry,
                };
                let Some(registry) = weak.upgrade() else {
                    return;
                };
                match entry {
                    Some(Ok(entry)) if entry.operation == kv::Operation::Put => {
                        registry.apply(&entry.value);
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => tracing::warn!(error = %e, "task registry watch failed"),
                    None => return,
                }
            }
        });
        Ok(registry)
    }

    fn apply(&self, value: &[u8]) -> Option<Arc<TaskType>> {
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

    /// The task type of `name`; a miss asks the bucket directly, in case the watch lags behind a
    /// worker that has just started.
    pub async fn get(&self, name: &Name) -> Result<Arc<TaskType>, Error> {
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
                .apply(&value)
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
