//! The children a running task submits: each sent to a gateway (`taskwire.children.submit`),
//! which checks and stores it, numbered by its place among the children of the attempt.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use prost::Message as _;
use taskwire::ChildSink;
use taskwire::task::{Id, Name};
use taskwire::v1;
use taskwire_protocol::children;
use tonic::{Code, Status};

/// How often a child is sent again when no gateway answered (the same child: a gateway that
/// stored it before answers it again).
const TRIES: u32 = 5;

/// The sink of one attempt's children.
pub(crate) fn sink(
    client: async_nats::Client,
    parent: &Id,
    parent_task: &Name,
    traceparent: Option<String>,
) -> ChildSink {
    let next = Arc::new(AtomicU32::new(0));
    let (parent, parent_task) = (parent.to_string(), parent_task.to_string());
    Arc::new(move |child: v1::SubmitRequest| {
        let submission = v1::ChildSubmission {
            parent_id: parent.clone(),
            parent_task: parent_task.clone(),
            index: next.fetch_add(1, Ordering::SeqCst),
            child: Some(child),
            traceparent: traceparent.clone().unwrap_or_default(),
        };
        let client = client.clone();
        Box::pin(async move { send(&client, submission).await })
    })
}

async fn send(
    client: &async_nats::Client,
    submission: v1::ChildSubmission,
) -> Result<v1::SubmitResponse, Status> {
    let payload: bytes::Bytes = submission.encode_to_vec().into();
    let mut wait = Duration::from_millis(200);
    let mut tries = 0;
    loop {
        tries += 1;
        let why = match client.request(children::SUBMIT, payload.clone()).await {
            Ok(reply) => {
                let answer = v1::ChildSubmitted::decode(reply.payload.as_ref()).map_err(|e| {
                    Status::internal(format!(
                        "a gateway's answer to a child does not decode: {e}"
                    ))
                })?;
                return match answer.code {
                    0 => answer.response.ok_or_else(|| {
                        Status::internal("a gateway stored the child but named no id")
                    }),
                    code => Err(Status::new(Code::from(code as i32), answer.message)),
                };
            }
            Err(e) => e,
        };
        if tries >= TRIES {
            return Err(Status::unavailable(format!(
                "no gateway took the child ({why}); a gateway with workflows open must be running"
            )));
        }
        tracing::debug!(error = %why, "no gateway answered a child; sending it again");
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(Duration::from_secs(2));
    }
}
