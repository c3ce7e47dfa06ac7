//! Whether the upstream answers: the runtime starts no task while it does not, and says so on
//! `/healthz` and in its heartbeat.
//!
//! Two things tell: the upstream's gRPC health check, asked every few seconds (often while it
//! is down), and the connection to it, whose end is seen at once (a killed upstream's socket
//! closes): from that moment no task starts until a check passes again.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// How often the upstream's health is checked while it answers, and while it does not.
const WHILE_UP: Duration = Duration::from_secs(2);
const WHILE_DOWN: Duration = Duration::from_millis(250);
/// How long one check may take.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// The upstream's health as the runtime last saw it: `None` while it answers, else why not.
#[derive(Clone)]
pub struct Health {
    state: watch::Receiver<Option<String>>,
    report: Arc<watch::Sender<Option<String>>>,
    check_now: Arc<Notify>,
}

impl std::fmt::Debug for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Health")
            .field("down", &*self.state.borrow())
            .finish()
    }
}

impl Health {
    /// Down until the first check passes.
    pub(crate) fn new() -> Self {
        let (report, state) = watch::channel(Some("not checked yet".to_owned()));
        Self {
            state,
            report: Arc::new(report),
            check_now: Arc::new(Notify::new()),
        }
    }

    /// Why the upstream takes no task now, or `None` when it does.
    pub fn down(&self) -> Option<String> {
        self.state.borrow().clone()
    }

    /// Waits until the upstream answers (or `stop`); false when stopped first.
    pub async fn up(&self, stop: &CancellationToken) -> bool {
        let mut state = self.state.clone();
        tokio::select! {
            up = state.wait_for(Option::is_none) => up.is_ok(),
            () = stop.cancelled() => false,
        }
    }

    /// The connection to the upstream ended, or a call could not reach it: down at once, until
    /// a check (made now, when it was up) passes.
    pub(crate) fn lost(&self, why: &str) {
        let changed = self.report.send_if_modified(|state| {
            if state.is_none() {
                *state = Some(why.to_owned());
                true
            } else {
                false
            }
        });
        // Only news wakes the checks: their own failed connections tell this too, and waking
        // them again for those would check in a loop for as long as the upstream is down.
        if changed {
            tracing::warn!(
                reason = why,
                "the upstream does not answer; starting no task until it does"
            );
            self.check_now.notify_one();
        }
    }

    /// Checks the upstream's `grpc.health.v1.Health` (the server as a whole) until `stop`. An
    /// upstream without the health service counts as up when it answers at all.
    pub(crate) fn check(&self, channel: Channel, stop: CancellationToken) {
        let health = self.clone();
        tokio::spawn(async move {
            let mut client = HealthClient::new(channel);
            loop {
                let check = client.check(HealthCheckRequest {
                    service: String::new(),
                });
                let down = match tokio::time::timeout(CHECK_TIMEOUT, check).await {
                    Err(_) => Some("its health check got no answer in time".to_owned()),
                    Ok(Ok(answer)) => match answer.into_inner().status() {
                        ServingStatus::Serving => None,
                        other => Some(format!("its health check answers {}", other.as_str_name())),
                    },
                    Ok(Err(status)) if status.code() == tonic::Code::Unimplemented => None,
                    Ok(Err(status)) => {
                        Some(format!("its health check failed: {}", status.message()))
                    }
                };
                let was_down = health.down().is_some();
                if was_down != down.is_some() {
                    match &down {
                        None => tracing::info!("the upstream answers; starting tasks"),
                        Some(why) => {
                            tracing::warn!(reason = %why, "the upstream does not answer; starting no task until it does")
                        }
                    }
                }
                health.report.send_replace(down.clone());
                let every = if down.is_none() { WHILE_UP } else { WHILE_DOWN };
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(every) => {}
                    () = health.check_now.notified() => {}
                }
            }
        });
    }
}
