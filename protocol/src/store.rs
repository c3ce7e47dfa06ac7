//! Reads of stored messages (a subject's last message, the next one from a sequence) and what a
//! refused publish means.

use std::time::SystemTime;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, stream};
use bytes::Bytes;

/// A message read back from a stream by [`last_message`].
#[derive(Debug, Clone)]
pub struct StoredMessage {
    /// Its headers, the stream's own included.
    pub headers: HeaderMap,
    /// Its body.
    pub payload: Bytes,
    /// When the stream stored it.
    pub time: Option<SystemTime>,
    /// Its sequence in the stream.
    pub sequence: u64,
}

/// The last message of `stream` whose subject matches `filter`, which may hold wildcards; `None`
/// when there is none. A direct get, so any replica answers.
pub async fn last_message(
    client: &async_nats::Client,
    stream: &str,
    filter: &str,
) -> Result<Option<StoredMessage>, async_nats::RequestError> {
    direct_get(client, stream, format!(r#"{{"last_by_subj":"{filter}"}}"#)).await
}

/// The last message of `stream` on the literal `subject`, asked with the subject in the API
/// subject (`$JS.API.DIRECT.GET.<stream>.<subject>`): the form NATS permissions can limit to
/// some subjects (a worker may read the events of its own task types only).
pub async fn last_message_on(
    client: &async_nats::Client,
    stream: &str,
    subject: &str,
) -> Result<Option<StoredMessage>, async_nats::RequestError> {
    let response = client
        .request(
            format!("$JS.API.DIRECT.GET.{stream}.{subject}"),
            Bytes::new(),
        )
        .await?;
    stored_message(stream, response)
}

/// The last message of a stream on `filter`, read from the stream's leader.
pub(crate) async fn leader_last_message(
    stream: &stream::Stream,
    filter: &str,
) -> Result<Option<StoredMessage>, async_nats::RequestError> {
    use async_nats::jetstream::stream::LastRawMessageErrorKind;
    match stream.get_last_raw_message_by_subject(filter).await {
        Ok(message) => Ok(Some(StoredMessage {
            headers: message.headers,
            payload: message.payload,
            time: Some(message.time.into()),
            sequence: message.sequence,
        })),
        Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(None),
        // No leader answered (one is being elected): a time-out, which callers may try again.
        Err(e) => Err(async_nats::RequestError::with_source(
            match e.kind() {
                LastRawMessageErrorKind::Other => async_nats::RequestErrorKind::TimedOut,
                _ => async_nats::RequestErrorKind::Other,
            },
            format!(
                "reading {filter} from the leader of {}: {e}",
                stream.cached_info().config.name
            ),
        )),
    }
}

/// The first message of `stream` at or after sequence `from` whose subject matches `filter`.
pub async fn next_message(
    client: &async_nats::Client,
    stream: &str,
    filter: &str,
    from: u64,
) -> Result<Option<StoredMessage>, async_nats::RequestError> {
    direct_get(
        client,
        stream,
        format!(r#"{{"seq":{from},"next_by_subj":"{filter}"}}"#),
    )
    .await
}

/// Where a batch read starts: at a sequence, or at the first message stored at or after a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadFrom {
    /// The first sequence read.
    Sequence(u64),
    /// The first message stored at or after this time.
    Time(SystemTime),
}

/// Up to `batch` messages of `stream` whose subjects match `filter`, in stream order, from
/// `from`: one direct get in batch mode (any replica answers), so a page of a scan costs one
/// round trip. Fewer than `batch` means the stream has no more.
pub async fn next_messages(
    client: &async_nats::Client,
    stream: &str,
    filter: &str,
    from: ReadFrom,
    batch: usize,
) -> Result<Vec<StoredMessage>, async_nats::RequestError> {
    use futures::StreamExt as _;
    let start = match from {
        ReadFrom::Sequence(seq) => format!(r#""seq":{}"#, seq.max(1)),
        ReadFrom::Time(at) => format!(r#""start_time":"{}""#, humantime::format_rfc3339_nanos(at)),
    };
    let request = format!(r#"{{{start},"next_by_subj":"{filter}","batch":{batch}}}"#);
    let inbox = client.new_inbox();
    let mut replies = client.subscribe(inbox.clone()).await.map_err(|e| {
        async_nats::RequestError::with_source(async_nats::RequestErrorKind::Other, e)
    })?;
    client
        .publish_with_reply(
            format!("$JS.API.DIRECT.GET.{stream}"),
            inbox,
            request.into(),
        )
        .await
        .map_err(|e| {
            async_nats::RequestError::with_source(async_nats::RequestErrorKind::Other, e)
        })?;
    let mut found = Vec::with_capacity(batch);
    while found.len() < batch {
        let next = tokio::time::timeout(std::time::Duration::from_secs(5), replies.next()).await;
        let Ok(Some(reply)) = next else {
            return Err(async_nats::RequestError::with_source(
                async_nats::RequestErrorKind::TimedOut,
                format!("a batch read of {stream} stopped answering"),
            ));
        };
        // The end of the batch (204), or nothing at all to read (404).
        if reply
            .status
            .is_some_and(|status| matches!(status.as_u16(), 204 | 404))
        {
            break;
        }
        // No replica answered (a node down, a leader being elected): as a plain request says
        // it, so that callers take it for an outage to wait out, not a refusal.
        if reply
            .status
            .is_some_and(|status| status == async_nats::StatusCode::NO_RESPONDERS)
        {
            return Err(async_nats::RequestError::with_source(
                async_nats::RequestErrorKind::NoResponders,
                format!("no replica of {stream} answered a batch read"),
            ));
        }
        match stored_message(stream, reply)? {
            Some(message) => found.push(message),
            None => break,
        }
    }
    Ok(found)
}

async fn direct_get(
    client: &async_nats::Client,
    stream: &str,
    request: String,
) -> Result<Option<StoredMessage>, async_nats::RequestError> {
    let response = client
        .request(format!("$JS.API.DIRECT.GET.{stream}"), request.into())
        .await?;
    stored_message(stream, response)
}

/// A direct get's answer: the message, none (404), or an error for any other status.
fn stored_message(
    stream: &str,
    response: async_nats::Message,
) -> Result<Option<StoredMessage>, async_nats::RequestError> {
    match response.status {
        None | Some(async_nats::StatusCode::OK) => {}
        Some(async_nats::StatusCode::NOT_FOUND) => return Ok(None),
        // Anything else (no leader, a request the server refused) says nothing about the
        // message: the caller must not take it for "none".
        Some(status) => {
            return Err(async_nats::RequestError::with_source(
                async_nats::RequestErrorKind::Other,
                format!("direct get from {stream} answered {status}"),
            ));
        }
    }
    let headers = response.headers.unwrap_or_default();
    let time = headers
        .get("Nats-Time-Stamp")
        .and_then(|t| humantime::parse_rfc3339_weak(t.as_str()).ok());
    let sequence = headers
        .get("Nats-Sequence")
        .and_then(|s| s.as_str().parse().ok())
        .unwrap_or_default();
    Ok(Some(StoredMessage {
        headers,
        payload: response.payload,
        time,
        sequence,
    }))
}

/// Whether a publish failed because the subject already had a message (a result exists).
pub fn is_wrong_last_sequence(err: &jetstream::context::PublishError) -> bool {
    err.kind() == jetstream::context::PublishErrorKind::WrongLastSequence
}

/// The JetStream error code of a refused publish, when the server answered with one.
pub fn publish_error_code(err: &jetstream::context::PublishError) -> Option<u64> {
    let source = std::error::Error::source(err)?;
    source
        .downcast_ref::<jetstream::Error>()
        .map(|e| e.error_code().0)
}

/// JetStream error codes of refusals that can pass when tried again: the cluster or the
/// storage is busy, short of resources or electing a leader, or a limit is full for now.
pub(crate) const TRANSIENT_CODES: [u64; 12] = [
    10002, // account resources exceeded
    10004, // cluster incomplete
    10005, // no suitable peers
    10008, // JetStream temporarily unavailable
    10009, // cluster can not handle the request (no leader yet)
    10023, // insufficient resources
    10039, // JetStream not enabled for the account (yet)
    10041, // raft error
    10047, // storage resources exceeded
    10076, // JetStream not enabled (yet)
    10077, // the store failed (a limit that may clear)
    10158, // a publish with this message id is still being stored (its outcome comes next)
];

/// Why a failed publish will never pass however often it is tried (a message over the
/// server's max payload or the stream's message size, a feature the stream refuses, a header
/// the server rejects), or `None` when trying again may help (a time-out, a lost connection,
/// a cluster electing a leader). Decided on the error's kind and JetStream error code only.
pub fn permanent_refusal(err: &jetstream::context::PublishError) -> Option<String> {
    use jetstream::context::PublishErrorKind as Kind;
    match err.kind() {
        Kind::MaxPayloadExceeded | Kind::WrongLastMessageId => Some(err.to_string()),
        Kind::Other => match publish_error_code(err) {
            Some(code) if !TRANSIENT_CODES.contains(&code) => Some(err.to_string()),
            _ => None,
        },
        Kind::StreamNotFound
        | Kind::WrongLastSequence
        | Kind::TimedOut
        | Kind::BrokenPipe
        | Kind::MaxAckPending => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_told_apart_by_their_jetstream_code() {
        let refused = |code: u64| {
            let answer = format!(r#"{{"code":400,"err_code":{code},"description":"refused"}}"#);
            let source: jetstream::Error = serde_json::from_str(&answer).expect("an API error");
            jetstream::context::PublishError::with_source(
                jetstream::context::PublishErrorKind::Other,
                source,
            )
        };
        // A cluster busy or electing, a message id still in process: tried again.
        for code in [10008, 10009, 10158] {
            assert_eq!(permanent_refusal(&refused(code)), None, "{code}");
        }
        // Too large, message schedules disabled: never passes.
        for code in [10054, 10188] {
            assert!(permanent_refusal(&refused(code)).is_some(), "{code}");
        }
    }
}
