from taskwire.v1 import options_pb2 as _options_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class ChargeArgs(_message.Message):
    __slots__ = ("order_id", "cents")
    ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    CENTS_FIELD_NUMBER: _ClassVar[int]
    order_id: str
    cents: int
    def __init__(self, order_id: _Optional[str] = ..., cents: _Optional[int] = ...) -> None: ...

class ChargeResult(_message.Message):
    __slots__ = ("order_id",)
    ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    order_id: str
    def __init__(self, order_id: _Optional[str] = ...) -> None: ...

class SleepArgs(_message.Message):
    __slots__ = ("millis", "label")
    MILLIS_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    millis: int
    label: str
    def __init__(self, millis: _Optional[int] = ..., label: _Optional[str] = ...) -> None: ...

class SleepResult(_message.Message):
    __slots__ = ("label", "attempt")
    LABEL_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    label: str
    attempt: int
    def __init__(self, label: _Optional[str] = ..., attempt: _Optional[int] = ...) -> None: ...

class PanicArgs(_message.Message):
    __slots__ = ("message",)
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    message: str
    def __init__(self, message: _Optional[str] = ...) -> None: ...

class PanicResult(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class FlakyArgs(_message.Message):
    __slots__ = ("succeed_on_attempt", "permanent", "key", "retry_after_ms")
    SUCCEED_ON_ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    PERMANENT_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    RETRY_AFTER_MS_FIELD_NUMBER: _ClassVar[int]
    succeed_on_attempt: int
    permanent: bool
    key: str
    retry_after_ms: int
    def __init__(self, succeed_on_attempt: _Optional[int] = ..., permanent: _Optional[bool] = ..., key: _Optional[str] = ..., retry_after_ms: _Optional[int] = ...) -> None: ...

class FlakyResult(_message.Message):
    __slots__ = ("attempt",)
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    attempt: int
    def __init__(self, attempt: _Optional[int] = ...) -> None: ...

class StepsArgs(_message.Message):
    __slots__ = ("steps", "step_millis", "label")
    STEPS_FIELD_NUMBER: _ClassVar[int]
    STEP_MILLIS_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    steps: int
    step_millis: int
    label: str
    def __init__(self, steps: _Optional[int] = ..., step_millis: _Optional[int] = ..., label: _Optional[str] = ...) -> None: ...

class StepsResult(_message.Message):
    __slots__ = ("label", "steps")
    LABEL_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    label: str
    steps: int
    def __init__(self, label: _Optional[str] = ..., steps: _Optional[int] = ...) -> None: ...

class StepsDone(_message.Message):
    __slots__ = ("done", "left")
    DONE_FIELD_NUMBER: _ClassVar[int]
    LEFT_FIELD_NUMBER: _ClassVar[int]
    done: int
    left: int
    def __init__(self, done: _Optional[int] = ..., left: _Optional[int] = ...) -> None: ...

class SpawnArgs(_message.Message):
    __slots__ = ("count", "label", "child_millis", "fail_first", "gap_millis", "wait")
    COUNT_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    CHILD_MILLIS_FIELD_NUMBER: _ClassVar[int]
    FAIL_FIRST_FIELD_NUMBER: _ClassVar[int]
    GAP_MILLIS_FIELD_NUMBER: _ClassVar[int]
    WAIT_FIELD_NUMBER: _ClassVar[int]
    count: int
    label: str
    child_millis: int
    fail_first: bool
    gap_millis: int
    wait: bool
    def __init__(self, count: _Optional[int] = ..., label: _Optional[str] = ..., child_millis: _Optional[int] = ..., fail_first: _Optional[bool] = ..., gap_millis: _Optional[int] = ..., wait: _Optional[bool] = ...) -> None: ...

class SpawnResult(_message.Message):
    __slots__ = ("children", "attempt", "labels")
    CHILDREN_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    children: _containers.RepeatedScalarFieldContainer[str]
    attempt: int
    labels: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, children: _Optional[_Iterable[str]] = ..., attempt: _Optional[int] = ..., labels: _Optional[_Iterable[str]] = ...) -> None: ...
