//! W3C trace context (`traceparent`, `tracestate`) across the hops of a task: gRPC metadata from
//! the producer to the gateway, NATS headers from the gateway to the worker. The context is the
//! current `tracing` span's, through `tracing-opentelemetry`; without a tracing subscriber that
//! exports, there is none and nothing is written.

use std::str::FromStr as _;

use opentelemetry::Context;
use opentelemetry::propagation::{Extractor, Injector};
use opentelemetry::trace::{
    SpanContext, SpanId, TraceContextExt as _, TraceFlags, TraceId, TraceState,
};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

const TRACEPARENT: &str = "traceparent";
const TRACESTATE: &str = "tracestate";

tokio::task_local! {
    /// The trace context a request came with, for processes that pass traces on without
    /// recording spans of their own.
    static INCOMING: Context;
}

/// Runs `future` with `cx` as the context that [`current`] falls back to.
pub async fn with_incoming<F: std::future::Future>(cx: Context, future: F) -> F::Output {
    INCOMING.scope(cx, future).await
}

/// The trace context of the current span; without one (no trace export in this process), the
/// context the current request came with, so that a trace still passes through.
pub fn current() -> Context {
    let cx = tracing::Span::current().context();
    if is_valid(&cx) {
        return cx;
    }
    INCOMING.try_with(Clone::clone).unwrap_or(cx)
}

/// Whether a context carries a span (is worth propagating).
pub fn is_valid(cx: &Context) -> bool {
    cx.span().span_context().is_valid()
}

/// Writes the current trace context into gRPC request metadata.
pub fn inject_metadata(metadata: &mut tonic::metadata::MetadataMap) {
    struct Meta<'a>(&'a mut tonic::metadata::MetadataMap);
    impl Injector for Meta<'_> {
        fn set(&mut self, key: &str, value: String) {
            if let (Ok(key), Ok(value)) = (
                tonic::metadata::MetadataKey::from_bytes(key.as_bytes()),
                tonic::metadata::MetadataValue::try_from(value.as_str()),
            ) {
                self.0.insert(key, value);
            }
        }
    }
    inject(&current(), &mut Meta(metadata));
}

/// Reads a trace context from HTTP/2 headers (gRPC metadata).
pub fn extract_http(headers: &tonic::codegen::http::HeaderMap) -> Context {
    struct Headers<'a>(&'a tonic::codegen::http::HeaderMap);
    impl Extractor for Headers<'_> {
        fn get(&self, key: &str) -> Option<&str> {
            self.0.get(key).and_then(|v| v.to_str().ok())
        }
        fn keys(&self) -> Vec<&str> {
            self.0.keys().map(|k| k.as_str()).collect()
        }
    }
    extract(&Headers(headers))
}

/// Writes `cx`'s span as W3C `traceparent` (and `tracestate`), when it has a valid one.
pub fn inject(cx: &Context, injector: &mut dyn Injector) {
    let span = cx.span();
    let context = span.span_context();
    if !context.is_valid() {
        return;
    }
    injector.set(
        TRACEPARENT,
        format!(
            "00-{}-{}-{:02x}",
            context.trace_id(),
            context.span_id(),
            context.trace_flags().to_u8() & TraceFlags::SAMPLED.to_u8()
        ),
    );
    let state = context.trace_state().header();
    if !state.is_empty() {
        injector.set(TRACESTATE, state);
    }
}

/// The remote span a W3C `traceparent` names, as a context; an empty context when there is
/// none or it is malformed (as the W3C recommendation says: start a new trace).
pub fn extract(extractor: &dyn Extractor) -> Context {
    extractor
        .get(TRACEPARENT)
        .and_then(|header| {
            let state = extractor
                .get(TRACESTATE)
                .and_then(|s| TraceState::from_str(s).ok())
                .unwrap_or_default();
            parse_traceparent(header, state)
        })
        .map_or_else(Context::new, |span| {
            Context::new().with_remote_span_context(span)
        })
}

/// `version-traceid-parentid-flags`, lower-case hex; a version other than 00 may carry more
/// fields after these, and version ff is invalid.
fn parse_traceparent(header: &str, state: TraceState) -> Option<SpanContext> {
    let mut parts = header.trim().split('-');
    let (version, trace, span, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let lower_hex = |s: &str, len: usize| {
        s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    };
    if !lower_hex(version, 2) || version == "ff" || (version == "00" && parts.next().is_some()) {
        return None;
    }
    if !lower_hex(trace, 32) || !lower_hex(span, 16) || !lower_hex(flags, 2) {
        return None;
    }
    let trace_id = TraceId::from_hex(trace).ok()?;
    let span_id = SpanId::from_hex(span).ok()?;
    let flags = u8::from_str_radix(flags, 16).ok()?;
    let context = SpanContext::new(
        trace_id,
        span_id,
        TraceFlags::new(flags) & TraceFlags::SAMPLED,
        true,
        state,
    );
    context.is_valid().then_some(context)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    #[test]
    fn a_traceparent_goes_out_and_comes_back_the_same() {
        let header = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let incoming: HashMap<String, String> = [
            (TRACEPARENT.to_owned(), header.to_owned()),
            (TRACESTATE.to_owned(), "congo=t61rcWkgMzE".to_owned()),
        ]
        .into();
        let cx = extract(&incoming);
        assert!(is_valid(&cx));
        let mut outgoing: HashMap<String, String> = HashMap::new();
        inject(&cx, &mut outgoing);
        assert_eq!(outgoing.get(TRACEPARENT).map(String::as_str), Some(header));
        assert_eq!(
            outgoing.get(TRACESTATE).map(String::as_str),
            Some("congo=t61rcWkgMzE")
        );
    }

    #[test]
    fn a_malformed_traceparent_starts_no_trace() {
        for header in [
            "",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331",
            "00-00000000000000000000000000000000-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
            "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",
            "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra",
        ] {
            let incoming: HashMap<String, String> =
                [(TRACEPARENT.to_owned(), header.to_owned())].into();
            assert!(!is_valid(&extract(&incoming)), "{header:?}");
        }
        // A later version may add fields.
        let later: HashMap<String, String> = [(
            TRACEPARENT.to_owned(),
            "01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-more".to_owned(),
        )]
        .into();
        assert!(is_valid(&extract(&later)));
    }
}
