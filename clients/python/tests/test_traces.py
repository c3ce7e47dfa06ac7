"""A task served by the Python worker is one trace with the gateway's spans: the worker's
`process` span continues the gateway's publish span, its result publish is a child of it, and
the result names the trace. Spans are collected by an OTLP receiver in this test."""

import threading
import time
from concurrent import futures

import grpc
import pytest

import taskwire
from examples.chaos.v1 import chaos_pb2
from examples.magic.v1 import magic_pb2

# The worker's traces need the optional packages (taskwire[otel]); `make test` installs them.
pytest.importorskip("opentelemetry.sdk")
pytest.importorskip("opentelemetry.exporter.otlp.proto.grpc")
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc  # noqa: E402
from opentelemetry.proto.trace.v1 import trace_pb2  # noqa: E402

Magic = taskwire.service(magic_pb2, "Magic")
Chaos = taskwire.service(chaos_pb2, "Chaos")
ADD = "examples.magic.v1.Magic/Add"


class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    """Keeps every span it is sent, with the service that sent it."""

    def __init__(self) -> None:
        self.spans = []
        self.lock = threading.Lock()

    def Export(self, request, context):
        with self.lock:
            for resource in request.resource_spans:
                service = next(
                    (a.value.string_value for a in resource.resource.attributes if a.key == "service.name"), ""
                )
                for scope in resource.scope_spans:
                    self.spans.extend((service, span) for span in scope.spans)
        return trace_service_pb2.ExportTraceServiceResponse()

    def find(self, service: str, name: str, task_id: str):
        """The spans of `service` named `name` about task `task_id`, waiting for them a while."""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with self.lock:
                found = [
                    span
                    for s, span in self.spans
                    if s == service and span.name == name and attribute(span, "messaging.message.id") == task_id
                ]
            if found:
                return found
            time.sleep(0.1)
        with self.lock:
            seen = sorted({(s, span.name) for s, span in self.spans})
        pytest.fail(f"no span {name!r} of {service} for {task_id}; received {seen}")


def attribute(span, key: str):
    for a in span.attributes:
        if a.key == key:
            value = a.value
            return value.string_value if value.HasField("string_value") else value.int_value
    return None


@pytest.fixture(scope="module")
def traced():
    from conftest import System

    receiver = Receiver()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(receiver, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    otel = {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}", "OTEL_BSP_SCHEDULE_DELAY": "100"}
    running = System(nats_env=otel, OTEL_SERVICE_NAME="gateway-under-test")
    try:
        running.python_worker(OTEL_SERVICE_NAME="python-worker-under-test")
        running.wait_for_tasks({ADD, "examples.chaos.v1.Chaos/Flaky"})
        yield running, receiver
    finally:
        running.close()
        server.stop(0)


def test_a_python_worker_continues_the_gateways_trace(traced):
    system, receiver = traced
    with taskwire.Client(system.target) as client:
        handle = Magic(client).add(magic_pb2.AddArgs(arg1=1, arg2=2, arg3=3))
        assert handle.get(timeout=20).sum == 6
        trace_of_result = handle.info().trace_id

    published = receiver.find("gateway-under-test", "publish taskwire.tasks.examples.magic.v1.Magic.Add", handle.id)[0]
    process = receiver.find("python-worker-under-test", f"process {ADD}", handle.id)[0]
    result = receiver.find("python-worker-under-test", "publish taskwire.results", handle.id)[0]

    assert process.trace_id == published.trace_id
    assert process.parent_span_id == published.span_id
    assert process.kind == trace_pb2.Span.SPAN_KIND_CONSUMER
    assert attribute(process, "messaging.system") == "nats"
    assert attribute(process, "taskwire.task.name") == ADD
    assert attribute(process, "taskwire.task.attempt") == 1
    assert process.status.code != trace_pb2.Status.STATUS_CODE_ERROR

    assert result.trace_id == process.trace_id
    assert result.parent_span_id == process.span_id
    assert result.kind == trace_pb2.Span.SPAN_KIND_PRODUCER
    assert attribute(result, "taskwire.task.state") == "succeeded"
    # The stored result names the trace (Get, inspect and the dashboard show it).
    assert trace_of_result == process.trace_id.hex()


def test_a_failed_attempt_marks_its_span(traced):
    system, receiver = traced
    with taskwire.Client(system.target) as client:
        handle = Chaos(client).flaky(chaos_pb2.FlakyArgs(permanent=True))
        with pytest.raises(taskwire.TaskFailed):
            handle.get(timeout=20)
    process = receiver.find("python-worker-under-test", "process examples.chaos.v1.Chaos/Flaky", handle.id)[0]
    assert process.status.code == trace_pb2.Status.STATUS_CODE_ERROR
    assert process.status.message == "failing on purpose on attempt 1"
