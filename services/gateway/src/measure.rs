//! A tower layer that counts every gRPC call by method and status code, times it (to its
//! response headers: for a streaming call, until the stream starts), and runs it in a server
//! span that continues the caller's trace (W3C `traceparent` in the metadata).

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use futures::future::BoxFuture;
use tracing::Instrument as _;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use crate::Gateway;

/// Wraps the gRPC router.
#[derive(Clone, Debug)]
pub(crate) struct Measure<S> {
    inner: S,
    gateway: Arc<Gateway>,
}

impl<S> Measure<S> {
    pub(crate) fn new(inner: S, gateway: Arc<Gateway>) -> Self {
        Self { inner, gateway }
    }
}

impl<S, B, R> tower::Service<http::Request<B>> for Measure<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>> + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let method = request.uri().path().to_owned();
        let started = Instant::now();
        let gateway = Arc::clone(&self.gateway);
        let (service, rpc) = method
            .trim_start_matches('/')
            .split_once('/')
            .unwrap_or(("", ""));
        let span = tracing::info_span!(
            "grpc",
            otel.name = %method.trim_start_matches('/'),
            otel.kind = "server",
            otel.status_code = tracing::field::Empty,
            otel.status_description = tracing::field::Empty,
            rpc.system = "grpc",
            rpc.service = %service,
            rpc.method = %rpc,
            rpc.grpc.status_code = tracing::field::Empty,
        );
        let parent = taskwire::propagation::extract_http(request.headers());
        if taskwire::propagation::is_valid(&parent) {
            let _ = span.set_parent(parent.clone());
        }
        let call = {
            let _entered = span.enter();
            self.inner.call(request)
        };
        let record = span.clone();
        let call = async move {
            let response = call.await;
            if let Ok(response) = &response
                && (method.starts_with("/taskwire.") || method.starts_with("/grpc.health"))
            {
                // An error comes as a trailers-only response with the status in its headers;
                // a success has its status in the trailers.
                let number = response
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .map_or(0, |v| v.parse::<i32>().unwrap_or(2));
                let code = format!("{:?}", tonic::Code::from(number));
                record.record("rpc.grpc.status_code", i64::from(number));
                if number != 0 {
                    record.record("otel.status_code", "ERROR");
                    record.record("otel.status_description", code.as_str());
                }
                // Paths no method has, and calls refused before a method ran, share one label:
                // callers choose paths, and labels must not grow without bound.
                let label = match tonic::Code::from(number) {
                    tonic::Code::Unimplemented | tonic::Code::Unauthenticated => "other",
                    _ => method.as_str(),
                };
                gateway
                    .metrics
                    .request(label, &code, started.elapsed().as_secs_f64());
            }
            response
        };
        // Also kept for a process that records no spans, so that the trace passes through.
        Box::pin(taskwire::propagation::with_incoming(
            parent,
            call.instrument(span),
        ))
    }
}
