//! The Rust code generated for a contract service: a worker trait and its server, a typed
//! producer stub; built as tokens with `quote!` and formatted with `prettyplease`, as
//! tonic-build does.

use proc_macro2::TokenStream;
use prost_build::{Method, Service, ServiceGenerator};
use quote::{format_ident, quote};

use crate::DESCRIPTOR_SET_FILE;

/// Generates task code for contract services and tonic code for the gRPC API packages.
pub(crate) struct Generator {
    pub(crate) worker: bool,
    pub(crate) client: bool,
    pub(crate) grpc_packages: Vec<String>,
    /// A package whose services are imported for their messages only: no code for them.
    pub(crate) imported_only: Option<String>,
    pub(crate) tonic: Box<dyn ServiceGenerator>,
    /// Schema fingerprint of each task, by task name.
    pub(crate) hashes: std::collections::HashMap<String, String>,
}

impl ServiceGenerator for Generator {
    fn generate(&mut self, service: Service, buf: &mut String) {
        if self.imported_only.as_ref() == Some(&service.package) {
            return;
        }
        if self.grpc_packages.contains(&service.package) {
            self.tonic.generate(service, buf);
            return;
        }
        if self.worker {
            generate_worker(&service, buf);
        }
        if self.client {
            generate_client(&service, &self.hashes, buf);
        }
    }

    fn finalize(&mut self, buf: &mut String) {
        self.tonic.finalize(buf);
    }

    fn finalize_package(&mut self, package: &str, buf: &mut String) {
        if self.imported_only.as_deref() == Some(package) {
            return;
        }
        if self.grpc_packages.iter().any(|p| p == package) {
            self.tonic.finalize_package(package, buf);
            return;
        }
        if self.worker {
            let file = format!("/{DESCRIPTOR_SET_FILE}");
            render(
                quote! {
                    /// Encoded `FileDescriptorSet` of the contracts compiled with this package, custom options included.
                    pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), #file));
                },
                buf,
            );
        }
    }
}

fn task_name(service: &Service, method: &Method) -> String {
    format!(
        "{}.{}/{}",
        service.package, service.proto_name, method.proto_name
    )
}

/// A proto comment as `#[doc]` attributes, one per line.
fn doc_attrs(comments: &prost_build::Comments) -> Vec<TokenStream> {
    comments
        .leading
        .iter()
        .flat_map(|c| c.lines())
        .map(|line| {
            let line = if line.is_empty() {
                String::new()
            } else {
                format!(" {}", line.trim_end())
            };
            quote! { #[doc = #line] }
        })
        .collect()
}

/// A Rust path or identifier prost-build wrote as text (a message type, a method name).
fn parse<T: syn::parse::Parse>(text: &str) -> T {
    syn::parse_str(text).unwrap_or_else(|e| panic!("taskwire-build: `{text}` is not Rust: {e}"))
}

/// Generated items as formatted source.
fn render(tokens: TokenStream, buf: &mut String) {
    let file: syn::File = syn::parse2(tokens)
        .unwrap_or_else(|e| panic!("taskwire-build: generated code does not parse: {e}"));
    buf.push_str(&prettyplease::unparse(&file));
}

fn generate_worker(service: &Service, buf: &mut String) {
    let name = format_ident!("{}", service.name);
    let server = format_ident!("{}Server", service.name);
    let full = format!("{}.{}", service.package, service.proto_name);
    let service_docs = doc_attrs(&service.comments);
    let trait_doc = format!(
        " Worker side of `{full}`: implement it and serve it with [`{}Server`].",
        service.name
    );
    let server_doc = format!(
        " Serves a [`{}`] implementation on a taskwire worker.",
        service.name
    );
    let mut methods = Vec::new();
    let mut defs = Vec::new();
    let mut arms = Vec::new();
    for method in &service.methods {
        let task = task_name(service, method);
        let m: syn::Ident = parse(&method.name);
        let input: syn::Type = parse(&method.input_type);
        let output: syn::Type = parse(&method.output_type);
        let input_proto = method.input_proto_type.trim_start_matches('.');
        let output_proto = method.output_proto_type.trim_start_matches('.');
        let method_docs = doc_attrs(&method.comments);
        let run_doc = format!(" Runs the task `{task}`.");
        methods.push(quote! {
            #(#method_docs)*
            #[doc = #run_doc]
            fn #m(
                &self,
                ctx: ::taskwire::TaskContext,
                args: #input,
            ) -> impl ::core::future::Future<
                Output = ::core::result::Result<#output, ::taskwire::TaskError>,
            > + ::core::marker::Send;
        });
        defs.push(quote! {
            ::taskwire::service::TaskDef {
                name: ::std::borrow::Cow::Borrowed(#task),
                input_type: ::std::borrow::Cow::Borrowed(#input_proto),
                output_type: ::std::borrow::Cow::Borrowed(#output_proto),
            }
        });
        arms.push(quote! {
            #task => ::std::boxed::Box::pin(async move {
                let args = <#input as ::taskwire::prost::Message>::decode(args)
                    .map_err(|e| ::taskwire::TaskError::undecodable(#input_proto, e))?;
                let output = inner.#m(ctx, args).await?;
                ::core::result::Result::Ok(::taskwire::prost::Message::encode_to_vec(&output))
            }),
        });
    }
    render(
        quote! {
            #(#service_docs)*
            #[doc = #trait_doc]
            pub trait #name: ::core::marker::Send + ::core::marker::Sync + 'static {
                #(#methods)*
            }

            #[doc = #server_doc]
            #[derive(Debug)]
            pub struct #server<T> {
                inner: ::std::sync::Arc<T>,
            }

            impl<T> ::core::clone::Clone for #server<T> {
                fn clone(&self) -> Self {
                    Self { inner: ::std::sync::Arc::clone(&self.inner) }
                }
            }

            impl<T: #name> #server<T> {
                /// Wraps the implementation.
                pub fn new(inner: T) -> Self {
                    Self { inner: ::std::sync::Arc::new(inner) }
                }
                /// Wraps an implementation that is shared already.
                pub fn from_arc(inner: ::std::sync::Arc<T>) -> Self {
                    Self { inner }
                }
            }

            impl<T: #name> ::taskwire::service::Service for #server<T> {
                fn name(&self) -> &str {
                    #full
                }
                fn tasks(&self) -> &[::taskwire::service::TaskDef] {
                    const TASKS: &[::taskwire::service::TaskDef] = &[#(#defs),*];
                    TASKS
                }
                fn file_descriptor_set(&self) -> &[u8] {
                    FILE_DESCRIPTOR_SET
                }
                fn call(
                    &self,
                    task: &str,
                    ctx: ::taskwire::TaskContext,
                    args: ::taskwire::bytes::Bytes,
                ) -> ::taskwire::service::BoxFuture<
                    ::core::result::Result<::std::vec::Vec<u8>, ::taskwire::TaskError>,
                > {
                    let inner = ::std::sync::Arc::clone(&self.inner);
                    match task {
                        #(#arms)*
                        other => ::std::boxed::Box::pin(::core::future::ready(
                            ::core::result::Result::Err(::taskwire::TaskError::unknown_task(#full, other)),
                        )),
                    }
                }
            }
        },
        buf,
    );
}

fn generate_client(
    service: &Service,
    hashes: &std::collections::HashMap<String, String>,
    buf: &mut String,
) {
    let client = format_ident!("{}Client", service.name);
    let full = format!("{}.{}", service.package, service.proto_name);
    let client_doc =
        format!(" Producer side of `{full}`: submits its tasks through a taskwire gateway.");
    let mut methods = Vec::new();
    for method in &service.methods {
        let task = task_name(service, method);
        let hash = hashes.get(&task).map_or("", String::as_str);
        let m: syn::Ident = parse(&method.name);
        let with = format_ident!("{}_with", m.to_string().trim_start_matches("r#"));
        let and_wait = format_ident!("{}_and_wait", m.to_string().trim_start_matches("r#"));
        let input: syn::Type = parse(&method.input_type);
        let output: syn::Type = parse(&method.output_type);
        let method_docs = doc_attrs(&method.comments);
        let submit_doc = format!(" Submits `{task}` and returns a handle to its result.");
        let with_doc =
            format!(" Submits `{task}` with options such as an idempotency key. Sends the schema");
        let wait_doc =
            format!(" Submits `{task}` and waits up to `timeout` for its result, in one call.");
        methods.push(quote! {
            #(#method_docs)*
            #[doc = #submit_doc]
            pub async fn #m(
                &self,
                args: #input,
            ) -> ::core::result::Result<::taskwire_client::TaskHandle<#output>, ::taskwire_client::Error> {
                self.#with(args, ::taskwire_client::SubmitOptions::default()).await
            }
            #[doc = #with_doc]
            /// fingerprint of this build, so a gateway whose workers registered another schema refuses it.
            pub async fn #with(
                &self,
                args: #input,
                options: ::taskwire_client::SubmitOptions,
            ) -> ::core::result::Result<::taskwire_client::TaskHandle<#output>, ::taskwire_client::Error> {
                self.inner.submit_described(#task, #hash, &args, options).await
            }
            #[doc = #wait_doc]
            pub async fn #and_wait(
                &self,
                args: #input,
                timeout: ::std::time::Duration,
            ) -> ::core::result::Result<#output, ::taskwire_client::Error> {
                self.inner
                    .run_described(#task, #hash, &args, ::taskwire_client::SubmitOptions::default(), timeout)
                    .await
            }
        });
    }
    render(
        quote! {
            #[doc = #client_doc]
            #[derive(Debug, Clone)]
            pub struct #client {
                inner: ::taskwire_client::Client,
            }

            impl #client {
                /// Connects to the gateway at `endpoint` (e.g. `http://127.0.0.1:50051`).
                pub async fn connect(
                    endpoint: impl ::core::convert::Into<::std::string::String>,
                ) -> ::core::result::Result<Self, ::taskwire_client::Error> {
                    ::core::result::Result::Ok(Self::new(::taskwire_client::Client::connect(endpoint).await?))
                }
                /// Uses a client that is connected already.
                pub fn new(client: ::taskwire_client::Client) -> Self {
                    Self { inner: client }
                }
                /// The untyped client underneath.
                pub fn client(&self) -> &::taskwire_client::Client {
                    &self.inner
                }
                #(#methods)*
            }
        },
        buf,
    );
}
