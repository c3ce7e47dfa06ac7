//! `taskwire.v1.Admin`: dead letters, task limits, workers, queues, task history and types.

use std::sync::Arc;

use taskwire::task::Name;
use taskwire::v1::{self};
use tonic::{Request, Response, Status};

use crate::tasks::parse_id;
use crate::{Error, Gateway};

#[derive(Debug, Clone)]
pub(crate) struct AdminService {
    gateway: Arc<Gateway>,
}

impl AdminService {
    pub(crate) fn new(gateway: Arc<Gateway>) -> Self {
        Self { gateway }
    }
}

impl Gateway {
    /// The limits in force for a task type: the Admin override, else the declared ones.
    pub(crate) async fn task_limits(&self, name: &Name) -> Result<v1::TaskLimitsResponse, Error> {
        let task_type = self.registry.get(name).await?;
        self.check_connected()?;
        let overridden = self
            .broker
            .limits
            .entry(name.token())
            .await
            .map_err(|e| self.broker_error(e))?
            .filter(|e| e.operation == async_nats::jetstream::kv::Operation::Put)
            .and_then(|e| <v1::TaskLimits as prost::Message>::decode(e.value).ok());
        let declared = v1::TaskLimits {
            max_concurrency: task_type.declared.max_concurrency,
            rate_limit: task_type.declared.rate_limit.clone(),
            concurrency_key_field: task_type.declared.concurrency_key_field.clone(),
            rate_limit_key_field: task_type.declared.rate_limit_key_field.clone(),
        };
        Ok(v1::TaskLimitsResponse {
            task: name.to_string(),
            overridden: overridden.is_some(),
            limits: Some(overridden.unwrap_or(declared)),
        })
    }
}

#[tonic::async_trait]
impl v1::admin_server::Admin for AdminService {
    async fn list_dead_letters(
        &self,
        request: Request<v1::ListDeadLettersRequest>,
    ) -> Result<Response<v1::ListDeadLettersResponse>, Status> {
        let req = request.into_inner();
        let dead_letters = self.gateway.list_dead(&req.task, req.limit).await?;
        Ok(Response::new(v1::ListDeadLettersResponse { dead_letters }))
    }

    async fn replay_dead_letters(
        &self,
        request: Request<v1::ReplayDeadLettersRequest>,
    ) -> Result<Response<v1::ReplayDeadLettersResponse>, Status> {
        let task_ids = self.gateway.replay_dead(request.into_inner()).await?;
        let replayed = task_ids.len() as u64;
        Ok(Response::new(v1::ReplayDeadLettersResponse {
            task_ids,
            replayed,
        }))
    }

    async fn purge_dead_letters(
        &self,
        request: Request<v1::PurgeDeadLettersRequest>,
    ) -> Result<Response<v1::PurgeDeadLettersResponse>, Status> {
        let purged = self.gateway.purge_dead(&request.into_inner().task).await?;
        Ok(Response::new(v1::PurgeDeadLettersResponse { purged }))
    }

    async fn get_task_limits(
        &self,
        request: Request<v1::GetTaskLimitsRequest>,
    ) -> Result<Response<v1::TaskLimitsResponse>, Status> {
        let name = Name::parse(&request.into_inner().task).map_err(Error::InvalidName)?;
        Ok(Response::new(self.gateway.task_limits(&name).await?))
    }

    async fn set_task_limits(
        &self,
        request: Request<v1::SetTaskLimitsRequest>,
    ) -> Result<Response<v1::TaskLimitsResponse>, Status> {
        let req = request.into_inner();
        let name = Name::parse(&req.task).map_err(Error::InvalidName)?;
        let gateway = &self.gateway;
        let task_type = gateway.registry.get(&name).await?;
        gateway.check_connected()?;
        if req.clear {
            gateway
                .broker
                .limits
                .purge(name.token())
                .await
                .map_err(|e| gateway.broker_error(e))?;
        } else {
            let limits = req.limits.unwrap_or_default();
            if !limits.rate_limit.is_empty() {
                taskwire::task::Rate::parse(&limits.rate_limit)
                    .map_err(|e| Error::BadRequest(format!("rate_limit: {e}")))?;
            }
            for (option, field, limited, limit) in [
                (
                    "concurrency_key_field",
                    &limits.concurrency_key_field,
                    limits.max_concurrency > 0,
                    "max_concurrency",
                ),
                (
                    "rate_limit_key_field",
                    &limits.rate_limit_key_field,
                    !limits.rate_limit.is_empty(),
                    "rate_limit",
                ),
            ] {
                taskwire::task::check_limit_key(&task_type.input, field, limited, limit)
                    .map_err(|e| Error::BadRequest(format!("{option}: {e}")))?;
            }
            gateway
                .broker
                .limits
                .put(name.token(), prost::Message::encode_to_vec(&limits).into())
                .await
                .map_err(|e| gateway.broker_error(e))?;
        }
        tracing::info!(task = %name, clear = req.clear, "task limits set");
        Ok(Response::new(gateway.task_limits(&name).await?))
    }

    async fn list_workers(
        &self,
        _request: Request<v1::ListWorkersRequest>,
    ) -> Result<Response<v1::ListWorkersResponse>, Status> {
        let workers = self.gateway.workers().await?;
        Ok(Response::new(v1::ListWorkersResponse { workers }))
    }

    async fn list_queues(
        &self,
        _request: Request<v1::ListQueuesRequest>,
    ) -> Result<Response<v1::ListQueuesResponse>, Status> {
        let queues = self.gateway.queues().await?;
        Ok(Response::new(v1::ListQueuesResponse { queues }))
    }

    async fn get_task_history(
        &self,
        request: Request<v1::GetTaskHistoryRequest>,
    ) -> Result<Response<v1::GetTaskHistoryResponse>, Status> {
        let id = parse_id(&request.into_inner().task_id)?;
        Ok(Response::new(self.gateway.history(&id).await?))
    }

    async fn pause_queue(
        &self,
        request: Request<v1::PauseQueueRequest>,
    ) -> Result<Response<v1::QueuePauseResponse>, Status> {
        let req = request.into_inner();
        let paused = self
            .gateway
            .set_queue_paused(&req.task, &req.priorities, true, &req.reason)
            .await?;
        Ok(Response::new(paused))
    }

    async fn resume_queue(
        &self,
        request: Request<v1::ResumeQueueRequest>,
    ) -> Result<Response<v1::QueuePauseResponse>, Status> {
        let req = request.into_inner();
        let paused = self
            .gateway
            .set_queue_paused(&req.task, &req.priorities, false, "")
            .await?;
        Ok(Response::new(paused))
    }

    async fn purge_queue(
        &self,
        request: Request<v1::PurgeQueueRequest>,
    ) -> Result<Response<v1::PurgeQueueResponse>, Status> {
        let req = request.into_inner();
        let purged = self.gateway.purge_queue(&req.task, &req.priorities).await?;
        Ok(Response::new(v1::PurgeQueueResponse { purged }))
    }

    async fn list_task_types(
        &self,
        _request: Request<v1::ListTaskTypesRequest>,
    ) -> Result<Response<v1::ListTaskTypesResponse>, Status> {
        let task_types = self
            .gateway
            .registry
            .list()
            .iter()
            .map(|t| v1::TaskType {
                name: t.name.to_string(),
                input_type: t.input.full_name().to_owned(),
                output_type: t.output.full_name().to_owned(),
                file_descriptor_set: Vec::new(),
                options: Some(t.declared.clone()),
                descriptor_hash: t.descriptor_hash.clone(),
            })
            .collect();
        Ok(Response::new(v1::ListTaskTypesResponse { task_types }))
    }
}
