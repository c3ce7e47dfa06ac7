//! The typed Rust producer client of taskwire.
//!
//! Generated stubs (`MagicClient`) submit tasks through the gateway and return a
//! [`TaskHandle`] typed by the task's output message: Celery's `delay(...).get()`, checked by
//! the compiler.
//!
//! ```no_run
//! use std::time::Duration;
//! use taskwire_examples::magic::v1::{AddArgs, MagicClient};
//!
//! # async fn run() -> Result<(), taskwire_client::Error> {
//! let magic = MagicClient::connect("http://127.0.0.1:50051").await?;
//! let handle = magic.add(AddArgs { arg1: 1, arg2: 2, arg3: 3 }).await?;
//! let result = handle.get(Duration::from_secs(5)).await?;
//! assert_eq!(result.sum, 6);
//! # Ok(())
//! # }
//! ```
//!
//! Projects generate stubs for their own contracts with `taskwire-build`; [`Client`] also
//! submits any task by name.

extern crate self as taskwire_client;

use taskwire::v1::admin_client::AdminClient;
use taskwire::v1::schedules_client::SchedulesClient;
use taskwire::v1::tasks_client::TasksClient;
use taskwire::v1::workflows_client::WorkflowsClient;

pub use taskwire::v1::{TaskInfo, TaskType};

mod admin;
mod connect;
mod error;
mod handle;
mod options;
mod reads;
mod schedules;
mod submit;
pub mod workflow;

pub use connect::{ConnectOptions, Transport, env};
pub use error::Error;
pub use handle::{Pending, TaskHandle, Watch, is_final};
pub use options::{SUBMIT_MANY_CALL, SubmitOptions, request, request_json};

use handle::outcome;

/// The untyped client: one HTTP/2 connection to a gateway, cheap to clone.
#[derive(Debug, Clone)]
pub struct Client {
    tasks: TasksClient<Transport>,
    admin: AdminClient<Transport>,
    schedules: SchedulesClient<Transport>,
    workflows: WorkflowsClient<Transport>,
}
