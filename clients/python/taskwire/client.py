"""The synchronous client, task handles, typed service stubs and errors."""

import collections
import datetime
import functools
import re
from typing import Any, Iterable, Iterator, Optional

import grpc
from google.protobuf import descriptor as _descriptor
from google.protobuf import duration_pb2, message as _message

from taskwire import schema
from taskwire.options import submit_options
from taskwire.v1 import tasks_pb2, tasks_pb2_grpc, workflows_pb2_grpc

State = tasks_pb2.TaskState
FINAL = {State.TASK_STATE_SUCCEEDED, State.TASK_STATE_FAILED, State.TASK_STATE_CANCELLED, State.TASK_STATE_EXPIRED}


class Error(Exception):
    """A gateway call that failed: `code` is the gRPC status code, `details` its message."""

    def __init__(self, code: grpc.StatusCode, details: str):
        super().__init__(f"{code.name.lower()}: {details}")
        self.code = code
        self.details = details

    @classmethod
    def from_rpc(cls, err: grpc.RpcError) -> "Error":
        code, details = err.code(), err.details() or ""
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return TimeoutError(code, details)
        return cls(code, details)


class TimeoutError(Error):  # noqa: A001 - the taskwire meaning of a timeout
    """The task had no result within the time waited; it may still finish."""


class TaskFailed(Exception):
    """The task failed for good: `message` is its error, `retryable` whether it said a retry could
    succeed, `attempt` the attempt that failed last."""

    def __init__(self, task_id: str, message: str, retryable: bool, attempt: int):
        super().__init__(f"task {task_id} failed: {message}")
        self.task_id = task_id
        self.message = message
        self.retryable = retryable
        self.attempt = attempt


class TaskCancelled(TaskFailed):
    """The task was cancelled."""


class TaskExpired(TaskFailed):
    """The task was not started before its expiry time."""


def task_filter(
    task: str = "",
    states: Iterable[str] = (),
    since: Optional[float] = None,
    error: str = "",
    key: str = "",
    workflow: str = "",
    parent: str = "",
) -> tasks_pb2.TaskFilter:
    """A `taskwire.v1.TaskFilter` from keywords; a state that is none says which are."""
    if isinstance(states, str):
        states = [states]
    values = []
    for name in states:
        try:
            values.append(tasks_pb2.TaskState.Value(f"TASK_STATE_{name.upper()}"))
        except ValueError:
            raise ValueError(
                f"state {name!r} is none of queued, scheduled, running, retrying, waiting, succeeded, failed, cancelled, expired"
            ) from None
    out = tasks_pb2.TaskFilter(
        task=task, states=values, error_contains=error, idempotency_key=key, workflow_id=workflow, parent_id=parent
    )
    if since is not None:
        # The gateway counts it back from its own clock: the finish time for finished states,
        # else the submit time.
        if since < 0:
            raise ValueError(f"since must be 0 or more seconds; got {since}")
        out.within.FromTimedelta(datetime.timedelta(seconds=since))
    return out


def _call(fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except grpc.RpcError as err:  # the one place a gRPC error becomes ours
        raise Error.from_rpc(err) from None


def _seconds(value: float) -> duration_pb2.Duration:
    d = duration_pb2.Duration()
    d.FromNanoseconds(int(value * 1e9))
    return d


def outcome(info: tasks_pb2.TaskInfo, output: Optional[type] = None) -> Any:
    """The result of a finished task, decoded as `output` when given; raises when it did not
    succeed."""
    state = info.state
    if state == State.TASK_STATE_SUCCEEDED:
        if output is None:
            return info.result
        result = output()
        result.ParseFromString(info.result)
        return result
    error = info.error
    kind = {
        State.TASK_STATE_CANCELLED: TaskCancelled,
        State.TASK_STATE_EXPIRED: TaskExpired,
    }.get(state, TaskFailed)
    raise kind(info.task_id, error.message or tasks_pb2.TaskState.Name(state), error.retryable, info.attempt)


class _CallDetails(
    collections.namedtuple("_CallDetails", ("method", "timeout", "metadata", "credentials", "wait_for_ready", "compression")),
    grpc.ClientCallDetails,
):
    pass


class _Token(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """Adds `authorization: Bearer <token>` to every call."""

    def __init__(self, token: str):
        self._entry = ("authorization", f"Bearer {token}")

    def _with_token(self, details):
        metadata = list(details.metadata or []) + [self._entry]
        return _CallDetails(
            details.method, details.timeout, metadata, details.credentials,
            getattr(details, "wait_for_ready", None), getattr(details, "compression", None),
        )

    def intercept_unary_unary(self, continuation, details, request):
        return continuation(self._with_token(details), request)

    def intercept_unary_stream(self, continuation, details, request):
        return continuation(self._with_token(details), request)

    def intercept_stream_unary(self, continuation, details, requests):
        return continuation(self._with_token(details), requests)

    def intercept_stream_stream(self, continuation, details, requests):
        return continuation(self._with_token(details), requests)


def channel_credentials(
    root_certificates: Optional[bytes] = None,
    certificate_chain: Optional[bytes] = None,
    private_key: Optional[bytes] = None,
) -> Optional[grpc.ChannelCredentials]:
    """TLS credentials when a CA or a client certificate is given (PEM bytes), else None."""
    if (certificate_chain is None) != (private_key is None):
        raise ValueError("give certificate_chain and private_key together (the client certificate and its key)")
    if root_certificates is None and certificate_chain is None:
        return None
    return grpc.ssl_channel_credentials(root_certificates, private_key, certificate_chain)


class Client:
    """One channel to a gateway; cheap to share between threads.

    For a gateway with TLS give `root_certificates` (the CA, PEM bytes), and for mutual TLS
    `certificate_chain` and `private_key`; for one with tokens, `token`."""

    def __init__(
        self,
        target: str = "127.0.0.1:50051",
        channel: Optional[grpc.Channel] = None,
        *,
        root_certificates: Optional[bytes] = None,
        certificate_chain: Optional[bytes] = None,
        private_key: Optional[bytes] = None,
        token: Optional[str] = None,
    ):
        if channel is None:
            credentials = channel_credentials(root_certificates, certificate_chain, private_key)
            channel = grpc.secure_channel(target, credentials) if credentials else grpc.insecure_channel(target)
        if token:
            channel = grpc.intercept_channel(channel, _Token(token))
        self.channel = channel
        self.tasks = tasks_pb2_grpc.TasksStub(self.channel)
        self.admin = tasks_pb2_grpc.AdminStub(self.channel)
        self.workflows = workflows_pb2_grpc.WorkflowsStub(self.channel)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def submit(
        self, task: str, args: _message.Message, output: Optional[type] = None, descriptor_hash: str = "", **options
    ) -> "TaskHandle":
        """Stores `task` with `args` (its input message) and returns a handle; keyword options:
        idempotency_key, max_attempts, timeout, countdown, eta, priority, ttl, expires,
        result_ttl. With `descriptor_hash` (typed stubs send it), a gateway whose workers
        registered another schema of the task, not compatible with this one, refuses it
        (FAILED_PRECONDITION)."""
        request = tasks_pb2.SubmitRequest(
            task=task,
            args_proto=args.SerializeToString(),
            options=submit_options(**options),
            descriptor_hash=descriptor_hash,
        )
        response = _call(self.tasks.Submit, request)
        return TaskHandle(self, response.task_id, output)

    def submit_json(self, task: str, args_json: str, **options) -> str:
        """Stores `task` with arguments as proto3 JSON; returns the task id."""
        request = tasks_pb2.SubmitRequest(task=task, args_json=args_json, options=submit_options(**options))
        return _call(self.tasks.Submit, request).task_id

    def get(self, task_id: str) -> tasks_pb2.TaskInfo:
        return _call(self.tasks.Get, tasks_pb2.GetRequest(task_id=task_id))

    def wait(self, task_id: str, timeout: float = 30.0) -> tasks_pb2.TaskInfo:
        request = tasks_pb2.WaitRequest(task_id=task_id, timeout=_seconds(timeout))
        return _call(self.tasks.Wait, request, timeout=timeout + 5)

    def cancel(self, task_id: str) -> tasks_pb2.TaskInfo:
        return _call(self.tasks.Cancel, tasks_pb2.CancelRequest(task_id=task_id))

    def list_tasks(self, limit: Optional[int] = None, page_size: int = 0, **filter) -> Iterator[tasks_pb2.TaskInfo]:
        """The tasks the broker keeps that match, page after page (`Tasks.List`): those not
        finished first, then the finished ones in the order they finished. Filter keywords:
        task (a type, or a pattern with `*`), states (names: "failed", ...), since (seconds:
        finished within, for finished states only, else submitted within), error, key,
        workflow, parent."""
        request = tasks_pb2.ListTasksRequest(filter=task_filter(**filter), page_size=page_size)
        found = 0
        while True:
            page = _call(self.tasks.List, request)
            for info in page.tasks:
                if limit is not None and found >= limit:
                    return
                found += 1
                yield info
            if not page.next_page_token:
                return
            request.page_token = page.next_page_token

    def cancel_many(self, **filter) -> int:
        """Cancels every task that matches (the keywords of `list_tasks`) and has not
        finished; how many it cancelled. Safe to call again after a failure midway."""
        request = tasks_pb2.CancelManyRequest(filter=task_filter(**filter))
        return _call(self.tasks.CancelMany, request).cancelled

    def watch(self, task_id: str) -> Iterator[tasks_pb2.TaskInfo]:
        """The task's current state, then every change until its final state."""
        try:
            yield from self.tasks.Watch(tasks_pb2.WatchRequest(task_id=task_id))
        except grpc.RpcError as err:
            raise Error.from_rpc(err) from None


class TaskHandle:
    """A submitted task."""

    def __init__(self, client: Client, task_id: str, output: Optional[type] = None):
        self.client = client
        self.id = task_id
        self.output = output

    def __repr__(self) -> str:
        return f"<TaskHandle {self.id}>"

    def info(self) -> tasks_pb2.TaskInfo:
        return self.client.get(self.id)

    def state(self) -> str:
        """`queued`, `scheduled`, `running`, `retrying`, `waiting`, `succeeded`, `failed`, `cancelled` or
        `expired`."""
        return tasks_pb2.TaskState.Name(self.info().state).removeprefix("TASK_STATE_").lower()

    def get(self, timeout: float = 30.0) -> Any:
        """Waits for the result: the output message; raises TaskFailed (or TaskCancelled,
        TaskExpired) when the task did not succeed, TimeoutError when it is not done in time."""
        return outcome(self.client.wait(self.id, timeout), self.output)

    def cancel(self) -> None:
        self.client.cancel(self.id)

    def watch(self) -> Iterator[tasks_pb2.TaskInfo]:
        return self.client.watch(self.id)


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


@functools.lru_cache(maxsize=None)
def _descriptor_hash(method: _descriptor.MethodDescriptor) -> str:
    return schema.descriptor_hash(method.input_type, method.output_type)


class TaskMethod:
    """One task of a service: call it with its input message, or `.delay(*fields)` as in
    Celery."""

    def __init__(self, client: Client, method: _descriptor.MethodDescriptor, messages: Any):
        self.client = client
        self.name = f"{method.containing_service.full_name}/{method.name}"
        self.input = getattr(messages, method.input_type.name)
        self.output = getattr(messages, method.output_type.name)
        self.descriptor_hash = _descriptor_hash(method)

    def __call__(self, args: Optional[_message.Message] = None, **options) -> TaskHandle:
        args = args if args is not None else self.input()
        return self.client.submit(self.name, args, self.output, descriptor_hash=self.descriptor_hash, **options)

    def _args(self, fields: tuple, values: dict) -> _message.Message:
        names = [f.name for f in self.input.DESCRIPTOR.fields]
        if len(fields) > len(names):
            raise TypeError(f"{self.name} takes at most {len(names)} arguments ({', '.join(names)})")
        values = dict(values)
        for name, value in zip(names, fields):
            if name in values:
                raise TypeError(f"{self.name} got {name} twice")
            values[name] = value
        return self.input(**values)

    def delay(self, *fields: Any, **values: Any) -> TaskHandle:
        """Submits with the input message's fields given in order, or by name."""
        return self(self._args(fields, values))

    def s(self, *fields: Any, **values: Any) -> "Any":
        """A signature for a workflow (`taskwire.canvas`): the task with the fields given in
        order or by name; the rest of its input comes from the step before it. Task options
        (max_attempts, timeout, priority, ttl, ...) may be given by name too."""
        from taskwire.canvas import signature

        return signature(self, *fields, **values)

    def apply_async(self, args: tuple = (), kwargs: Optional[dict] = None, **options) -> TaskHandle:
        """Celery's apply_async: fields as args/kwargs, and submit options (countdown, eta,
        priority, idempotency_key, ...)."""
        return self(self._args(tuple(args), kwargs or {}), **options)


class TaskService:
    """The tasks of one service, as `TaskMethod`s named in snake case."""

    def __init__(self, client: Client, service: _descriptor.ServiceDescriptor, messages: Any):
        self._client = client
        self._methods = {_snake(m.name): m for m in service.methods}
        self._messages = messages
        self.name = service.full_name

    def __getattr__(self, name: str) -> TaskMethod:
        try:
            method = self._methods[name]
        except KeyError:
            raise AttributeError(f"{self.name} has no task {name!r}; it has {sorted(self._methods)}") from None
        return TaskMethod(self._client, method, self._messages)


def service(pb2_module: Any, name: str):
    """The stub class of service `name` in a generated `*_pb2` module: `Magic =
    service(magic_pb2, "Magic")`, then `Magic(client).add(...)`."""
    descriptor = pb2_module.DESCRIPTOR.services_by_name[name]

    def stub(client: Client) -> TaskService:
        return TaskService(client, descriptor, pb2_module)

    stub.__name__ = name
    stub.__doc__ = f"Tasks of {descriptor.full_name}."
    return stub
