//! Code generation for taskwire task contracts.
//!
//! A task contract is a protobuf service: each rpc is a task, its input message the arguments and
//! its output message the result. From the `.proto` files this crate generates, in `OUT_DIR`:
//!
//! - the prost messages;
//! - a worker trait per service (`trait Magic { async fn add(&self, ctx, args) -> Result<..> }`)
//!   and a `MagicServer` that a `taskwire_worker::Worker` serves;
//! - a typed producer stub per service (`MagicClient`) built on `taskwire_client`;
//! - `FILE_DESCRIPTOR_SET`: the compiled descriptors with their custom options, which workers
//!   publish to the registry so the gateway can validate payloads.
//!
//! No system `protoc` is needed: `protox` compiles the files. `taskwire/v1/options.proto` is
//! built in, so a contract can `import "taskwire/v1/options.proto"` without copying it.
//!
//! A project's whole `build.rs`:
//!
//! ```no_run
//! fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     taskwire_build::compile_protos(&["proto/greeter/v1/greeter.proto"], &["proto"])?;
//!     Ok(())
//! }
//! ```
//!
//! and in its `lib.rs`: `pub mod greeter { taskwire::include_tasks!("greeter.v1"); }`.

use std::path::{Path, PathBuf};

use protox::file::{
    ChainFileResolver, File, FileResolver, GoogleFileResolver, IncludeFileResolver,
};

mod generate;

use generate::Generator;

/// The package of taskwire's own protos.
const TASKWIRE_PACKAGE: &str = "taskwire.v1";

/// File name, inside `OUT_DIR`, of the encoded `FileDescriptorSet`.
pub const DESCRIPTOR_SET_FILE: &str = "taskwire_descriptor_set.bin";

/// The proto files that taskwire itself defines, importable from any contract.
const BUILTIN_PROTOS: &[(&str, &str)] = &[
    (
        "taskwire/v1/options.proto",
        include_str!("../proto/taskwire/v1/options.proto"),
    ),
    (
        "taskwire/v1/tasks.proto",
        include_str!("../proto/taskwire/v1/tasks.proto"),
    ),
    (
        "taskwire/v1/schedules.proto",
        include_str!("../proto/taskwire/v1/schedules.proto"),
    ),
    (
        "taskwire/v1/workflows.proto",
        include_str!("../proto/taskwire/v1/workflows.proto"),
    ),
];

/// What went wrong while generating code.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A proto file did not parse or check.
    #[error("could not compile protos: {0}")]
    Compile(#[from] protox::Error),
    /// A task name cannot be used as a NATS subject token.
    #[error("task `{task}` cannot be used: {reason}")]
    InvalidTaskName { task: String, reason: String },
    /// A streaming rpc: tasks take one message and give one.
    #[error("task `{task}` is a streaming rpc; a task takes one message and returns one")]
    Streaming { task: String },
    /// Writing the generated code failed.
    #[error("could not write generated code: {0}")]
    Io(#[from] std::io::Error),
    /// The compiled descriptors could not be read back.
    #[error("could not read the compiled descriptors: {0}")]
    Descriptors(String),
    /// `OUT_DIR` is not set and no output directory was given.
    #[error("OUT_DIR is not set: call this from a build script or set an output directory")]
    NoOutDir,
}

/// Compiles task contracts with the default settings: messages, worker traits and producer stubs.
pub fn compile_protos(
    protos: &[impl AsRef<Path>],
    includes: &[impl AsRef<Path>],
) -> Result<(), Error> {
    configure().compile(protos, includes)
}

/// A code generator with every option at its default.
pub fn configure() -> Builder {
    Builder {
        worker: true,
        client: true,
        messages: false,
        extern_paths: Vec::new(),
        grpc_packages: Vec::new(),
        out_dir: None,
    }
}

/// Settings for one code generation run.
#[derive(Debug, Clone)]
pub struct Builder {
    worker: bool,
    client: bool,
    messages: bool,
    extern_paths: Vec<(String, String)>,
    grpc_packages: Vec<String>,
    out_dir: Option<PathBuf>,
}

impl Builder {
    /// Generate worker traits and `*Server` adapters (needs the `taskwire` crate).
    pub fn worker(mut self, enable: bool) -> Self {
        self.worker = enable;
        self
    }

    /// Generate typed producer stubs `*Client` (needs the `taskwire-client` crate).
    pub fn client(mut self, enable: bool) -> Self {
        self.client = enable;
        self
    }

    /// Use messages of the proto package `proto_path` (e.g. `.examples`) from an existing Rust
    /// module (e.g. `::my_contracts::greeter`) instead of generating them.
    pub fn extern_path(
        mut self,
        proto_path: impl Into<String>,
        rust_path: impl Into<String>,
    ) -> Self {
        self.extern_paths
            .push((proto_path.into(), rust_path.into()));
        self
    }

    /// Write into this directory instead of `OUT_DIR`.
    pub fn out_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.out_dir = Some(dir.into());
        self
    }

    /// Generate plain tonic clients and servers for the services of this package instead of task
    /// code. The `taskwire` crate uses it for its own gateway API.
    #[doc(hidden)]
    pub fn grpc_package(mut self, package: impl Into<String>) -> Self {
        self.grpc_packages.push(package.into());
        self
    }

    /// Generate the `taskwire.v1` messages here instead of using them from the `taskwire` crate.
    #[doc(hidden)]
    pub fn own_messages(mut self, enable: bool) -> Self {
        self.messages = enable;
        self
    }

    /// Compiles `protos`, looked up in `includes` (and taskwire's built-in protos).
    pub fn compile(
        self,
        protos: &[impl AsRef<Path>],
        includes: &[impl AsRef<Path>],
    ) -> Result<(), Error> {
        let out_dir = match &self.out_dir {
            Some(dir) => dir.clone(),
            None => PathBuf::from(std::env::var_os("OUT_DIR").ok_or(Error::NoOutDir)?),
        };
        let mut compiler = protox::Compiler::with_file_resolver(resolver(includes));
        compiler.include_imports(true).include_source_info(true);
        compiler.open_files(protos)?;

        for proto in protos {
            println!("cargo:rerun-if-changed={}", proto.as_ref().display());
        }
        for include in includes {
            println!("cargo:rerun-if-changed={}", include.as_ref().display());
        }

        let fds = compiler.file_descriptor_set();
        // Producer stubs send the schema fingerprint of the proto they were built from.
        let pool = prost_reflect::DescriptorPool::from_file_descriptor_set(fds.clone())
            .map_err(|e| Error::Descriptors(e.to_string()))?;
        let mut hashes = std::collections::HashMap::new();
        for service in pool.services() {
            for method in service.methods() {
                hashes.insert(
                    format!("{}/{}", service.full_name(), method.name()),
                    taskwire_schema::descriptor_hash(&method.input(), &method.output()),
                );
            }
        }
        for file in &fds.file {
            for service in &file.service {
                if self
                    .grpc_packages
                    .iter()
                    .any(|p| Some(p.as_str()) == file.package.as_deref())
                    || (!self.messages && file.package() == TASKWIRE_PACKAGE)
                {
                    // Taskwire's own services, which a contract imports for their messages.
                    continue;
                }
                for method in &service.method {
                    let task = format!("{}.{}/{}", file.package(), service.name(), method.name());
                    check_task_name(&task)?;
                    if method.client_streaming() || method.server_streaming() {
                        return Err(Error::Streaming { task });
                    }
                }
            }
        }

        // Custom options (the task options) survive only in the encoded form.
        compiler.include_source_info(false);
        std::fs::create_dir_all(&out_dir)?;
        std::fs::write(
            out_dir.join(DESCRIPTOR_SET_FILE),
            compiler.encode_file_descriptor_set(),
        )?;

        let mut config = prost_build::Config::new();
        config.out_dir(&out_dir);
        // Generated messages use prost through the `taskwire` crate, so a project needs no
        // prost dependency of its own.
        config.prost_path("::taskwire::prost");
        // Messages know their full proto name (`prost::Name`): progress details and JSON
        // payloads name their type.
        config.enable_type_names();
        if !self.messages {
            // Contracts import taskwire's protos; their messages live in the `taskwire` crate.
            config.extern_path(".taskwire.v1", "::taskwire::v1");
        }
        for (proto, rust) in &self.extern_paths {
            config.extern_path(proto, rust);
        }
        let tonic = tonic_prost_build::configure()
            .build_client(true)
            .build_server(true)
            .service_generator();
        config.service_generator(Box::new(Generator {
            worker: self.worker,
            client: self.client,
            grpc_packages: self.grpc_packages.clone(),
            imported_only: (!self.messages).then(|| TASKWIRE_PACKAGE.to_owned()),
            tonic,
            hashes,
        }));
        config.compile_fds(fds)?;
        Ok(())
    }
}

/// Serves taskwire's own protos to imports.
struct BuiltinResolver;

/// Looks files up in `includes`, then among taskwire's built-in protos and Google's.
fn resolver(includes: &[impl AsRef<Path>]) -> ChainFileResolver {
    let mut resolver = ChainFileResolver::new();
    for include in includes {
        resolver.add(IncludeFileResolver::new(include.as_ref().to_owned()));
    }
    resolver.add(BuiltinResolver);
    resolver.add(GoogleFileResolver::new());
    resolver
}

/// Compiles `protos` (paths relative to one of `includes`) into an encoded
/// `FileDescriptorSet` with their imports and custom options, as workers register them: for
/// tools that read task contracts at run time, such as `taskwire k8s scaledobjects`.
pub fn describe(
    protos: &[impl AsRef<Path>],
    includes: &[impl AsRef<Path>],
) -> Result<Vec<u8>, Error> {
    let mut compiler = protox::Compiler::with_file_resolver(resolver(includes));
    compiler.include_imports(true).include_source_info(false);
    compiler.open_files(protos)?;
    Ok(compiler.encode_file_descriptor_set())
}

impl FileResolver for BuiltinResolver {
    fn open_file(&self, name: &str) -> Result<File, protox::Error> {
        match BUILTIN_PROTOS.iter().find(|(n, _)| *n == name) {
            Some((name, source)) => File::from_source(name, source),
            None => Err(protox::Error::file_not_found(name)),
        }
    }
}

/// Checks that a task name maps cleanly onto a NATS subject (`pkg.Service/Method` →
/// `pkg.Service.Method`), by the rule the runtime applies too.
fn check_task_name(task: &str) -> Result<(), Error> {
    match taskwire_schema::task_name_problem(task) {
        None => Ok(()),
        Some(reason) => Err(Error::InvalidTaskName {
            task: task.to_owned(),
            reason: reason.to_owned(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_names_map_to_subject_tokens() {
        assert!(check_task_name("examples.magic.v1.Magic/Add").is_ok());
        assert!(check_task_name("Magic/Add").is_err());
        assert!(check_task_name("examples.magic.v1.Magic").is_err());
        assert!(check_task_name("a.b-c.Magic/Add").is_err());
        assert!(check_task_name(&format!("a.{}/Add", "x".repeat(200))).is_err());
    }

    #[test]
    fn generates_worker_and_client_code() {
        let dir = tempdir();
        let proto_dir = dir.join("proto/demo/v1");
        std::fs::create_dir_all(&proto_dir).expect("mkdir");
        std::fs::write(
            proto_dir.join("demo.proto"),
            "syntax = \"proto3\";\npackage demo.v1;\nimport \"taskwire/v1/options.proto\";\n\
             service Demo { rpc Echo(Msg) returns (Msg) { option (taskwire.v1.task) = { max_attempts: 2 }; } }\n\
             message Msg { string text = 1; }\n",
        )
        .expect("write proto");
        configure()
            .out_dir(dir.join("out"))
            .compile(&[proto_dir.join("demo.proto")], &[dir.join("proto")])
            .expect("compile");
        let code = std::fs::read_to_string(dir.join("out/demo.v1.rs")).expect("generated file");
        assert!(code.contains("pub trait Demo"), "{code}");
        assert!(code.contains("pub struct DemoServer"), "{code}");
        assert!(code.contains("pub struct DemoClient"), "{code}");
        assert!(code.contains("\"demo.v1.Demo/Echo\""), "{code}");
        assert!(dir.join("out").join(DESCRIPTOR_SET_FILE).exists());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn refuses_streaming_tasks() {
        let dir = tempdir();
        std::fs::create_dir_all(dir.join("proto")).expect("mkdir");
        std::fs::write(
            dir.join("proto/s.proto"),
            "syntax = \"proto3\";\npackage s.v1;\nservice S { rpc Many(M) returns (stream M); }\nmessage M {}\n",
        )
        .expect("write proto");
        let err = configure()
            .out_dir(dir.join("out"))
            .compile(&[dir.join("proto/s.proto")], &[dir.join("proto")])
            .expect_err("streaming rpc must be refused");
        assert!(matches!(err, Error::Streaming { .. }), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn tempdir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "taskwire-build-test-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }
}
