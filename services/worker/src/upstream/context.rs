//! `taskwire.v1.TaskContext`, served for the handlers the runtime calls: what a handler in any
//! language asks of the attempt it runs (its progress, its children), by the task id and
//! attempt of its call.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use taskwire::TaskContext;
use taskwire::v1::task_context_server::{TaskContext as TaskContextService, TaskContextServer};
use taskwire::v1::{
    ReportProgressRequest, ReportProgressResponse, SubmitChildRequest, SubmitResponse,
    WaitForChildrenRequest, WaitForChildrenResponse,
};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

/// The attempts running on this runtime, by task id, and the address the context service
/// listens on.
pub(crate) struct Attempts {
    running: Mutex<HashMap<String, TaskContext>>,
    address: String,
}

impl Attempts {
    /// The context service's address, as the calls' metadata gives it.
    pub(crate) fn address(&self) -> &str {
        &self.address
    }

    /// Takes the attempt's reports until the guard is dropped.
    pub(crate) fn running(self: &Arc<Self>, ctx: &TaskContext) -> Running {
        let id = ctx.id().as_str().to_owned();
        self.lock().insert(id.clone(), ctx.clone());
        Running {
            attempts: Arc::clone(self),
            id,
            attempt: ctx.attempt(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, TaskContext>> {
        // Nothing holds the lock across a panic that could leave the map half-changed.
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// An attempt whose reports are taken; dropped when its call ends.
pub(crate) struct Running {
    attempts: Arc<Attempts>,
    id: String,
    attempt: u32,
}

impl Drop for Running {
    fn drop(&mut self) {
        let mut running = self.attempts.lock();
        // A later attempt of the same task may have taken its place already.
        if running
            .get(&self.id)
            .is_some_and(|c| c.attempt() == self.attempt)
        {
            running.remove(&self.id);
        }
    }
}

/// Starts the context service on `listener` until `stop`; what it answers calls about.
pub(crate) fn serve(listener: tokio::net::TcpListener, stop: CancellationToken) -> Arc<Attempts> {
    let address = listener
        .local_addr()
        .map(|a| format!("http://{a}"))
        .unwrap_or_default();
    let attempts = Arc::new(Attempts {
        running: Mutex::new(HashMap::new()),
        address,
    });
    let service = TaskContextServer::new(Service {
        attempts: Arc::clone(&attempts),
    });
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    tokio::spawn(async move {
        let served = tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming_shutdown(incoming, stop.cancelled_owned())
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "the task context service stopped");
        }
    });
    attempts
}

struct Service {
    attempts: Arc<Attempts>,
}

impl Service {
    fn attempt(&self, task_id: &str, attempt: u32, what: &str) -> Result<TaskContext, Status> {
        match self.attempts.lock().get(task_id) {
            Some(ctx) if ctx.attempt() == attempt => Ok(ctx.clone()),
            _ => Err(Status::not_found(format!(
                "attempt {attempt} of task {task_id:?} is not running on this worker; {what} with \
                 the taskwire-task-id and taskwire-attempt of the call being served"
            ))),
        }
    }
}

#[tonic::async_trait]
impl TaskContextService for Service {
    async fn report_progress(
        &self,
        request: Request<ReportProgressRequest>,
    ) -> Result<Response<ReportProgressResponse>, Status> {
        let request = request.into_inner();
        let ctx = self.attempt(&request.task_id, request.attempt, "report progress")?;
        let mut progress = request.progress.unwrap_or_default();
        progress.percent = progress.percent.clamp(0.0, 100.0);
        ctx.report(progress);
        Ok(Response::new(ReportProgressResponse {}))
    }

    async fn submit_child(
        &self,
        request: Request<SubmitChildRequest>,
    ) -> Result<Response<SubmitResponse>, Status> {
        let request = request.into_inner();
        let ctx = self.attempt(&request.task_id, request.attempt, "submit children")?;
        let child = request
            .child
            .ok_or_else(|| Status::invalid_argument("name the child to submit (child)"))?;
        Ok(Response::new(ctx.submit_child_with(child).await?))
    }

    async fn wait_for_children(
        &self,
        request: Request<WaitForChildrenRequest>,
    ) -> Result<Response<WaitForChildrenResponse>, Status> {
        let request = request.into_inner();
        let ctx = self.attempt(&request.task_id, request.attempt, "wait for children")?;
        let ended = ctx.children_ended().await?;
        Ok(Response::new(WaitForChildrenResponse {
            ended: ended.is_some(),
            children: ended.unwrap_or_default(),
        }))
    }
}
