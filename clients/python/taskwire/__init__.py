"""taskwire for Python: submit tasks to a taskwire gateway and follow them.

    import taskwire
    from examples.magic.v1 import magic_pb2

    client = taskwire.Client("127.0.0.1:50051")
    Magic = taskwire.service(magic_pb2, "Magic")
    assert Magic(client).add(magic_pb2.AddArgs(arg1=1, arg2=2, arg3=3)).get(timeout=5).sum == 6
    assert Magic(client).add.delay(1, 2, 3).get().sum == 6          # the Celery shape

`taskwire.aio.Client` is the same for asyncio.
"""

from taskwire.client import (
    Client,
    Error,
    TaskCancelled,
    TaskExpired,
    TaskFailed,
    TaskHandle,
    TaskMethod,
    TaskService,
    TimeoutError,
    service,
)

__all__ = [
    "Client",
    "Error",
    "TaskCancelled",
    "TaskExpired",
    "TaskFailed",
    "TaskHandle",
    "TaskMethod",
    "TaskService",
    "TimeoutError",
    "service",
]
