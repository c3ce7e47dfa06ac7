"""A taskwire worker in Python: the handlers of tasks defined in proto.

    import asyncio
    from taskwire.worker import Worker, TaskError
    from examples.magic.v1 import magic_pb2

    worker = Worker("nats://127.0.0.1:4222")
    magic = worker.service(magic_pb2, "Magic")

    @magic.add.handler
    async def add(args, ctx):
        return magic_pb2.AddResult(sum=args.arg1 + args.arg2 + args.arg3)

    asyncio.run(worker.run())

A handler takes the task's input message and a `TaskContext`, and returns the output message.
It may be a coroutine function or a plain function (run in a thread). `raise TaskError(msg)`
fails the attempt and retries it with backoff while attempts are left (`retry_after=` seconds
says when instead); `TaskError(msg, retryable=False)` fails the task at once. Any other
exception is a bug in the task: the task fails at once and is kept as a dead letter, like a
panic in a Rust worker.

A subclass of a generated servicer base serves the methods it overrides:
`worker.add_servicer(MyMagic(), magic_pb2)`; its methods are called as `Add(args, ctx)`.

How it works: the handlers are served by a grpcio server on a Unix socket, and `run()` starts
taskwire's one worker runtime (the `taskwire-worker` binary) as its child, which does
everything a worker does with the broker (pulls, attempts, retries, limits, cancels,
heartbeats, metrics, drain) and calls the handlers: each attempt a message on one stream (`taskwire.v1.TaskHandlers`), the calls that come together in one frame. The binary is
found through `TASKWIRE_WORKER_BIN`, then the `taskwire-worker-bin` package
(`pip install "taskwire[worker]"`), then `taskwire-worker` on `PATH`. The runtime reads its settings from the environment
(`TASKWIRE_NATS_URL`, `TASKWIRE_CONCURRENCY`, ..., as the README lists them); the ones given to
`Worker(...)` override them.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import inspect
import logging
import os
import re
import shutil
import signal
import tempfile
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import grpc
from google.protobuf import any_pb2, descriptor_pb2, duration_pb2
from google.protobuf.message import Message

from taskwire.v1 import tasks_pb2, worker_pb2, worker_pb2_grpc

__all__ = ["Worker", "TaskContext", "TaskError", "WaitingForChildren", "ServiceHandlers", "runtime_binary"]

log = logging.getLogger("taskwire.worker")

VERSION = "0.1.0"

# The metadata of a call from the runtime (docs/protocol.md, "Serving tasks from any language").
TASK_ID = "taskwire-task-id"
TASK = "taskwire-task"
ATTEMPT = "taskwire-attempt"
MAX_ATTEMPTS = "taskwire-max-attempts"
CONTEXT = "taskwire-context"

# Larger than any NATS server stores: a result too large is refused by the broker, and the
# task's dead letter says so.
MAX_MESSAGE = 256 * 1024 * 1024


class TaskError(Exception):
    """A task's own failure. Retryable ones are tried again while attempts are left, after the
    task's backoff, or after `retry_after` seconds when given."""

    def __init__(self, message: str, retryable: bool = True, retry_after: Optional[float] = None):
        super().__init__(message)
        self.message = message
        self.retryable = retryable or retry_after is not None
        self.retry_after = retry_after


class WaitingForChildren(BaseException):
    """Raised by `TaskContext.wait_for_children` while some child has not ended: let it end the
    handler (it is no Exception, so `except Exception` does not catch it). The task is then
    parked, holding no worker, and runs again from its start once its children have ended."""


class TaskContext:
    """What a running task knows about itself, and how it reports progress."""

    def __init__(self, metadata: Dict[str, str], deadline: Optional[float], progress: "_Progress"):
        self.metadata = metadata
        self.id = metadata.get(TASK_ID, "")
        self.task = metadata.get(TASK, "")
        self.attempt = _number(metadata.get(ATTEMPT), 1)
        self.max_attempts = _number(metadata.get(MAX_ATTEMPTS), 1)
        # time.monotonic() at which the attempt's time limit ends, if it has one.
        self.deadline = deadline
        self._cancelled = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._progress = progress
        self._reports: List[asyncio.Future] = []
        self._reported = False

    @property
    def cancelled(self) -> bool:
        """True once the task was cancelled, ran out of time or its worker is stopping: stop soon."""
        return self._cancelled.is_set()

    async def wait_cancelled(self) -> None:
        await self._cancelled.wait()

    def progress(self, percent: float, message: str = "", details: Optional[Message] = None) -> None:
        """Reports progress (0 to 100) with a message and optionally a message of the task's
        own; watchers see it as a `running` event before the task's result. Callable from a
        thread, too."""
        report = tasks_pb2.TaskProgress(percent=float(percent), message=message)
        if details is not None:
            report.details = details.SerializeToString()
            report.details_type = details.DESCRIPTOR.full_name
        request = worker_pb2.ReportProgressRequest(task_id=self.id, attempt=self.attempt, progress=report)

        def send() -> None:
            self._reports.append(asyncio.ensure_future(self._progress.report(self.metadata.get(CONTEXT, ""), request)))

        self._reported = True
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self._loop:
            send()
        else:
            self._loop.call_soon_threadsafe(send)

    async def submit_child(self, task: str, args: Message, **options: Any) -> str:
        """Submits a child task (`task`, e.g. "examples.chaos.v1.Chaos/Sleep", with its input
        message) and returns its id. The child records this task as its parent, Get lists it
        among this task's children, and cancelling this task cancels it. Its id comes from this
        task's id and its place among the children this attempt submitted (or its
        `idempotency_key`), so an attempt that runs again after a retry finds the children it
        submitted before rather than submitting them twice: submit them one after another.
        `options` are those of `Client.submit` (idempotency_key, max_attempts, timeout, countdown,
        eta, priority, ttl, expires, result_ttl). Raises `taskwire.client.Error` when the child is
        refused (FAILED_PRECONDITION once this task was cancelled)."""
        from taskwire.client import Error
        from taskwire.options import submit_options

        request = worker_pb2.SubmitChildRequest(
            task_id=self.id,
            attempt=self.attempt,
            child=tasks_pb2.SubmitRequest(task=task, args_proto=args.SerializeToString(), options=submit_options(**options)),
        )
        try:
            response = await self._progress.stub(self.metadata.get(CONTEXT, "")).SubmitChild(request, timeout=60)
        except grpc.RpcError as err:
            raise Error.from_rpc(err) from None
        return response.task_id

    async def wait_for_children(self) -> List[tasks_pb2.TaskInfo]:
        """The outcomes of this task's children (each as `Client.get` answers it, in the order
        they were submitted) once they have all ended. While some have not, raises
        `WaitingForChildren`: the handler ends, the task waits (state WAITING) holding no worker,
        and runs again from its start once the last child has ended; the children it submits
        again are found rather than submitted twice, and this then answers their outcomes."""
        from taskwire.client import Error

        request = worker_pb2.WaitForChildrenRequest(task_id=self.id, attempt=self.attempt)
        try:
            response = await self._progress.stub(self.metadata.get(CONTEXT, "")).WaitForChildren(request, timeout=60)
        except grpc.RpcError as err:
            raise Error.from_rpc(err) from None
        if not response.ended:
            raise WaitingForChildren()
        return list(response.children)

    def wait_for_children_blocking(self) -> List[tasks_pb2.TaskInfo]:
        """`wait_for_children` for a handler that is a plain function (it runs in a thread)."""
        return asyncio.run_coroutine_threadsafe(self.wait_for_children(), self._loop).result()

    def submit_child_blocking(self, task: str, args: Message, **options: Any) -> str:
        """`submit_child` for a handler that is a plain function (it runs in a thread)."""
        return asyncio.run_coroutine_threadsafe(self.submit_child(task, args, **options), self._loop).result()

    def _cancel(self) -> None:
        self._loop.call_soon_threadsafe(self._cancelled.set)

    async def _flush(self) -> None:
        if not self._reported:
            return
        # Reports made from a thread arrive through the loop: let them in first.
        await asyncio.sleep(0)
        while self._reports:
            reports, self._reports = self._reports, []
            await asyncio.gather(*reports, return_exceptions=True)


class _Progress:
    """Calls to the runtime's `taskwire.v1.TaskContext` (progress reports, children), one channel
    per address."""

    def __init__(self) -> None:
        self._stubs: Dict[str, worker_pb2_grpc.TaskContextStub] = {}
        self._channels: List[grpc.aio.Channel] = []

    def stub(self, address: str) -> worker_pb2_grpc.TaskContextStub:
        if not address:
            raise RuntimeError("this call came without a taskwire-context address: it was not made by a worker runtime")
        stub = self._stubs.get(address)
        if stub is None:
            channel = grpc.aio.insecure_channel(address.split("://", 1)[-1] if address.startswith("http://") else address)
            self._channels.append(channel)
            stub = self._stubs[address] = worker_pb2_grpc.TaskContextStub(channel)
        return stub

    async def report(self, address: str, request: worker_pb2.ReportProgressRequest) -> None:
        if not address:
            return
        stub = self.stub(address)
        try:
            await stub.ReportProgress(request, timeout=10)
        except grpc.RpcError as e:
            log.warning("progress of task %s not reported: %s", request.task_id, e)

    async def close(self) -> None:
        for channel in self._channels:
            await channel.close()


Handler = Callable[[Message, TaskContext], Any]


@dataclass
class Task:
    """One task a worker can serve."""

    name: str
    service: str
    method: str
    input_class: Any
    output_class: Any
    handler: Optional[Handler] = None


class _TaskHandle:
    def __init__(self, task: Task):
        self._task = task

    def handler(self, function: Handler) -> Handler:
        """Decorator: `function(args, ctx)` serves this task."""
        self._task.handler = function
        return function


class ServiceHandlers:
    """The tasks of one service, as attributes in snake case: `magic.add.handler`."""

    def __init__(self, tasks: Dict[str, Task], full_name: str):
        self._tasks = tasks
        self.name = full_name

    def __getattr__(self, name: str) -> _TaskHandle:
        try:
            return _TaskHandle(self._tasks[name])
        except KeyError:
            raise AttributeError(f"{self.name} has no task {name!r}; it has {sorted(self._tasks)}") from None


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def _number(text: Optional[str], default: int) -> int:
    try:
        return int(text) if text is not None else default
    except ValueError:
        return default


def _message_class(pb2_module: Any, descriptor) -> Any:
    from google.protobuf import message_factory

    if descriptor.file is pb2_module.DESCRIPTOR and hasattr(pb2_module, descriptor.name):
        return getattr(pb2_module, descriptor.name)
    return message_factory.GetMessageClass(descriptor)


def _add_file(out: descriptor_pb2.FileDescriptorSet, seen: set, file) -> None:
    """`file` and all it imports, imports first, as compiled (task options included)."""
    if file.name in seen:
        return
    seen.add(file.name)
    for dependency in file.dependencies:
        _add_file(out, seen, dependency)
    out.file.append(descriptor_pb2.FileDescriptorProto.FromString(file.serialized_pb))


def runtime_binary() -> str:
    """The worker runtime's binary: `TASKWIRE_WORKER_BIN`, else the one the `taskwire-worker-bin`
    package carries, else `taskwire-worker` on PATH."""
    given = os.environ.get("TASKWIRE_WORKER_BIN", "").strip()
    if given:
        if not os.access(given, os.X_OK):
            raise RuntimeError(f"TASKWIRE_WORKER_BIN={given}: no such executable file")
        return given
    try:
        import taskwire_worker_bin  # type: ignore[import-not-found]

        return taskwire_worker_bin.path()
    except (ImportError, FileNotFoundError):
        pass
    found = shutil.which("taskwire-worker")
    if found:
        return found
    raise RuntimeError(
        "the taskwire worker runtime is missing: pip install taskwire-worker-bin, put taskwire-worker on "
        "PATH, or set TASKWIRE_WORKER_BIN to its path"
    )


def _retry_info(seconds: float) -> bytes:
    """`grpc-status-details-bin` for a retryable failure: a google.rpc.Status whose detail is
    a google.rpc.RetryInfo with the delay (encoded by hand: both are two fields)."""
    delay = duration_pb2.Duration()
    delay.FromNanoseconds(int(max(seconds, 0) * 1e9))
    retry_info = _field(1, delay.SerializeToString())
    detail = any_pb2.Any(type_url="type.googleapis.com/google.rpc.RetryInfo", value=retry_info)
    code = grpc.StatusCode.UNAVAILABLE.value[0]
    return b"\x08" + _varint(code) + _field(3, detail.SerializeToString())


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(number: int, value: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(value)) + value


class Worker:
    """Serves tasks. Settings default to the `TASKWIRE_*` environment, which the runtime reads."""

    def __init__(
        self,
        nats_url: Optional[str] = None,
        *,
        concurrency: Optional[int] = None,
        ack_wait: Optional[float] = None,
        grace: Optional[float] = None,
        metrics_addr: Optional[str] = None,
    ):
        self.settings: Dict[str, str] = {}
        if nats_url:
            self.settings["TASKWIRE_NATS_URL"] = nats_url
        if concurrency is not None:
            if concurrency < 1:
                raise ValueError(f"concurrency={concurrency}: a worker runs at least one task at once")
            self.settings["TASKWIRE_CONCURRENCY"] = str(concurrency)
        for name, seconds in (("TASKWIRE_ACK_WAIT", ack_wait), ("TASKWIRE_GRACE", grace)):
            if seconds is not None:
                if seconds < 0:
                    raise ValueError(f"{name}: {seconds} is not a duration in seconds")
                self.settings[name] = f"{int(seconds * 1000)}ms"
        if metrics_addr is not None:
            host, _, port = metrics_addr.rpartition(":")
            if metrics_addr != "off" and (not host or not port.isdigit()):
                raise ValueError(f"metrics_addr={metrics_addr!r} is not host:port (for example 0.0.0.0:9464) or off")
            self.settings["TASKWIRE_METRICS_ADDR"] = metrics_addr
        self.tasks: Dict[str, Task] = {}
        self._files: Dict[str, Any] = {}
        self._runtime: Optional[asyncio.subprocess.Process] = None
        self._stopping = False
        self._executor: Optional[concurrent.futures.ThreadPoolExecutor] = None
        self._progress = _Progress()
        self._tracing = _Tracing.from_env()
        self._serving: Optional[asyncio.Event] = None

    # ---- declaring tasks -------------------------------------------------------------------

    def service(self, pb2_module: Any, name: str) -> ServiceHandlers:
        """The tasks of service `name` in a generated `*_pb2` module, to attach handlers to."""
        try:
            service = pb2_module.DESCRIPTOR.services_by_name[name]
        except KeyError:
            raise ValueError(
                f"{pb2_module.__name__} has no service {name!r}; it has {sorted(pb2_module.DESCRIPTOR.services_by_name)}"
            ) from None
        tasks = {_snake(method.name): self._declare(pb2_module, service, method) for method in service.methods}
        return ServiceHandlers(tasks, service.full_name)

    def add_servicer(self, servicer: Any, pb2_module: Any, name: Optional[str] = None) -> None:
        """Serves the methods a subclass of a generated `<Service>Servicer` overrides."""
        if name is None:
            bases = [c.__name__ for c in type(servicer).__mro__ if c.__name__.endswith("Servicer")]
            candidates = [b[: -len("Servicer")] for b in bases if b[: -len("Servicer")] in pb2_module.DESCRIPTOR.services_by_name]
            if not candidates:
                raise ValueError(f"{type(servicer).__name__} is not a servicer of a service in {pb2_module.__name__}: pass name=")
            name = candidates[0]
        service = pb2_module.DESCRIPTOR.services_by_name[name]
        base = next((c for c in type(servicer).__mro__ if c.__name__ == f"{name}Servicer"), None)
        served = 0
        for method in service.methods:
            function = getattr(type(servicer), method.name, None)
            if function is None or (base is not None and getattr(base, method.name, None) is function):
                continue
            self._declare(pb2_module, service, method).handler = getattr(servicer, method.name)
            served += 1
        if not served:
            raise ValueError(f"{type(servicer).__name__} overrides no method of {service.full_name}")

    def _declare(self, pb2_module: Any, service, method) -> Task:
        name = f"{service.full_name}/{method.name}"
        if name not in self.tasks:
            if method.client_streaming or method.server_streaming:
                raise ValueError(f"{name} is a streaming rpc; a task takes one message and returns one")
            self.tasks[name] = Task(
                name=name,
                service=service.full_name,
                method=method.name,
                input_class=_message_class(pb2_module, method.input_type),
                output_class=_message_class(pb2_module, method.output_type),
            )
            self._files[service.full_name] = service.file
        return self.tasks[name]

    # ---- running ---------------------------------------------------------------------------

    async def run(self, install_signal_handlers: bool = True) -> None:
        """Serves the handlers and runs the worker runtime beside them until `stop()` or
        SIGTERM/SIGINT; then drains: the runtime stops pulling, lets running tasks finish for up
        to its grace period, and releases the rest to other workers. A second signal ends the
        grace at once. Raises when the runtime stops by itself with an error (say, NATS cannot
        be reached); what it printed says why."""
        served = [t for t in self.tasks.values() if t.handler is not None]
        if not served:
            raise ValueError("the worker serves no task: attach a handler with @service.task.handler")
        binary = runtime_binary()
        loop = asyncio.get_running_loop()
        self._stopping = False
        self._executor = self._new_executor()
        with tempfile.TemporaryDirectory(prefix="taskwire-worker-") as folder:
            socket = os.path.join(folder, "handlers.sock")
            server = self._server(served)
            server.add_insecure_port(f"unix:{socket}")
            await server.start()
            descriptors = os.path.join(folder, "services.binpb")
            with open(descriptors, "wb") as f:
                f.write(self._descriptor_set(served))
            args = [binary, "--upstream", f"unix://{socket}", "--descriptors", descriptors, "--exit-with-stdin"]
            for task in sorted(t.name for t in served):
                args += ["--task", task]
            env = dict(os.environ, **self.settings)
            env.setdefault("TASKWIRE_UPSTREAM_NAME", f"python taskwire/{VERSION}")
            if install_signal_handlers:
                for sig in (signal.SIGTERM, signal.SIGINT):
                    loop.add_signal_handler(sig, self._on_signal, sig)
            try:
                # Its standard input is a pipe of ours: when this process ends, however it
                # ends, the runtime sees it close and stops too.
                self._runtime = await asyncio.create_subprocess_exec(*args, env=env, stdin=asyncio.subprocess.PIPE)
                code = await self._runtime.wait()
            finally:
                if install_signal_handlers:
                    for sig in (signal.SIGTERM, signal.SIGINT):
                        loop.remove_signal_handler(sig)
                await server.stop(grace=1)
                await self._progress.close()
                self._executor.shutdown(wait=False, cancel_futures=True)
                self._tracing.shutdown()
                self._runtime = None
        if code != 0 and not (self._stopping and code < 0):
            raise RuntimeError(f"the worker runtime ({binary}) stopped with exit code {code}")

    async def serve(self, address: str, install_signal_handlers: bool = True) -> None:
        """Serves the handlers on `address` (`unix:/path/to.sock` or `host:port`) without
        starting the runtime, for a runtime that runs beside this process, as a Kubernetes
        sidecar does: `taskwire-worker --upstream unix:///path/to.sock`. The runtime learns the
        tasks from this server's gRPC reflection (needs grpcio-reflection), or from the
        descriptor set `descriptor_set()` gives, passed with `--descriptors`. Serves until
        cancelled, `stop()` or SIGTERM/SIGINT; then answers the calls under way for up to
        `grace` (TASKWIRE_GRACE, 30 s by default) while the runtime drains."""
        served = [t for t in self.tasks.values() if t.handler is not None]
        if not served:
            raise ValueError("the worker serves no task: attach a handler with @service.task.handler")
        try:
            from grpc_reflection.v1alpha import reflection
        except ImportError:
            raise RuntimeError(
                "serving without the runtime needs grpcio-reflection (pip install grpcio-reflection), through "
                "which the runtime learns the tasks"
            ) from None
        loop = asyncio.get_running_loop()
        self._executor = self._new_executor()
        server = self._server(served)
        names = sorted({t.service for t in served}) + [reflection.SERVICE_NAME]
        reflection.enable_server_reflection(names, server)
        if server.add_insecure_port(address) == 0 and not address.startswith("unix:"):
            raise RuntimeError(f"cannot listen on {address}")
        stopped = asyncio.Event()
        self._serving = stopped
        await server.start()
        if install_signal_handlers:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, stopped.set)
        try:
            await stopped.wait()
        finally:
            if install_signal_handlers:
                for sig in (signal.SIGTERM, signal.SIGINT):
                    loop.remove_signal_handler(sig)
            await server.stop(grace=self._grace())
            await self._progress.close()
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._serving = None

    def descriptor_set(self) -> bytes:
        """The encoded `FileDescriptorSet` of the served services and all they import, for the
        runtime's `--descriptors`."""
        return self._descriptor_set([t for t in self.tasks.values() if t.handler is not None])

    def _new_executor(self) -> concurrent.futures.ThreadPoolExecutor:
        concurrency = _number(self.settings.get("TASKWIRE_CONCURRENCY", os.environ.get("TASKWIRE_CONCURRENCY")), 100)
        return concurrent.futures.ThreadPoolExecutor(max_workers=max(4, min(concurrency, 256)))

    def _grace(self) -> float:
        text = self.settings.get("TASKWIRE_GRACE", os.environ.get("TASKWIRE_GRACE", "")).strip()
        for unit, scale in (("ms", 0.001), ("s", 1.0), ("m", 60.0)):
            if text.endswith(unit) and text[: -len(unit)].replace(".", "", 1).isdigit():
                return float(text[: -len(unit)]) * scale
        return float(text) if text.replace(".", "", 1).isdigit() else 30.0

    def stop(self) -> None:
        """Begins the drain, as SIGTERM does; a second call ends it."""
        self._on_signal(signal.SIGTERM)

    def _on_signal(self, sig: int) -> None:
        self._stopping = True
        if self._serving is not None:
            self._serving.set()
        if self._runtime is not None and self._runtime.returncode is None:
            self._runtime.send_signal(sig)

    def _descriptor_set(self, served: Sequence[Task]) -> bytes:
        out = descriptor_pb2.FileDescriptorSet()
        seen: set = set()
        for service in sorted({t.service for t in served}):
            _add_file(out, seen, self._files[service])
        return out.SerializeToString()

    def _server(self, served: Sequence[Task]) -> grpc.aio.Server:
        server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE),
                ("grpc.max_send_message_length", MAX_MESSAGE),
            ]
        )
        by_service: Dict[str, Dict[str, grpc.RpcMethodHandler]] = {}
        for task in served:
            by_service.setdefault(task.service, {})[task.method] = grpc.unary_unary_rpc_method_handler(
                functools.partial(self._call, task, inspect.iscoroutinefunction(task.handler)),
                request_deserializer=task.input_class.FromString,
                response_serializer=task.output_class.SerializeToString,
            )
        stream = _Stream(self, served)
        by_service["taskwire.v1.TaskHandlers"] = {
            "Serve": grpc.stream_stream_rpc_method_handler(
                stream.serve,
                request_deserializer=worker_pb2.HandlerCalls.FromString,
                response_serializer=worker_pb2.HandlerOutcomes.SerializeToString,
            )
        }
        server.add_generic_rpc_handlers(
            [grpc.method_handlers_generic_handler(service, methods) for service, methods in by_service.items()]
        )
        return server

    async def _call(self, task: Task, coroutine: bool, args: Message, context: grpc.aio.ServicerContext) -> Message:
        """One attempt, as a gRPC call of the task's method: the handler's answer, or the status
        that says what its failure means."""
        metadata = {k: v for k, v in context.invocation_metadata() if isinstance(v, str)}
        remaining = context.time_remaining()
        deadline = time.monotonic() + remaining if remaining is not None else None
        ctx = TaskContext(metadata, deadline, self._progress)
        with contextlib.suppress(Exception):
            context.add_done_callback(lambda _: ctx._cancel())
        try:
            return await self._attempt(task, coroutine, args, ctx)
        except _Failed as failed:
            trailing = (("grpc-status-details-bin", failed.details),) if failed.details else None
            await context.abort(failed.code, failed.message, trailing_metadata=trailing)
            raise

    async def _attempt(self, task: Task, coroutine: bool, args: Message, ctx: TaskContext) -> Message:
        """Runs the handler: its result, or `_Failed` with the status its failure means."""
        handler = task.handler
        assert handler is not None
        try:
            trace = _attach(ctx.metadata)
            try:
                if coroutine:
                    result = await handler(args, ctx)
                else:
                    loop = asyncio.get_running_loop()
                    result = await loop.run_in_executor(self._executor, handler, args, ctx)
            finally:
                _detach(trace)
            await ctx._flush()
        except asyncio.CancelledError:
            ctx._cancel()
            raise
        except WaitingForChildren:
            # The runtime parks the task: what the attempt answers is not stored.
            await ctx._flush()
            raise _Failed(grpc.StatusCode.ABORTED, "waiting for its children") from None
        except TaskError as e:
            await ctx._flush()
            if e.retry_after is not None:
                raise _Failed(grpc.StatusCode.UNAVAILABLE, e.message, _retry_info(e.retry_after)) from None
            code = grpc.StatusCode.UNAVAILABLE if e.retryable else grpc.StatusCode.FAILED_PRECONDITION
            raise _Failed(code, e.message) from None
        except Exception as e:  # a bug in the task: it fails at once, as a panic does
            await ctx._flush()
            log.exception("task %s %s raised", task.name, ctx.id)
            raise _Failed(grpc.StatusCode.INTERNAL, f"{type(e).__name__}: {e}") from None
        if not isinstance(result, task.output_class):
            raise _Failed(
                grpc.StatusCode.INTERNAL,
                f"the handler of {task.name} returned {type(result).__name__}, not {task.output_class.DESCRIPTOR.full_name}",
            )
        return result


class _Failed(Exception):
    """An attempt's failure as the status its call answers."""

    def __init__(self, code: grpc.StatusCode, message: str, details: bytes = b""):
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = details


class _Stream:
    """`taskwire.v1.TaskHandlers/Serve`: the runtime's calls, many on one stream, each run as its
    own asyncio task; the outcomes that are ready go back together."""

    # At most this many bytes of results go in one frame (a larger result goes alone).
    FRAME_BYTES = 4 << 20

    def __init__(self, worker: "Worker", served: Sequence[Task]):
        self._worker = worker
        self._tasks = {f"/{t.name}": (t, inspect.iscoroutinefunction(t.handler)) for t in served}

    async def serve(self, frames: Any, context: grpc.aio.ServicerContext) -> Any:
        outcomes: List[worker_pb2.HandlerOutcome] = []
        ready = asyncio.Event()
        # The calls running, by id: their asyncio task and context.
        running: Dict[int, Tuple[asyncio.Task, TaskContext]] = {}
        ended = False

        def answer(outcome: worker_pb2.HandlerOutcome) -> None:
            outcomes.append(outcome)
            ready.set()

        def finished(id: int, outcome: worker_pb2.HandlerOutcome) -> None:
            # A call cancelled meanwhile is no longer read.
            if running.pop(id, None) is not None:
                answer(outcome)

        async def read() -> None:
            nonlocal ended
            try:
                async for frame in frames:
                    for id in frame.cancels:
                        entry = running.pop(id, None)
                        if entry is not None:
                            entry[1]._cancelled.set()
                            entry[0].cancel()
                    for call in frame.calls:
                        started = self._start(call, finished)
                        if isinstance(started, worker_pb2.HandlerOutcome):
                            answer(started)
                        else:
                            running[call.id] = started
            finally:
                ended = True
                ready.set()

        reader = asyncio.ensure_future(read())
        try:
            # Headers at once: the runtime knows the stream is served before any call ends.
            await context.send_initial_metadata(())
            while True:
                await ready.wait()
                ready.clear()
                while outcomes:
                    taken, size = 0, 0
                    while taken < len(outcomes) and (not taken or size + len(outcomes[taken].result) <= self.FRAME_BYTES):
                        size += len(outcomes[taken].result)
                        taken += 1
                    batch, outcomes[:taken] = outcomes[:taken], []
                    yield worker_pb2.HandlerOutcomes(outcomes=batch)
                if ended:
                    return
        finally:
            reader.cancel()
            for task, ctx in running.values():
                ctx._cancel()
                task.cancel()

    def _start(self, call: worker_pb2.HandlerCall, finished: Callable) -> Any:
        """The call's asyncio task and context, or at once the outcome of a call that cannot run."""
        entry = self._tasks.get(call.method)
        if entry is None:
            return worker_pb2.HandlerOutcome(
                id=call.id, code=grpc.StatusCode.UNIMPLEMENTED.value[0], message=f"this worker does not serve {call.method}"
            )
        task, coroutine = entry
        metadata = {
            TASK_ID: call.task_id,
            TASK: call.task,
            ATTEMPT: str(call.attempt),
            MAX_ATTEMPTS: str(call.max_attempts),
            CONTEXT: call.context,
        }
        if call.traceparent:
            metadata["traceparent"] = call.traceparent
            if call.tracestate:
                metadata["tracestate"] = call.tracestate
        deadline = time.monotonic() + call.timeout_ms / 1000 if call.timeout_ms else None
        ctx = TaskContext(metadata, deadline, self._worker._progress)
        return asyncio.ensure_future(self._run(call, task, coroutine, ctx, finished)), ctx

    async def _run(self, call: worker_pb2.HandlerCall, task: Task, coroutine: bool, ctx: TaskContext, finished: Callable) -> None:
        outcome = worker_pb2.HandlerOutcome(id=call.id)
        try:
            args = task.input_class.FromString(call.argument)
        except Exception as e:
            outcome.code = grpc.StatusCode.INVALID_ARGUMENT.value[0]
            outcome.message = f"the arguments of {task.name} do not decode: {e}"
            finished(call.id, outcome)
            return
        try:
            outcome.result = (await self._worker._attempt(task, coroutine, args, ctx)).SerializeToString()
        except _Failed as failed:
            outcome.code = failed.code.value[0]
            outcome.message = failed.message
            outcome.details = failed.details
        finished(call.id, outcome)


def _opentelemetry() -> Optional[Tuple[Any, Any]]:
    """OpenTelemetry's context API and the W3C propagator, when installed."""
    try:
        from opentelemetry import context
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
    except ImportError:
        return None
    return context, TraceContextTextMapPropagator()


_otel = _opentelemetry()


def _attach(metadata: Dict[str, str]) -> Any:
    """Makes the call's trace context current (the handler's spans join the task's trace)."""
    if _otel is None or "traceparent" not in metadata:
        return None
    context, propagator = _otel
    return context.attach(propagator.extract(carrier=metadata))


def _detach(token: Any) -> None:
    if token is not None and _otel is not None:
        _otel[0].detach(token)


class _Tracing:
    """With OpenTelemetry installed and an OTLP endpoint set, a handler runs inside the task's
    trace (the runtime's `process` span, from the call's `traceparent`): the spans it makes join
    that trace. Otherwise nothing."""

    def __init__(self, provider: Any = None) -> None:
        self._provider = provider

    @classmethod
    def from_env(cls) -> "_Tracing":
        endpoint = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "").strip() or os.environ.get(
            "OTEL_EXPORTER_OTLP_ENDPOINT", ""
        ).strip()
        if not endpoint or os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
            return cls()
        try:
            from opentelemetry import trace
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
            from opentelemetry.sdk.resources import Resource
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor
        except ImportError:
            return cls()
        if isinstance(trace.get_tracer_provider(), TracerProvider):
            return cls()  # the application set up its own
        service = os.environ.get("OTEL_SERVICE_NAME") or "taskwire-python-worker"
        provider = TracerProvider(resource=Resource.create({"service.name": service}))
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        trace.set_tracer_provider(provider)
        return cls(provider)

    def shutdown(self) -> None:
        if self._provider is not None:
            try:
                self._provider.force_flush(timeout_millis=5000)
                self._provider.shutdown()
            except Exception as e:  # an unreachable collector must not fail the stop
                log.warning("traces not flushed at exit: %s", e)
