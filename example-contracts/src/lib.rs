//! The example task contracts of taskwire, from `proto/examples`: each service's messages, its
//! worker trait and `*Server` adapter, and its typed producer stub (`*Client`). A project of
//! its own generates the same from its protos with `taskwire-build`.
//!
//! ```
//! use taskwire::{TaskContext, TaskError};
//! use taskwire_examples::magic::v1::{AddArgs, AddResult, Magic, MagicServer};
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

/// `examples.magic.v1`: the `Magic.Add` task.
pub mod magic {
    #[allow(clippy::all, missing_docs)]
    pub mod v1 {
        taskwire::include_tasks!("examples.magic.v1");
    }
}

/// `examples.chaos.v1`: slow, panicking and failing tasks for fault drills.
pub mod chaos {
    #[allow(clippy::all, missing_docs)]
    pub mod v1 {
        taskwire::include_tasks!("examples.chaos.v1");
    }
}

/// `examples.flow.v1`: tasks that fit together into workflows.
pub mod flow {
    #[allow(clippy::all, missing_docs)]
    pub mod v1 {
        taskwire::include_tasks!("examples.flow.v1");
    }
}

pub mod flow_tasks;
pub mod many;

/// The encoded `FileDescriptorSet` of the example contracts, custom options included.
pub const FILE_DESCRIPTOR_SET: &[u8] = magic::v1::FILE_DESCRIPTOR_SET;
