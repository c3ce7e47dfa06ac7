//! A running task's progress reports, published as events in the order it made them.

use std::sync::Arc;
use std::time::Duration;

use taskwire::task::{Id, Name};
use taskwire_protocol::{self as broker, subject};

use crate::run::Served;

/// Most progress reports of one task waiting to be published.
pub(crate) const PROGRESS_QUEUE: usize = 256;

/// Publishes a running task's progress reports as events, in the order it made them. Most
/// tasks report nothing, so the publisher starts with the first report.
pub(crate) struct Progress {
    client: async_nats::Client,
    name: Name,
    id: Id,
    attempt: u32,
    /// The series of attempts (0, or the replay count).
    series: u32,
    /// The resumed copy of the task's message (0: its first).
    resume: u32,
    publisher: std::sync::Mutex<Option<ProgressPublisher>>,
}

pub(crate) struct ProgressPublisher {
    tx: tokio::sync::mpsc::Sender<taskwire::v1::TaskProgress>,
    sent: tokio::task::JoinHandle<()>,
}

impl Progress {
    pub(crate) fn new(
        served: &Served,
        id: &Id,
        attempt: u32,
        series: u32,
        resume: u32,
    ) -> Arc<Self> {
        Arc::new(Self {
            client: served.client.clone(),
            name: served.task.name.clone(),
            id: id.clone(),
            attempt,
            series,
            resume,
            publisher: std::sync::Mutex::new(None),
        })
    }

    pub(crate) fn sink(self: &Arc<Self>) -> taskwire::ProgressSink {
        let progress = Arc::clone(self);
        Arc::new(move |report| progress.report(report))
    }

    fn report(&self, report: taskwire::v1::TaskProgress) {
        let mut publisher = self.publisher.lock().unwrap_or_else(|e| e.into_inner());
        let publisher = publisher.get_or_insert_with(|| {
            let (tx, mut rx) =
                tokio::sync::mpsc::channel::<taskwire::v1::TaskProgress>(PROGRESS_QUEUE);
            let (client, name, id, attempt, series, resume) = (
                self.client.clone(),
                self.name.clone(),
                self.id.clone(),
                self.attempt,
                self.series,
                self.resume,
            );
            let sent = tokio::spawn(async move {
                while let Some(progress) = rx.recv().await {
                    let _ = client
                        .publish_with_headers(
                            subject::event(&name, &id),
                            broker::Event::progress(&name, &id, attempt)
                                .in_series(series)
                                .in_resume(resume)
                                .to_headers(),
                            broker::progress_body(&progress),
                        )
                        .await;
                }
            });
            ProgressPublisher { tx, sent }
        });
        // A task reporting faster than the broker takes the reports loses the surplus, not
        // memory.
        if publisher.tx.try_send(report).is_err() {
            tracing::debug!(task = %self.name, task_id = %self.id, "progress report dropped: too many waiting");
        }
    }

    /// Waits (a little) until every report so far is published, so that watchers see them
    /// before the result.
    pub(crate) async fn flush(&self) {
        let publisher = self
            .publisher
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(ProgressPublisher { tx, sent }) = publisher {
            drop(tx);
            let _ = tokio::time::timeout(Duration::from_secs(1), sent).await;
        }
    }
}
