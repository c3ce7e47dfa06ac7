from taskwire.v1 import options_pb2 as _options_pb2
from taskwire.v1 import workflows_pb2 as _workflows_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Numbers(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, values: _Optional[_Iterable[int]] = ...) -> None: ...

class ScaleArgs(_message.Message):
    __slots__ = ("value", "factor")
    VALUE_FIELD_NUMBER: _ClassVar[int]
    FACTOR_FIELD_NUMBER: _ClassVar[int]
    value: int
    factor: int
    def __init__(self, value: _Optional[int] = ..., factor: _Optional[int] = ...) -> None: ...

class Total(_message.Message):
    __slots__ = ("total", "count", "limit")
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    total: int
    count: int
    limit: int
    def __init__(self, total: _Optional[int] = ..., count: _Optional[int] = ..., limit: _Optional[int] = ...) -> None: ...

class Totals(_message.Message):
    __slots__ = ("totals",)
    TOTALS_FIELD_NUMBER: _ClassVar[int]
    totals: _containers.RepeatedCompositeFieldContainer[Total]
    def __init__(self, totals: _Optional[_Iterable[_Union[Total, _Mapping]]] = ...) -> None: ...

class SlowArgs(_message.Message):
    __slots__ = ("millis", "total")
    MILLIS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    millis: int
    total: int
    def __init__(self, millis: _Optional[int] = ..., total: _Optional[int] = ...) -> None: ...

class SplitArgs(_message.Message):
    __slots__ = ("count", "limit")
    COUNT_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    count: int
    limit: int
    def __init__(self, count: _Optional[int] = ..., limit: _Optional[int] = ...) -> None: ...

class Parts(_message.Message):
    __slots__ = ("parts",)
    PARTS_FIELD_NUMBER: _ClassVar[int]
    parts: _containers.RepeatedCompositeFieldContainer[Total]
    def __init__(self, parts: _Optional[_Iterable[_Union[Total, _Mapping]]] = ...) -> None: ...

class Reported(_message.Message):
    __slots__ = ("line",)
    LINE_FIELD_NUMBER: _ClassVar[int]
    line: str
    def __init__(self, line: _Optional[str] = ...) -> None: ...
