//! One trace per task: the producer's span, the gateway's server and publish spans, the
//! worker's process span and its result publish, collected by an OTLP receiver in this test
//! from a real gateway process, a real worker process and this process as the producer.

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;
use taskwire_client::Client;
use taskwire_examples::chaos::v1::ChaosClient;
use taskwire_examples::chaos::v1::FlakyArgs;
use taskwire_examples::magic::v1::AddArgs;
use taskwire_examples::magic::v1::MagicClient;
use taskwire_testing::{NatsServer, bin, eventually, gateway_process};
use tracing::Instrument as _;
use tracing_subscriber::layer::SubscriberExt as _;

const WAIT: Duration = Duration::from_secs(20);

/// A span as received, with the service that sent it.
#[derive(Debug, Clone)]
struct Received {
    service: String,
    span: Span,
}

#[derive(Debug, Default, Clone)]
struct Receiver {
    spans: Arc<Mutex<Vec<Received>>>,
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.spans.lock().unwrap_or_else(|e| e.into_inner());
        for resource in request.into_inner().resource_spans {
            let service = resource
                .resource
                .as_ref()
                .and_then(|r| r.attributes.iter().find(|a| a.key == "service.name"))
                .and_then(|a| a.value.as_ref()?.value.clone())
                .map(|v| match v {
                    Value::StringValue(s) => s,
                    other => format!("{other:?}"),
                })
                .unwrap_or_default();
            for scope in resource.scope_spans {
                for span in scope.spans {
                    spans.push(Received {
                        service: service.clone(),
                        span,
                    });
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

fn attribute(span: &Span, key: &str) -> Option<String> {
    let value = span
        .attributes
        .iter()
        .find(|a| a.key == key)?
        .value
        .as_ref()?;
    Some(match value.value.as_ref()? {
        Value::StringValue(s) => s.clone(),
        Value::IntValue(n) => n.to_string(),
        Value::BoolValue(b) => b.to_string(),
        other => format!("{other:?}"),
    })
}

/// Kinds in the OTLP proto.
const SERVER: i32 = 2;
const CLIENT: i32 = 3;
const PRODUCER: i32 = 4;
const CONSUMER: i32 = 5;
/// Status code ERROR in the OTLP proto.
const ERROR: i32 = 2;

fn spawn(binary: &str, env: &[(&str, String)]) -> anyhow::Result<tokio::process::Child> {
    Ok(tokio::process::Command::new(bin(binary)?)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .env("TASKWIRE_LOG", "warn")
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .spawn()?)
}

async fn stop(mut child: tokio::process::Child) -> anyhow::Result<()> {
    let pid = nix::unistd::Pid::from_raw(child.id().expect("running") as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM)?;
    tokio::time::timeout(WAIT, child.wait()).await??;
    Ok(())
}

/// The spans of one scenario's trace, checked for the chain producer → gateway → worker.
struct Trace {
    spans: Vec<Received>,
}

impl Trace {
    fn one(&self, what: &str, pick: impl Fn(&Received) -> bool) -> &Span {
        let found: Vec<&Received> = self.spans.iter().filter(|s| pick(s)).collect();
        assert_eq!(
            found.len(),
            1,
            "one {what} span expected in {:#?}",
            self.names()
        );
        &found[0].span
    }

    fn all(&self, pick: impl Fn(&Received) -> bool) -> Vec<&Span> {
        self.spans
            .iter()
            .filter(|s| pick(s))
            .map(|s| &s.span)
            .collect()
    }

    fn names(&self) -> Vec<String> {
        self.spans
            .iter()
            .map(|s| format!("{}: {} ({})", s.service, s.span.name, s.span.kind))
            .collect()
    }

    /// The producer's submit span, the gateway's server span and publish span; returns the
    /// publish span (the parent of the worker's process spans).
    fn check_submission(&self, task: &str, method: &str) -> &Span {
        let client = self.one("client", |s| {
            s.service == "producer" && s.span.kind == CLIENT
        });
        assert_eq!(client.name, format!("submit {task}"));
        let server = self.one("gateway server", |s| {
            s.service == "gateway" && s.span.kind == SERVER
        });
        assert_eq!(server.name, format!("taskwire.v1.Tasks/{method}"));
        assert_eq!(server.parent_span_id, client.span_id, "server under client");
        let publish = self.one("gateway publish", |s| {
            s.service == "gateway" && s.span.kind == PRODUCER
        });
        assert_eq!(
            publish.parent_span_id, server.span_id,
            "publish under server"
        );
        assert_eq!(
            attribute(publish, "messaging.system").as_deref(),
            Some("nats")
        );
        assert_eq!(
            attribute(publish, "messaging.operation.type").as_deref(),
            Some("publish")
        );
        assert_eq!(
            attribute(publish, "taskwire.task.name").as_deref(),
            Some(task)
        );
        publish
    }
}

fn render(trace: &Trace) -> String {
    // The span tree as text, for the test's output.
    fn walk(trace: &Trace, parent: &[u8], depth: usize, out: &mut String) {
        for s in trace
            .spans
            .iter()
            .filter(|s| s.span.parent_span_id == parent)
        {
            let kind = match s.span.kind {
                SERVER => "server",
                CLIENT => "client",
                PRODUCER => "producer",
                CONSUMER => "consumer",
                _ => "internal",
            };
            let status = s.span.status.as_ref().map_or(0, |st| st.code);
            out.push_str(&format!(
                "{}{} [{}, {}{}]\n",
                "  ".repeat(depth),
                s.span.name,
                s.service,
                kind,
                if status == ERROR { ", error" } else { "" }
            ));
            walk(trace, &s.span.span_id, depth + 1, out);
        }
    }
    let mut out = String::new();
    let root = trace
        .spans
        .iter()
        .find(|s| {
            !trace
                .spans
                .iter()
                .any(|p| p.span.span_id == s.span.parent_span_id)
        })
        .map(|s| s.span.parent_span_id.clone())
        .unwrap_or_default();
    walk(trace, &root, 0, &mut out);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_follows_each_task_from_producer_to_result() -> anyhow::Result<()> {
    // The receiver.
    let receiver = Receiver::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let otlp: SocketAddr = listener.local_addr()?;
    let incoming = tonic::transport::server::TcpIncoming::from(listener);
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(receiver.clone()))
            .serve_with_incoming(incoming),
    );
    let endpoint = format!("http://{otlp}");

    // This process is the producer.
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint.clone())
        .build()?;
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(
            opentelemetry_sdk::Resource::builder()
                .with_service_name("producer")
                .build(),
        )
        .build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
    tracing::subscriber::set_global_default(subscriber)?;

    // The gateway and the worker, as processes that export to the receiver.
    let nats = NatsServer::start_temporary().await?;
    let otel = |service: &str| {
        vec![
            ("TASKWIRE_NATS_URL", nats.url()),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.clone()),
            ("OTEL_SERVICE_NAME", service.to_owned()),
        ]
    };
    let gateway_env = otel("gateway");
    let gateway_env: Vec<(&str, &str)> =
        gateway_env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (gateway, gateway_addr) = gateway_process(&gateway_env, None).await?;
    let worker = spawn("taskwire-test-worker", &otel("worker"))?;
    let client = loop {
        if let Ok(client) = Client::connect(format!("http://{gateway_addr}")).await {
            break client;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    eventually("the worker to register", WAIT, || async {
        client
            .task_types()
            .await
            .is_ok_and(|t| t.iter().any(|t| t.name.ends_with("Chaos/Flaky")))
    })
    .await?;

    // A success, a failure and a retry, each in a trace of its own.
    let magic = MagicClient::new(client.clone());
    let chaos = ChaosClient::new(client.clone());
    let success = async {
        magic
            .add_and_wait(
                AddArgs {
                    arg1: 1,
                    arg2: 2,
                    arg3: 3,
                },
                WAIT,
            )
            .await
    }
    .instrument(tracing::info_span!("scenario success"))
    .await?;
    assert_eq!(success.sum, 6);
    let failure = async {
        let handle = chaos
            .flaky(FlakyArgs {
                permanent: true,
                ..Default::default()
            })
            .await?;
        anyhow::Ok(handle.get(WAIT).await.is_err())
    }
    .instrument(tracing::info_span!("scenario failure"))
    .await?;
    assert!(failure);
    let retried = async {
        let handle = chaos
            .flaky(FlakyArgs {
                succeed_on_attempt: 2,
                ..Default::default()
            })
            .await?;
        anyhow::Ok(handle.get(WAIT).await?.attempt)
    }
    .instrument(tracing::info_span!("scenario retry"))
    .await?;
    assert_eq!(retried, 2);

    // Stopping flushes every exporter.
    stop(worker).await?;
    stop(gateway).await?;
    tokio::task::spawn_blocking(move || provider.shutdown()).await??;

    let spans = receiver
        .spans
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let scenario = |name: &str| -> Trace {
        let root = spans
            .iter()
            .find(|s| s.span.name == name)
            .unwrap_or_else(|| panic!("no {name} span among {}", spans.len()));
        Trace {
            spans: spans
                .iter()
                .filter(|s| s.span.trace_id == root.span.trace_id && s.span.name != name)
                .cloned()
                .collect(),
        }
    };

    // Success: one process span under the publish span, and the result's publish under it.
    let trace = scenario("scenario success");
    println!("success:\n{}", render(&trace));
    let publish = trace.check_submission("examples.magic.v1.Magic/Add", "SubmitAndWait");
    let process = trace.one("worker process", |s| {
        s.service == "worker" && s.span.kind == CONSUMER
    });
    assert_eq!(process.name, "process examples.magic.v1.Magic/Add");
    assert_eq!(
        process.parent_span_id, publish.span_id,
        "process under publish"
    );
    assert_eq!(
        attribute(process, "messaging.system").as_deref(),
        Some("nats")
    );
    assert_eq!(
        attribute(process, "messaging.destination.name").as_deref(),
        Some("taskwire.tasks.examples.magic.v1.Magic.Add")
    );
    assert_eq!(
        attribute(process, "messaging.operation.type").as_deref(),
        Some("process")
    );
    assert_eq!(
        attribute(process, "taskwire.task.attempt").as_deref(),
        Some("1")
    );
    let id = attribute(process, "messaging.message.id").expect("the task id");
    let result = trace.one("result publish", |s| {
        s.service == "worker" && s.span.kind == PRODUCER
    });
    assert_eq!(
        result.parent_span_id, process.span_id,
        "result under process"
    );
    assert_eq!(
        attribute(result, "messaging.destination.name"),
        Some(format!("taskwire.results.{id}.examples.magic.v1.Magic.Add"))
    );

    // Failure: the process span says so.
    let trace = scenario("scenario failure");
    println!("failure:\n{}", render(&trace));
    let publish = trace.check_submission("examples.chaos.v1.Chaos/Flaky", "Submit");
    let process = trace.one("worker process", |s| {
        s.service == "worker" && s.span.kind == CONSUMER
    });
    assert_eq!(process.parent_span_id, publish.span_id);
    assert_eq!(process.status.as_ref().map(|s| s.code), Some(ERROR));

    // Retry: two attempts in the same trace; the second is linked to the submission too.
    let trace = scenario("scenario retry");
    println!("retry:\n{}", render(&trace));
    let publish = trace.check_submission("examples.chaos.v1.Chaos/Flaky", "Submit");
    let mut attempts = trace.all(|s| s.service == "worker" && s.span.kind == CONSUMER);
    attempts.sort_by_key(|s| attribute(s, "taskwire.task.attempt"));
    assert_eq!(attempts.len(), 2, "{:#?}", trace.names());
    assert_eq!(
        attribute(attempts[0], "taskwire.task.attempt").as_deref(),
        Some("1")
    );
    assert_eq!(attempts[0].status.as_ref().map(|s| s.code), Some(ERROR));
    assert_eq!(
        attribute(attempts[1], "taskwire.task.attempt").as_deref(),
        Some("2")
    );
    assert_ne!(attempts[1].status.as_ref().map(|s| s.code), Some(ERROR));
    for attempt in &attempts {
        assert_eq!(attempt.parent_span_id, publish.span_id);
    }
    assert!(
        attempts[1]
            .links
            .iter()
            .any(|l| l.span_id == publish.span_id),
        "the retry links to the submission"
    );
    server.abort();
    Ok(())
}
