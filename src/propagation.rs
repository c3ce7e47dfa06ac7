//! W3C trace context (`traceparent`, `tracestate`) across the hops of a task: gRPC metadata from
//! the producer to the gateway, NATS headers from the gateway to the worker. The context is the
//! current `tracing` span's, through `tracing-opentelemetry`; without a tracing subscriber that
//! exports, there is none and nothing is written.

use opentelemetry::Context;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator as _};
use opentelemetry::trace::TraceContextExt as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

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
    TraceContextPropagator::new().inject_context(&current(), &mut Meta(metadata));
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
    TraceContextPropagator::new().extract(&Headers(headers))
}

/// Writes the current trace context into NATS headers.
#[cfg(feature = "broker")]
pub fn inject_nats(headers: &mut async_nats::HeaderMap) {
    struct Nats<'a>(&'a mut async_nats::HeaderMap);
    impl Injector for Nats<'_> {
        fn set(&mut self, key: &str, value: String) {
            self.0.insert(key, value.as_str());
        }
    }
    TraceContextPropagator::new().inject_context(&current(), &mut Nats(headers));
}

/// Reads a trace context from NATS headers.
#[cfg(feature = "broker")]
pub fn extract_nats(headers: Option<&async_nats::HeaderMap>) -> Context {
    struct Nats<'a>(&'a async_nats::HeaderMap);
    impl Extractor for Nats<'_> {
        fn get(&self, key: &str) -> Option<&str> {
            self.0.get(key).map(|v| v.as_str())
        }
        fn keys(&self) -> Vec<&str> {
            Vec::new()
        }
    }
    match headers {
        Some(h) => TraceContextPropagator::new().extract(&Nats(h)),
        None => Context::new(),
    }
}
