//! The web dashboard on the gateway's HTTP port: queues, workers, recent tasks, dead letters
//! with a replay button, and a task's detail; the page polls a small JSON API, so it updates
//! without reloading. Everything is embedded in the binary.

use std::sync::Arc;
use std::time::SystemTime;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use prost_reflect::{DynamicMessage, SerializeOptions};
use taskwire::task::{Id, Name};
use taskwire::v1;
use taskwire_protocol::{self as broker, header, subject};

use crate::{Error, Gateway};

/// How many recent tasks the overview shows.
const RECENT: usize = 20;
/// How far back in the events stream the overview looks for them.
const LOOK_BACK: u64 = 200;

const PAGE: &str = include_str!("dashboard.html");

/// The routes of the dashboard.
pub(crate) fn routes(gateway: Arc<Gateway>) -> axum::Router {
    axum::Router::new()
        .route("/", axum::routing::get(|| async { Html(PAGE) }))
        .route("/tasks", axum::routing::get(|| async { Html(PAGE) }))
        .route("/tasks/{id}", axum::routing::get(|| async { Html(PAGE) }))
        .route("/api/overview", axum::routing::get(overview))
        .route("/api/tasks/{id}", axum::routing::get(task))
        .route(
            "/workflows/{id}",
            axum::routing::get(|| async { Html(PAGE) }),
        )
        .route("/api/workflows/{id}", axum::routing::get(workflow))
        .route("/api/dead/{id}/replay", axum::routing::post(replay))
        .route("/api/tasks/{id}/cancel", axum::routing::post(cancel))
        .route("/api/queues/pause", axum::routing::post(pause))
        .route("/api/queues/resume", axum::routing::post(resume))
        .route("/api/queues/purge", axum::routing::post(purge))
        .route("/api/series", axum::routing::get(series))
        .route("/api/tasks", axum::routing::get(list))
        .route("/api/tasks/cancel", axum::routing::post(cancel_matching))
        .route("/api/dead/purge", axum::routing::post(purge_dead))
        .with_state(gateway)
}

fn failure(err: Error) -> Response {
    let status = match err.code() {
        tonic::Code::NotFound => StatusCode::NOT_FOUND,
        tonic::Code::InvalidArgument => StatusCode::BAD_REQUEST,
        tonic::Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    (
        status,
        axum::Json(serde_json::json!({ "error": err.to_string() })),
    )
        .into_response()
}

fn time(t: &Option<prost_types::Timestamp>) -> serde_json::Value {
    t.as_ref()
        .map_or(serde_json::Value::Null, |t| t.to_string().into())
}

fn seconds(d: &Option<prost_types::Duration>) -> f64 {
    d.as_ref()
        .map_or(0.0, |d| d.seconds as f64 + f64::from(d.nanos) / 1e9)
}

async fn overview(State(gateway): State<Arc<Gateway>>) -> Response {
    match gateway.overview().await {
        Ok(body) => axum::Json(body).into_response(),
        Err(e) => failure(e),
    }
}

async fn task(State(gateway): State<Arc<Gateway>>, Path(id): Path<String>) -> Response {
    let id = match Id::parse(&id) {
        Ok(id) => id,
        Err(e) => return failure(Error::InvalidId(e)),
    };
    match gateway.task_detail(&id).await {
        Ok(body) => axum::Json(body).into_response(),
        Err(e) => failure(e),
    }
}

async fn workflow(State(gateway): State<Arc<Gateway>>, Path(id): Path<String>) -> Response {
    let id = match Id::parse(&id) {
        Ok(id) => id,
        Err(e) => return failure(Error::InvalidId(e)),
    };
    match gateway.workflow_detail(&id).await {
        Ok(body) => axum::Json(body).into_response(),
        Err(e) => failure(e),
    }
}

async fn cancel(State(gateway): State<Arc<Gateway>>, Path(id): Path<String>) -> Response {
    let id = match Id::parse(&id) {
        Ok(id) => id,
        Err(e) => return failure(Error::InvalidId(e)),
    };
    match gateway.cancel(&id).await {
        Ok(info) => axum::Json(serde_json::json!({
            "id": info.task_id,
            "state": broker::state_name(info.state()),
        }))
        .into_response(),
        Err(e) => failure(e),
    }
}

async fn replay(State(gateway): State<Arc<Gateway>>, Path(id): Path<String>) -> Response {
    let request = v1::ReplayDeadLettersRequest {
        task_ids: vec![id],
        ..Default::default()
    };
    match gateway.replay_dead(request).await {
        Ok(ids) => axum::Json(serde_json::json!({ "replayed": ids })).into_response(),
        Err(e) => failure(e),
    }
}

/// Which series: one task type or all, over how many minutes.
#[derive(serde::Deserialize)]
struct SeriesQuery {
    #[serde(default)]
    task: String,
    #[serde(default)]
    minutes: Option<u64>,
}

async fn series(
    State(gateway): State<Arc<Gateway>>,
    axum::extract::Query(query): axum::extract::Query<SeriesQuery>,
) -> Response {
    let task = Some(query.task.as_str()).filter(|t| !t.is_empty());
    match gateway.series(task, query.minutes.unwrap_or(60)).await {
        Ok(body) => axum::Json(body).into_response(),
        Err(e) => failure(e),
    }
}

/// The task list's filter as the page sends it.
#[derive(serde::Deserialize, Default)]
struct ListQuery {
    #[serde(default)]
    task: String,
    /// States separated by commas.
    #[serde(default)]
    state: String,
    /// Changed within this many seconds (finished, for finished states only; else submitted).
    #[serde(default)]
    since: Option<u64>,
    #[serde(default)]
    error: String,
    /// An idempotency key (with one task type), a workflow id, a parent task id.
    #[serde(default)]
    key: String,
    #[serde(default)]
    workflow: String,
    #[serde(default)]
    parent: String,
    /// Submit and finish time bounds, RFC 3339.
    #[serde(default)]
    submitted_after: String,
    #[serde(default)]
    submitted_before: String,
    #[serde(default)]
    finished_after: String,
    #[serde(default)]
    finished_before: String,
    #[serde(default)]
    page_token: String,
}

impl ListQuery {
    fn filter(&self) -> Result<crate::list::Filter, Error> {
        let mut states = Vec::new();
        for text in self
            .state
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
        {
            let state = broker::parse_state(text);
            if state == v1::TaskState::Unspecified {
                return Err(Error::BadRequest(format!(
                    "state {text:?} is no task state"
                )));
            }
            states.push(state);
        }
        let at = |text: &str, what: &str| -> Result<Option<prost_types::Timestamp>, Error> {
            if text.trim().is_empty() {
                return Ok(None);
            }
            humantime::parse_rfc3339_weak(text.trim())
                .map(|t| Some(t.into()))
                .map_err(|e| {
                    Error::BadRequest(format!(
                        "{what} {text:?} is not a time like 2026-12-07T10:00:00Z: {e}"
                    ))
                })
        };
        crate::list::Filter::parse(v1::TaskFilter {
            task: self.task.clone(),
            states: states.into_iter().map(|s| s as i32).collect(),
            finished_after: at(&self.finished_after, "finished_after")?,
            submitted_after: at(&self.submitted_after, "submitted_after")?,
            finished_before: at(&self.finished_before, "finished_before")?,
            submitted_before: at(&self.submitted_before, "submitted_before")?,
            error_contains: self.error.clone(),
            idempotency_key: self.key.clone(),
            workflow_id: self.workflow.clone(),
            parent_id: self.parent.clone(),
            within: self.since.map(|seconds| prost_types::Duration {
                seconds: i64::try_from(seconds).unwrap_or(i64::MAX),
                nanos: 0,
            }),
        })
    }
}

async fn list(
    State(gateway): State<Arc<Gateway>>,
    axum::extract::Query(query): axum::extract::Query<ListQuery>,
) -> Response {
    let filter = match query.filter() {
        Ok(f) => f,
        Err(e) => return failure(e),
    };
    match gateway
        .list_tasks(&filter, 50, &query.page_token, &crate::auth::Caller::Anyone)
        .await
    {
        Ok(page) => {
            let tasks: Vec<serde_json::Value> = page
                .tasks
                .iter()
                .map(|t| {
                    serde_json::json!({
                        "id": t.task_id, "task": t.task,
                        "state": broker::state_name(t.state()), "attempt": t.attempt,
                        "submitted_at": time(&t.submitted_at), "updated_at": time(&t.updated_at),
                        "error": t.error.as_ref().map(|e| e.message.clone()),
                    })
                })
                .collect();
            axum::Json(serde_json::json!({
                "tasks": tasks,
                "next_page_token": page.next.unwrap_or_default(),
            }))
            .into_response()
        }
        Err(e) => failure(e),
    }
}

async fn cancel_matching(
    State(gateway): State<Arc<Gateway>>,
    axum::Json(query): axum::Json<ListQuery>,
) -> Response {
    let filter = match query.filter() {
        Ok(f) => f,
        Err(e) => return failure(e),
    };
    match gateway
        .cancel_many(filter, &crate::auth::Caller::Anyone)
        .await
    {
        Ok((cancelled, finished_first)) => axum::Json(serde_json::json!({
            "cancelled": cancelled, "finished_first": finished_first,
        }))
        .into_response(),
        Err(e) => failure(e),
    }
}

/// Dead letters to purge: of one task type, or all.
#[derive(serde::Deserialize)]
struct DeadPurge {
    #[serde(default)]
    task: String,
}

async fn purge_dead(
    State(gateway): State<Arc<Gateway>>,
    axum::Json(purge): axum::Json<DeadPurge>,
) -> Response {
    match gateway.purge_dead(&purge.task).await {
        Ok(purged) => axum::Json(serde_json::json!({ "purged": purged })).into_response(),
        Err(e) => failure(e),
    }
}

/// A queue to pause or resume: the task type, and one priority or none for all.
#[derive(serde::Deserialize)]
struct QueueChange {
    task: String,
    #[serde(default)]
    priority: Option<String>,
    #[serde(default)]
    reason: String,
}

impl QueueChange {
    fn priorities(&self) -> Result<Vec<i32>, Error> {
        let priority = match self.priority.as_deref() {
            None | Some("") => return Ok(Vec::new()),
            Some("high") => v1::Priority::High,
            Some("normal") => v1::Priority::Normal,
            Some("low") => v1::Priority::Low,
            Some(other) => {
                return Err(Error::BadRequest(format!(
                    "priority {other:?} is not high, normal or low"
                )));
            }
        };
        Ok(vec![priority as i32])
    }
}

async fn pause(
    State(gateway): State<Arc<Gateway>>,
    axum::Json(change): axum::Json<QueueChange>,
) -> Response {
    change_pause(&gateway, &change, true).await
}

async fn resume(
    State(gateway): State<Arc<Gateway>>,
    axum::Json(change): axum::Json<QueueChange>,
) -> Response {
    change_pause(&gateway, &change, false).await
}

async fn purge(
    State(gateway): State<Arc<Gateway>>,
    axum::Json(change): axum::Json<QueueChange>,
) -> Response {
    let priorities = match change.priorities() {
        Ok(p) => p,
        Err(e) => return failure(e),
    };
    match gateway.purge_queue(&change.task, &priorities).await {
        Ok(purged) => {
            axum::Json(serde_json::json!({ "task": change.task, "purged": purged })).into_response()
        }
        Err(e) => failure(e),
    }
}

async fn change_pause(gateway: &Gateway, change: &QueueChange, paused: bool) -> Response {
    let priorities = match change.priorities() {
        Ok(p) => p,
        Err(e) => return failure(e),
    };
    match gateway
        .set_queue_paused(&change.task, &priorities, paused, &change.reason)
        .await
    {
        Ok(done) => {
            let priorities: Vec<&str> = done
                .pause
                .unwrap_or_default()
                .priorities()
                .map(broker::priority_name)
                .collect();
            axum::Json(serde_json::json!({ "task": done.task, "paused": priorities }))
                .into_response()
        }
        Err(e) => failure(e),
    }
}

impl Gateway {
    async fn overview(&self) -> Result<serde_json::Value, Error> {
        let live = self.workers().await?;
        let queues: Vec<serde_json::Value> = self
            .queues_of(&live)
            .await?
            .iter()
            .map(|q| {
                serde_json::json!({
                    "task": q.task, "priority": q.priority, "queued": q.queued,
                    "in_flight": q.in_flight, "redelivered": q.redelivered,
                    "dead_letters": q.dead_letters, "workers": q.workers,
                    "delivered_total": q.delivered_total,
                    "oldest_waiting_seconds": seconds(&q.oldest_waiting),
                    "paused": q.paused, "paused_since": time(&q.paused_since),
                    "paused_reason": q.paused_reason,
                })
            })
            .collect();
        let workers: Vec<serde_json::Value> = live
            .iter()
            .map(|w| {
                serde_json::json!({
                    "id": w.id, "host": w.host, "pid": w.pid, "tasks": w.tasks,
                    "running": w.running, "succeeded": w.succeeded, "failed": w.failed,
                    "heartbeat_at": time(&w.heartbeat_at),
                })
            })
            .collect();
        let dead: Vec<serde_json::Value> = self
            .list_dead("", 100)
            .await?
            .iter()
            .map(|d| {
                serde_json::json!({
                    "id": d.task_id, "task": d.task, "reason": d.reason, "error": d.error,
                    "attempt": d.attempt, "dead_at": time(&d.dead_at),
                })
            })
            .collect();
        let schedules: Vec<serde_json::Value> = self
            .list_schedules()
            .await?
            .iter()
            .map(|s| {
                let when = match &s.when {
                    Some(v1::schedule::When::Cron(cron)) => cron.clone(),
                    Some(v1::schedule::When::Every(every)) => format!("every {}s", every.seconds),
                    None => String::new(),
                };
                serde_json::json!({
                    "name": s.name, "task": s.task, "when": when, "time_zone": s.time_zone,
                    "paused": s.paused, "next_fire": time(&s.next_fires.first().cloned()),
                })
            })
            .collect();
        Ok(serde_json::json!({
            "queues": queues,
            "schedules": schedules,
            "workers": workers,
            "recent": self.recent().await?,
            "dead_letters": dead,
        }))
    }

    /// The tasks with the latest state changes, newest first, with their current state.
    async fn recent(&self) -> Result<Vec<serde_json::Value>, Error> {
        let mut events = self.broker.events.clone();
        let last = events
            .info()
            .await
            .map_err(|e| self.broker_error(e))?
            .state
            .last_sequence;
        let mut seen = std::collections::HashSet::new();
        let mut recent = Vec::new();
        let mut sequence = last;
        while sequence > 0 && last - sequence < LOOK_BACK && recent.len() < RECENT {
            let found = broker::next_message(
                &self.client,
                broker::EVENTS_STREAM,
                subject::EVENTS,
                sequence,
            )
            .await
            .map_err(|e| self.broker_error(e))?;
            sequence -= 1;
            let Some(message) = found else { continue };
            let Some(id) = message
                .headers
                .get(header::TASK_ID)
                .and_then(|v| Id::parse(v.as_str()).ok())
            else {
                continue;
            };
            if !seen.insert(id.clone()) {
                continue;
            }
            let info = match self.result(&id).await {
                Ok(Some(result)) => result,
                Ok(None) => {
                    broker::task_info(&id, &message.headers, &message.payload, message.time)
                }
                Err(_) => continue,
            };
            recent.push(serde_json::json!({
                "id": info.task_id,
                "task": info.task,
                "state": broker::state_name(info.state()),
                "attempt": info.attempt,
                "updated_at": time(&info.updated_at),
            }));
        }
        Ok(recent)
    }

    async fn task_detail(&self, id: &Id) -> Result<serde_json::Value, Error> {
        let history = self.history(id).await?;
        let current = history
            .result
            .clone()
            .or_else(|| history.events.last().cloned())
            .ok_or_else(|| Error::NotFound(id.to_string()))?;
        let name = Name::parse(&current.task).map_err(Error::InvalidName)?;
        let task_type = self.registry.get(&name).await.ok();
        // The queued event holds the arguments and the submission's trace context.
        let first = broker::next_message(
            &self.client,
            broker::EVENTS_STREAM,
            &subject::events_of(id),
            0,
        )
        .await
        .map_err(|e| self.broker_error(e))?;
        let render = |descriptor: &prost_reflect::MessageDescriptor, bytes: &[u8]| {
            DynamicMessage::decode(descriptor.clone(), bytes)
                .ok()
                .and_then(|m| {
                    let mut out = serde_json::Serializer::new(Vec::new());
                    let options = SerializeOptions::new()
                        .stringify_64_bit_integers(false)
                        .skip_default_fields(false);
                    m.serialize_with_options(&mut out, &options).ok()?;
                    serde_json::from_slice::<serde_json::Value>(&out.into_inner()).ok()
                })
                .unwrap_or(serde_json::Value::Null)
        };
        let args = match (&first, &task_type) {
            (Some(m), Some(t)) if !m.payload.is_empty() => render(&t.input, &m.payload),
            _ => serde_json::Value::Null,
        };
        let result = match (&history.result, &task_type) {
            (Some(r), Some(t)) if r.state() == v1::TaskState::Succeeded => {
                render(&t.output, &r.result)
            }
            _ => serde_json::Value::Null,
        };
        let trace_id = first
            .as_ref()
            .and_then(|m| broker::trace_id(&m.headers))
            .or_else(|| Some(current.trace_id.clone()).filter(|t| !t.is_empty()));
        let trace_url = match (&trace_id, std::env::var(crate::env::TRACE_URL_TEMPLATE)) {
            (Some(trace), Ok(template)) if !template.is_empty() => {
                Some(template.replace("{trace_id}", trace))
            }
            _ => None,
        };
        let events: Vec<serde_json::Value> = history
            .events
            .iter()
            .chain(history.result.iter())
            .map(|e| {
                serde_json::json!({
                    "state": broker::state_name(e.state()),
                    "attempt": e.attempt,
                    "at": time(&e.updated_at),
                    "error": e.error.as_ref().map(|f| f.message.clone()),
                    "progress": e.progress.as_ref().map(|p| serde_json::json!({"percent": p.percent, "message": p.message})),
                })
            })
            .collect();
        let workflow = broker::workflow::task_of(id.as_str()).map(|t| t.workflow.to_string());
        let (parent, children) = tokio::join!(self.parent_of(id), self.children(id, 1000));
        let children: Vec<serde_json::Value> = children?
            .iter()
            .map(|c| serde_json::json!({"id": c.task_id, "task": c.task}))
            .collect();
        Ok(serde_json::json!({
            "id": id.as_str(),
            "workflow": workflow,
            "parent": parent?,
            "children": children,
            "task": current.task,
            "state": broker::state_name(current.state()),
            "attempt": current.attempt,
            "updated_at": time(&current.updated_at),
            "error": current.error.as_ref().map(|f| f.message.clone()),
            "args": args,
            "result": result,
            "events": events,
            "trace_id": trace_id,
            "trace_url": trace_url,
            "at": SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or_default(),
        }))
    }

    /// A workflow as the dashboard draws it: each step with its state, the steps it comes
    /// after, and its column (how many steps come before it at most).
    async fn workflow_detail(&self, id: &Id) -> Result<serde_json::Value, Error> {
        let loaded = self.load_workflow(id).await?;
        let info = self.get_workflow(id, true).await?;
        let ended = info.state() != v1::WorkflowState::Running;
        let count = loaded.plan.after.len();
        // Each step's column: one more than the furthest of those it takes results from,
        // in an order where those come first (the plan has no cycle).
        let mut depth = vec![0usize; count];
        let mut waiting: Vec<usize> = loaded.plan.after.iter().map(Vec::len).collect();
        let mut ready: Vec<usize> = (0..count).filter(|&i| waiting[i] == 0).collect();
        while let Some(i) = ready.pop() {
            for &m in &loaded.plan.dependents[i] {
                depth[m] = depth[m].max(depth[i] + 1);
                waiting[m] -= 1;
                if waiting[m] == 0 {
                    ready.push(m);
                }
            }
        }
        let steps: Vec<serde_json::Value> = info
            .steps
            .iter()
            .enumerate()
            .map(|(i, step)| {
                let state = match (step.state(), &step.info) {
                    (v1::StepState::Submitted, Some(task)) => broker::state_name(task.state()),
                    (v1::StepState::Submitted, None) if step.elements > 0 && step.elements_succeeded == step.elements => "succeeded",
                    (v1::StepState::Submitted, None) if info.failed_step == step.name => "failed",
                    (v1::StepState::Submitted, None) if ended => "cancelled",
                    (v1::StepState::Submitted, None) => "running",
                    (v1::StepState::Skipped, _) => "skipped",
                    _ => "waiting",
                };
                let after: Vec<&str> = loaded
                    .plan
                    .after
                    .get(i)
                    .map(|deps| deps.iter().map(|&d| info.steps[d].name.as_str()).collect())
                    .unwrap_or_default();
                serde_json::json!({
                    "name": step.name,
                    "task": step.task,
                    "task_id": step.task_id,
                    "state": state,
                    "after": after,
                    "depth": depth.get(i).copied().unwrap_or_else(|| depth.iter().max().map_or(0, |d| d + 1)),
                    "on_failure": step.on_failure,
                    "map": step.elements > 0 || loaded.step(i).is_some_and(|s| !s.for_each.is_empty()),
                    "elements": step.elements,
                    "elements_succeeded": step.elements_succeeded,
                    "result": step.info.as_ref().and_then(|t| serde_json::from_str::<serde_json::Value>(&t.result_json).ok()),
                })
            })
            .collect();
        let state = match info.state() {
            v1::WorkflowState::Succeeded => "succeeded",
            v1::WorkflowState::Failed => "failed",
            v1::WorkflowState::Cancelled => "cancelled",
            _ => "running",
        };
        Ok(serde_json::json!({
            "id": id.as_str(),
            "state": state,
            "failed_step": info.failed_step,
            "error": info.error.as_ref().map(|e| e.message.clone()),
            "created_at": time(&info.created_at),
            "ended_at": time(&info.ended_at),
            "trace_id": info.trace_id,
            "steps": steps,
        }))
    }
}
