//! Child tasks: submitted by running tasks through their worker runtime, recorded with their
//! parent, listed by Get, and cancelled with their parent.

use std::sync::Arc;

use bytes::Bytes;
use futures::{StreamExt as _, TryStreamExt as _};
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
/// Children records read a round trip.
const CHILDREN_BATCH: usize = 256;

/// Answers the children worker runtimes submit, until `stop`.
pub(crate) fn start(gateway: Arc<Gateway>, stop: CancellationToken) {
    tokio::spawn(async move {
        loop {
            let subscribed = gateway
                .client
                .queue_subscribe("taskwire.children.*", children::GATEWAYS.into())
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
                async move {
                    match request.subject.as_str() {
                        children::SUBMIT => gateway.answer_child(request).await,
                        children::WAIT => gateway.answer_wait(request).await,
                        children::PARK => gateway.answer_park(request).await,
                        _ => {}
                    }
                }
            });
            tokio::select! {
                () = stop.cancelled() => return,
                () = answering => {}
            }
        }
    });
}

/// Answers a request with `answer`.
async fn reply(
    client: &async_nats::Client,
    request: &async_nats::Message,
    answer: impl prost::Message,
) {
    let Some(to) = request.reply.clone() else {
        return;
    };
    if let Err(e) = client.publish(to, answer.encode_to_vec().into()).await {
        tracing::debug!(error = %e, "cannot answer a worker runtime; it asks again");
    }
}

fn code_of(e: &Error) -> u32 {
    e.code() as u32
}

impl Gateway {
    async fn answer_wait(&self, request: async_nats::Message) {
        let answer = match v1::ChildrenWait::decode(request.payload.as_ref()) {
            Ok(wait) => match self.children_outcomes(&wait.parent_id).await {
                Ok(ended) => v1::ChildrenWaited {
                    ended: ended.is_some(),
                    children: ended.unwrap_or_default(),
                    ..Default::default()
                },
                Err(e) => v1::ChildrenWaited {
                    code: code_of(&e),
                    message: e.to_string(),
                    ..Default::default()
                },
            },
            Err(e) => v1::ChildrenWaited {
                code: tonic::Code::InvalidArgument as u32,
                message: format!("the wait does not decode: {e}"),
                ..Default::default()
            },
        };
        reply(&self.client, &request, answer).await;
    }

    async fn answer_park(&self, request: async_nats::Message) {
        let answer = match v1::ChildrenPark::decode(request.payload.as_ref()) {
            Ok(park) => match self.park(park).await {
                Ok(resumed) => v1::ChildrenParked {
                    resumed,
                    ..Default::default()
                },
                Err(e) => v1::ChildrenParked {
                    code: code_of(&e),
                    message: e.to_string(),
                    ..Default::default()
                },
            },
            Err(e) => v1::ChildrenParked {
                code: tonic::Code::InvalidArgument as u32,
                message: format!("the park does not decode: {e}"),
                ..Default::default()
            },
        };
        reply(&self.client, &request, answer).await;
    }

    async fn answer_child(&self, request: async_nats::Message) {
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
        reply(&self.client, &request, answer).await;
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
        let key = options.idempotency_key.clone();
        let traceparent = (!submission.traceparent.is_empty()).then_some(submission.traceparent);
        let prepared = self.prepare(child, None).await?;
        let id = children::child_id(&parent, prepared.name(), &key);
        let prepared = prepared.with_id(id).in_trace(traceparent);
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
        // Each stored once: a child submitted again (by a retried parent) keeps its place.
        let mut up = async_nats::HeaderMap::new();
        up.insert(header::TASK_ID, parent.as_str());
        up.insert(header::TASK, parent_task.as_str());
        up.insert(header::EXPECTED_LAST_SUBJECT_SEQUENCE, "0");
        let mut down = async_nats::HeaderMap::new();
        down.insert(header::TASK_ID, child.as_str());
        down.insert(header::TASK, task.as_str());
        down.insert(header::EXPECTED_LAST_SUBJECT_SEQUENCE, "0");
        let (up, down) = tokio::join!(
            self.publish_if_last(
                children::parent(child),
                up,
                Bytes::copy_from_slice(parent.as_str().as_bytes())
            ),
            self.publish_if_last(children::child(parent, child), down, Bytes::new()),
        );
        up?;
        down?;
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
        // Only a child's id has the shape, and only a child has a parent.
        if !self.workflows || !children::is_child(id.as_str()) {
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
            // A batch a round trip: a parent of thousands is read in a few.
            let want = (limit - found.len()).min(CHILDREN_BATCH);
            let batch = broker::next_messages(
                &self.client,
                broker::WORKFLOWS_STREAM,
                &filter,
                broker::ReadFrom::Sequence(from),
                want,
            )
            .await
            .map_err(|e| self.read_error(e))?;
            let ended = batch.len() < want;
            for message in batch {
                from = message.sequence + 1;
                if let (Some(child), Some(task)) = (
                    message.headers.get(header::TASK_ID),
                    message.headers.get(header::TASK),
                ) {
                    found.push(v1::TaskChild {
                        task_id: child.as_str().to_owned(),
                        task: task.as_str().to_owned(),
                    });
                }
            }
            if ended {
                break;
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

/// A parent's waiting record, as last stored.
struct Waiting {
    sequence: u64,
    resumed: bool,
    /// The number of the resumed copy that follows this park.
    number: u32,
    park: v1::ChildrenPark,
}

impl Gateway {
    /// The outcomes of every child of `parent` once all have ended; `None` while some have not.
    pub(crate) async fn children_outcomes(
        &self,
        parent: &str,
    ) -> Result<Option<Vec<v1::TaskInfo>>, Error> {
        self.workflows_open()?;
        let parent = Id::parse(parent).map_err(Error::InvalidId)?;
        if !self.children_ended(&parent, false).await? {
            return Ok(None);
        }
        // Their results read side by side, answered in the children's order.
        let outcomes = futures::stream::iter(self.children(&parent, usize::MAX).await?)
            .map(|child| async move {
                let id = Id::parse(&child.task_id).map_err(Error::InvalidId)?;
                Ok::<_, Error>(self.result(&id).await?.unwrap_or_else(|| {
                    // Marked ended, but its result ran out since: its end is all that is known.
                    v1::TaskInfo {
                        task_id: child.task_id,
                        task: child.task,
                        state: TaskState::Expired as i32,
                        ..Default::default()
                    }
                }))
            })
            .buffered(CONCURRENCY)
            .try_collect::<Vec<_>>()
            .await?;
        Ok(Some(outcomes))
    }

    /// Whether every child recorded for `parent` is marked ended. With `heal` (when the
    /// parent parks: its run is over, so none of its submits is under way), children that were
    /// recorded but never stored (their submit stopped halfway) are given a failed outcome, and
    /// those whose end was not marked yet are marked, so that a parent never waits for a child
    /// that cannot end.
    async fn children_ended(&self, parent: &Id, heal: bool) -> Result<bool, Error> {
        let (all, ended) = (children::children_of(parent), children::ended_of(parent));
        let (recorded, ended) = tokio::join!(self.count(&all), self.count(&ended));
        if ended? >= recorded? {
            return Ok(true);
        }
        if !heal {
            return Ok(false);
        }
        let mut all = true;
        for child in self.children(parent, usize::MAX).await? {
            let (Ok(id), Ok(name)) = (Id::parse(&child.task_id), Name::parse(&child.task)) else {
                continue;
            };
            if self.result(&id).await?.is_some() {
                self.mark_ended(parent, &id).await?;
                continue;
            }
            if self.last_event(&id).await?.is_some() {
                all = false;
                continue;
            }
            // Recorded, never stored: it fails (unless it just ended), and its end counts.
            let failed =
                broker::ResultMessage::new(&name, &id, TaskState::Failed, 0, "unsubmitted", None);
            let body = broker::failure_body("its submit did not complete", false);
            self.record_outcome(&name, &id, &failed, body.clone())
                .await?;
            self.publish_if_last(
                broker::subject::result(&name, &id),
                failed.to_headers(),
                body,
            )
            .await?;
            self.mark_ended(parent, &id).await?;
        }
        Ok(all)
    }

    /// How many messages of the workflows stream match `filter` (one a subject).
    async fn count(&self, filter: &str) -> Result<u64, Error> {
        use async_nats::jetstream::consumer;
        let js = &self.broker.jetstream;
        let mut created: consumer::Consumer<consumer::pull::Config> = js
            .create_consumer_on_stream(
                consumer::pull::Config {
                    filter_subject: filter.to_owned(),
                    deliver_policy: consumer::DeliverPolicy::All,
                    ack_policy: consumer::AckPolicy::None,
                    inactive_threshold: std::time::Duration::from_secs(10),
                    memory_storage: true,
                    num_replicas: 1,
                    ..Default::default()
                },
                broker::WORKFLOWS_STREAM,
            )
            .await
            .map_err(|e| self.broker_error(e))?;
        let pending = created
            .info()
            .await
            .map(|i| i.num_pending)
            .map_err(|e| self.broker_error(e))?;
        let name = created.cached_info().name.clone();
        let _ = js
            .delete_consumer_from_stream(&name, broker::WORKFLOWS_STREAM)
            .await;
        Ok(pending)
    }

    async fn mark_ended(&self, parent: &Id, child: &Id) -> Result<(), Error> {
        self.broker
            .jetstream
            .publish(children::ended(parent, child), Bytes::new())
            .await
            .map_err(publish_error)?
            .await
            .map_err(publish_error)?;
        Ok(())
    }

    async fn waiting(&self, parent: &Id) -> Result<Option<Waiting>, Error> {
        let found = self
            .broker
            .last_message_on(broker::WORKFLOWS_STREAM, &children::waiting(parent))
            .await
            .map_err(|e| self.read_error(e))?;
        let Some(found) = found else { return Ok(None) };
        let park = v1::ChildrenPark::decode(found.payload.as_ref()).map_err(|e| {
            Error::Broker(format!(
                "the waiting record of {parent} does not decode: {e}"
            ))
        })?;
        Ok(Some(Waiting {
            sequence: found.sequence,
            resumed: found.headers.get(header::STATE).map(|v| v.as_str())
                == Some(children::RESUMED),
            number: found
                .headers
                .get(header::RESUME)
                .and_then(|v| v.as_str().parse().ok())
                .unwrap_or_default(),
            park,
        }))
    }

    /// Stores a waiting record in place of the one at `sequence` (0: none); false when another
    /// took its place first.
    async fn store_waiting(
        &self,
        parent: &Id,
        sequence: u64,
        state: &str,
        number: u32,
        park: &v1::ChildrenPark,
    ) -> Result<bool, Error> {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(
            header::EXPECTED_LAST_SUBJECT_SEQUENCE,
            sequence.to_string().as_str(),
        );
        headers.insert(header::STATE, state);
        headers.insert(header::RESUME, number.to_string().as_str());
        self.publish_if_last(
            children::waiting(parent),
            headers,
            park.encode_to_vec().into(),
        )
        .await
    }

    /// Parks a parent that waits for its children: its `waiting` event, its message kept, and
    /// at once back in line if they have all ended meanwhile. True when it is back in line.
    pub(crate) async fn park(&self, mut park: v1::ChildrenPark) -> Result<bool, Error> {
        self.workflows_open()?;
        let parent = Id::parse(&park.parent_id).map_err(Error::InvalidId)?;
        let name = Name::parse(&park.parent_task).map_err(Error::InvalidName)?;
        if self.result(&parent).await?.is_some() {
            // Cancelled meanwhile: nothing is to resume.
            return Ok(false);
        }
        // A later attempt may have started meanwhile (a delivery that came back while this
        // one ran): the resumed run goes on with it, never with an earlier one.
        let latest = self.last_event(&parent).await?.map_or(0, |e| e.attempt);
        park.attempt = park.attempt.max(latest);
        // The copy that ran (0: the task's first message); the one to follow is the next.
        let ran: u32 = park
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(header::RESUME))
            .and_then(|h| h.value.parse().ok())
            .unwrap_or_default();
        let number = ran + 1;
        let waiting = loop {
            let last = self.waiting(&parent).await?;
            let sequence = match &last {
                // The same park again (its answer was lost): it stands, resumed or not.
                Some(w) if w.number >= number => break w.number,
                Some(w) => w.sequence,
                None => 0,
            };
            // The event first: a resumed copy, once stored, starts after it.
            let replay = park
                .headers
                .iter()
                .find(|h| h.name == header::REPLAY)
                .and_then(|h| h.value.parse().ok())
                .unwrap_or_default();
            let mut event = broker::Event::new(&name, &parent, TaskState::Waiting, park.attempt)
                .in_series(replay)
                .in_resume(number);
            event.msg_id = Some(format!("{parent}.waiting.{number}"));
            let headers = event.to_headers();
            self.broker
                .jetstream
                .publish_with_headers(
                    broker::subject::event(&name, &parent),
                    headers,
                    Bytes::new(),
                )
                .await
                .map_err(publish_error)?
                .await
                .map_err(publish_error)?;
            if self
                .store_waiting(&parent, sequence, children::WAITING, number, &park)
                .await?
            {
                break number;
            }
        };
        tracing::debug!(parent = %parent, resume = waiting, "parked until its children have ended");
        self.resume_if_ended(&parent, true).await
    }

    /// Puts a waiting parent back in line once every child has ended; true when this call or
    /// an earlier one did.
    async fn resume_if_ended(&self, parent: &Id, heal: bool) -> Result<bool, Error> {
        let Some(waiting) = self.waiting(parent).await? else {
            return Ok(false);
        };
        if waiting.resumed {
            return Ok(true);
        }
        if self.result(parent).await?.is_some() || !self.children_ended(parent, heal).await? {
            return Ok(false);
        }
        let park = &waiting.park;
        let mut headers = async_nats::HeaderMap::new();
        for h in &park.headers {
            // The broker's own headers (a fired delay's or a schedule's among them) stay
            // behind, and so do its attempt and resume number; an expiry is for starting, and
            // it started.
            let own = [
                header::ATTEMPT,
                header::RESUME,
                header::EXPIRES_AT,
                header::TASK_ID,
            ];
            let broker_own = h
                .name
                .get(..5)
                .is_some_and(|p| p.eq_ignore_ascii_case("nats-"));
            if broker_own || own.iter().any(|o| o.eq_ignore_ascii_case(&h.name)) {
                continue;
            }
            headers.append(h.name.as_str(), h.value.as_str());
        }
        // Its id in so many words: a schedule's task has none of its own otherwise (its id
        // comes from its place in the stream).
        headers.insert(header::TASK_ID, parent.as_str());
        headers.insert(
            header::MSG_ID,
            children::resume_msg_id(parent, waiting.number).as_str(),
        );
        headers.insert(header::ATTEMPT, park.attempt.to_string().as_str());
        headers.insert(header::RESUME, waiting.number.to_string().as_str());
        let priority = broker::priority_of(&headers);
        let name = Name::parse(&park.parent_task).map_err(Error::InvalidName)?;
        self.broker
            .jetstream
            .publish_with_headers(
                broker::subject::task_at(&name, priority),
                headers,
                Bytes::from(park.args.clone()),
            )
            .await
            .map_err(publish_error)?
            .await
            .map_err(publish_error)?;
        // Stored (once: its de-duplication id), then the record says so; a gateway that did
        // the same meanwhile changed nothing.
        self.store_waiting(
            parent,
            waiting.sequence,
            children::RESUMED,
            waiting.number,
            park,
        )
        .await?;
        tracing::info!(parent = %parent, resume = waiting.number, "its children have ended; the parent runs again");
        Ok(true)
    }

    /// A child's result was stored: its end is marked, and its parent, if it waits, resumes
    /// when it was the last.
    pub(crate) async fn child_ended(
        &self,
        message: &async_nats::jetstream::Message,
    ) -> Result<(), Error> {
        // taskwire.results.<child>.child-task.<task>
        let Some(child) = message
            .subject
            .split('.')
            .nth(2)
            .and_then(|c| Id::parse(c).ok())
        else {
            return Ok(());
        };
        let Some(parent) = self.parent_of(&child).await? else {
            return Ok(());
        };
        let parent = Id::parse(&parent).map_err(Error::InvalidId)?;
        self.mark_ended(&parent, &child).await?;
        self.resume_if_ended(&parent, false).await?;
        Ok(())
    }
}
