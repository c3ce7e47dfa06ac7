//! The children a running task submits, each sent to a gateway (`taskwire.children.submit`),
//! which checks and stores it, numbered by its place among the children of the attempt; the
//! waits for them (`taskwire.children.wait`), and the parking of a task that waits
//! (`taskwire.children.park`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use prost::Message as _;
use taskwire::task::{Id, Name};
use taskwire::v1;
use taskwire::{ChildFuture, Children};
use taskwire_protocol::children;
use tonic::{Code, Status};

/// How often a request is sent again when no gateway answered.
const TRIES: u32 = 5;

/// The children of one attempt: each sent to a gateway, numbered by its place among them.
pub(crate) struct AttemptChildren {
    client: async_nats::Client,
    parent: Id,
    parent_task: Name,
    /// The task's own trace context, for a child submitted where no span is current (through
    /// the context service).
    task_trace: Option<String>,
    next: AtomicU32,
}

impl AttemptChildren {
    pub(crate) fn new(
        client: async_nats::Client,
        parent: &Id,
        parent_task: &Name,
        message: &async_nats::jetstream::Message,
    ) -> Arc<Self> {
        let task_trace = message
            .headers
            .as_ref()
            .and_then(|h| h.get("traceparent"))
            .map(|v| v.as_str().to_owned());
        Arc::new(Self {
            client,
            parent: parent.clone(),
            parent_task: parent_task.clone(),
            task_trace,
            next: AtomicU32::new(0),
        })
    }

    /// The trace a child continues: the current span's (the handler's, in this process), else
    /// the task's.
    fn traceparent(&self) -> String {
        let mut headers = async_nats::HeaderMap::new();
        taskwire_protocol::trace::inject_nats(&mut headers);
        headers
            .get("traceparent")
            .map(|v| v.as_str().to_owned())
            .or_else(|| self.task_trace.clone())
            .unwrap_or_default()
    }
}

impl Children for AttemptChildren {
    fn submit(&self, child: v1::SubmitRequest) -> ChildFuture<v1::SubmitResponse> {
        let submission = v1::ChildSubmission {
            parent_id: self.parent.to_string(),
            parent_task: self.parent_task.to_string(),
            index: self.next.fetch_add(1, Ordering::SeqCst),
            child: Some(child),
            traceparent: self.traceparent(),
        };
        let client = self.client.clone();
        Box::pin(async move {
            let answer: v1::ChildSubmitted =
                ask(&client, children::SUBMIT, submission.encode_to_vec().into()).await?;
            match answer.code {
                0 => answer
                    .response
                    .ok_or_else(|| Status::internal("a gateway stored the child but named no id")),
                code => Err(Status::new(Code::from(code as i32), answer.message)),
            }
        })
    }

    fn ended(&self) -> ChildFuture<Option<Vec<v1::TaskInfo>>> {
        let wait = v1::ChildrenWait {
            parent_id: self.parent.to_string(),
        };
        let client = self.client.clone();
        Box::pin(async move {
            let answer: v1::ChildrenWaited =
                ask(&client, children::WAIT, wait.encode_to_vec().into()).await?;
            match answer.code {
                0 => Ok(answer.ended.then_some(answer.children)),
                code => Err(Status::new(Code::from(code as i32), answer.message)),
            }
        })
    }
}

/// Parks a task that waits for its children: the gateway keeps its message until they have
/// ended. True when they had ended already and it is back in line.
pub(crate) async fn park(
    client: &async_nats::Client,
    parent: &Id,
    parent_task: &Name,
    attempt: u32,
    message: &async_nats::jetstream::Message,
) -> Result<bool, Status> {
    let headers = message
        .headers
        .iter()
        .flat_map(|headers| headers.iter())
        .flat_map(|(name, values)| {
            values.iter().map(move |value| v1::TaskHeader {
                name: name.to_string(),
                value: value.as_str().to_owned(),
            })
        })
        .collect();
    let park = v1::ChildrenPark {
        parent_id: parent.to_string(),
        parent_task: parent_task.to_string(),
        attempt,
        headers,
        args: message.payload.to_vec(),
    };
    let answer: v1::ChildrenParked =
        ask(client, children::PARK, park.encode_to_vec().into()).await?;
    match answer.code {
        0 => Ok(answer.resumed),
        code => Err(Status::new(Code::from(code as i32), answer.message)),
    }
}

/// Asks a gateway, again while none answers (the same request: a gateway that did what it
/// asks before answers it again).
async fn ask<A: prost::Message + Default>(
    client: &async_nats::Client,
    subject: &'static str,
    payload: bytes::Bytes,
) -> Result<A, Status> {
    let mut wait = Duration::from_millis(200);
    let mut tries = 0;
    loop {
        tries += 1;
        let why = match client.request(subject, payload.clone()).await {
            Ok(reply) => {
                return A::decode(reply.payload.as_ref()).map_err(|e| {
                    Status::internal(format!(
                        "a gateway's answer on {subject} does not decode: {e}"
                    ))
                });
            }
            Err(e) => e,
        };
        if tries >= TRIES {
            return Err(Status::unavailable(format!(
                "no gateway answered on {subject} ({why}); a gateway with workflows open must be running"
            )));
        }
        tracing::debug!(error = %why, subject, "no gateway answered; asking again");
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(Duration::from_secs(2));
    }
}
