//! Task contracts for taskwire, the distributed task queue whose task interfaces are protobuf
//! services.
//!
//! This crate is what producers and workers share:
//!
//! - the generated code of the gateway API ([`v1`]) and the task options;
//! - [`task`]: task names, ids, options and the mapping of a task onto NATS subjects;
//! - [`TaskContext`] and [`TaskError`]: what a task receives and how it fails;
//! - [`service::Service`]: the interface the worker runtime drives;
//! - with the `telemetry` feature, what the taskwire processes share: log and trace set-up,
//!   [`shutdown_signal`].
//!
//! A worker implements the trait generated from a contract (here the example contract of
//! `taskwire-examples`):
//!
//! ```
//! use taskwire_examples::magic::v1::{AddArgs, AddResult, Magic, MagicServer};
//! use taskwire::{TaskContext, TaskError};
//!
//! struct MyMagic;
//!
//! impl Magic for MyMagic {
//!     async fn add(&self, _ctx: TaskContext, args: AddArgs) -> Result<AddResult, TaskError> {
//!         Ok(AddResult { sum: args.arg1 + args.arg2 + args.arg3 })
//!     }
//! }
//!
//! let server = MagicServer::new(MyMagic);
//! # let _ = server;
//! ```
//!
//! Other projects generate the same code from their own protos with `taskwire-build` and include
//! it with [`include_tasks!`].

extern crate self as taskwire;

pub mod codec;
pub mod config;
mod context;
mod error;
pub mod propagation;
pub use taskwire_schema as schema;
pub mod service;
pub mod task;
#[cfg(feature = "telemetry")]
pub mod telemetry;

pub use context::{ChildFuture, Children, ProgressSink, TaskContext, WAITING_FOR_CHILDREN};
pub use error::{ErrorKind, TaskError};

// Generated code refers to these through `::taskwire::`.
pub use bytes;
pub use prost;

/// Includes the code that `taskwire-build` generated for a proto package.
///
/// ```ignore
/// pub mod greeter {
///     taskwire::include_tasks!("greeter.v1");
/// }
/// ```
#[macro_export]
macro_rules! include_tasks {
    ($package:literal) => {
        include!(concat!(env!("OUT_DIR"), "/", $package, ".rs"));
    };
}

/// The gateway API (`taskwire.v1`): tonic clients and servers, messages and task options.
#[allow(clippy::all, missing_docs)]
pub mod v1 {
    include_tasks!("taskwire.v1");
}

/// The encoded `FileDescriptorSet` of the gateway API (`proto/taskwire/v1`), task options
/// included.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/taskwire_descriptor_set.bin"));

/// Completes on the first SIGINT or SIGTERM: the one shutdown trigger of every taskwire process.
/// The signals are caught from the moment this is called (inside a Tokio runtime), not from its
/// first poll, so a signal that comes while the process is still starting is not fatal.
#[cfg(all(unix, feature = "telemetry"))]
pub fn shutdown_signal() -> impl std::future::Future<Output = ()> + Send {
    use tokio::signal::unix::{SignalKind, signal};
    let term = signal(SignalKind::terminate()).ok();
    let int = signal(SignalKind::interrupt()).ok();
    async move {
        match (term, int) {
            (Some(mut term), Some(mut int)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            }
            _ => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
}

/// Completes on the first Ctrl-C (where there are no Unix signals).
#[cfg(all(not(unix), feature = "telemetry"))]
pub fn shutdown_signal() -> impl std::future::Future<Output = ()> + Send {
    async {
        let _ = tokio::signal::ctrl_c().await;
    }
}
