"""A taskwire worker in Python: serves tasks defined in proto from NATS JetStream.

It speaks the wire protocol of `docs/protocol.md`, the same as the Rust runtime, so Python and
Rust workers can share one queue::

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
fails the attempt and retries it with backoff while attempts are left; `TaskError(msg,
retryable=False)` fails the task at once. Any other exception is a bug in the task: the task
fails at once and is kept as a dead letter, like a panic in a Rust worker.

A subclass of a generated servicer base serves the methods it overrides:
`worker.add_servicer(MyMagic(), magic_pb2)`; its methods are called as `Add(args, ctx)`.

Needs `nats-py` (`pip install "taskwire[worker]"`).
"""

from __future__ import annotations

import asyncio
import base64
import inspect
import json
import logging
import os
import re
import signal
import socket
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Dict, List, Optional

from google.protobuf import descriptor_pb2
from google.protobuf.message import DecodeError, Message

from taskwire import metrics as _metrics
from taskwire.otel import Tracing
from taskwire.schema import descriptor_hash
from taskwire.v1 import options_pb2, tasks_pb2

try:
    import nats
    import nats.errors
    import nats.js.errors
    from nats.aio.msg import Msg
    from nats.js import api as js_api
except ImportError as e:  # pragma: no cover - the message is the point
    raise ImportError('taskwire.worker needs nats-py: pip install "taskwire[worker]"') from e

from taskwire.protocol import (  # noqa: F401 (re-exported)
    ATTEMPT,
    Backoff,
    DEAD_EXHAUSTED,
    DEAD_LOST,
    DEAD_PANIC,
    DEAD_PERMANENT,
    DEAD_POISON,
    DEAD_TIMEOUT,
    DEAD_REASON,
    DEAD_STREAM,
    ERROR,
    EVENTS_STREAM,
    EXPECTED_LAST_SUBJECT_SEQUENCE,
    EXPECTED_LAST_SUBJECT_SEQUENCE_SUBJECT,
    EXPIRES_AT,
    ID_PATTERN,
    MAX_TASK_CONSUMERS,
    MSG_ID,
    NATS_TTL,
    REPLAY,
    RESULTS_STREAM,
    SCHEDULE_NAME,
    SCHEDULE_NEXT,
    STATE,
    TASK,
    TASKS_STREAM,
    TASK_ID,
    TRANSIENT_CODES,
    WRONG_LAST_SEQUENCE,
    _failure,
    _parse_headers,
    _subject_covers,
    consumer_name,
    dead_subject,
    event_subject,
    now_micros,
    parse_duration,
    result_msg_id,
    result_subject,
    results_of,
    scheduled_task_id,
    task_subject,
    token,
    uuid7,
)
from taskwire.context import (  # noqa: F401 (re-exported)
    Options,
    TaskContext,
    TaskError,
)
from taskwire.limits import (  # noqa: F401 (re-exported)
    _Grant,
    _Limits,
    _Slot,
    _follow_bucket,
)

__all__ = ["Worker", "TaskContext", "TaskError", "Task", "ServiceHandlers"]

log = logging.getLogger("taskwire.worker")


TIMEOUT_GRACE = 2.0



HEARTBEAT_EVERY = 5.0



WORKER_TTL = 15.0



IDLE_WAIT = 1.0
# How long an idle worker's waiting pull at each level lasts (as the Rust runtime's IDLE_PULL):
# what a served task type costs an idle worker is a pull request per level in this time.
IDLE_PULL = 10.0



QUIET_WAIT = 0.05



CONNECT_TIMEOUT = 10.0



# How long a worker at start keeps trying to create a consumer that gets no answer.
CONSUMER_PATIENCE = 60.0



VERSION = "0.1.0"



def nats_options_from_env() -> Dict[str, Any]:
    """nats-py connect options from the same settings the Rust runtime reads:
    TASKWIRE_NATS_CREDS, TASKWIRE_NATS_NKEY (a file with the seed), TASKWIRE_NATS_USER and
    TASKWIRE_NATS_PASSWORD, TASKWIRE_NATS_CA, TASKWIRE_NATS_CERT and TASKWIRE_NATS_KEY, and
    TASKWIRE_NATS_INBOX_PREFIX (the subject prefix of reply inboxes, `_INBOX` by default)."""
    env = {k: v for k, v in os.environ.items() if k.startswith("TASKWIRE_NATS_") and v}
    options: Dict[str, Any] = {}
    ways = [k for k in ("TASKWIRE_NATS_CREDS", "TASKWIRE_NATS_NKEY", "TASKWIRE_NATS_USER") if k in env]
    if len(ways) > 1:
        raise ValueError("set one of TASKWIRE_NATS_CREDS, TASKWIRE_NATS_NKEY and TASKWIRE_NATS_USER/PASSWORD")
    for name in ("TASKWIRE_NATS_CREDS", "TASKWIRE_NATS_NKEY", "TASKWIRE_NATS_CA", "TASKWIRE_NATS_CERT", "TASKWIRE_NATS_KEY"):
        if name in env and not os.path.isfile(env[name]):
            raise ValueError(f"{name}={env[name]}: no such file")
    if "TASKWIRE_NATS_CREDS" in env:
        options["user_credentials"] = env["TASKWIRE_NATS_CREDS"]
    if "TASKWIRE_NATS_NKEY" in env:
        with open(env["TASKWIRE_NATS_NKEY"]) as f:
            seed = f.read().strip()
        if not seed.startswith("S"):
            raise ValueError(f"TASKWIRE_NATS_NKEY={env['TASKWIRE_NATS_NKEY']} does not hold an nkey seed (a line starting with S)")
        options["nkeys_seed_str"] = seed
    if ("TASKWIRE_NATS_USER" in env) != ("TASKWIRE_NATS_PASSWORD" in env):
        raise ValueError("set both TASKWIRE_NATS_USER and TASKWIRE_NATS_PASSWORD, or neither")
    if "TASKWIRE_NATS_USER" in env:
        options["user"], options["password"] = env["TASKWIRE_NATS_USER"], env["TASKWIRE_NATS_PASSWORD"]
    if ("TASKWIRE_NATS_CERT" in env) != ("TASKWIRE_NATS_KEY" in env):
        raise ValueError("set both TASKWIRE_NATS_CERT and TASKWIRE_NATS_KEY, or neither")
    if "TASKWIRE_NATS_CA" in env or "TASKWIRE_NATS_CERT" in env:
        import ssl

        context = ssl.create_default_context(cafile=env.get("TASKWIRE_NATS_CA"))
        if "TASKWIRE_NATS_CERT" in env:
            context.load_cert_chain(env["TASKWIRE_NATS_CERT"], env["TASKWIRE_NATS_KEY"])
        options["tls"] = context
    prefix = env.get("TASKWIRE_NATS_INBOX_PREFIX")
    if prefix is not None:
        if any(not t or any(c.isspace() or c in "*>" for c in t) for t in prefix.split(".")):
            raise ValueError(
                f"TASKWIRE_NATS_INBOX_PREFIX={prefix!r} is not a literal subject: use dot-separated tokens "
                "without spaces, `*` or `>` (for example _INBOX.magic-worker)"
            )
        options["inbox_prefix"] = prefix
    return options


def _servers(url: str, tls: bool) -> List[str]:
    """The servers of a NATS URL setting; `tls://` when TLS is configured, so that nothing goes
    out in the clear even to a server that does not ask for TLS."""
    servers = [s.strip() for s in url.split(",") if s.strip()]
    if tls:
        servers = ["tls://" + s.split("://", 1)[-1] for s in servers]
    return servers



Handler = Callable[[Message, TaskContext], Any]


@dataclass
class Task:
    """One task a worker can serve."""

    name: str
    input_class: Any
    output_class: Any
    method: Any
    options: Options
    registry_entry: tasks_pb2.TaskType
    handler: Optional[Handler] = None
    # Seconds between in-progress acks: a third of the consumers' ack wait.
    progress_every: float = 10.0

    def handler_for(self, function: Handler) -> Handler:
        self.handler = function
        return function


class _TaskHandle:
    def __init__(self, task: Task):
        self._task = task

    def handler(self, function: Handler) -> Handler:
        """Decorator: `function(args, ctx)` serves this task."""
        return self._task.handler_for(function)


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


def _descriptor_set(file) -> bytes:
    """A serialized FileDescriptorSet with `file` and all it imports, imports first."""
    out = descriptor_pb2.FileDescriptorSet()
    seen = set()

    def add(f) -> None:
        if f.name in seen:
            return
        seen.add(f.name)
        for dependency in f.dependencies:
            add(dependency)
        proto = descriptor_pb2.FileDescriptorProto()
        f.CopyToProto(proto)
        out.file.append(proto)

    add(file)
    return out.SerializeToString()


def _message_class(pb2_module: Any, descriptor) -> Any:
    from google.protobuf import message_factory

    if descriptor.file is pb2_module.DESCRIPTOR and hasattr(pb2_module, descriptor.name):
        return getattr(pb2_module, descriptor.name)
    return message_factory.GetMessageClass(descriptor)


class Worker:
    """Serves tasks from NATS JetStream. Settings default to the `TASKWIRE_*` environment."""

    def __init__(
        self,
        nats_url: Optional[str] = None,
        *,
        concurrency: Optional[int] = None,
        ack_wait: Optional[float] = None,
        grace: Optional[float] = None,
        connect_options: Optional[Dict[str, Any]] = None,
        metrics_addr: Optional[str] = None,
    ):
        self.nats_url = nats_url or os.environ.get("TASKWIRE_NATS_URL", "nats://127.0.0.1:4222")
        self.concurrency = max(1, concurrency or int(os.environ.get("TASKWIRE_CONCURRENCY", "100")))
        self.ack_wait = max(0.1, ack_wait or parse_duration(os.environ.get("TASKWIRE_ACK_WAIT", "30s")))
        self.grace = grace if grace is not None else parse_duration(os.environ.get("TASKWIRE_GRACE", "30s"))
        # Credentials and TLS as the Rust runtime reads them, unless given here.
        self.connect_options = dict(connect_options) if connect_options is not None else nats_options_from_env()
        self.replicas = int(os.environ.get("TASKWIRE_REPLICAS", "1"))
        self.max_queued = int(os.environ.get("TASKWIRE_MAX_QUEUED", "-1"))
        self.result_ttl = parse_duration(os.environ.get("TASKWIRE_RESULT_TTL", "24h"))
        self.id = uuid7()
        self.tasks: Dict[str, Task] = {}
        # Prometheus metrics on /metrics and /healthz at this address (host:port), if any.
        self.metrics_addr = _metrics.address_from_env(metrics_addr)
        if self.metrics_addr is not None:
            _metrics.parse_address(self.metrics_addr)
        self.metrics = _metrics.Metrics()
        # OpenTelemetry traces over OTLP when OTEL_EXPORTER_OTLP_ENDPOINT is set (taskwire[otel]).
        self._tracing = Tracing()
        self._running: Dict[asyncio.Task, "_Running"] = {}
        # Cancelled ids with when this worker learnt of them; forgotten after the result TTL,
        # when the bucket has dropped them too.
        self._cancelled_ids: Dict[str, float] = {}
        self._stop: Optional[asyncio.Event] = None
        self._force = None
        self._nc = None
        self._js = None
        self._limits: Optional[_Limits] = None
        self._reconnected: List[asyncio.Event] = []
        # What NATS refused this worker (permissions violations), as it reported them.
        self._denied: List[str] = []
        self._http: Optional[asyncio.AbstractServer] = None

    @property
    def succeeded(self) -> int:
        """Tasks this worker brought to success."""
        return self.metrics.succeeded_total

    @property
    def failed(self) -> int:
        """Tasks this worker brought to another final state (failed, cancelled, expired)."""
        return self.metrics.failed_total

    # ---- declaring tasks -------------------------------------------------------------------

    def service(self, pb2_module: Any, name: str) -> ServiceHandlers:
        """The tasks of service `name` in a generated `*_pb2` module, to attach handlers to."""
        try:
            service = pb2_module.DESCRIPTOR.services_by_name[name]
        except KeyError:
            raise ValueError(
                f"{pb2_module.__name__} has no service {name!r}; it has {sorted(pb2_module.DESCRIPTOR.services_by_name)}"
            ) from None
        tasks = {}
        for method in service.methods:
            task = self._declare(pb2_module, service, method)
            tasks[_snake(method.name)] = task
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
        served = 0
        for method in service.methods:
            function = getattr(type(servicer), method.name, None)
            base = next((c for c in type(servicer).__mro__ if c.__name__ == f"{name}Servicer"), None)
            if function is None or (base is not None and getattr(base, method.name, None) is function):
                continue
            task = self._declare(pb2_module, service, method)
            task.handler = getattr(servicer, method.name)
            served += 1
        if not served:
            raise ValueError(f"{type(servicer).__name__} overrides no method of {service.full_name}")

    def _declare(self, pb2_module: Any, service, method) -> Task:
        name = f"{service.full_name}/{method.name}"
        if name in self.tasks:
            return self.tasks[name]
        declared = options_pb2.TaskOptions()
        method_options = method.GetOptions()
        if method_options.HasExtension(options_pb2.task):
            declared.CopyFrom(method_options.Extensions[options_pb2.task])
        entry = tasks_pb2.TaskType(
            name=name,
            input_type=method.input_type.full_name,
            output_type=method.output_type.full_name,
            file_descriptor_set=_descriptor_set(service.file),
            options=declared,
            descriptor_hash=descriptor_hash(method.input_type, method.output_type),
        )
        task = Task(
            name=name,
            input_class=_message_class(pb2_module, method.input_type),
            output_class=_message_class(pb2_module, method.output_type),
            method=method,
            options=Options.declared(name, declared),
            registry_entry=entry,
        )
        self.tasks[name] = task
        return task

    # ---- running ---------------------------------------------------------------------------

    async def run(self, install_signal_handlers: bool = True) -> None:
        """Connects, registers the served tasks and works until `stop()` or SIGTERM/SIGINT;
        then drains: stops pulling, lets running tasks finish for up to `grace` seconds, and
        releases the rest to other workers. A second signal ends the grace at once."""
        served = [t for t in self.tasks.values() if t.handler is not None]
        if not served:
            raise ValueError("the worker serves no task: attach a handler with @service.task.handler")
        self._stop = asyncio.Event()
        self._force = asyncio.Event()
        loop = asyncio.get_running_loop()
        refused: List[Exception] = []
        self._http = None
        try:
            if install_signal_handlers:
                for sig in (signal.SIGTERM, signal.SIGINT):
                    loop.add_signal_handler(sig, self._on_signal)
            for task in served:
                self.metrics.serve_task(task.name)
            self._tracing = Tracing.from_env()
            await self._connect_and_work(served, refused)
        finally:
            if install_signal_handlers:
                for sig in (signal.SIGTERM, signal.SIGINT):
                    loop.remove_signal_handler(sig)
            if self._http is not None:
                self._http.close()
                try:
                    await asyncio.wait_for(self._http.wait_closed(), 5)
                except asyncio.TimeoutError:
                    pass
            await asyncio.to_thread(self._tracing.shutdown)

    async def _connect_and_work(self, served, refused: List[Exception]) -> None:
        denied = self._denied = []

        async def on_error(error: Exception) -> None:
            # Bad credentials do not get better by retrying: stop instead of reconnecting forever.
            if "Authorization Violation" in str(error) and not connecting.done():
                refused.append(error)
                connecting.cancel()
            elif "permissions violation" in str(error).lower():
                denied.append(str(error))

        async def on_reconnect() -> None:
            for event in self._reconnected:
                event.set()

        connecting = asyncio.ensure_future(
            nats.connect(
                _servers(self.nats_url, tls="tls" in self.connect_options),
                name=f"taskwire-python-worker {self.id}",
                max_reconnect_attempts=-1,
                error_cb=on_error,
                reconnected_cb=on_reconnect,
                **self.connect_options,
            )
        )
        stopped = asyncio.ensure_future(self._stop.wait())
        await asyncio.wait([connecting, stopped], timeout=CONNECT_TIMEOUT, return_when=asyncio.FIRST_COMPLETED)
        stopped.cancel()
        if not connecting.done():
            connecting.cancel()
            if not refused:
                raise ConnectionError(
                    f"cannot connect to NATS at {self.nats_url} within {CONNECT_TIMEOUT:.0f}s"
                    + (" (stopped)" if self._stop.is_set() else "")
                    + "; start nats-server or set TASKWIRE_NATS_URL"
                )
        try:
            self._nc = await connecting
        except (Exception, asyncio.CancelledError) as e:
            if refused:
                raise ConnectionError(
                    f"NATS at {self.nats_url} refused the worker's credentials ({refused[0]}): check TASKWIRE_NATS_*"
                ) from None
            raise ConnectionError(
                f"cannot connect to NATS at {self.nats_url}: {e}; start nats-server or set TASKWIRE_NATS_URL"
            ) from e
        self._js = self._nc.jetstream()
        background: List[asyncio.Task] = []
        try:
            # Metrics and /healthz once connected, as the Rust runtime: a probe on /healthz sees
            # a worker that reached NATS.
            if self.metrics_addr:
                self._http = await _metrics.serve(self.metrics, self.metrics_addr)
            try:
                await self._ensure_layout()
                for task in served:
                    await self._register(task)
                cancels = await self._watch_cancels()
                background.append(asyncio.ensure_future(self._heartbeats(served)))
                background.append(cancels)
                self._limits = _Limits(self._js, self._nc, self.id)
                background.append(await self._limits.start(self._reconnect_event(), lambda: bool(self._denied)))
                # Consumers first: a worker that cannot bind them fails at start, not silently later.
                levels = {task.name: await self._consumers(task) for task in served}
            except Exception as e:
                if denied:
                    # Requests that time out because NATS refused something say little; the
                    # refusal says what to fix.
                    hint = ""
                    if any("subscription" in d.lower() for d in denied):
                        hint = (
                            "; its replies are refused: set TASKWIRE_NATS_INBOX_PREFIX to the inbox prefix "
                            "this user may subscribe to (e.g. _INBOX.<user>)"
                        )
                    raise PermissionError(f"NATS refused this worker: {denied[0]}{hint}") from e
                raise
            pullers = [asyncio.ensure_future(self._pull_loop(task, levels[task.name])) for task in served]
            _write_ports_file(self._http)
            log.info("worker %s serving %s", self.id, ", ".join(t.name for t in served))
            await self._stop.wait()
            # The pullers see the stop after their current fetch and release what they hold.
            _, late = await asyncio.wait(pullers, timeout=IDLE_WAIT + 5)
            for p in late:
                p.cancel()
            await self._drain()
        finally:
            for b in background:
                b.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            try:
                kv = await self._js.key_value("TASKWIRE_WORKERS")
                await asyncio.wait_for(kv.purge(self.id), 2)
            except Exception:
                pass
            # Everything taken was acked or released; a drain would wait on the pull
            # subscriptions' queues, which fetch does not mark done.
            await self._nc.close()

    def _reconnect_event(self) -> asyncio.Event:
        """An event set whenever the connection to NATS comes back."""
        event = asyncio.Event()
        self._reconnected.append(event)
        return event

    def stop(self) -> None:
        """Begins a graceful stop."""
        if self._stop is not None:
            self._stop.set()

    def _on_signal(self) -> None:
        if self._stop.is_set():
            log.warning("second signal: releasing running tasks now")
            self._force.set()
        else:
            log.info("stopping: finishing running tasks (grace %.0fs)", self.grace)
            self._stop.set()

    async def _drain(self) -> None:
        deadline = time.monotonic() + self.grace
        while self._running and not self._force.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                break
            force = asyncio.ensure_future(self._force.wait())
            await asyncio.wait(list(self._running) + [force], timeout=left, return_when=asyncio.FIRST_COMPLETED)
            force.cancel()
        # Still running after the grace: released (NAKed) for another worker at once, and
        # whatever still waits on the broker gives up.
        if self._running:
            self._force.set()
        for running in list(self._running.values()):
            running.released = True
            running.changed.set()
        if self._running:
            await asyncio.wait(list(self._running), timeout=5)

    # ---- broker layout ---------------------------------------------------------------------

    async def _ensure_layout(self) -> None:
        ns = 1_000_000_000
        streams = [
            {
                "name": TASKS_STREAM,
                "description": "taskwire: queued tasks, one subject per task type and priority",
                "subjects": [
                    "taskwire.tasks.>",
                    "taskwire.tasks-high.>",
                    "taskwire.tasks-low.>",
                    "taskwire.delayed.>",
                    "taskwire.schedules.>",
                ],
                "retention": "workqueue",
                "storage": "file",
                "num_replicas": self.replicas,
                "duplicate_window": 120 * ns,
                "max_msg_size": 1024 * 1024,
                "max_msgs_per_subject": self.max_queued,
                "discard": "new" if self.max_queued > 0 else "old",
                "discard_new_per_subject": self.max_queued > 0,
                # nats-server refuses message schedules on a stream that discards new messages.
                "allow_msg_schedules": self.max_queued <= 0,
                "allow_msg_ttl": True,
                # Three consumers per task type; without a limit of its own a stream gets the
                # server's (1,000 on nats-server 2.15).
                "max_consumers": MAX_TASK_CONSUMERS,
            },
            {
                "name": RESULTS_STREAM,
                "description": "taskwire: one result per task id",
                "subjects": ["taskwire.results.>"],
                "retention": "limits",
                "storage": "file",
                "num_replicas": self.replicas,
                "max_msgs_per_subject": 1,
                "max_age": int(self.result_ttl * ns),
                "duplicate_window": 120 * ns,
                "allow_direct": True,
                "allow_msg_ttl": True,
                "subject_delete_marker_ttl": int(self.result_ttl * ns),
                # Waiters listen to stored results only.
                "republish": {"src": "taskwire.results.*.>", "dest": "taskwire.stored.results.{{wildcard(1)}}.>"},
            },
            {
                "name": EVENTS_STREAM,
                "description": "taskwire: task state changes",
                "subjects": ["taskwire.events.>"],
                "retention": "limits",
                "storage": "file",
                "num_replicas": self.replicas,
                "max_msgs_per_subject": 32,
                "max_age": int(self.result_ttl * ns),
                "allow_direct": True,
            },
            {
                "name": DEAD_STREAM,
                "description": "taskwire: tasks that failed for good, replayable",
                "subjects": ["taskwire.dead.>"],
                "retention": "limits",
                "storage": "file",
                "num_replicas": self.replicas,
                "max_age": 7 * 86400 * ns,
                "duplicate_window": 120 * ns,
                "allow_direct": True,
            },
        ]
        for config in streams:
            await self._ensure_stream(config)
        buckets = [
            ("TASKWIRE_REGISTRY", "taskwire: task types published by workers", None),
            ("TASKWIRE_CANCELLED", "taskwire: cancelled task ids", self.result_ttl),
            ("TASKWIRE_SCHEDULES", "taskwire: schedule definitions", None),
            ("TASKWIRE_WORKERS", "taskwire: heartbeats of live workers", WORKER_TTL),
            ("TASKWIRE_LIMITS", "taskwire: task limits set through the Admin API", None),
            ("TASKWIRE_SLOTS", "taskwire: concurrency slots held by running tasks", 20.0),
            ("TASKWIRE_RATES", "taskwire: task starts counted per rate window", 7200.0),
        ]
        for bucket, description, ttl in buckets:
            try:
                await self._js.key_value(bucket)
            except Exception:
                config = js_api.KeyValueConfig(
                    bucket=bucket,
                    description=description,
                    history=1,
                    ttl=ttl,
                    storage=js_api.StorageType.FILE,
                    replicas=self.replicas,
                )
                try:
                    await self._js.create_key_value(config)
                except Exception:
                    await self._js.key_value(bucket)

    async def _ensure_stream(self, config: Dict[str, Any]) -> None:
        name = config["name"]
        info = await self._api(f"STREAM.INFO.{name}", {}, allow_missing=True)
        if info is not None:
            await self._upgrade_stream(info.get("config") or {}, config)
            return
        created = await self._api(f"STREAM.CREATE.{name}", config, allow_missing=True)
        if created is None:  # created by another process in between
            await self._api(f"STREAM.INFO.{name}", {})

    async def _upgrade_stream(self, existing: Dict[str, Any], config: Dict[str, Any]) -> None:
        """Adds to a stream made by an earlier version the subjects and features this one uses,
        keeping every other setting, as the Rust runtime does. A worker whose NATS user may not
        change streams leaves it to the gateway."""
        subjects = existing.get("subjects") or []
        missing = [s for s in config["subjects"] if s not in subjects]
        wants_ttl = config.get("allow_msg_ttl") and not existing.get("allow_msg_ttl")
        wants_markers = config.get("subject_delete_marker_ttl") and not existing.get("subject_delete_marker_ttl")
        wants_republish = config.get("republish") and existing.get("republish") != config["republish"]
        wants_consumers = config.get("max_consumers", 0) > 0 and (existing.get("max_consumers") or 0) < config["max_consumers"]
        if not (missing or wants_ttl or wants_markers or wants_republish or wants_consumers):
            return
        updated = dict(existing)
        # A subject this version widened (taskwire.results.* to taskwire.results.>) gives way.
        updated["subjects"] = [old for old in subjects if not any(_subject_covers(new, old) for new in missing)] + missing
        if wants_ttl:
            updated["allow_msg_ttl"] = True
        if wants_markers:
            updated["subject_delete_marker_ttl"] = config["subject_delete_marker_ttl"]
        if wants_republish:
            updated["republish"] = config["republish"]
        if wants_consumers:
            updated["max_consumers"] = config["max_consumers"]
        try:
            await self._api(f"STREAM.UPDATE.{config['name']}", updated)
        except Exception as e:
            log.warning("stream %s is from an earlier version and could not be updated (%s); the gateway updates it", config["name"], e)

    async def _api(self, call: str, body: Dict[str, Any], allow_missing: bool = False) -> Optional[Dict[str, Any]]:
        reply = await self._nc.request(f"$JS.API.{call}", json.dumps(body).encode(), timeout=10)
        answer = json.loads(reply.data or b"{}")
        error = answer.get("error")
        if error:
            if allow_missing and error.get("code") in (404, 400) and error.get("err_code") in (10059, 10058):
                return None
            raise RuntimeError(f"JetStream {call}: {error.get('description')} (code {error.get('err_code')})")
        return answer

    async def _register(self, task: Task) -> None:
        kv = await self._js.key_value("TASKWIRE_REGISTRY")
        backoff = Backoff(0.05, 1.0, patience=30)
        while True:
            try:
                await kv.put(token(task.name), task.registry_entry.SerializeToString())
                return
            except Exception:
                if not await backoff.wait():
                    raise

    async def _consumers(self, task: Task) -> Dict[str, Any]:
        """The task's three consumers (high, normal, low), bound; sets how often running tasks
        tell the broker they are in progress from the ack wait the consumers really have."""
        levels = {p: await self._consumer(task, p) for p in ("high", "normal", "low")}
        waits = []
        for subscription in levels.values():
            try:
                waits.append((await subscription.consumer_info()).config.ack_wait or self.ack_wait)
            except Exception:
                waits.append(self.ack_wait)
        task.progress_every = max(min(waits) / 3, 0.05)
        return levels

    async def _consumer(self, task: Task, priority: str) -> Any:
        durable = consumer_name(task.name, priority)
        # With a name and a filter subject, the create request is
        # $JS.API.CONSUMER.CREATE.<stream>.<name>.<filter>, the form NATS permissions can tie to
        # this task's subject (deploy/nats/accounts.conf).
        config = js_api.ConsumerConfig(
            name=durable,
            durable_name=durable,
            description=f"taskwire: tasks of {task.name}, {priority} priority",
            filter_subject=task_subject(task.name, priority),
            ack_policy=js_api.AckPolicy.EXPLICIT,
            ack_wait=self.ack_wait,
            max_deliver=-1,
            max_ack_pending=10_000,
        )
        # A cluster electing a leader, or creating replicated consumers under load, may not
        # answer at once: tried again for a while, as the Rust runtime does. A refusal by NATS
        # fails at once.
        backoff = Backoff(0.1, 2.0, patience=CONSUMER_PATIENCE)
        while True:
            try:
                try:
                    await self._js.add_consumer(TASKS_STREAM, config)
                except nats.js.errors.APIError as e:
                    if e.err_code in TRANSIENT_CODES:
                        raise
                    # Made by another worker with other settings: use it as it is.
                    await self._js.consumer_info(TASKS_STREAM, durable)
                return await self._js.pull_subscribe_bind(durable=durable, stream=TASKS_STREAM)
            except Exception as e:
                wait = None if self._denied else backoff.next_wait()
                if wait is None:
                    if isinstance(e, nats.errors.TimeoutError):
                        raise PermissionError(
                            f"creating the consumer {durable} got no answer: does this NATS user have the permissions of "
                            "deploy/nats/accounts.conf for it (and TASKWIRE_NATS_INBOX_PREFIX set to its inbox prefix)?"
                        ) from None
                    raise
                log.warning("cannot create the consumer %s yet (%s); trying again", durable, e or type(e).__name__)
                await asyncio.sleep(wait)

    async def _watch_cancels(self) -> asyncio.Task:
        def put(key: str, _value: bytes) -> None:
            now = time.monotonic()
            if len(self._cancelled_ids) % 1024 == 1023:
                keep = self.result_ttl or float("inf")
                for old in [k for k, at in self._cancelled_ids.items() if now - at >= keep]:
                    del self._cancelled_ids[old]
            self._cancelled_ids[key] = now
            for running in self._running.values():
                if running.ctx is not None and running.ctx.id == key:
                    running.cancel_requested()

        return await _follow_bucket(
            self._js,
            "TASKWIRE_CANCELLED",
            put,
            lambda key: self._cancelled_ids.pop(key, None),
            lambda: list(self._cancelled_ids),
            self._reconnect_event(),
            lambda: bool(self._denied),
        )

    async def _heartbeats(self, served: List[Task]) -> None:
        kv = await self._js.key_value("TASKWIRE_WORKERS")
        started = time.time()
        host = socket.gethostname()
        while True:
            info = tasks_pb2.WorkerInfo(
                id=self.id,
                host=host,
                pid=os.getpid(),
                tasks=[t.name for t in served],
                running=self.metrics.running_total,
                succeeded=self.succeeded,
                failed=self.failed,
                version=f"{VERSION} (python)",
            )
            info.started_at.FromNanoseconds(int(started * 1e9))
            info.heartbeat_at.GetCurrentTime()
            try:
                await kv.put(self.id, info.SerializeToString())
            except Exception as e:
                log.debug("heartbeat not written: %s", e)
            await asyncio.sleep(HEARTBEAT_EVERY)

    # ---- pulling ---------------------------------------------------------------------------

    async def _pull_loop(self, task: Task, levels: Dict[str, Any]) -> None:
        """Pulls until the worker stops (it is never cancelled mid-fetch: what a fetch took is
        started or released, never dropped)."""
        limit = task.options.concurrency or self.concurrency
        mine: set = set()
        freed = asyncio.Event()
        reconnected = self._reconnect_event()
        round_no = 0
        idle = True
        while not self._stop.is_set():
            try:
                if len(mine) >= limit:
                    freed.clear()
                    waits = [asyncio.ensure_future(freed.wait()), asyncio.ensure_future(self._stop.wait())]
                    await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
                    for w in waits:
                        w.cancel()
                    continue
                # An idle worker waits for one task first, and asks the limits when it is in hand.
                if idle and self._limits.limited(task):
                    grant = self._limits.deferred(task)
                else:
                    grant = await self._limits.acquire(task, limit - len(mine), self._stop)
                if grant is None:
                    break
                try:
                    started = 0
                    if not idle:
                        round_no += 1
                        order = ["low", "high", "normal"] if round_no % 8 == 0 else ["high", "normal", "low"]
                        for level in order:
                            if started >= grant.allowed:
                                break
                            msgs = await self._fetch(levels[level], grant.allowed - started, QUIET_WAIT)
                            started += await self._start_some(task, msgs, grant.allowed - started, grant, mine, freed)
                    if started == 0 and not self._stop.is_set():
                        if not idle and self._limits.limited(task):
                            # Nothing anywhere: the slots and starts taken for this round go
                            # back now, and the wait asks the limits with a task in hand.
                            await asyncio.shield(grant.close())
                            grant = self._limits.deferred(task)
                        started += await self._wait_idle(task, levels, limit - len(mine), grant, mine, freed, reconnected)
                    idle = started == 0
                finally:
                    await asyncio.shield(grant.close())
            except Exception:
                log.exception("%s: pulling failed; trying again", task.name)
                await asyncio.sleep(1)
        # Whatever reached this worker after its last fetch goes back at once.
        for subscription in levels.values():
            for msg in _pending(subscription):
                await _release(msg)
            try:
                await subscription.unsubscribe()
            except Exception:
                pass

    async def _wait_idle(self, task: Task, levels: Dict[str, Any], room: int, grant: "_Grant", mine: set, freed: asyncio.Event, reconnected: asyncio.Event) -> int:
        """An idle worker's wait, as in the Rust runtime: one pull request of one task at each
        level, lasting IDLE_PULL and made again as it expires (at once after a reconnect: a
        restarted server forgot it); the first task handed over starts and makes the worker
        busy again (what a request still open hands over later waits in its subscription, where
        the next fetch at that level finds it first). With fewer free slots than levels, it
        waits on normal for IDLE_WAIT and the next round looks at the others."""
        order = ["normal", "high", "low"]
        if room < len(order):
            msgs = await self._fetch(levels["normal"], max(room, 1), IDLE_WAIT)
            return await self._start_some(task, msgs, max(room, 1), grant, mine, freed)

        async def wait_at(level: str) -> List[Msg]:
            while not self._stop.is_set():
                try:
                    msgs = await levels[level].fetch(1, timeout=IDLE_PULL)
                except (nats.errors.TimeoutError, asyncio.TimeoutError):
                    continue
                except Exception as e:
                    log.warning("%s: pulling at %s failed (%s); trying again", task.name, level, e)
                    await asyncio.sleep(1)
                    continue
                if msgs:
                    return msgs
            return []

        started = 0
        while started == 0 and not self._stop.is_set():
            reconnected.clear()
            waits = {asyncio.ensure_future(wait_at(level)) for level in order}
            stopping = asyncio.ensure_future(self._stop.wait())
            again = asyncio.ensure_future(reconnected.wait())
            try:
                done, _ = await asyncio.wait(waits | {stopping, again}, return_when=asyncio.FIRST_COMPLETED)
                for wait in done & waits:
                    # A deferred grant (limits) allows one start; more go back at once.
                    started += await self._start_some(task, wait.result(), max(grant.allowed - started, 0), grant, mine, freed)
            finally:
                for future in waits | {stopping, again}:
                    future.cancel()
        return started

    async def _start_some(self, task: Task, msgs: List[Msg], room: int, grant: "_Grant", mine: set, freed: asyncio.Event) -> int:
        """Starts up to `room` of `msgs` (a fetch may hand over more than it asked for) and
        releases the rest, or all of them when the worker is stopping."""
        started = 0
        for n, msg in enumerate(msgs):
            if started < room and not self._stop.is_set():
                slot = await grant.take(min(room - started, len(msgs) - n) - 1)
                if isinstance(slot, float):
                    # The rate allows no start now: back to the queue until it does, unstarted.
                    try:
                        await msg.nak(delay=slot)
                    except Exception:
                        pass
                    started += 1
                    continue
                self._start(task, msg, mine, freed, slot)
                started += 1
            else:
                await _release(msg)
        return started

    async def _fetch(self, subscription: Any, batch: int, wait: float) -> List[Msg]:
        try:
            return await subscription.fetch(batch, timeout=wait)
        except (nats.errors.TimeoutError, asyncio.TimeoutError):
            return []
        except nats.errors.ConnectionClosedError:
            await asyncio.sleep(wait)
            return []
        except Exception as e:
            log.warning("pulling tasks failed: %s", e)
            await asyncio.sleep(wait)
            return []

    def _start(self, task: Task, msg: Msg, mine: set, freed: asyncio.Event, slot: Optional["_Slot"]) -> None:
        running = asyncio.ensure_future(self._handle(task, msg))
        mine.add(running)
        me = _Running()
        me.slot = slot
        self._running[running] = me
        if slot is not None:
            # A slot that could not be kept stops the task before another worker may take it.
            slot.on_lost(me.slot_lost)

        def done(t: asyncio.Task) -> None:
            mine.discard(t)
            self._running.pop(t, None)
            freed.set()
            if slot is not None:
                if me.thread_done is not None and not me.thread_done.done():
                    # A thread cannot be stopped: its slot is held until it really ends.
                    me.thread_done.add_done_callback(lambda _: asyncio.ensure_future(slot.free()))
                else:
                    asyncio.ensure_future(slot.free())

        running.add_done_callback(done)

    # ---- one task --------------------------------------------------------------------------

    async def _handle(self, task: Task, msg: Msg) -> None:
        me = self._running.get(asyncio.current_task())
        try:
            headers = dict(msg.headers or {})
            attempt = await self._attempt(task, headers, msg)
            if attempt is None:
                return
            with self._tracing.process(task.name, msg.subject, headers, attempt, redelivered=attempt > 1) as span:
                if me is not None:
                    me.span = span
                await self._handle_one(task, msg, headers, attempt)
        except asyncio.CancelledError:
            raise
        except Exception:
            # Left unacknowledged: the broker redelivers it after the ack wait.
            log.exception("%s: handling a task failed", task.name)

    async def _handle_one(self, task: Task, msg: Msg, headers: Dict[str, str], attempt: int) -> None:
        me = self._running.get(asyncio.current_task())
        meta = msg.metadata
        task_id = self._task_id(task, headers, meta)
        if me.span is not None and task_id is not None:
            me.span.set_attribute("messaging.message.id", task_id)
        if task_id is None:
            dead_id = f"poison-{meta.sequence.stream}"
            log.error("%s: message without a valid task id; moving it to the dead letters as %s", task.name, dead_id)
            if await self._store_dead(task, msg, dead_id, 1, DEAD_POISON, "the message has no valid Taskwire-Task-Id header") is not False:
                await msg.term()
            return
        options = task.options.with_overrides(headers)

        if task_id in self._cancelled_ids:
            await self._finish(task, msg, task_id, attempt, "cancelled", _failure("cancelled on request", False), options)
            return
        expires = headers.get(EXPIRES_AT)
        if expires and expires.isdigit() and now_micros() > int(expires):
            await self._finish(task, msg, task_id, attempt, "expired", _failure("not started before its expiry time", False), options)
            return

        # A run cut short (a worker killed mid-task) used its attempt: with none left the task
        # fails for good rather than running again.
        if attempt > options.max_attempts:
            # Unless the cut-short run stored its outcome before it died (and missed its ack).
            known = await self._has_result(task, task_id)
            if known is None:
                log.warning("%s %s: cannot tell whether the task has a result; putting it back", task.name, task_id)
                await msg.nak(delay=1.0)
                return
            if known:
                await msg.ack()
                return
            error = (
                f"attempt {attempt - 1} of {options.max_attempts} was cut short (its worker stopped "
                "before it ended) and no attempt is left"
            )
            log.warning("%s %s: %s", task.name, task_id, error)
            await self._fail_for_good(task, msg, task_id, attempt - 1, DEAD_LOST, error, _failure(error, False), options)
            return
        # A task whose outcome is stored never runs: a redelivery after a crash that followed
        # the result, a task cancelled before this worker heard of it, a keyed task stored again.
        # At the same time the start is stored, so that a redelivery knows this attempt ran.
        known, started = await asyncio.gather(
            self._has_result(task, task_id), self._mark_started(task, msg, task_id, attempt), return_exceptions=True
        )
        if known is None or isinstance(known, BaseException):
            log.warning("%s %s: cannot tell whether the task has a result; putting it back", task.name, task_id)
            await msg.nak(delay=1.0)
            return
        if known:
            await msg.ack()
            return
        if isinstance(started, BaseException):
            log.warning("%s %s: cannot store the start of the attempt (%s); putting it back", task.name, task_id, started)
            await msg.nak(delay=1.0)
            return
        if not started:
            # Another delivery started this attempt (an earlier one of this message, whose count
            # a broker restart may have forgotten, or another copy of the task): it runs it and
            # keeps it in progress, so this one is left alone. If that worker died, the ack wait
            # brings the task back as the next attempt.
            log.info("%s %s: another delivery of the task started attempt %d", task.name, task_id, attempt)
            return
        # The looks above wait on the broker, which an outage may stretch: a task whose time ran
        # out meanwhile does not start either.
        if expires and expires.isdigit() and now_micros() > int(expires):
            await self._finish(task, msg, task_id, attempt, "expired", _failure("not started before its expiry time", False), options)
            return

        ctx = TaskContext(self, task, task_id, attempt, options, headers)
        me.ctx = ctx
        running = self.metrics.started(task.name)
        try:
            try:
                args = task.input_class.FromString(msg.data)
            except DecodeError as e:
                outcome, value = "undecodable", e
            else:
                outcome, value = await self._run_attempt(task, msg, ctx, args, options, me)
        finally:
            running.end()
        if outcome == "undecodable":
            await self._failed(task, msg, task_id, attempt, options, TaskError(f"undecodable arguments: {value}", False), DEAD_POISON)
            return
        await ctx._flush()
        if outcome == "released":
            await msg.nak()
            return
        if me.cancelled or outcome == "cancelled":
            await self._finish(task, msg, task_id, attempt, "cancelled", _failure("cancelled on request", False), options)
            return
        if outcome == "done":
            if not isinstance(value, task.output_class):
                error = TaskError(
                    f"the handler returned {type(value).__name__}, not {task.output_class.DESCRIPTOR.full_name}", False
                )
                await self._failed(task, msg, task_id, attempt, options, error, DEAD_PERMANENT)
                return
            await self._finish(task, msg, task_id, attempt, "succeeded", value.SerializeToString(), options)
        elif outcome == "error":
            await self._failed(task, msg, task_id, attempt, options, value, None)
        elif outcome == "timeout":
            await self._failed(task, msg, task_id, attempt, options, TaskError(f"timed out after {options.timeout}s"), DEAD_TIMEOUT)
        else:  # a bug in the task
            log.error("%s %s attempt %d raised: %s", task.name, task_id, attempt, value)
            error = f"task raised {value}"
            Tracing.failed(me.span, error)
            await self._fail_for_good(task, msg, task_id, attempt, DEAD_PANIC, error, _failure(error, False), options)

    def _task_id(self, task: Task, headers: Dict[str, str], meta) -> Optional[str]:
        if TASK_ID in headers:
            value = headers[TASK_ID]
            return value if ID_PATTERN.match(value) else None
        schedule = headers.get(SCHEDULE_NAME)
        if schedule is None:
            return None
        return scheduled_task_id(task.name, schedule, headers.get(SCHEDULE_NEXT), meta.sequence.stream)

    async def _run_attempt(self, task: Task, msg: Msg, ctx: TaskContext, args: Message, options: Options, me: "_Running"):
        handler = task.handler
        if inspect.iscoroutinefunction(handler):
            call = asyncio.ensure_future(handler(args, ctx))
        else:
            loop = asyncio.get_running_loop()
            me.thread_done = loop.create_future()

            def in_thread():
                try:
                    return handler(args, ctx)
                finally:
                    loop.call_soon_threadsafe(lambda: me.thread_done.done() or me.thread_done.set_result(None))

            call = asyncio.ensure_future(asyncio.to_thread(in_thread))
        me.call = call
        me.coroutine = inspect.iscoroutinefunction(handler)
        if me.cancelled:
            me.cancel_requested()
        every = task.progress_every
        started = time.monotonic()
        timed_out_at = None
        while True:
            now = time.monotonic()
            waits = [started + every * (1 + int((now - started) / every))]
            if ctx.deadline is not None and timed_out_at is None:
                waits.append(ctx.deadline)
            if timed_out_at is not None:
                waits.append(timed_out_at + TIMEOUT_GRACE)
            if me.cancel_at is not None:
                waits.append(me.cancel_at + TIMEOUT_GRACE)
            timeout = max(0.0, min(waits) - now)
            force = asyncio.ensure_future(self._force.wait())
            changed = asyncio.ensure_future(me.changed.wait())
            done, _ = await asyncio.wait([call, force, changed], timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            force.cancel()
            changed.cancel()
            me.changed.clear()
            if call in done or call.done():
                if call.cancelled():
                    if timed_out_at is not None:
                        return "timeout", None
                    if me.released or self._force.is_set():
                        return "released", None
                    return "cancelled", None
                error = call.exception()
                if error is None:
                    return "done", call.result()
                if timed_out_at is not None:
                    return "timeout", None
                if isinstance(error, TaskError):
                    return "error", error
                return "raised", f"{type(error).__name__}: {error}"
            now = time.monotonic()
            if self._force.is_set() or me.released:
                ctx._cancelled.set()
                call.cancel()
                return "released", None
            if me.cancel_at is not None and now >= me.cancel_at + TIMEOUT_GRACE:
                call.cancel()
                return "cancelled", None
            if timed_out_at is not None and now >= timed_out_at + TIMEOUT_GRACE:
                call.cancel()
                return "timeout", None
            if ctx.deadline is not None and timed_out_at is None and now >= ctx.deadline:
                timed_out_at = now
                ctx._cancelled.set()
                if inspect.iscoroutinefunction(handler):
                    call.cancel()
            if now - started >= every and (now - me.last_progress_ack) >= every:
                me.last_progress_ack = now
                try:
                    await msg.in_progress()
                except Exception:
                    pass

    async def _attempt(self, task: Task, headers: Dict[str, str], msg: Msg) -> Optional[int]:
        """Attempts count runs, not deliveries: a first delivery is the header's attempt; a
        redelivery follows the last run that started (each start is stored as a `running`
        event before the handler runs). None when the delivery is dealt with already: the broker
        could not tell (the task is put back), or it is of a series replayed since (dropped)."""
        try:
            first = max(1, int(headers.get(ATTEMPT, "1")))
        except ValueError:
            first = 1
        if msg.metadata.num_delivered <= 1:
            return first
        task_id = self._task_id(task, headers, msg.metadata)
        if task_id is None:
            return first
        # The subject in the API subject: the form NATS permissions can limit to this worker's
        # own task types.
        subject = event_subject(task.name, task_id)
        try:
            found = await self._last_headers(EVENTS_STREAM, subject)
        except Exception as e:
            log.warning("%s %s: cannot tell which attempt this is (%s); putting it back", task.name, task_id, e)
            await msg.nak(delay=1.0)
            return None
        if found is None:
            return first
        if _number(found.get(REPLAY)) > _number(headers.get(REPLAY)):
            # A copy of a series that ended in a dead letter, which was replayed since: its ack
            # was lost. The new series stands in for it; it has nothing to do.
            log.info("%s %s: a delivery of a series that was replayed since; dropping it", task.name, task_id)
            try:
                await msg.ack()
            except Exception as e:
                log.debug("ack of a replayed series' copy of %s failed (%s); it comes back and is dropped again", task_id, e)
            return None
        started = _number(found.get(ATTEMPT))
        if found.get(STATE) in ("running", "retrying") and started > 0:
            return max(first, started + 1)
        return first

    async def _mark_started(self, task: Task, msg: Msg, task_id: str, attempt: int) -> bool:
        """Stores the start of an attempt as a `running` event, acknowledged before the handler
        runs; False when another delivery of the task stored this attempt's start first."""
        series = _series(msg)
        headers = self._event_headers(task.name, task_id, "running", attempt, series)
        parent = (msg.headers or {}).get("traceparent")
        if parent:
            headers["traceparent"] = parent
        # One start per attempt: a second delivery racing this one finds the start taken.
        headers[MSG_ID] = f"{task_id}.start.{series}.{attempt}"
        ack = await self._js.publish(event_subject(task.name, task_id), b"", headers=headers, timeout=5)
        return not ack.duplicate

    async def _stored_result(self, task: Task, task_id: str) -> Optional[Dict[str, str]]:
        """The headers of the task's stored result, None when it has none; raises when the
        broker could not tell."""
        # The subject in the API subject: the form NATS permissions can limit to the results of
        # this worker's own task types (docs/protocol.md).
        return await self._last_headers(RESULTS_STREAM, result_subject(task.name, task_id))

    async def _last_headers(self, stream: str, subject: str) -> Optional[Dict[str, str]]:
        """The headers of the last message of `stream` on `subject`, None when there is none;
        raises when the broker could not tell. A direct get with the subject in the API
        subject (the form NATS permissions can limit to this worker's own task types); with
        replicated streams, a get from the stream's leader, which has every acknowledged write
        (docs/protocol.md)."""
        if self.replicas > 1:
            body = json.dumps({"last_by_subj": subject}).encode()
            # No answer (no leader while one is elected) raises: the caller puts the task back.
            reply = await self._nc.request(f"$JS.API.STREAM.MSG.GET.{stream}", body, timeout=5)
            answer = json.loads(reply.data or b"{}")
            error = answer.get("error")
            if not error:
                raw = base64.b64decode((answer.get("message") or {}).get("hdrs") or b"")
                return _parse_headers(raw)
            if error.get("err_code") == 10037:  # no message found
                return None
            raise RuntimeError(f"reading {subject} from the leader of {stream}: {error.get('description')}")
        reply = await self._nc.request(f"$JS.API.DIRECT.GET.{stream}.{subject}", b"", timeout=5)
        headers = dict(reply.headers or {})
        status = headers.get("Status")
        if status is None:
            return headers
        if status == "404":
            return None
        raise RuntimeError(f"direct get from {stream} answered {status}")

    async def _has_result(self, task: Task, task_id: str) -> Optional[bool]:
        """Whether the task has a stored result; None when the broker could not tell."""
        try:
            return await self._stored_result(task, task_id) is not None
        except Exception:
            return None

    def _event_headers(self, task: str, task_id: str, state: str, attempt: int, series: str = "0") -> Dict[str, str]:
        headers = {TASK_ID: task_id, TASK: task, STATE: state, ATTEMPT: str(attempt)}
        # The events of a replayed task name their series, as its queued event does, so that a
        # delivery of an older series (a lost ack left it in line) can tell its series is over.
        if series != "0":
            headers[REPLAY] = series
        return headers

    async def _failed(self, task: Task, msg: Msg, task_id: str, attempt: int, options: Options, error: TaskError, reason: Optional[str]) -> None:
        me = self._running.get(asyncio.current_task())
        if me is not None:
            Tracing.failed(me.span, error.message)
        if error.retryable and attempt < options.max_attempts:
            delay = options.backoff(attempt)
            log.info("%s %s attempt %d failed, retrying in %.2fs: %s", task.name, task_id, attempt, delay, error.message)
            self.metrics.retried(task.name)
            subject = event_subject(task.name, task_id)
            try:
                series = _series(msg)
                headers = self._event_headers(task.name, task_id, "retrying", attempt, series)
                await self._nc.publish(subject, _failure(error.message, True), headers=headers)
            except Exception:
                pass
            await msg.nak(delay=delay)
            return
        if reason is None:
            reason = DEAD_EXHAUSTED if error.retryable else DEAD_PERMANENT
        await self._fail_for_good(
            task, msg, task_id, attempt, reason, error.message, _failure(error.message, error.retryable), options
        )

    async def _fail_for_good(
        self, task: Task, msg: Msg, task_id: str, attempt: int, reason: str, error: str, body: bytes, options: Options
    ) -> None:
        """The dead letter, then the failed result, then the ack. When the result slot turns out
        to be taken by another outcome (a delivery of the same task that ran elsewhere and
        succeeded), the letter is taken back: a task has a dead letter only if it failed."""
        letter = await self._store_dead(task, msg, task_id, attempt, reason, error)
        if letter is False:
            return
        stored = await self._finish(task, msg, task_id, attempt, "failed", body, options)
        # Another outcome may hold the result's place: refused as taken, or, when it was stored
        # under the same message id (an `expired` or `cancelled` end of this series by another
        # delivery), answered as a duplicate. A letter's sequence (True: the broker refused it,
        # so there is none to take back).
        if stored in ("taken", "duplicate") and isinstance(letter, int) and not isinstance(letter, bool):
            # Tried again through a short outage; a letter that cannot be taken back stays (one
            # too many is better than none).
            try:
                state = (await self._patiently(lambda: self._stored_result(task, task_id)) or {}).get(STATE)
                if state is not None and state != "failed":
                    # An answer, even a refusal (the letter gone already), is not tried again.
                    await self._patiently(
                        lambda: self._api(f"STREAM.MSG.DELETE.{DEAD_STREAM}", {"seq": letter}), nats.errors.Error
                    )
            except Exception as e:
                log.warning("%s %s: could not take back the dead letter of a task that did not fail (%s)", task.name, task_id, e)

    async def _patiently(self, call: Callable[[], Awaitable[Any]], failures: type = Exception) -> Any:
        """`call()`, tried again for about ten seconds while it fails with one of `failures`
        (unless the worker is forced to stop); the last failure is raised."""
        backoff = Backoff(0.2, 2.0, patience=10)
        while True:
            try:
                return await call()
            except failures:
                if self._force.is_set() or not await backoff.wait():
                    raise

    async def _store_dead(self, task: Task, msg: Msg, task_id: str, attempt: int, reason: str, error: str):
        """False when it could not be stored before the worker had to stop; else its sequence,
        or True when the broker refused it for good."""
        # The task's own headers, less those the server acts on (a task a message schedule fired
        # carries Nats-Scheduler and Nats-Schedule-Next, which the dead letter stream refuses).
        headers = {k: v for k, v in (msg.headers or {}).items() if not k.lower().startswith("nats-")}
        replay = _series(msg)
        one_line = "".join(" " if not c.isprintable() else c for c in error)[:1000]
        headers.update(
            {
                TASK_ID: task_id,
                TASK: task.name,
                ATTEMPT: str(attempt),
                DEAD_REASON: reason,
                ERROR: one_line,
                MSG_ID: f"{task_id}.dead.{replay}",
            }
        )
        stored, why = await self._store(dead_subject(task.name, task_id), headers, msg.data)
        if stored == "stored":
            self.metrics.dead_lettered(task.name, reason)
        elif stored == "refused":
            log.error("%s %s: the broker refuses this dead letter (%s); the task ends failed without one", task.name, task_id, why)
        if stored == "gave_up":
            return False
        if stored in ("stored", "duplicate"):
            return int(why)
        return True

    async def _store(self, subject: str, headers: Dict[str, str], body: bytes) -> "tuple[str, str]":
        """Publishes until JetStream stored it: ("stored" | "duplicate", "<sequence>"), ("taken",
        "") when the subject has its one message already, ("refused", why) when the broker
        refuses it for good (too large, a header or feature the stream refuses), or ("gave_up",
        "") when forced to stop first."""
        backoff = Backoff(0.1, 5.0)
        while True:
            try:
                ack = await self._js.publish(subject, body, headers=headers, timeout=5)
                return ("duplicate" if ack.duplicate else "stored"), str(ack.seq)
            except nats.js.errors.APIError as e:
                if e.err_code == WRONG_LAST_SEQUENCE:
                    return "taken", ""
                if e.err_code is not None and e.err_code not in TRANSIENT_CODES:
                    return "refused", f"{e.description} (error code {e.err_code})"
                failure = e
            except nats.errors.MaxPayloadError as e:
                return "refused", f"larger than the server's max payload: {e}"
            except Exception as e:
                failure = e
            if self._force.is_set():
                log.warning("%s not stored before exit (%s); the task will be redelivered", subject, failure)
                return "gave_up", ""
            log.warning("storing %s failed (%s); retrying", subject, failure)
            await backoff.wait()

    async def _finish(self, task: Task, msg: Msg, task_id: str, attempt: int, state: str, body: bytes, options: Options) -> str:
        """Stores the result, then acks the task. A result the broker refuses for good ends the
        task failed for good instead, with a dead letter saying why. Returns what became of the
        result ("stored", "duplicate", "taken", "refused" or "gave_up")."""
        stored, why = await self._store_result(task, msg, task_id, attempt, state, body, options)
        if stored == "refused":
            error = f"the task's {state} result could not be stored: {why}"
            log.error("%s %s attempt %d: %s", task.name, task_id, attempt, error)
            if await self._store_dead(task, msg, task_id, attempt, DEAD_PERMANENT, error) is False:
                return "gave_up"
            state = "failed"
            stored, why = await self._store_result(task, msg, task_id, attempt, state, _failure(error, False), options)
            if stored == "refused":
                log.error("%s %s: the broker refuses every result of this task (%s); dropping it", task.name, task_id, why)
                try:
                    await msg.term()
                except Exception as e:
                    log.warning("terminating %s failed (%s); it will be redelivered", task_id, e)
                return stored
        if stored == "gave_up":
            return stored
        if stored == "stored":
            self.metrics.completed(task.name, state)
        try:
            await msg.ack()
        except Exception as e:
            log.warning("ack of %s failed (%s); a redelivery will find the stored result", task_id, e)
        return stored

    async def _store_result(
        self, task: Task, msg: Msg, task_id: str, attempt: int, state: str, body: bytes, options: Options
    ) -> "tuple[str, str]":
        headers = self._event_headers(task.name, task_id, state, attempt)
        series = _series(msg)
        headers[MSG_ID] = result_msg_id(task_id, series)
        # One result per task id, whatever the type in its subject.
        headers[EXPECTED_LAST_SUBJECT_SEQUENCE] = "0"
        headers[EXPECTED_LAST_SUBJECT_SEQUENCE_SUBJECT] = results_of(task_id)
        if options.result_ttl:
            headers[NATS_TTL] = str(max(1, int(-(-options.result_ttl // 1))))
        parent = (msg.headers or {}).get("traceparent")
        if parent:
            headers["traceparent"] = parent
        with self._tracing.publish_result(task.name, task_id, state, headers):
            return await self._store(result_subject(task.name, task_id), headers, body)



class _Running:
    """What the worker tracks of one running task."""

    def __init__(self) -> None:
        self.ctx: Optional[TaskContext] = None
        self.call: Optional[asyncio.Future] = None
        self.cancel_at: Optional[float] = None
        self.released = False
        self.coroutine = True
        self.changed = asyncio.Event()
        self.last_progress_ack = time.monotonic()
        # The attempt's trace span, when traces are on.
        self.span: Any = None
        # The cluster-wide slot it holds, if any; done when a thread handler's thread ends.
        self.slot: Optional["_Slot"] = None
        self.thread_done: Optional[asyncio.Future] = None

    def slot_lost(self) -> None:
        """Its concurrency slot could not be kept: it is stopped and put back."""
        self.released = True
        if self.ctx is not None:
            self.ctx._cancelled.set()
        self.changed.set()

    @property
    def cancelled(self) -> bool:
        return self.cancel_at is not None

    def cancel_requested(self) -> None:
        if self.cancel_at is None:
            self.cancel_at = time.monotonic()
        if self.ctx is not None:
            self.ctx._cancelled.set()
        if self.coroutine and self.call is not None and not self.call.done():
            # A coroutine is stopped at once (CancelledError); a thread sees ctx.cancelled and
            # gets the grace period.
            self.call.cancel()
        self.changed.set()


def _series(msg: Msg) -> str:
    """Which series of attempts a task message belongs to: "0", or the replay count."""
    return (msg.headers or {}).get(REPLAY, "0")


def _number(value: Optional[str]) -> int:
    """A header's whole number; 0 when it is absent or not one."""
    try:
        return int(value or "0")
    except ValueError:
        return 0


def _pending(subscription: Any) -> List[Msg]:
    """Messages a pull subscription received but no fetch handed over yet."""
    queue = getattr(getattr(subscription, "_sub", None), "_pending_queue", None)
    msgs = []
    while queue is not None and not queue.empty():
        msg = queue.get_nowait()
        if not (msg.headers and msg.headers.get("Status")):
            msgs.append(msg)
    return msgs


async def _release(msg: Msg) -> None:
    try:
        await msg.nak()
    except Exception:
        pass


def _write_ports_file(http: "Optional[asyncio.AbstractServer]") -> None:
    """With TASKWIRE_PORTS_FILE set, writes the address of /metrics there once the worker is
    ready (JSON, written aside and renamed), for what started it with port 0, as the Rust
    runtime does."""
    path = os.environ.get("TASKWIRE_PORTS_FILE", "").strip()
    if not path:
        return
    ports = {}
    if http is not None and http.sockets:
        host, port = http.sockets[0].getsockname()[:2]
        ports["http"] = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    aside = path + ".partial"
    with open(aside, "w") as f:
        f.write(json.dumps(ports, separators=(",", ":")))
    os.replace(aside, path)

