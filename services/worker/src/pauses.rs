//! Paused queues: every worker follows the `TASKWIRE_PAUSED` bucket and starts no task of a
//! paused task type and priority (what runs finishes). The pull loop makes no pull at a paused
//! level, and a task handed over just as its queue was paused goes back unstarted.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_nats::jetstream::kv;
use taskwire::task::Name;
use taskwire_protocol::{self as broker, Broker};
use tokio_util::sync::CancellationToken;

use crate::Error;

/// The paused levels of each task type, by token, as the bucket holds them now.
pub(crate) struct Pauses {
    paused: Mutex<HashMap<String, [bool; 3]>>,
    /// Told of every change.
    changed: tokio::sync::watch::Sender<u64>,
}

impl std::fmt::Debug for Pauses {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pauses").finish_non_exhaustive()
    }
}

impl Pauses {
    /// Reads the bucket, then follows its changes until `stop`.
    pub(crate) async fn start(
        broker: &Broker,
        stop: CancellationToken,
        refusals: &broker::Refusals,
    ) -> Result<Arc<Self>, Error> {
        let pauses = Arc::new(Self {
            paused: Mutex::new(HashMap::new()),
            changed: tokio::sync::watch::Sender::new(0),
        });
        broker::follow::follow(broker.paused.clone(), &pauses, stop, refusals)
            .await
            .map_err(|e| Error::Pauses(e.to_string()))?;
        Ok(pauses)
    }

    /// Whether tasks of `task` at `level` (of [`broker::PRIORITIES`]) may not start now.
    pub(crate) fn paused(&self, task: &Name, level: usize) -> bool {
        self.levels(task)[level]
    }

    /// The paused levels of `task`.
    pub(crate) fn levels(&self, task: &Name) -> [bool; 3] {
        let paused = self.paused.lock().unwrap_or_else(|e| e.into_inner());
        // Asked before every start: with nothing paused, no key is made.
        if paused.is_empty() {
            return [false; 3];
        }
        paused.get(&task.token()).copied().unwrap_or_default()
    }

    /// A receiver that sees every change from now on.
    pub(crate) fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// The queues held paused among `tasks`, as `<task>:<priority>`, for the heartbeat.
    pub(crate) fn describe(&self, tasks: &[String]) -> Vec<String> {
        let mut out = Vec::new();
        for task in tasks {
            let Ok(name) = Name::parse(task) else {
                continue;
            };
            for (level, paused) in self.levels(&name).into_iter().enumerate() {
                if paused {
                    out.push(format!(
                        "{task}:{}",
                        broker::priority_name(broker::PRIORITIES[level])
                    ));
                }
            }
        }
        out
    }

    fn set(&self, key: &str, levels: Option<[bool; 3]>) {
        let mut paused = self.paused.lock().unwrap_or_else(|e| e.into_inner());
        match levels {
            Some(levels) if levels.contains(&true) => {
                tracing::info!(
                    task = key,
                    ?levels,
                    "queue paused (levels high, normal, low)"
                );
                paused.insert(key.to_owned(), levels);
            }
            _ => {
                if paused.remove(key).is_some() {
                    tracing::info!(task = key, "queue resumed");
                }
            }
        }
    }
}

impl broker::follow::Follower for Pauses {
    fn reset(self: &Arc<Self>, entries: Vec<kv::Entry>) {
        self.paused
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        for entry in &entries {
            let levels = broker::pause::decode(entry).map(|p| broker::pause::paused_levels(&p));
            self.set(&entry.key, levels);
        }
        self.changed.send_modify(|n| *n += 1);
    }

    fn apply(self: &Arc<Self>, entry: &kv::Entry) {
        let levels = broker::pause::decode(entry).map(|p| broker::pause::paused_levels(&p));
        self.set(&entry.key, levels);
        self.changed.send_modify(|n| *n += 1);
    }
}
