from google.protobuf import descriptor_pb2 as _descriptor_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor
TASK_FIELD_NUMBER: _ClassVar[int]
task: _descriptor.FieldDescriptor

class TaskOptions(_message.Message):
    __slots__ = ("max_attempts", "timeout", "backoff_initial", "backoff_max", "concurrency", "idempotency_key_field", "result_ttl", "max_concurrency", "rate_limit", "scale_lag_threshold", "concurrency_key_field", "rate_limit_key_field")
    MAX_ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    BACKOFF_INITIAL_FIELD_NUMBER: _ClassVar[int]
    BACKOFF_MAX_FIELD_NUMBER: _ClassVar[int]
    CONCURRENCY_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_FIELD_NUMBER: _ClassVar[int]
    RESULT_TTL_FIELD_NUMBER: _ClassVar[int]
    MAX_CONCURRENCY_FIELD_NUMBER: _ClassVar[int]
    RATE_LIMIT_FIELD_NUMBER: _ClassVar[int]
    SCALE_LAG_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    CONCURRENCY_KEY_FIELD_FIELD_NUMBER: _ClassVar[int]
    RATE_LIMIT_KEY_FIELD_FIELD_NUMBER: _ClassVar[int]
    max_attempts: int
    timeout: str
    backoff_initial: str
    backoff_max: str
    concurrency: int
    idempotency_key_field: str
    result_ttl: str
    max_concurrency: int
    rate_limit: str
    scale_lag_threshold: int
    concurrency_key_field: str
    rate_limit_key_field: str
    def __init__(self, max_attempts: _Optional[int] = ..., timeout: _Optional[str] = ..., backoff_initial: _Optional[str] = ..., backoff_max: _Optional[str] = ..., concurrency: _Optional[int] = ..., idempotency_key_field: _Optional[str] = ..., result_ttl: _Optional[str] = ..., max_concurrency: _Optional[int] = ..., rate_limit: _Optional[str] = ..., scale_lag_threshold: _Optional[int] = ..., concurrency_key_field: _Optional[str] = ..., rate_limit_key_field: _Optional[str] = ...) -> None: ...
