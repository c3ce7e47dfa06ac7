//! Child tasks: submitted by running tasks through their worker runtime, recorded with their
//! parent, listed by Get, and cancelled with their parent.

use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt as _;
use prost::Message as _;
use taskwire::task::{Id, Name};
use taskwire::v1::{self, TaskState};
use taskwire_protocol::{self as broker, children, header};
use tokio_util::sync::CancellationToken;

use crate::cancel::Cancelled;
use crate::submit::publish_error;
use crate::{Error, Gateway};

/// Child submissions handled at once by one gateway.
const CONCURRENCY: usize = 64;

/// The most children Get lists.
const MAX_LISTED: usize = 1000;

/// Answers the children worker runtimes submit, until `stop`.
pub(crate) fn start(gateway: Arc<Gateway>, stop: CancellationToken) {
    tokio::spawn(async move {
        loop {
            let subscribed = gateway
                .client
                .queue_subscribe(children::SUBMIT, children::GATEWAYS.into())
                .await;
            let requests = match subscribed {
                Ok(requests) => requests,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot take child submissions; trying again");
                    tokio::select! {
                        () = stop.cancelled() => return,
                        () = tokio::time::sleep(std::time::Duration::from_secs(1)) => continue,
                    }
                }
            };
            let answering = requests.for_each_concurrent(CONCURRENCY, |request| {
                let gateway = Arc::clone(&gateway);
                async move { gateway.answer_child(request).await }
            });
            tokio::select! {
                () = stop.cancelled() => return,
                () = answering => {}
            }
        }
    });
}

impl Gateway {
    async fn answer_child(&self, request: async_nats::Message) {
        let Some(reply) = request.reply.clone() else {
            return;
        };
        let answer = match v1::ChildSubmission::decode(request.payload.as_ref()) {
            Ok(submission) => match self.submit_child(submission).await {
                Ok(response) => v1::ChildSubmitted {
                    code: 0,
                    message: String::new(),
                    response: Some(response),
                },
                Err(e) => v1::ChildSubmitted {
                    code: e.code() as u32,
                    message: e.to_string(),
                    response: None,
                },
            },
            Err(e) => v1::ChildSubmitted {
                code: tonic::Code::InvalidArgument as u32,
                message: format!("the child submission does not decode: {e}"),
                response: None,
            },
        };
        if let Err(e) = self
            .client
            .publish(reply, answer.encode_to_vec().into())
            .await
        {
            tracing::debug!(error = %e, "cannot answer a child submission; its runtime asks again");
        }
    }

    /// Checks and stores a child: recorded with its parent first, then the parent's cancel
    /// looked at, then the child stored (or found, when its parent's attempt ran before).
    pub(crate) async fn submit_child(
        &self,
        submission: v1::ChildSubmission,
    ) -> Result<v1::SubmitResponse, Error> {
        self.workflows_open()?;
        let parent = Id::parse(&submission.parent_id).map_err(Error::InvalidId)?;
        let parent_task = Name::parse(&submission.parent_task).map_err(Error::InvalidName)?;
        let mut child = submission
            .child
            .ok_or_else(|| Error::BadRequest("the submission names no child".into()))?;
        let options = child.options.get_or_insert_with(Default::default);
        if options.idempotency_key.is_empty() {
            options.idempotency_key = children::index_key(submission.index);
        }
        let traceparent = (!submission.traceparent.is_empty()).then_some(submission.traceparent);
        let prepared = self
            .prepare(child, Some(&children::scope(&parent)))
            .await?
            .in_trace(traceparent);
        if let Some(ended) = self.result(&parent).await? {
            return Err(parent_ended(&parent, ended.state()));
        }
        let (id, name) = (prepared.id().clone(), prepared.name().clone());
        self.record_child(&parent, &parent_task, &id, &name).await?;
        // A cancel of the parent that began before the child was recorded is seen here; one
        // that began after finds the child recorded and cancels it.
        if self.cancel_marked(&parent).await? {
            self.cancel_child(&id, &name).await?;
            return Err(parent_ended(&parent, TaskState::Cancelled));
        }
        self.publish(prepared).await
    }

    async fn record_child(
        &self,
        parent: &Id,
        parent_task: &Name,
        child: &Id,
        task: &Name,
    ) -> Result<(), Error> {
        let mut up = async_nats::HeaderMap::new();
        up.insert(header::TASK_ID, parent.as_str());
        up.insert(header::TASK, parent_task.as_str());
        let mut down = async_nats::HeaderMap::new();
        down.insert(header::TASK_ID, child.as_str());
        down.insert(header::TASK, task.as_str());
        let js = &self.broker.jetstream;
        let (up, down) = tokio::join!(
            js.publish_with_headers(
                children::parent(child),
                up,
                Bytes::copy_from_slice(parent.as_str().as_bytes())
            ),
            js.publish_with_headers(children::child(parent, child), down, Bytes::new()),
        );
        let (up, down) = (up.map_err(publish_error)?, down.map_err(publish_error)?);
        let (up, down) = tokio::join!(up, down);
        up.map_err(publish_error)?;
        down.map_err(publish_error)?;
        Ok(())
    }

    async fn cancel_marked(&self, id: &Id) -> Result<bool, Error> {
        Ok(self
            .broker
            .cancelled
            .entry(id.as_str())
            .await
            .map_err(|e| self.broker_error(e))?
            .is_some_and(|e| e.operation == async_nats::jetstream::kv::Operation::Put))
    }

    /// The task that submitted `id`, if one did.
    pub(crate) async fn parent_of(&self, id: &Id) -> Result<Option<String>, Error> {
        if !self.workflows {
            return Ok(None);
        }
        let found = self
            .broker
            .last_message_on(broker::WORKFLOWS_STREAM, &children::parent(id))
            .await
            .map_err(|e| self.read_error(e))?;
        Ok(found.and_then(|m| {
            m.headers
                .get(header::TASK_ID)
                .map(|v| v.as_str().to_owned())
        }))
    }

    /// The children `id` submitted, in the order they were recorded, at most `limit`.
    pub(crate) async fn children(
        &self,
        id: &Id,
        limit: usize,
    ) -> Result<Vec<v1::TaskChild>, Error> {
        if !self.workflows {
            return Ok(Vec::new());
        }
        let filter = children::children_of(id);
        let mut found: Vec<v1::TaskChild> = Vec::new();
        let mut from = 1;
        while found.len() < limit {
            let next = broker::next_message(&self.client, broker::WORKFLOWS_STREAM, &filter, from)
                .await
                .map_err(|e| self.read_error(e))?;
            let Some(message) = next else { break };
            from = message.sequence + 1;
            let (Some(child), Some(task)) = (
                message.headers.get(header::TASK_ID),
                message.headers.get(header::TASK),
            ) else {
                continue;
            };
            // A record written again (a submit tried twice) keeps its first place.
            if found.iter().all(|c| c.task_id != child.as_str()) {
                found.push(v1::TaskChild {
                    task_id: child.as_str().to_owned(),
                    task: task.as_str().to_owned(),
                });
            }
        }
        Ok(found)
    }

    /// What Get adds to a task's state: its parent and its children.
    pub(crate) async fn with_family(&self, mut info: v1::TaskInfo) -> Result<v1::TaskInfo, Error> {
        let id = Id::parse(&info.task_id).map_err(Error::InvalidId)?;
        let (parent, children) = tokio::join!(self.parent_of(&id), self.children(&id, MAX_LISTED));
        info.parent_id = parent?.unwrap_or_default();
        info.children = children?;
        Ok(info)
    }

    /// Cancels the children of a cancelled task that have not ended, and theirs in turn.
    pub(crate) async fn cancel_children(&self, id: &Id) -> Result<(), Error> {
        let mut parents = vec![id.clone()];
        while let Some(parent) = parents.pop() {
            for child in self.children(&parent, usize::MAX).await? {
                let (Ok(child_id), Ok(name)) =
                    (Id::parse(&child.task_id), Name::parse(&child.task))
                else {
                    continue;
                };
                if self.cancel_child(&child_id, &name).await? {
                    parents.push(child_id);
                }
            }
        }
        Ok(())
    }

    /// Cancels a child whether or not it was stored yet (a child recorded by a submit still
    /// under way is then refused by the broker as one that has ended); false when it had ended.
    async fn cancel_child(&self, id: &Id, name: &Name) -> Result<bool, Error> {
        if self.result(id).await?.is_some() {
            return Ok(false);
        }
        let last = self.last_event(id).await?;
        let scheduled = last
            .as_ref()
            .is_some_and(|e| e.state() == TaskState::Scheduled);
        let attempt = last.map_or(0, |e| e.attempt);
        Ok(
            match self.cancel_stored(id, name, attempt, scheduled).await? {
                Cancelled::Now | Cancelled::ByWorker(_) => true,
                Cancelled::Finished(_) => false,
            },
        )
    }
}

fn parent_ended(parent: &Id, state: TaskState) -> Error {
    Error::ParentEnded {
        parent: parent.to_string(),
        why: match state {
            TaskState::Cancelled => "was cancelled".to_owned(),
            other => format!("has ended ({})", broker::state_name(other)),
        },
    }
}
