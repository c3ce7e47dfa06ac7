from taskwire.v1 import tasks_pb2 as _tasks_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

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
