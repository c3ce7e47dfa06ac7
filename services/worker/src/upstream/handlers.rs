//! Many calls on one stream: `taskwire.v1.TaskHandlers/Serve`, which a worker library serves
//! beside its task services so that an attempt costs it a message rather than a gRPC call of
//! its own. The calls that come together go in one frame; an upstream that does not serve it
//! answers UNIMPLEMENTED, and from then on each attempt is a call of the task's own method.
//!
//! One task owns the stream: it opens it for the first call, sends the calls and cancels that
//! come, hands each outcome to the attempt that waits for it, and when the stream ends (the
//! upstream went away) tells every attempt still waiting; the next call opens a new one.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use taskwire::v1::{HandlerCall, HandlerCalls, HandlerOutcome, HandlerOutcomes};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::codec::Streaming;
use tonic::transport::Channel;
use tonic::{Code, Status};

const PATH: &str = "/taskwire.v1.TaskHandlers/Serve";

/// At most this many calls, or calls whose arguments together pass `FRAME_BYTES`, go in one
/// frame (a single larger call goes alone).
const FRAME_CALLS: usize = 256;
const FRAME_BYTES: usize = 4 << 20;

/// What became of a call sent on the stream.
#[derive(Debug, Clone)]
pub(crate) enum Answer {
    /// The upstream's answer.
    Outcome(HandlerOutcome),
    /// The upstream does not serve the stream: call the task's method instead.
    Unserved,
    /// The stream ended before the answer came (the upstream went away): why.
    Lost(String),
}

enum Op {
    Call(HandlerCall, oneshot::Sender<Answer>),
    Cancel(u64),
}

/// The stream's sending side, shared by every service of one upstream.
pub(crate) struct Handlers {
    ops: mpsc::UnboundedSender<Op>,
    unserved: Arc<AtomicBool>,
    next: AtomicU64,
}

impl Handlers {
    /// Starts the task that owns the stream; it ends when the last `Handlers` is dropped.
    pub(crate) fn start(channel: Channel, max_result: usize) -> Self {
        let (ops, rx) = mpsc::unbounded_channel();
        let unserved = Arc::new(AtomicBool::new(false));
        tokio::spawn(own(channel, max_result, rx, Arc::clone(&unserved)));
        Self {
            ops,
            unserved,
            next: AtomicU64::new(1),
        }
    }

    /// Whether the upstream was found not to serve the stream.
    pub(crate) fn unserved(&self) -> bool {
        self.unserved.load(Ordering::Relaxed)
    }

    /// Sends `call` (its id is set here); the answer comes on the receiver. Dropping the
    /// returned [`Pending`] before the answer cancels the call.
    pub(crate) fn call(&self, mut call: HandlerCall) -> (Pending<'_>, oneshot::Receiver<Answer>) {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        call.id = id;
        let (tx, rx) = oneshot::channel();
        if let Err(mpsc::error::SendError(Op::Call(_, tx))) = self.ops.send(Op::Call(call, tx)) {
            let _ = tx.send(Answer::Lost("the worker is stopping".to_owned()));
        }
        (
            Pending {
                handlers: self,
                id,
                answered: false,
            },
            rx,
        )
    }
}

/// A call sent and not yet answered: dropped unanswered, it is cancelled.
pub(crate) struct Pending<'a> {
    handlers: &'a Handlers,
    id: u64,
    answered: bool,
}

impl Pending<'_> {
    pub(crate) fn answered(mut self) {
        self.answered = true;
    }
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        if !self.answered {
            let _ = self.handlers.ops.send(Op::Cancel(self.id));
        }
    }
}

/// Owns the stream while calls come: a stream for each stretch of the upstream's life.
async fn own(
    channel: Channel,
    max_result: usize,
    mut ops: mpsc::UnboundedReceiver<Op>,
    unserved: Arc<AtomicBool>,
) {
    while let Some(first) = ops.recv().await {
        if unserved.load(Ordering::Relaxed) {
            if let Op::Call(_, tx) = first {
                let _ = tx.send(Answer::Unserved);
            }
            continue;
        }
        let end = stream(&channel, max_result, first, &mut ops).await;
        if matches!(end, Ended::Unserved) {
            tracing::info!(
                "the upstream does not serve taskwire.v1.TaskHandlers: each attempt is a call of the task's method"
            );
            unserved.store(true, Ordering::Relaxed);
        }
    }
}

enum Ended {
    Unserved,
    Lost,
    Closed,
}

/// One stream, from its first call until it ends; every call still waiting then is told.
async fn stream(
    channel: &Channel,
    max_result: usize,
    first: Op,
    ops: &mut mpsc::UnboundedReceiver<Op>,
) -> Ended {
    let (frames, outgoing) = mpsc::unbounded_channel::<HandlerCalls>();
    let mut waiting: HashMap<u64, oneshot::Sender<Answer>> = HashMap::new();
    send(&frames, frame(first, ops, &mut waiting));
    let mut grpc = tonic::client::Grpc::new(channel.clone()).max_decoding_message_size(max_result);
    let open = async move {
        grpc.ready()
            .await
            .map_err(|e| Status::unavailable(format!("cannot reach the upstream: {e}")))?;
        grpc.streaming(
            tonic::Request::new(UnboundedReceiverStream::new(outgoing)),
            http::uri::PathAndQuery::from_static(PATH),
            tonic_prost::ProstCodec::<HandlerCalls, HandlerOutcomes>::default(),
        )
        .await
    };
    tokio::pin!(open);
    let mut incoming: Option<Streaming<HandlerOutcomes>> = None;
    let mut answered = false;
    let (answer, ended) = loop {
        tokio::select! {
            op = ops.recv() => match op {
                Some(op) => {
                    // The attempts that are ready to call run first, so that their calls join
                    // this one's frame.
                    tokio::task::yield_now().await;
                    send(&frames, frame(op, ops, &mut waiting));
                }
                None => break (Answer::Lost("the worker is stopping".to_owned()), Ended::Closed),
            },
            opened = &mut open, if incoming.is_none() => match opened {
                Ok(response) => {
                    tracing::debug!("the stream of calls to the upstream is open");
                    incoming = Some(response.into_inner());
                }
                Err(status) if status.code() == Code::Unimplemented && !super::call::is_transport(&status) => {
                    break (Answer::Unserved, Ended::Unserved);
                }
                Err(status) => break (Answer::Lost(status.message().to_owned()), Ended::Lost),
            },
            message = next(&mut incoming), if incoming.is_some() => match message {
                Ok(Some(outcomes)) => {
                    answered = true;
                    for outcome in outcomes.outcomes {
                        if let Some(tx) = waiting.remove(&outcome.id) {
                            let _ = tx.send(Answer::Outcome(outcome));
                        }
                    }
                }
                Ok(None) => break (Answer::Lost("the upstream ended the stream of calls".to_owned()), Ended::Lost),
                // UNIMPLEMENTED after headers (a proxy in between, say) is no less an answer
                // that the stream is not served.
                Err(status) if !answered && status.code() == Code::Unimplemented && !super::call::is_transport(&status) => {
                    break (Answer::Unserved, Ended::Unserved);
                }
                Err(status) => break (Answer::Lost(status.message().to_owned()), Ended::Lost),
            },
        }
    };
    // Calls not yet sent stay for the next stream.
    for (_, tx) in waiting.drain() {
        let _ = tx.send(answer.clone());
    }
    ended
}

async fn next(
    incoming: &mut Option<Streaming<HandlerOutcomes>>,
) -> Result<Option<HandlerOutcomes>, Status> {
    match incoming {
        Some(stream) => stream.message().await,
        None => std::future::pending().await,
    }
}

fn send(frames: &mpsc::UnboundedSender<HandlerCalls>, frame: HandlerCalls) {
    if !frame.calls.is_empty() || !frame.cancels.is_empty() {
        // The receiving side lives as long as the stream does.
        let _ = frames.send(frame);
    }
}

/// `first` and the ops already waiting behind it, as one frame.
fn frame(
    first: Op,
    ops: &mut mpsc::UnboundedReceiver<Op>,
    waiting: &mut HashMap<u64, oneshot::Sender<Answer>>,
) -> HandlerCalls {
    let mut out = HandlerCalls::default();
    let mut bytes = 0;
    let mut op = Some(first);
    while let Some(this) = op.take() {
        match this {
            Op::Call(call, tx) => {
                bytes += call.argument.len();
                waiting.insert(call.id, tx);
                out.calls.push(call);
            }
            Op::Cancel(id) => {
                if waiting.remove(&id).is_some() {
                    out.cancels.push(id);
                }
            }
        }
        if out.calls.len() >= FRAME_CALLS || bytes >= FRAME_BYTES {
            break;
        }
        op = ops.try_recv().ok();
    }
    out
}
