//! gRPC server reflection (v1 and v1alpha) that knows the registered task services as well as
//! the gateway's own: built afresh from the registry for each reflection call, so a task service
//! appears as soon as a worker registers it, without a restart.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use prost::Message as _;
use tonic::body::Body;
use tonic::server::NamedService;
use tower::{Service, ServiceExt as _};

use crate::Gateway;

/// Which protocol version a [`Reflection`] serves.
pub(crate) trait Version: Send + Sync + 'static {
    const NAME: &'static str;
}

/// `grpc.reflection.v1.ServerReflection`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct V1;
impl Version for V1 {
    const NAME: &'static str = "grpc.reflection.v1.ServerReflection";
}

/// `grpc.reflection.v1alpha.ServerReflection`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct V1Alpha;
impl Version for V1Alpha {
    const NAME: &'static str = "grpc.reflection.v1alpha.ServerReflection";
}

/// The reflection service of one version.
#[derive(Debug)]
pub(crate) struct Reflection<V> {
    gateway: Arc<Gateway>,
    version: std::marker::PhantomData<fn() -> V>,
}

impl<V> Clone for Reflection<V> {
    fn clone(&self) -> Self {
        Self {
            gateway: Arc::clone(&self.gateway),
            version: std::marker::PhantomData,
        }
    }
}

impl<V: Version> Reflection<V> {
    pub(crate) fn new(gateway: Arc<Gateway>) -> Self {
        Self {
            gateway,
            version: std::marker::PhantomData,
        }
    }
}

impl<V: Version> NamedService for Reflection<V> {
    const NAME: &'static str = V::NAME;
}

/// The reflection builder with the gateway's own descriptors and every registered task's.
fn builder(gateway: &Gateway) -> tonic_reflection::server::Builder<'static> {
    let mut builder = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(taskwire::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET);
    for task in gateway.registry.list() {
        let set = task.input.parent_pool().encode_to_vec();
        if let Ok(set) = prost_types::FileDescriptorSet::decode(set.as_slice()) {
            builder = builder.register_file_descriptor_set(set);
        }
    }
    builder
}

impl<V: Version> Service<http::Request<Body>> for Reflection<V> {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let builder = builder(&self.gateway);
        Box::pin(async move {
            let built = if V::NAME == V1::NAME {
                builder.build_v1().map(|s| s.boxed_clone())
            } else {
                builder.build_v1alpha().map(|s| s.boxed_clone())
            };
            match built {
                Ok(service) => service.oneshot(request).await,
                Err(e) => Ok(tonic::Status::internal(format!("reflection: {e}")).into_http()),
            }
        })
    }
}
