//! Log and trace set-up, the same for every taskwire process.
//!
//! Logs: lines on stderr, filtered by `TASKWIRE_LOG` (e.g. `info` or `taskwire_worker=debug`);
//! human-readable by default, one JSON object a line with `TASKWIRE_LOG_FORMAT=json`. Inside a
//! task, every line carries the task's name, id and attempt (the worker runs each task in a
//! span).
//!
//! Traces: exported over OTLP/gRPC when `OTEL_EXPORTER_OTLP_ENDPOINT` (or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set, named by `OTEL_SERVICE_NAME` and sampled by
//! `OTEL_TRACES_SAMPLER`/`OTEL_TRACES_SAMPLER_ARG`, the standard variables; otherwise nothing
//! is exported and nothing complains. `OTEL_SDK_DISABLED=true` turns export off.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::Layer as _;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

/// Variable that holds the log filter.
pub const ENV_LOG: &str = "TASKWIRE_LOG";
/// Variable that picks the format: `text` (the default) or `json`.
pub const ENV_LOG_FORMAT: &str = "TASKWIRE_LOG_FORMAT";

/// Keeps the trace exporter; dropping it sends the spans not yet sent. Hold it in `main`.
#[must_use = "dropping it flushes and stops the trace export"]
#[derive(Debug)]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Sends the spans recorded so far.
    pub fn flush(&self) {
        if let Some(provider) = &self.provider {
            let _ = provider.force_flush();
        }
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take() {
            let _ = provider.shutdown();
        }
    }
}

fn exporting() -> bool {
    let set = |name: &str| std::env::var(name).is_ok_and(|v| !v.trim().is_empty());
    let disabled = std::env::var("OTEL_SDK_DISABLED").is_ok_and(|v| v.eq_ignore_ascii_case("true"))
        || std::env::var("OTEL_TRACES_EXPORTER").is_ok_and(|v| v.eq_ignore_ascii_case("none"));
    !disabled && (set("OTEL_EXPORTER_OTLP_ENDPOINT") || set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
}

/// Installs logging and, when configured, trace export. `default` is the log filter when
/// `TASKWIRE_LOG` is unset; `service` the service name when `OTEL_SERVICE_NAME` is unset. Call
/// it inside the Tokio runtime.
pub fn init(default: &str, service: &str) -> Telemetry {
    let filter = tracing_subscriber::EnvFilter::try_from_env(ENV_LOG)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let json = std::env::var(ENV_LOG_FORMAT).is_ok_and(|f| f.eq_ignore_ascii_case("json"));
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let fmt = if json {
        fmt.json()
            .with_current_span(true)
            .with_span_list(false)
            .boxed()
    } else {
        fmt.boxed()
    };

    let mut provider = None;
    let mut problem = None;
    if exporting() {
        match opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .build()
        {
            Ok(exporter) => {
                let name = std::env::var("OTEL_SERVICE_NAME")
                    .ok()
                    .filter(|n| !n.is_empty())
                    .unwrap_or_else(|| service.to_owned());
                let resource = opentelemetry_sdk::Resource::builder()
                    .with_service_name(name)
                    .build();
                provider = Some(
                    SdkTracerProvider::builder()
                        .with_batch_exporter(exporter)
                        .with_resource(resource)
                        .build(),
                );
            }
            Err(e) => problem = Some(e.to_string()),
        }
    }
    // Spans are recorded only when they are exported; logs are filtered by TASKWIRE_LOG alone.
    let otel = provider.as_ref().map(|p| {
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer("taskwire"))
            .with_filter(
                tracing_subscriber::filter::Targets::new().with_default(tracing::Level::INFO),
            )
    });
    let _ = tracing_subscriber::registry()
        .with(fmt.with_filter(filter))
        .with(otel)
        .try_init();
    if let Some(problem) = problem {
        tracing::warn!(error = %problem, "traces are not exported");
    }
    Telemetry { provider }
}
