"""Traces of a Python worker, as the Rust runtime makes them: one `process <task>` consumer span
per attempt, continuing the trace whose `traceparent` the task message carries, and a
`publish taskwire.results` producer span for the result, whose context the result names.

Exported over OTLP when `OTEL_EXPORTER_OTLP_ENDPOINT` (or `..._TRACES_ENDPOINT`) is set and the
optional packages are installed (`pip install "taskwire[otel]"`); otherwise nothing is recorded
and the worker passes the producer's `traceparent` on unchanged."""

import contextlib
import logging
import os
from typing import Any, Dict, Iterator, Optional

log = logging.getLogger("taskwire.worker")


class Tracing:
    """The worker's tracer, or nothing when traces are off."""

    def __init__(self, tracer: Any = None, provider: Any = None) -> None:
        self._tracer = tracer
        self._provider = provider

    @classmethod
    def from_env(cls, default_service: str = "taskwire-python-worker") -> "Tracing":
        endpoint = (
            os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "").strip()
            or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip()
        )
        off = (
            os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true"
            or os.environ.get("OTEL_TRACES_EXPORTER", "").strip().lower() == "none"
        )
        if not endpoint or off:
            return cls()
        try:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
            from opentelemetry.sdk.resources import Resource
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor
        except ImportError:
            log.warning(
                "OTEL_EXPORTER_OTLP_ENDPOINT is set but the OpenTelemetry packages are missing: "
                'pip install "taskwire[otel]" to export traces'
            )
            return cls()
        service = os.environ.get("OTEL_SERVICE_NAME") or default_service
        provider = TracerProvider(resource=Resource.create({"service.name": service}))
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        return cls(provider.get_tracer("taskwire.worker"), provider)

    @property
    def enabled(self) -> bool:
        return self._tracer is not None

    @contextlib.contextmanager
    def process(
        self, task: str, subject: str, headers: Dict[str, str], attempt: int, redelivered: bool
    ) -> Iterator[Optional[Any]]:
        """The span of one attempt (None when traces are off), a child of the producer's. The
        caller sets `messaging.message.id` once it knows the task's id is valid."""
        if self._tracer is None:
            yield None
            return
        from opentelemetry import trace
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        parent = TraceContextTextMapPropagator().extract(carrier=headers)
        producer = trace.get_current_span(parent).get_span_context()
        links = [trace.Link(producer)] if redelivered and producer.is_valid else None
        attributes = {
            "messaging.system": "nats",
            "messaging.destination.name": subject,
            "messaging.operation.type": "process",
            "messaging.operation.name": "process",
            "taskwire.task.name": task,
            "taskwire.task.attempt": attempt,
        }
        with self._tracer.start_as_current_span(
            f"process {task}",
            context=parent,
            kind=trace.SpanKind.CONSUMER,
            attributes=attributes,
            links=links,
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            yield span

    @contextlib.contextmanager
    def publish_result(self, task: str, task_id: str, state: str, headers: Dict[str, str]) -> Iterator[None]:
        """The span of a result's publish, a child of the attempt's; puts its context into
        `headers` (else the producer's `traceparent` stays there)."""
        if self._tracer is None:
            yield
            return
        from opentelemetry import trace
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        with self._tracer.start_as_current_span(
            "publish taskwire.results",
            kind=trace.SpanKind.PRODUCER,
            attributes={
                "messaging.system": "nats",
                "messaging.destination.name": f"taskwire.results.{task_id}.{task.replace('/', '.')}",
                "messaging.operation.type": "publish",
                "messaging.operation.name": "publish",
                "messaging.message.id": task_id,
                "taskwire.task.name": task,
                "taskwire.task.state": state,
            },
        ):
            TraceContextTextMapPropagator().inject(headers)
            yield

    @staticmethod
    def failed(span: Any, message: str) -> None:
        """Marks an attempt's span as failed."""
        if span is not None:
            from opentelemetry.trace import Status, StatusCode

            span.set_status(Status(StatusCode.ERROR, message))

    def shutdown(self) -> None:
        """Sends what is still buffered, waiting a few seconds at most for the collector."""
        if self._provider is not None:
            try:
                self._provider.force_flush(timeout_millis=5000)
                self._provider.shutdown()
            except Exception as e:  # an unreachable collector must not fail the stop
                log.warning("traces not flushed at exit: %s", e)
