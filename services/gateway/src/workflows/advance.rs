//! Advancing workflows: every gateway pulls from the two durable consumers, new workflows and
//! step results; whichever takes a message starts what comes next, then acks. A gateway that
//! dies midway leaves the message unacked, so another takes it again: every step it submits
//! has the id of its place in the workflow, every join is a compare-and-set, the end is stored
//! once, so doing it again changes nothing.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_nats::jetstream::{self, AckKind, consumer::PullConsumer};
use bytes::Bytes;
use futures::StreamExt as _;
use prost::Message as _;
use taskwire::task::{Id, Name};
use taskwire::v1::{self, TaskState, WorkflowState};
use taskwire_protocol::{self as broker, header, workflow};
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use super::{Loaded, plan};
use crate::submit::{Prepared, overrides, placement, publish_error};
use crate::{Error, Gateway};

/// How long a message may be held before another gateway takes it again.
pub(crate) const ACK_WAIT: Duration = Duration::from_secs(30);

/// Messages handled at once by one gateway.
const CONCURRENCY: usize = 64;

/// Pulls from both consumers until `stop`.
pub(crate) fn start(
    gateway: Arc<Gateway>,
    starts: PullConsumer,
    steps: PullConsumer,
    stop: CancellationToken,
) {
    for (consumer, kind) in [(starts, Kind::Start), (steps, Kind::Step)] {
        let gateway = Arc::clone(&gateway);
        let stop = stop.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = pull(&gateway, &consumer, kind) => {}
                }
                // The stream of messages broke (the broker out of reach): again, soon.
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
    }
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    Start,
    Step,
}

async fn pull(gateway: &Arc<Gateway>, consumer: &PullConsumer, kind: Kind) {
    let messages = match consumer
        .stream()
        .max_messages_per_batch(CONCURRENCY)
        .heartbeat(Duration::from_secs(10))
        .expires(Duration::from_secs(30))
        .messages()
        .await
    {
        Ok(messages) => messages,
        Err(e) => {
            tracing::warn!(error = %e, "cannot pull from the workflows' consumer; trying again");
            return;
        }
    };
    messages
        .take_while(|m| {
            if let Err(e) = m {
                tracing::debug!(error = %e, "the workflows' consumer stream broke");
            }
            std::future::ready(m.is_ok())
        })
        .filter_map(|m| std::future::ready(m.ok()))
        .for_each_concurrent(CONCURRENCY, |message| async move {
            let done = match kind {
                Kind::Start => gateway.start_workflow(&message).await,
                Kind::Step => gateway.step_ended(&message).await,
            };
            match done {
                Ok(()) => {
                    if let Err(e) = message.ack().await {
                        tracing::debug!(error = %e, "ack of a workflow message failed; it comes back and is handled again");
                    }
                }
                Err(e) => {
                    tracing::warn!(subject = %message.subject, error = %e, "cannot advance the workflow now; trying again");
                    let _ = message.ack_with(AckKind::Nak(Some(Duration::from_secs(1)))).await;
                }
            }
        })
        .await;
}

impl Gateway {
    /// A new workflow: its first steps are submitted.
    async fn start_workflow(&self, message: &jetstream::Message) -> Result<(), Error> {
        // taskwire.workflows.<w>.spec
        let Some(id) = message
            .subject
            .split('.')
            .nth(2)
            .and_then(|w| Id::parse(w).ok())
        else {
            return Ok(());
        };
        let loaded = match self.load_workflow(&id).await {
            Ok(loaded) => loaded,
            Err(Error::NotFound(_)) => return Ok(()),
            Err(e) => return Err(e),
        };
        if self.workflow_end(&id).await?.is_some() {
            return Ok(());
        }
        let roots: Vec<usize> = (0..loaded.plan.after.len())
            .filter(|&i| loaded.plan.after[i].is_empty())
            .collect();
        for i in roots {
            let args = plan::args_of(loaded.step(i).expect("a step"));
            self.submit_step(&loaded, i, args).await?;
        }
        Ok(())
    }

    /// A step's result was stored: what takes it starts, or the workflow ends.
    async fn step_ended(&self, message: &jetstream::Message) -> Result<(), Error> {
        // taskwire.results.<w>-<n>.workflow-step.<task>
        let Some(task_id) = message.subject.split('.').nth(2) else {
            return Ok(());
        };
        let Some((id, n)) = workflow::step_of(task_id) else {
            return Ok(());
        };
        let task_id = workflow::step_id(&id, n);
        let loaded = match self.load_workflow(&id).await {
            Ok(loaded) => loaded,
            Err(Error::NotFound(_)) => {
                tracing::warn!(workflow = %id, "a step's result for a workflow that is no longer kept");
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        if n >= loaded.on_failure() {
            // The on_failure step's own outcome: the workflow had ended already.
            return Ok(());
        }
        let empty = async_nats::HeaderMap::new();
        let headers = message.headers.as_ref().unwrap_or(&empty);
        let info = broker::task_info(&task_id, headers, &message.payload, None);
        let state = if broker::is_expiry_marker(headers) {
            TaskState::Expired
        } else {
            info.state()
        };
        match state {
            TaskState::Succeeded => {
                self.step_succeeded(&loaded, n, message.payload.clone())
                    .await
            }
            TaskState::Failed | TaskState::Cancelled | TaskState::Expired => {
                self.step_failed(&loaded, n, &task_id, state, info.error)
                    .await
            }
            _ => Ok(()),
        }
    }

    async fn step_succeeded(&self, loaded: &Loaded, n: usize, output: Bytes) -> Result<(), Error> {
        if self.workflow_end(&loaded.id).await?.is_some() {
            return Ok(());
        }
        let mut submitted = Vec::new();
        for &m in &loaded.plan.dependents[n] {
            let deps = &loaded.plan.after[m];
            let outputs = if deps.len() == 1 {
                vec![(self.output_of(loaded, n).await?, output.clone())]
            } else {
                let position = deps.iter().position(|&d| d == n).expect("a dependency");
                if !self
                    .join(&loaded.id, &m.to_string(), position, deps.len())
                    .await?
                {
                    continue;
                }
                let mut outputs = Vec::with_capacity(deps.len());
                for &d in deps {
                    let result = self.result(&workflow::step_id(&loaded.id, d)).await?;
                    let Some(result) = result.filter(|r| r.state() == TaskState::Succeeded) else {
                        return Err(Error::Broker(format!(
                            "step {d} of workflow {} counted as succeeded has no result",
                            loaded.id
                        )));
                    };
                    outputs.push((self.output_of(loaded, d).await?, Bytes::from(result.result)));
                }
                outputs
            };
            let step = loaded.step(m).expect("a step");
            let input = self.input_type(step).await?;
            match plan::build_input(step, &input, &outputs) {
                Ok(args) => {
                    self.submit_step(loaded, m, args).await?;
                    submitted.push(m);
                }
                Err(why) => {
                    // The task types changed since the workflow was checked.
                    let error =
                        format!("the input of step {:?} could not be made: {why}", step.name);
                    let task_id = workflow::step_id(&loaded.id, m);
                    let failure = v1::TaskFailure {
                        message: error,
                        retryable: false,
                    };
                    return self
                        .step_failed(loaded, m, &task_id, TaskState::Failed, Some(failure))
                        .await;
                }
            }
        }
        // A step submitted while the workflow ended (failed elsewhere, or cancelled) does not run.
        if !submitted.is_empty() && self.workflow_end(&loaded.id).await?.is_some() {
            let all: Vec<usize> = loaded
                .all_steps()
                .filter(|i| !submitted.contains(i))
                .collect();
            self.cancel_steps(loaded, &all).await?;
            return Ok(());
        }
        let last = &loaded.plan.last;
        if let Some(position) = last.iter().position(|&l| l == n) {
            let all_done =
                last.len() == 1 || self.join(&loaded.id, "end", position, last.len()).await?;
            if all_done {
                let end = v1::WorkflowEnd {
                    state: WorkflowState::Succeeded as i32,
                    ended_at: Some(SystemTime::now().into()),
                    ..Default::default()
                };
                self.store_workflow_end(&loaded.id, &end).await?;
            }
        }
        Ok(())
    }

    /// A step failed for good, expired, or was cancelled on its own: the workflow ends, the
    /// other steps are cancelled (unless it lets them finish), and the on_failure step runs.
    async fn step_failed(
        &self,
        loaded: &Loaded,
        n: usize,
        task_id: &Id,
        state: TaskState,
        error: Option<v1::TaskFailure>,
    ) -> Result<(), Error> {
        let name = loaded.step(n).expect("a step").name.clone();
        let end = v1::WorkflowEnd {
            state: if state == TaskState::Cancelled {
                WorkflowState::Cancelled
            } else {
                WorkflowState::Failed
            } as i32,
            failed_step: name.clone(),
            task_id: task_id.to_string(),
            step_state: state as i32,
            error: error.clone().or_else(|| {
                Some(v1::TaskFailure {
                    message: format!("the step ended {}", broker::state_name(state)),
                    retryable: false,
                })
            }),
            ended_at: Some(SystemTime::now().into()),
        };
        if !self.store_workflow_end(&loaded.id, &end).await? {
            // Ended already: by this step (a gateway that stopped midway), which goes on
            // below, or by something else, which did what follows itself.
            let ended = self.workflow_end(&loaded.id).await?.unwrap_or_default();
            if ended.failed_step != name {
                return Ok(());
            }
        }
        if !loaded.workflow().let_running_finish {
            self.cancel_steps(loaded, &[n, loaded.on_failure()]).await?;
        }
        if loaded.workflow().on_failure.is_some() {
            let failure = v1::WorkflowFailure {
                workflow_id: loaded.id.to_string(),
                step: name,
                task_id: task_id.to_string(),
                state: state as i32,
                error: end.error,
            };
            self.submit_step(loaded, loaded.on_failure(), failure.encode_to_vec().into())
                .await?;
        }
        Ok(())
    }

    /// Marks `position` of `count` in a join; whether all are marked now. A compare-and-set on
    /// the join's subject, tried again when another gateway changed it first.
    async fn join(
        &self,
        id: &Id,
        step: &str,
        position: usize,
        count: usize,
    ) -> Result<bool, Error> {
        let subject = workflow::join(id, step);
        loop {
            let found = self
                .broker
                .last_message_on(broker::WORKFLOWS_STREAM, &subject)
                .await
                .map_err(|e| self.read_error(e))?;
            let (sequence, mut join) = match &found {
                Some(m) => (m.sequence, workflow::Join::from_bytes(&m.payload)),
                None => (0, workflow::Join::default()),
            };
            if !join.set(position) {
                return Ok(join.full(count));
            }
            let mut headers = async_nats::HeaderMap::new();
            headers.insert(
                header::EXPECTED_LAST_SUBJECT_SEQUENCE,
                sequence.to_string().as_str(),
            );
            let body = Bytes::copy_from_slice(join.as_bytes());
            let published = self
                .broker
                .jetstream
                .publish_with_headers(subject.clone(), headers, body)
                .await
                .map_err(publish_error)?
                .await;
            match published {
                Ok(_) => return Ok(join.full(count)),
                Err(e) if broker::is_wrong_last_sequence(&e) => continue,
                Err(e) => return Err(publish_error(e)),
            }
        }
    }

    async fn output_of(
        &self,
        loaded: &Loaded,
        i: usize,
    ) -> Result<prost_reflect::MessageDescriptor, Error> {
        let step = loaded.step(i).expect("a step");
        let name = Name::parse(&step.task).map_err(Error::InvalidName)?;
        Ok(self.registry.get(&name).await?.output.clone())
    }

    async fn input_type(&self, step: &v1::Step) -> Result<prost_reflect::MessageDescriptor, Error> {
        let name = Name::parse(&step.task).map_err(Error::InvalidName)?;
        Ok(self.registry.get(&name).await?.input.clone())
    }

    /// Submits step `i` with `args`, as the task `<w>-<i>`: a step submitted before is not
    /// stored again. The task continues the workflow's trace.
    async fn submit_step(&self, loaded: &Loaded, i: usize, args: Bytes) -> Result<(), Error> {
        let step = loaded.step(i).expect("a step");
        let name = Name::parse(&step.task).map_err(Error::InvalidName)?;
        let options = step.options.clone().unwrap_or_default();
        let overrides = overrides(&options, self.broker.result_ttl)?;
        let placement = placement(&options, SystemTime::now())?;
        let id = workflow::step_id(&loaded.id, i);
        let mut carrier = async_nats::HeaderMap::new();
        carrier.insert("traceparent", loaded.stored.traceparent.as_str());
        let span = tracing::info_span!("workflow step", workflow = %loaded.id, step = %step.name);
        let _ = span.set_parent(broker::trace::extract_nats(Some(&carrier)));
        let task = Prepared::step(
            name,
            id,
            args,
            overrides,
            placement,
            &loaded.stored.traceparent,
        );
        async {
            let sending = self.send(task).await?;
            self.confirm(sending).await
        }
        .instrument(span)
        .await?;
        Ok(())
    }
}
