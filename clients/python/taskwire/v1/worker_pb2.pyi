from taskwire.v1 import tasks_pb2 as _tasks_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class WaitForChildrenRequest(_message.Message):
    __slots__ = ("task_id", "attempt")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    attempt: int
    def __init__(self, task_id: _Optional[str] = ..., attempt: _Optional[int] = ...) -> None: ...

class WaitForChildrenResponse(_message.Message):
    __slots__ = ("ended", "children")
    ENDED_FIELD_NUMBER: _ClassVar[int]
    CHILDREN_FIELD_NUMBER: _ClassVar[int]
    ended: bool
    children: _containers.RepeatedCompositeFieldContainer[_tasks_pb2.TaskInfo]
    def __init__(self, ended: _Optional[bool] = ..., children: _Optional[_Iterable[_Union[_tasks_pb2.TaskInfo, _Mapping]]] = ...) -> None: ...

class ChildrenWait(_message.Message):
    __slots__ = ("parent_id",)
    PARENT_ID_FIELD_NUMBER: _ClassVar[int]
    parent_id: str
    def __init__(self, parent_id: _Optional[str] = ...) -> None: ...

class ChildrenWaited(_message.Message):
    __slots__ = ("code", "message", "ended", "children")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    ENDED_FIELD_NUMBER: _ClassVar[int]
    CHILDREN_FIELD_NUMBER: _ClassVar[int]
    code: int
    message: str
    ended: bool
    children: _containers.RepeatedCompositeFieldContainer[_tasks_pb2.TaskInfo]
    def __init__(self, code: _Optional[int] = ..., message: _Optional[str] = ..., ended: _Optional[bool] = ..., children: _Optional[_Iterable[_Union[_tasks_pb2.TaskInfo, _Mapping]]] = ...) -> None: ...

class ChildrenPark(_message.Message):
    __slots__ = ("parent_id", "parent_task", "attempt", "headers", "args")
    PARENT_ID_FIELD_NUMBER: _ClassVar[int]
    PARENT_TASK_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    HEADERS_FIELD_NUMBER: _ClassVar[int]
    ARGS_FIELD_NUMBER: _ClassVar[int]
    parent_id: str
    parent_task: str
    attempt: int
    headers: _containers.RepeatedCompositeFieldContainer[TaskHeader]
    args: bytes
    def __init__(self, parent_id: _Optional[str] = ..., parent_task: _Optional[str] = ..., attempt: _Optional[int] = ..., headers: _Optional[_Iterable[_Union[TaskHeader, _Mapping]]] = ..., args: _Optional[bytes] = ...) -> None: ...

class TaskHeader(_message.Message):
    __slots__ = ("name", "value")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    name: str
    value: str
    def __init__(self, name: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...

class ChildrenParked(_message.Message):
    __slots__ = ("code", "message", "resumed")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    RESUMED_FIELD_NUMBER: _ClassVar[int]
    code: int
    message: str
    resumed: bool
    def __init__(self, code: _Optional[int] = ..., message: _Optional[str] = ..., resumed: _Optional[bool] = ...) -> None: ...

class SubmitChildRequest(_message.Message):
    __slots__ = ("task_id", "attempt", "child")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    CHILD_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    attempt: int
    child: _tasks_pb2.SubmitRequest
    def __init__(self, task_id: _Optional[str] = ..., attempt: _Optional[int] = ..., child: _Optional[_Union[_tasks_pb2.SubmitRequest, _Mapping]] = ...) -> None: ...

class ChildSubmission(_message.Message):
    __slots__ = ("parent_id", "parent_task", "index", "child", "traceparent")
    PARENT_ID_FIELD_NUMBER: _ClassVar[int]
    PARENT_TASK_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    CHILD_FIELD_NUMBER: _ClassVar[int]
    TRACEPARENT_FIELD_NUMBER: _ClassVar[int]
    parent_id: str
    parent_task: str
    index: int
    child: _tasks_pb2.SubmitRequest
    traceparent: str
    def __init__(self, parent_id: _Optional[str] = ..., parent_task: _Optional[str] = ..., index: _Optional[int] = ..., child: _Optional[_Union[_tasks_pb2.SubmitRequest, _Mapping]] = ..., traceparent: _Optional[str] = ...) -> None: ...

class ChildSubmitted(_message.Message):
    __slots__ = ("code", "message", "response")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_FIELD_NUMBER: _ClassVar[int]
    code: int
    message: str
    response: _tasks_pb2.SubmitResponse
    def __init__(self, code: _Optional[int] = ..., message: _Optional[str] = ..., response: _Optional[_Union[_tasks_pb2.SubmitResponse, _Mapping]] = ...) -> None: ...

class ReportProgressRequest(_message.Message):
    __slots__ = ("task_id", "attempt", "progress")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    attempt: int
    progress: _tasks_pb2.TaskProgress
    def __init__(self, task_id: _Optional[str] = ..., attempt: _Optional[int] = ..., progress: _Optional[_Union[_tasks_pb2.TaskProgress, _Mapping]] = ...) -> None: ...

class ReportProgressResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class HandlerCalls(_message.Message):
    __slots__ = ("calls", "cancels")
    CALLS_FIELD_NUMBER: _ClassVar[int]
    CANCELS_FIELD_NUMBER: _ClassVar[int]
    calls: _containers.RepeatedCompositeFieldContainer[HandlerCall]
    cancels: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, calls: _Optional[_Iterable[_Union[HandlerCall, _Mapping]]] = ..., cancels: _Optional[_Iterable[int]] = ...) -> None: ...

class HandlerCall(_message.Message):
    __slots__ = ("id", "method", "argument", "task_id", "task", "attempt", "max_attempts", "context", "timeout_ms", "traceparent", "tracestate")
    ID_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    ARGUMENT_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    MAX_ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    TRACEPARENT_FIELD_NUMBER: _ClassVar[int]
    TRACESTATE_FIELD_NUMBER: _ClassVar[int]
    id: int
    method: str
    argument: bytes
    task_id: str
    task: str
    attempt: int
    max_attempts: int
    context: str
    timeout_ms: int
    traceparent: str
    tracestate: str
    def __init__(self, id: _Optional[int] = ..., method: _Optional[str] = ..., argument: _Optional[bytes] = ..., task_id: _Optional[str] = ..., task: _Optional[str] = ..., attempt: _Optional[int] = ..., max_attempts: _Optional[int] = ..., context: _Optional[str] = ..., timeout_ms: _Optional[int] = ..., traceparent: _Optional[str] = ..., tracestate: _Optional[str] = ...) -> None: ...

class HandlerOutcomes(_message.Message):
    __slots__ = ("outcomes",)
    OUTCOMES_FIELD_NUMBER: _ClassVar[int]
    outcomes: _containers.RepeatedCompositeFieldContainer[HandlerOutcome]
    def __init__(self, outcomes: _Optional[_Iterable[_Union[HandlerOutcome, _Mapping]]] = ...) -> None: ...

class HandlerOutcome(_message.Message):
    __slots__ = ("id", "code", "result", "message", "details")
    ID_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    DETAILS_FIELD_NUMBER: _ClassVar[int]
    id: int
    code: int
    result: bytes
    message: str
    details: bytes
    def __init__(self, id: _Optional[int] = ..., code: _Optional[int] = ..., result: _Optional[bytes] = ..., message: _Optional[str] = ..., details: _Optional[bytes] = ...) -> None: ...
