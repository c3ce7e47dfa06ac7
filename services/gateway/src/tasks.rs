//! `taskwire.v1.Tasks`: the gRPC layer over submitting, reading, waiting on and cancelling
//! tasks.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use taskwire::task::Id;
use taskwire::v1::{self, TaskState};
use tonic::{Request, Response, Status};

use crate::auth::{self, Op};
use crate::list::Filter;
use crate::reads::{TaskInfoStream, wait_timeout};
use crate::{Error, Gateway};

#[derive(Debug, Clone)]
pub(crate) struct TasksService {
    gateway: Arc<Gateway>,
}

pub(crate) fn parse_id(id: &str) -> Result<Id, Error> {
    Id::parse(id).map_err(Error::InvalidId)
}

impl TasksService {
    pub(crate) fn new(gateway: Arc<Gateway>) -> Self {
        Self { gateway }
    }
}

#[tonic::async_trait]
impl v1::tasks_server::Tasks for TasksService {
    async fn submit(
        &self,
        request: Request<v1::SubmitRequest>,
    ) -> Result<Response<v1::SubmitResponse>, Status> {
        auth::check(&request, Op::Submit, Some(&request.get_ref().task))?;
        let scope = auth::caller(&request).key_scope();
        let req = request.into_inner();
        let task = req.task.clone();
        match self.gateway.submit(req, scope.as_deref()).await {
            Ok(resp) => {
                tracing::debug!(task, task_id = resp.task_id, "submitted");
                Ok(Response::new(resp))
            }
            Err(e) => {
                tracing::debug!(task, error = %e, "submit refused");
                Err(e.into())
            }
        }
    }

    async fn submit_many(
        &self,
        request: Request<tonic::Streaming<v1::SubmitRequest>>,
    ) -> Result<Response<v1::SubmitManyResponse>, Status> {
        let caller = auth::caller(&request);
        let response = self
            .gateway
            .submit_many(request.into_inner(), &caller)
            .await?;
        tracing::debug!(
            submitted = response.submitted,
            refused = response.refused,
            "submitted many"
        );
        Ok(Response::new(response))
    }

    type WatchStream = TaskInfoStream;

    async fn watch(
        &self,
        request: Request<v1::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let id = parse_id(&request.get_ref().task_id)?;
        if auth::restricted(&request) {
            let info = self.gateway.state(&id).await?;
            auth::check_known(&request, Op::Read, &info.task_id, &info.task)?;
        }
        let req = request.into_inner();
        let stream = Arc::clone(&self.gateway)
            .watch(id, req.include_json)
            .await?;
        Ok(Response::new(stream))
    }

    type SubmitAndWaitStream = TaskInfoStream;

    async fn submit_and_wait(
        &self,
        request: Request<v1::SubmitAndWaitRequest>,
    ) -> Result<Response<Self::SubmitAndWaitStream>, Status> {
        let task = request
            .get_ref()
            .submit
            .as_ref()
            .map(|s| s.task.clone())
            .unwrap_or_default();
        auth::check(&request, Op::Submit, Some(&task))?;
        auth::check(&request, Op::Read, Some(&task))?;
        let scope = auth::caller(&request).key_scope();
        let req = request.into_inner();
        let timeout = wait_timeout(req.timeout);
        let json = req.include_json;
        let final_only = req.final_only;
        let gateway = Arc::clone(&self.gateway);
        let (first, results) = gateway
            .submit_subscribed(req.submit.unwrap_or_default(), scope.as_deref())
            .await?;
        if !matches!(first.state(), TaskState::Queued | TaskState::Scheduled) {
            let first = gateway.with_json(first, json).await?;
            return Ok(Response::new(Box::pin(futures::stream::iter([Ok(first)]))));
        }
        let id = parse_id(&first.task_id)?;
        let last = futures::stream::once(async move {
            // Subscribed before the task was stored: nothing can have been missed, so the
            // stream is only looked at again for long tasks.
            let info = gateway
                .wait_on(results, &id, timeout, Duration::from_secs(1))
                .await?;
            Ok(gateway.with_json(info, json).await?)
        });
        if final_only {
            return Ok(Response::new(Box::pin(last)));
        }
        let first = self.gateway.with_json(first, json).await?;
        Ok(Response::new(Box::pin(
            futures::stream::iter([Ok(first)]).chain(last),
        )))
    }

    async fn get(
        &self,
        request: Request<v1::GetRequest>,
    ) -> Result<Response<v1::TaskInfo>, Status> {
        let id = parse_id(&request.get_ref().task_id)?;
        let info = self.gateway.state(&id).await?;
        auth::check_known(&request, Op::Read, &info.task_id, &info.task)?;
        let req = request.into_inner();
        let mut info = self.gateway.with_family(info).await?;
        info.submitted_at = self.gateway.submitted_at(&info).await?.map(Into::into);
        Ok(Response::new(
            self.gateway.with_json(info, req.include_json).await?,
        ))
    }

    async fn wait(
        &self,
        request: Request<v1::WaitRequest>,
    ) -> Result<Response<v1::TaskInfo>, Status> {
        let id = parse_id(&request.get_ref().task_id)?;
        if auth::restricted(&request) {
            let known = self.gateway.state(&id).await?;
            auth::check_known(&request, Op::Read, &known.task_id, &known.task)?;
        }
        let req = request.into_inner();
        let timeout = wait_timeout(req.timeout);
        let info = self.gateway.wait(&id, timeout).await?;
        Ok(Response::new(
            self.gateway.with_json(info, req.include_json).await?,
        ))
    }

    async fn cancel(
        &self,
        request: Request<v1::CancelRequest>,
    ) -> Result<Response<v1::TaskInfo>, Status> {
        let id = parse_id(&request.get_ref().task_id)?;
        if auth::restricted(&request) {
            let known = self.gateway.state(&id).await?;
            auth::check_known(&request, Op::Cancel, &known.task_id, &known.task)?;
        }
        Ok(Response::new(self.gateway.cancel(&id).await?))
    }

    async fn list(
        &self,
        request: Request<v1::ListTasksRequest>,
    ) -> Result<Response<v1::ListTasksResponse>, Status> {
        let caller = auth::caller(&request);
        let req = request.into_inner();
        let filter = Filter::parse(req.filter.unwrap_or_default())?;
        let page = self
            .gateway
            .list_tasks(&filter, req.page_size, &req.page_token, &caller)
            .await?;
        let mut tasks = Vec::with_capacity(page.tasks.len());
        for info in page.tasks {
            tasks.push(self.gateway.with_json(info, req.include_json).await?);
        }
        Ok(Response::new(v1::ListTasksResponse {
            tasks,
            next_page_token: page.next.unwrap_or_default(),
            examined: page.examined,
        }))
    }

    async fn cancel_many(
        &self,
        request: Request<v1::CancelManyRequest>,
    ) -> Result<Response<v1::CancelManyResponse>, Status> {
        let caller = auth::caller(&request);
        let filter = Filter::parse(request.into_inner().filter.unwrap_or_default())?;
        let (cancelled, finished_first) = self.gateway.cancel_many(filter, &caller).await?;
        Ok(Response::new(v1::CancelManyResponse {
            cancelled,
            finished_first,
        }))
    }
}
