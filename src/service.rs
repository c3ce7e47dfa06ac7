//! The interface between generated `*Server` adapters and the worker runtime.

use std::borrow::Cow;
use std::future::Future;
use std::pin::Pin;

use bytes::Bytes;

use crate::{TaskContext, TaskError};

/// A boxed, sendable future, as returned by [`Service::call`].
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// One task of a service, as the generated code describes it (with names known at build
/// time) or as a worker learnt it at run time (from an upstream server's reflection).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskDef {
    /// Full task name, e.g. `examples.magic.v1.Magic/Add`.
    pub name: Cow<'static, str>,
    /// Full name of the input message.
    pub input_type: Cow<'static, str>,
    /// Full name of the output message.
    pub output_type: Cow<'static, str>,
}

/// A task service a worker can serve: implemented by the generated `*Server` types.
pub trait Service: Send + Sync + 'static {
    /// Full service name, e.g. `examples.magic.v1.Magic`.
    fn name(&self) -> &str;
    /// The service's tasks.
    fn tasks(&self) -> &[TaskDef];
    /// Encoded `FileDescriptorSet` with the service, its messages and their options.
    fn file_descriptor_set(&self) -> &[u8];
    /// Runs `task` on protobuf-encoded arguments and returns the encoded output.
    fn call(
        &self,
        task: &str,
        ctx: TaskContext,
        args: Bytes,
    ) -> BoxFuture<Result<Vec<u8>, TaskError>>;
}
