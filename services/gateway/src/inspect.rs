//! What the gateway can tell about the system: live workers, queues, a task's history; and the
//! Prometheus metrics on its HTTP port.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::response::IntoResponse as _;
use futures::StreamExt as _;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use prost::Message as _;
use taskwire::task::{Id, Name};
use taskwire::v1;
use taskwire_protocol::{self as broker, subject};

use crate::{Error, Gateway};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TaskLabel {
    task: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueueLabels {
    task: String,
    priority: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: String,
    code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabel {
    method: String,
}

/// The gateway's metrics.
pub(crate) struct Metrics {
    registry: Registry,
    submitted: Family<TaskLabel, Counter>,
    requests: Family<RequestLabels, Counter>,
    latency: Family<MethodLabel, Histogram>,
    queued: Family<QueueLabels, Gauge>,
    in_flight: Family<QueueLabels, Gauge>,
    redelivered: Family<QueueLabels, Gauge>,
    paused: Family<QueueLabels, Gauge>,
    dead: Family<TaskLabel, Gauge>,
    workers: Gauge,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    pub(crate) fn new() -> Self {
        let mut registry = Registry::with_prefix("taskwire");
        let metrics = Self {
            submitted: Family::default(),
            requests: Family::default(),
            latency: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.0005, 4.0, 10))
            }),
            queued: Family::default(),
            in_flight: Family::default(),
            redelivered: Family::default(),
            paused: Family::default(),
            dead: Family::default(),
            workers: Gauge::default(),
            registry: Registry::default(),
        };
        registry.register(
            "tasks_submitted",
            "Tasks stored through this gateway",
            metrics.submitted.clone(),
        );
        registry.register(
            "gateway_requests",
            "gRPC calls answered by this gateway, by method and status code",
            metrics.requests.clone(),
        );
        registry.register(
            "gateway_request_seconds",
            "How long gRPC calls took, by method",
            metrics.latency.clone(),
        );
        registry.register(
            "queue_depth",
            "Tasks waiting for a worker, by task and priority",
            metrics.queued.clone(),
        );
        registry.register(
            "tasks_in_flight",
            "Tasks delivered to workers and not yet acknowledged, by task and priority",
            metrics.in_flight.clone(),
        );
        registry.register(
            "tasks_redelivered",
            "Tasks in flight that were delivered more than once, by task and priority",
            metrics.redelivered.clone(),
        );
        registry.register(
            "queue_paused",
            "1 while the queue is paused through the Admin API, by task and priority",
            metrics.paused.clone(),
        );
        registry.register(
            "dead_letters",
            "Tasks kept as dead letters, by task",
            metrics.dead.clone(),
        );
        registry.register(
            "workers_alive",
            "Workers whose heartbeat is current",
            metrics.workers.clone(),
        );
        Self {
            registry,
            ..metrics
        }
    }

    pub(crate) fn submitted(&self, task: &str, n: u64) {
        self.submitted
            .get_or_create(&TaskLabel {
                task: task.to_owned(),
            })
            .inc_by(n);
    }

    /// One answered gRPC call.
    pub(crate) fn request(&self, method: &str, code: &str, seconds: f64) {
        self.requests
            .get_or_create(&RequestLabels {
                method: method.to_owned(),
                code: code.to_owned(),
            })
            .inc();
        self.latency
            .get_or_create(&MethodLabel {
                method: method.to_owned(),
            })
            .observe(seconds);
    }
}

impl Gateway {
    /// The metrics, with the queue figures read from the broker now.
    pub(crate) async fn render_metrics(&self) -> String {
        let metrics = &self.metrics;
        let workers = self.workers().await.unwrap_or_default();
        metrics.workers.set(workers.len() as i64);
        if let Ok(queues) = self.queues_of(&workers).await {
            for q in queues {
                let labels = QueueLabels {
                    task: q.task.clone(),
                    priority: q.priority.clone(),
                };
                metrics.queued.get_or_create(&labels).set(q.queued as i64);
                metrics
                    .paused
                    .get_or_create(&labels)
                    .set(i64::from(q.paused));
                metrics
                    .in_flight
                    .get_or_create(&labels)
                    .set(q.in_flight as i64);
                metrics
                    .redelivered
                    .get_or_create(&labels)
                    .set(q.redelivered as i64);
                if q.priority == "normal" {
                    metrics
                        .dead
                        .get_or_create(&TaskLabel { task: q.task })
                        .set(q.dead_letters as i64);
                }
            }
        }
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &metrics.registry).is_err() {
            out.clear();
        }
        out
    }

    /// The workers whose heartbeat is current, by id.
    pub(crate) async fn workers(&self) -> Result<Vec<v1::WorkerInfo>, Error> {
        self.check_connected()?;
        let store = &self.broker.workers;
        let mut keys = store.keys().await.map_err(|e| self.broker_error(e))?;
        let mut workers = Vec::new();
        while let Some(key) = keys.next().await {
            let key = key.map_err(|e| self.broker_error(e))?;
            if let Ok(Some(value)) = store.get(&key).await
                && let Ok(info) = v1::WorkerInfo::decode(value)
            {
                workers.push(info);
            }
        }
        workers.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(workers)
    }

    /// Each registered task type at each priority: queued, in flight, redelivered, oldest.
    pub(crate) async fn queues(&self) -> Result<Vec<v1::QueueInfo>, Error> {
        let workers = self.workers().await?;
        self.queues_of(&workers).await
    }

    /// [`Self::queues`], with the live workers read already. The task types are read side by
    /// side (a few at a time), so that a registry of a thousand answers in well under a second.
    pub(crate) async fn queues_of(
        &self,
        workers: &[v1::WorkerInfo],
    ) -> Result<Vec<v1::QueueInfo>, Error> {
        /// Task types read at once.
        const AT_ONCE: usize = 32;
        self.check_connected()?;
        let types = self.registry.list();
        let count = types.len();
        let mut reads = futures::stream::iter(types)
            .map(|task| {
                let serving = workers
                    .iter()
                    .filter(|w| w.tasks.iter().any(|t| t == task.name.as_str()))
                    .count() as u64;
                async move { self.queues_of_type(&task.name, serving).await }
            })
            .buffer_unordered(AT_ONCE);
        let mut queues = Vec::with_capacity(count * broker::PRIORITIES.len());
        while let Some(of_type) = reads.next().await {
            queues.extend(of_type?);
        }
        // Stable: each type's queues keep their order of priority.
        queues.sort_by(|a, b| a.task.cmp(&b.task));
        Ok(queues)
    }

    /// The queues of one task type, one per priority, served by `serving` live workers.
    async fn queues_of_type(&self, name: &Name, serving: u64) -> Result<Vec<v1::QueueInfo>, Error> {
        let mut dead = 0u64;
        let mut subjects = self
            .broker
            .dead
            .info_with_subjects(subject::dead_of_type(name))
            .await
            .map_err(|e| self.broker_error(e))?;
        while let Some(Ok((_, count))) = subjects.next().await {
            dead += count as u64;
        }
        let pause = self.pause_of(name).await?;
        let mut queues = Vec::with_capacity(broker::PRIORITIES.len());
        for priority in broker::PRIORITIES {
            let consumer = broker::consumer_name(name, priority);
            let paused = crate::pauses::holds(pause.as_ref(), priority);
            let mut queue = v1::QueueInfo {
                task: name.to_string(),
                priority: broker::priority_name(priority).to_owned(),
                workers: serving,
                paused,
                paused_since: pause.as_ref().filter(|_| paused).and_then(|p| p.since),
                paused_reason: pause
                    .as_ref()
                    .filter(|_| paused)
                    .map(|p| p.reason.clone())
                    .unwrap_or_default(),
                ..Default::default()
            };
            match self.broker.tasks.consumer_info(&consumer).await {
                Ok(info) => {
                    queue.queued = info.num_pending;
                    queue.in_flight = info.num_ack_pending as u64;
                    queue.redelivered = info.num_redelivered as u64;
                    queue.waiting_pulls = info.num_waiting as u64;
                    queue.delivered_total = info.delivered.consumer_sequence;
                }
                // No worker has served it yet: count what waits on its subject.
                Err(_) => {
                    let mut subjects = self
                        .broker
                        .tasks
                        .info_with_subjects(subject::task_at(name, priority))
                        .await
                        .map_err(|e| self.broker_error(e))?;
                    while let Some(Ok((_, count))) = subjects.next().await {
                        queue.queued += count as u64;
                    }
                }
            }
            if queue.queued + queue.in_flight > 0
                && let Ok(oldest) = self
                    .broker
                    .tasks
                    .get_first_raw_message_by_subject(subject::task_at(name, priority), 0)
                    .await
            {
                let stored = SystemTime::from(oldest.time);
                let waited = SystemTime::now()
                    .duration_since(stored)
                    .unwrap_or(Duration::ZERO);
                queue.oldest_waiting = prost_types::Duration::try_from(waited).ok();
            }
            if priority == v1::Priority::Normal {
                queue.dead_letters = dead;
            }
            queues.push(queue);
        }
        Ok(queues)
    }

    /// A task's events, oldest first, and its result.
    pub(crate) async fn history(&self, id: &Id) -> Result<v1::GetTaskHistoryResponse, Error> {
        self.check_connected()?;
        let mut events = Vec::new();
        let mut from = 0;
        loop {
            let next = broker::next_message(
                &self.client,
                broker::EVENTS_STREAM,
                &subject::events_of(id),
                from,
            )
            .await
            .map_err(|e| self.broker_error(e))?;
            let Some(message) = next else { break };
            from = message.sequence + 1;
            events.push(broker::task_info(
                id,
                &message.headers,
                &message.payload,
                message.time,
            ));
        }
        let result = match self.result(id).await {
            Ok(result) => result,
            Err(Error::Expired(_)) if !events.is_empty() => None,
            Err(e) => return Err(e),
        };
        if events.is_empty() && result.is_none() {
            return Err(Error::NotFound(id.to_string()));
        }
        Ok(v1::GetTaskHistoryResponse { events, result })
    }
}

/// Serves `/metrics` (and `/healthz`) on `listener` until `shutdown`.
/// Whether the headers carry `token`: `Authorization: Bearer <token>` (Prometheus, scripts) or
/// basic auth with it as the password (a browser on the dashboard).
fn http_authorized(headers: &http::HeaderMap, token: &str) -> bool {
    use base64::Engine as _;
    let Some(value) = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let same = |given: &[u8]| {
        given.len() == token.len()
            && given
                .iter()
                .zip(token.as_bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    };
    if let Some(bearer) = crate::auth::bearer(value) {
        return same(bearer.as_bytes());
    }
    if let Some((scheme, basic)) = value.trim().split_once(' ')
        && scheme.eq_ignore_ascii_case("basic")
        && let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(basic.trim())
        && let Some(colon) = decoded.iter().position(|b| *b == b':')
    {
        return same(&decoded[colon + 1..]);
    }
    false
}

pub(crate) fn serve_http(
    listener: tokio::net::TcpListener,
    gateway: Arc<Gateway>,
    token: Option<Arc<str>>,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let metrics = {
        let gateway = Arc::clone(&gateway);
        move || {
            let gateway = Arc::clone(&gateway);
            async move {
                (
                    [(
                        "content-type",
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    gateway.render_metrics().await,
                )
            }
        }
    };
    let app = axum::Router::new()
        .route("/metrics", axum::routing::get(metrics))
        .route("/healthz", axum::routing::get(|| async { "ok" }))
        .merge(crate::dashboard::routes(Arc::clone(&gateway)))
        .layer(axum::middleware::from_fn(
            move |request: axum::extract::Request, next: axum::middleware::Next| {
                let token = token.clone();
                async move {
                    // A browser sends cached credentials with a cross-site form too: changes
                    // (replaying a dead task) must come from the dashboard's own page.
                    if request.method() != http::Method::GET
                        && request
                            .headers()
                            .get("sec-fetch-site")
                            .is_some_and(|site| site.as_bytes() == b"cross-site")
                    {
                        return (
                            http::StatusCode::FORBIDDEN,
                            "changes are accepted from the dashboard's own page only\n",
                        )
                            .into_response();
                    }
                    match token {
                        Some(token)
                            if request.uri().path() != "/healthz"
                                && !http_authorized(request.headers(), &token) =>
                        {
                            (
                                http::StatusCode::UNAUTHORIZED,
                                [(http::header::WWW_AUTHENTICATE, "Basic realm=\"taskwire\"")],
                                "this endpoint needs the gateway's HTTP token (TASKWIRE_HTTP_TOKEN): a bearer token, or the password of basic auth\n",
                            )
                                .into_response()
                        }
                        _ => {
                            let mut response = next.run(request).await;
                            // No other site may frame the pages, so that none can make a
                            // click on a confirmation its own.
                            let headers = response.headers_mut();
                            headers.insert(
                                http::header::CONTENT_SECURITY_POLICY,
                                http::HeaderValue::from_static("frame-ancestors 'self'"),
                            );
                            headers.insert(
                                http::header::X_FRAME_OPTIONS,
                                http::HeaderValue::from_static("SAMEORIGIN"),
                            );
                            response
                        }
                    }
                }
            },
        ));
    tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
    });
}
