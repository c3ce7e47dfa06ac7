//! A tower layer that counts every gRPC call by method and status code, and times it (to its
//! response headers: for a streaming call, until the stream starts).

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use futures::future::BoxFuture;

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

/// The name of a gRPC status code, as in `grpc-status`.
fn code_name(code: &str) -> String {
    let code = code.parse::<i32>().unwrap_or(2);
    format!("{:?}", tonic::Code::from(code))
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
        let call = self.inner.call(request);
        Box::pin(async move {
            let response = call.await;
            if let Ok(response) = &response
                && (method.starts_with("/taskwire.") || method.starts_with("/grpc.health"))
            {
                // An error comes as a trailers-only response with the status in its headers;
                // a success has its status in the trailers.
                let code = response
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .map_or_else(|| "Ok".to_owned(), code_name);
                gateway
                    .metrics
                    .request(&method, &code, started.elapsed().as_secs_f64());
            }
            response
        })
    }
}
