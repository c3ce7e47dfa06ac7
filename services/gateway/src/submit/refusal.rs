//! How the broker's refusals of a publish become the gateway's errors: by JetStream error code,
//! never by the text of an error.

use async_nats::jetstream::context::PublishErrorKind;
use taskwire_protocol as broker;

use crate::Error;

pub(crate) fn publish_error(err: async_nats::jetstream::context::PublishError) -> Error {
    match err.kind() {
        PublishErrorKind::TimedOut | PublishErrorKind::BrokenPipe => {
            Error::BrokerDown(err.to_string())
        }
        // No stream answered: in a cluster, a leader election; else a deleted stream.
        PublishErrorKind::StreamNotFound => Error::BrokerDown(format!(
            "{err} (a stream leader election, or a deleted stream that a gateway restart recreates)"
        )),
        PublishErrorKind::MaxPayloadExceeded => Error::TooLarge(err.to_string()),
        _ => match broker::publish_error_code(&err) {
            // Over the stream's largest message.
            Some(MESSAGE_TOO_LARGE) => Error::TooLarge(err.to_string()),
            // The same task's publish is still being stored (a retry during an election).
            Some(IN_PROCESS) => Error::BrokerDown(err.to_string()),
            // A full queue (messages per subject, with discard new), or full storage.
            Some(STORE_FAILED | STORAGE_EXHAUSTED | ACCOUNT_EXHAUSTED | INSUFFICIENT_RESOURCES) => {
                Error::QueueFull(err.to_string())
            }
            _ => Error::Broker(err.to_string()),
        },
    }
}

/// JetStream error codes the gateway tells apart.
pub(crate) const MESSAGE_TOO_LARGE: u64 = 10054;

pub(crate) const STORE_FAILED: u64 = 10077;

pub(crate) const STORAGE_EXHAUSTED: u64 = 10047;

pub(crate) const ACCOUNT_EXHAUSTED: u64 = 10002;

pub(crate) const INSUFFICIENT_RESOURCES: u64 = 10023;

pub(crate) const IN_PROCESS: u64 = 10158;
