"""The asyncio client: the same calls as `taskwire.Client`, awaited."""

from typing import Any, AsyncIterator, Optional

import grpc
from google.protobuf import message as _message

from taskwire.client import Error, _seconds, channel_credentials, outcome
from taskwire.options import submit_options
from taskwire.v1 import tasks_pb2, tasks_pb2_grpc


async def _call(call):
    try:
        return await call
    except grpc.RpcError as err:
        raise Error.from_rpc(err) from None


class _Token(
    grpc.aio.UnaryUnaryClientInterceptor,
    grpc.aio.UnaryStreamClientInterceptor,
    grpc.aio.StreamUnaryClientInterceptor,
    grpc.aio.StreamStreamClientInterceptor,
):
    """Adds `authorization: Bearer <token>` to every call."""

    def __init__(self, token: str):
        self._entry = ("authorization", f"Bearer {token}")

    def _with_token(self, details):
        metadata = grpc.aio.Metadata(*(list(details.metadata or []) + [self._entry]))
        return grpc.aio.ClientCallDetails(
            details.method, details.timeout, metadata, details.credentials, details.wait_for_ready
        )

    async def intercept_unary_unary(self, continuation, details, request):
        return await continuation(self._with_token(details), request)

    async def intercept_unary_stream(self, continuation, details, request):
        return await continuation(self._with_token(details), request)

    async def intercept_stream_unary(self, continuation, details, requests):
        return await continuation(self._with_token(details), requests)

    async def intercept_stream_stream(self, continuation, details, requests):
        return await continuation(self._with_token(details), requests)


class Client:
    """One asyncio channel to a gateway; TLS and token settings as for `taskwire.Client`."""

    def __init__(
        self,
        target: str = "127.0.0.1:50051",
        *,
        root_certificates: Optional[bytes] = None,
        certificate_chain: Optional[bytes] = None,
        private_key: Optional[bytes] = None,
        token: Optional[str] = None,
    ):
        credentials = channel_credentials(root_certificates, certificate_chain, private_key)
        interceptors = [_Token(token)] if token else None
        if credentials:
            self.channel = grpc.aio.secure_channel(target, credentials, interceptors=interceptors)
        else:
            self.channel = grpc.aio.insecure_channel(target, interceptors=interceptors)
        self.tasks = tasks_pb2_grpc.TasksStub(self.channel)
        self.admin = tasks_pb2_grpc.AdminStub(self.channel)

    async def close(self) -> None:
        await self.channel.close()

    async def __aenter__(self) -> "Client":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def submit(
        self, task: str, args: _message.Message, output: Optional[type] = None, descriptor_hash: str = "", **options
    ) -> "TaskHandle":
        """Stores `task` with `args` (its input message) and returns a handle; the keyword
        options and `descriptor_hash` are those of `taskwire.Client.submit`."""
        request = tasks_pb2.SubmitRequest(
            task=task,
            args_proto=args.SerializeToString(),
            options=submit_options(**options),
            descriptor_hash=descriptor_hash,
        )
        response = await _call(self.tasks.Submit(request))
        return TaskHandle(self, response.task_id, output)

    async def submit_json(self, task: str, args_json: str, **options) -> str:
        """Stores `task` with arguments as proto3 JSON; returns the task id."""
        request = tasks_pb2.SubmitRequest(task=task, args_json=args_json, options=submit_options(**options))
        return (await _call(self.tasks.Submit(request))).task_id

    async def get(self, task_id: str) -> tasks_pb2.TaskInfo:
        return await _call(self.tasks.Get(tasks_pb2.GetRequest(task_id=task_id)))

    async def wait(self, task_id: str, timeout: float = 30.0) -> tasks_pb2.TaskInfo:
        request = tasks_pb2.WaitRequest(task_id=task_id, timeout=_seconds(timeout))
        return await _call(self.tasks.Wait(request, timeout=timeout + 5))

    async def cancel(self, task_id: str) -> tasks_pb2.TaskInfo:
        return await _call(self.tasks.Cancel(tasks_pb2.CancelRequest(task_id=task_id)))

    async def watch(self, task_id: str) -> AsyncIterator[tasks_pb2.TaskInfo]:
        """The task's current state, then every change until its final state."""
        try:
            async for info in self.tasks.Watch(tasks_pb2.WatchRequest(task_id=task_id)):
                yield info
        except grpc.RpcError as err:
            raise Error.from_rpc(err) from None


class TaskHandle:
    """A submitted task, followed with asyncio."""

    def __init__(self, client: Client, task_id: str, output: Optional[type] = None):
        self.client = client
        self.id = task_id
        self.output = output

    def __repr__(self) -> str:
        return f"<TaskHandle {self.id}>"

    async def info(self) -> tasks_pb2.TaskInfo:
        return await self.client.get(self.id)

    async def state(self) -> str:
        """`queued`, `scheduled`, `running`, `retrying`, `waiting`, `succeeded`, `failed`, `cancelled` or
        `expired`."""
        info = await self.info()
        return tasks_pb2.TaskState.Name(info.state).removeprefix("TASK_STATE_").lower()

    async def get(self, timeout: float = 30.0) -> Any:
        """Waits for the result, as `taskwire.TaskHandle.get` does."""
        return outcome(await self.client.wait(self.id, timeout), self.output)

    async def cancel(self) -> None:
        await self.client.cancel(self.id)

    def watch(self) -> AsyncIterator[tasks_pb2.TaskInfo]:
        return self.client.watch(self.id)
