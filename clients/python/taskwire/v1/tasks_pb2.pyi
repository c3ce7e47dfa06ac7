import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from taskwire.v1 import options_pb2 as _options_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Priority(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PRIORITY_UNSPECIFIED: _ClassVar[Priority]
    PRIORITY_HIGH: _ClassVar[Priority]
    PRIORITY_NORMAL: _ClassVar[Priority]
    PRIORITY_LOW: _ClassVar[Priority]

class TaskState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TASK_STATE_UNSPECIFIED: _ClassVar[TaskState]
    TASK_STATE_QUEUED: _ClassVar[TaskState]
    TASK_STATE_RUNNING: _ClassVar[TaskState]
    TASK_STATE_RETRYING: _ClassVar[TaskState]
    TASK_STATE_SUCCEEDED: _ClassVar[TaskState]
    TASK_STATE_FAILED: _ClassVar[TaskState]
    TASK_STATE_CANCELLED: _ClassVar[TaskState]
    TASK_STATE_SCHEDULED: _ClassVar[TaskState]
    TASK_STATE_EXPIRED: _ClassVar[TaskState]
    TASK_STATE_WAITING: _ClassVar[TaskState]
PRIORITY_UNSPECIFIED: Priority
PRIORITY_HIGH: Priority
PRIORITY_NORMAL: Priority
PRIORITY_LOW: Priority
TASK_STATE_UNSPECIFIED: TaskState
TASK_STATE_QUEUED: TaskState
TASK_STATE_RUNNING: TaskState
TASK_STATE_RETRYING: TaskState
TASK_STATE_SUCCEEDED: TaskState
TASK_STATE_FAILED: TaskState
TASK_STATE_CANCELLED: TaskState
TASK_STATE_SCHEDULED: TaskState
TASK_STATE_EXPIRED: TaskState
TASK_STATE_WAITING: TaskState

class SubmitRequest(_message.Message):
    __slots__ = ("task", "args_proto", "args_json", "options", "descriptor_hash")
    TASK_FIELD_NUMBER: _ClassVar[int]
    ARGS_PROTO_FIELD_NUMBER: _ClassVar[int]
    ARGS_JSON_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTOR_HASH_FIELD_NUMBER: _ClassVar[int]
    task: str
    args_proto: bytes
    args_json: str
    options: SubmitOptions
    descriptor_hash: str
    def __init__(self, task: _Optional[str] = ..., args_proto: _Optional[bytes] = ..., args_json: _Optional[str] = ..., options: _Optional[_Union[SubmitOptions, _Mapping]] = ..., descriptor_hash: _Optional[str] = ...) -> None: ...

class SubmitOptions(_message.Message):
    __slots__ = ("idempotency_key", "max_attempts", "timeout", "backoff_initial", "backoff_max", "not_before", "countdown", "priority", "expires_at", "ttl", "result_ttl")
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    MAX_ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    BACKOFF_INITIAL_FIELD_NUMBER: _ClassVar[int]
    BACKOFF_MAX_FIELD_NUMBER: _ClassVar[int]
    NOT_BEFORE_FIELD_NUMBER: _ClassVar[int]
    COUNTDOWN_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    TTL_FIELD_NUMBER: _ClassVar[int]
    RESULT_TTL_FIELD_NUMBER: _ClassVar[int]
    idempotency_key: str
    max_attempts: int
    timeout: _duration_pb2.Duration
    backoff_initial: _duration_pb2.Duration
    backoff_max: _duration_pb2.Duration
    not_before: _timestamp_pb2.Timestamp
    countdown: _duration_pb2.Duration
    priority: Priority
    expires_at: _timestamp_pb2.Timestamp
    ttl: _duration_pb2.Duration
    result_ttl: _duration_pb2.Duration
    def __init__(self, idempotency_key: _Optional[str] = ..., max_attempts: _Optional[int] = ..., timeout: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., backoff_initial: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., backoff_max: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., not_before: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., countdown: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., priority: _Optional[_Union[Priority, str]] = ..., expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., ttl: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., result_ttl: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class SubmitAndWaitRequest(_message.Message):
    __slots__ = ("submit", "timeout", "include_json", "final_only")
    SUBMIT_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_JSON_FIELD_NUMBER: _ClassVar[int]
    FINAL_ONLY_FIELD_NUMBER: _ClassVar[int]
    submit: SubmitRequest
    timeout: _duration_pb2.Duration
    include_json: bool
    final_only: bool
    def __init__(self, submit: _Optional[_Union[SubmitRequest, _Mapping]] = ..., timeout: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., include_json: _Optional[bool] = ..., final_only: _Optional[bool] = ...) -> None: ...

class SubmitResponse(_message.Message):
    __slots__ = ("task_id", "duplicate")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    duplicate: bool
    def __init__(self, task_id: _Optional[str] = ..., duplicate: _Optional[bool] = ...) -> None: ...

class SubmitManyResponse(_message.Message):
    __slots__ = ("results", "submitted", "refused")
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    SUBMITTED_FIELD_NUMBER: _ClassVar[int]
    REFUSED_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[SubmitManyResult]
    submitted: int
    refused: int
    def __init__(self, results: _Optional[_Iterable[_Union[SubmitManyResult, _Mapping]]] = ..., submitted: _Optional[int] = ..., refused: _Optional[int] = ...) -> None: ...

class SubmitManyResult(_message.Message):
    __slots__ = ("task_id", "duplicate", "code", "error")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    duplicate: bool
    code: int
    error: str
    def __init__(self, task_id: _Optional[str] = ..., duplicate: _Optional[bool] = ..., code: _Optional[int] = ..., error: _Optional[str] = ...) -> None: ...

class WatchRequest(_message.Message):
    __slots__ = ("task_id", "include_json")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_JSON_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    include_json: bool
    def __init__(self, task_id: _Optional[str] = ..., include_json: _Optional[bool] = ...) -> None: ...

class GetRequest(_message.Message):
    __slots__ = ("task_id", "include_json")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_JSON_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    include_json: bool
    def __init__(self, task_id: _Optional[str] = ..., include_json: _Optional[bool] = ...) -> None: ...

class WaitRequest(_message.Message):
    __slots__ = ("task_id", "timeout", "include_json")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_JSON_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    timeout: _duration_pb2.Duration
    include_json: bool
    def __init__(self, task_id: _Optional[str] = ..., timeout: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., include_json: _Optional[bool] = ...) -> None: ...

class CancelRequest(_message.Message):
    __slots__ = ("task_id",)
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    def __init__(self, task_id: _Optional[str] = ...) -> None: ...

class TaskFilter(_message.Message):
    __slots__ = ("task", "states", "submitted_after", "submitted_before", "finished_after", "finished_before", "error_contains", "idempotency_key", "workflow_id", "parent_id", "within")
    TASK_FIELD_NUMBER: _ClassVar[int]
    STATES_FIELD_NUMBER: _ClassVar[int]
    SUBMITTED_AFTER_FIELD_NUMBER: _ClassVar[int]
    SUBMITTED_BEFORE_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AFTER_FIELD_NUMBER: _ClassVar[int]
    FINISHED_BEFORE_FIELD_NUMBER: _ClassVar[int]
    ERROR_CONTAINS_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    WORKFLOW_ID_FIELD_NUMBER: _ClassVar[int]
    PARENT_ID_FIELD_NUMBER: _ClassVar[int]
    WITHIN_FIELD_NUMBER: _ClassVar[int]
    task: str
    states: _containers.RepeatedScalarFieldContainer[TaskState]
    submitted_after: _timestamp_pb2.Timestamp
    submitted_before: _timestamp_pb2.Timestamp
    finished_after: _timestamp_pb2.Timestamp
    finished_before: _timestamp_pb2.Timestamp
    error_contains: str
    idempotency_key: str
    workflow_id: str
    parent_id: str
    within: _duration_pb2.Duration
    def __init__(self, task: _Optional[str] = ..., states: _Optional[_Iterable[_Union[TaskState, str]]] = ..., submitted_after: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., submitted_before: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., finished_after: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., finished_before: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., error_contains: _Optional[str] = ..., idempotency_key: _Optional[str] = ..., workflow_id: _Optional[str] = ..., parent_id: _Optional[str] = ..., within: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class ListTasksRequest(_message.Message):
    __slots__ = ("filter", "page_size", "page_token", "include_json")
    FILTER_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_JSON_FIELD_NUMBER: _ClassVar[int]
    filter: TaskFilter
    page_size: int
    page_token: str
    include_json: bool
    def __init__(self, filter: _Optional[_Union[TaskFilter, _Mapping]] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., include_json: _Optional[bool] = ...) -> None: ...

class ListTasksResponse(_message.Message):
    __slots__ = ("tasks", "next_page_token", "examined")
    TASKS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    EXAMINED_FIELD_NUMBER: _ClassVar[int]
    tasks: _containers.RepeatedCompositeFieldContainer[TaskInfo]
    next_page_token: str
    examined: int
    def __init__(self, tasks: _Optional[_Iterable[_Union[TaskInfo, _Mapping]]] = ..., next_page_token: _Optional[str] = ..., examined: _Optional[int] = ...) -> None: ...

class CancelManyRequest(_message.Message):
    __slots__ = ("filter",)
    FILTER_FIELD_NUMBER: _ClassVar[int]
    filter: TaskFilter
    def __init__(self, filter: _Optional[_Union[TaskFilter, _Mapping]] = ...) -> None: ...

class CancelManyResponse(_message.Message):
    __slots__ = ("cancelled", "finished_first")
    CANCELLED_FIELD_NUMBER: _ClassVar[int]
    FINISHED_FIRST_FIELD_NUMBER: _ClassVar[int]
    cancelled: int
    finished_first: int
    def __init__(self, cancelled: _Optional[int] = ..., finished_first: _Optional[int] = ...) -> None: ...

class TaskInfo(_message.Message):
    __slots__ = ("task_id", "task", "state", "attempt", "result", "result_json", "error", "updated_at", "progress", "not_before", "trace_id", "parent_id", "children", "submitted_at")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    RESULT_JSON_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    NOT_BEFORE_FIELD_NUMBER: _ClassVar[int]
    TRACE_ID_FIELD_NUMBER: _ClassVar[int]
    PARENT_ID_FIELD_NUMBER: _ClassVar[int]
    CHILDREN_FIELD_NUMBER: _ClassVar[int]
    SUBMITTED_AT_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    task: str
    state: TaskState
    attempt: int
    result: bytes
    result_json: str
    error: TaskFailure
    updated_at: _timestamp_pb2.Timestamp
    progress: TaskProgress
    not_before: _timestamp_pb2.Timestamp
    trace_id: str
    parent_id: str
    children: _containers.RepeatedCompositeFieldContainer[TaskChild]
    submitted_at: _timestamp_pb2.Timestamp
    def __init__(self, task_id: _Optional[str] = ..., task: _Optional[str] = ..., state: _Optional[_Union[TaskState, str]] = ..., attempt: _Optional[int] = ..., result: _Optional[bytes] = ..., result_json: _Optional[str] = ..., error: _Optional[_Union[TaskFailure, _Mapping]] = ..., updated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., progress: _Optional[_Union[TaskProgress, _Mapping]] = ..., not_before: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., trace_id: _Optional[str] = ..., parent_id: _Optional[str] = ..., children: _Optional[_Iterable[_Union[TaskChild, _Mapping]]] = ..., submitted_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class TaskChild(_message.Message):
    __slots__ = ("task_id", "task")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    task: str
    def __init__(self, task_id: _Optional[str] = ..., task: _Optional[str] = ...) -> None: ...

class TaskProgress(_message.Message):
    __slots__ = ("percent", "message", "details", "details_type")
    PERCENT_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    DETAILS_FIELD_NUMBER: _ClassVar[int]
    DETAILS_TYPE_FIELD_NUMBER: _ClassVar[int]
    percent: float
    message: str
    details: bytes
    details_type: str
    def __init__(self, percent: _Optional[float] = ..., message: _Optional[str] = ..., details: _Optional[bytes] = ..., details_type: _Optional[str] = ...) -> None: ...

class TaskFailure(_message.Message):
    __slots__ = ("message", "retryable")
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    RETRYABLE_FIELD_NUMBER: _ClassVar[int]
    message: str
    retryable: bool
    def __init__(self, message: _Optional[str] = ..., retryable: _Optional[bool] = ...) -> None: ...

class ListTaskTypesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListTaskTypesResponse(_message.Message):
    __slots__ = ("task_types",)
    TASK_TYPES_FIELD_NUMBER: _ClassVar[int]
    task_types: _containers.RepeatedCompositeFieldContainer[TaskType]
    def __init__(self, task_types: _Optional[_Iterable[_Union[TaskType, _Mapping]]] = ...) -> None: ...

class TaskType(_message.Message):
    __slots__ = ("name", "input_type", "output_type", "file_descriptor_set", "options", "descriptor_hash")
    NAME_FIELD_NUMBER: _ClassVar[int]
    INPUT_TYPE_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_TYPE_FIELD_NUMBER: _ClassVar[int]
    FILE_DESCRIPTOR_SET_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTOR_HASH_FIELD_NUMBER: _ClassVar[int]
    name: str
    input_type: str
    output_type: str
    file_descriptor_set: bytes
    options: _options_pb2.TaskOptions
    descriptor_hash: str
    def __init__(self, name: _Optional[str] = ..., input_type: _Optional[str] = ..., output_type: _Optional[str] = ..., file_descriptor_set: _Optional[bytes] = ..., options: _Optional[_Union[_options_pb2.TaskOptions, _Mapping]] = ..., descriptor_hash: _Optional[str] = ...) -> None: ...

class ListDeadLettersRequest(_message.Message):
    __slots__ = ("task", "limit")
    TASK_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    task: str
    limit: int
    def __init__(self, task: _Optional[str] = ..., limit: _Optional[int] = ...) -> None: ...

class DeadLetter(_message.Message):
    __slots__ = ("task_id", "task", "reason", "error", "attempt", "dead_at", "replays")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    DEAD_AT_FIELD_NUMBER: _ClassVar[int]
    REPLAYS_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    task: str
    reason: str
    error: str
    attempt: int
    dead_at: _timestamp_pb2.Timestamp
    replays: int
    def __init__(self, task_id: _Optional[str] = ..., task: _Optional[str] = ..., reason: _Optional[str] = ..., error: _Optional[str] = ..., attempt: _Optional[int] = ..., dead_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., replays: _Optional[int] = ...) -> None: ...

class ListDeadLettersResponse(_message.Message):
    __slots__ = ("dead_letters",)
    DEAD_LETTERS_FIELD_NUMBER: _ClassVar[int]
    dead_letters: _containers.RepeatedCompositeFieldContainer[DeadLetter]
    def __init__(self, dead_letters: _Optional[_Iterable[_Union[DeadLetter, _Mapping]]] = ...) -> None: ...

class ReplayDeadLettersRequest(_message.Message):
    __slots__ = ("task_ids", "task", "all", "reason", "error_contains", "dead_after", "dead_before")
    TASK_IDS_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    ALL_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    ERROR_CONTAINS_FIELD_NUMBER: _ClassVar[int]
    DEAD_AFTER_FIELD_NUMBER: _ClassVar[int]
    DEAD_BEFORE_FIELD_NUMBER: _ClassVar[int]
    task_ids: _containers.RepeatedScalarFieldContainer[str]
    task: str
    all: bool
    reason: str
    error_contains: str
    dead_after: _timestamp_pb2.Timestamp
    dead_before: _timestamp_pb2.Timestamp
    def __init__(self, task_ids: _Optional[_Iterable[str]] = ..., task: _Optional[str] = ..., all: _Optional[bool] = ..., reason: _Optional[str] = ..., error_contains: _Optional[str] = ..., dead_after: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., dead_before: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ReplayDeadLettersResponse(_message.Message):
    __slots__ = ("task_ids", "replayed")
    TASK_IDS_FIELD_NUMBER: _ClassVar[int]
    REPLAYED_FIELD_NUMBER: _ClassVar[int]
    task_ids: _containers.RepeatedScalarFieldContainer[str]
    replayed: int
    def __init__(self, task_ids: _Optional[_Iterable[str]] = ..., replayed: _Optional[int] = ...) -> None: ...

class PurgeDeadLettersRequest(_message.Message):
    __slots__ = ("task",)
    TASK_FIELD_NUMBER: _ClassVar[int]
    task: str
    def __init__(self, task: _Optional[str] = ...) -> None: ...

class PurgeDeadLettersResponse(_message.Message):
    __slots__ = ("purged",)
    PURGED_FIELD_NUMBER: _ClassVar[int]
    purged: int
    def __init__(self, purged: _Optional[int] = ...) -> None: ...

class TaskLimits(_message.Message):
    __slots__ = ("max_concurrency", "rate_limit", "concurrency_key_field", "rate_limit_key_field")
    MAX_CONCURRENCY_FIELD_NUMBER: _ClassVar[int]
    RATE_LIMIT_FIELD_NUMBER: _ClassVar[int]
    CONCURRENCY_KEY_FIELD_FIELD_NUMBER: _ClassVar[int]
    RATE_LIMIT_KEY_FIELD_FIELD_NUMBER: _ClassVar[int]
    max_concurrency: int
    rate_limit: str
    concurrency_key_field: str
    rate_limit_key_field: str
    def __init__(self, max_concurrency: _Optional[int] = ..., rate_limit: _Optional[str] = ..., concurrency_key_field: _Optional[str] = ..., rate_limit_key_field: _Optional[str] = ...) -> None: ...

class GetTaskLimitsRequest(_message.Message):
    __slots__ = ("task",)
    TASK_FIELD_NUMBER: _ClassVar[int]
    task: str
    def __init__(self, task: _Optional[str] = ...) -> None: ...

class SetTaskLimitsRequest(_message.Message):
    __slots__ = ("task", "limits", "clear")
    TASK_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    CLEAR_FIELD_NUMBER: _ClassVar[int]
    task: str
    limits: TaskLimits
    clear: bool
    def __init__(self, task: _Optional[str] = ..., limits: _Optional[_Union[TaskLimits, _Mapping]] = ..., clear: _Optional[bool] = ...) -> None: ...

class TaskLimitsResponse(_message.Message):
    __slots__ = ("task", "limits", "overridden")
    TASK_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    OVERRIDDEN_FIELD_NUMBER: _ClassVar[int]
    task: str
    limits: TaskLimits
    overridden: bool
    def __init__(self, task: _Optional[str] = ..., limits: _Optional[_Union[TaskLimits, _Mapping]] = ..., overridden: _Optional[bool] = ...) -> None: ...

class ListWorkersRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListWorkersResponse(_message.Message):
    __slots__ = ("workers",)
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    workers: _containers.RepeatedCompositeFieldContainer[WorkerInfo]
    def __init__(self, workers: _Optional[_Iterable[_Union[WorkerInfo, _Mapping]]] = ...) -> None: ...

class WorkerInfo(_message.Message):
    __slots__ = ("id", "host", "pid", "tasks", "running", "succeeded", "failed", "started_at", "heartbeat_at", "version", "unavailable", "paused")
    ID_FIELD_NUMBER: _ClassVar[int]
    HOST_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    TASKS_FIELD_NUMBER: _ClassVar[int]
    RUNNING_FIELD_NUMBER: _ClassVar[int]
    SUCCEEDED_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_AT_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    UNAVAILABLE_FIELD_NUMBER: _ClassVar[int]
    PAUSED_FIELD_NUMBER: _ClassVar[int]
    id: str
    host: str
    pid: int
    tasks: _containers.RepeatedScalarFieldContainer[str]
    running: int
    succeeded: int
    failed: int
    started_at: _timestamp_pb2.Timestamp
    heartbeat_at: _timestamp_pb2.Timestamp
    version: str
    unavailable: str
    paused: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, id: _Optional[str] = ..., host: _Optional[str] = ..., pid: _Optional[int] = ..., tasks: _Optional[_Iterable[str]] = ..., running: _Optional[int] = ..., succeeded: _Optional[int] = ..., failed: _Optional[int] = ..., started_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., heartbeat_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., version: _Optional[str] = ..., unavailable: _Optional[str] = ..., paused: _Optional[_Iterable[str]] = ...) -> None: ...

class ListQueuesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListQueuesResponse(_message.Message):
    __slots__ = ("queues",)
    QUEUES_FIELD_NUMBER: _ClassVar[int]
    queues: _containers.RepeatedCompositeFieldContainer[QueueInfo]
    def __init__(self, queues: _Optional[_Iterable[_Union[QueueInfo, _Mapping]]] = ...) -> None: ...

class QueueInfo(_message.Message):
    __slots__ = ("task", "priority", "queued", "in_flight", "redelivered", "waiting_pulls", "oldest_waiting", "dead_letters", "workers", "delivered_total", "paused", "paused_since", "paused_reason")
    TASK_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    QUEUED_FIELD_NUMBER: _ClassVar[int]
    IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    REDELIVERED_FIELD_NUMBER: _ClassVar[int]
    WAITING_PULLS_FIELD_NUMBER: _ClassVar[int]
    OLDEST_WAITING_FIELD_NUMBER: _ClassVar[int]
    DEAD_LETTERS_FIELD_NUMBER: _ClassVar[int]
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    DELIVERED_TOTAL_FIELD_NUMBER: _ClassVar[int]
    PAUSED_FIELD_NUMBER: _ClassVar[int]
    PAUSED_SINCE_FIELD_NUMBER: _ClassVar[int]
    PAUSED_REASON_FIELD_NUMBER: _ClassVar[int]
    task: str
    priority: str
    queued: int
    in_flight: int
    redelivered: int
    waiting_pulls: int
    oldest_waiting: _duration_pb2.Duration
    dead_letters: int
    workers: int
    delivered_total: int
    paused: bool
    paused_since: _timestamp_pb2.Timestamp
    paused_reason: str
    def __init__(self, task: _Optional[str] = ..., priority: _Optional[str] = ..., queued: _Optional[int] = ..., in_flight: _Optional[int] = ..., redelivered: _Optional[int] = ..., waiting_pulls: _Optional[int] = ..., oldest_waiting: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., dead_letters: _Optional[int] = ..., workers: _Optional[int] = ..., delivered_total: _Optional[int] = ..., paused: _Optional[bool] = ..., paused_since: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., paused_reason: _Optional[str] = ...) -> None: ...

class PauseQueueRequest(_message.Message):
    __slots__ = ("task", "priorities", "reason")
    TASK_FIELD_NUMBER: _ClassVar[int]
    PRIORITIES_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    task: str
    priorities: _containers.RepeatedScalarFieldContainer[Priority]
    reason: str
    def __init__(self, task: _Optional[str] = ..., priorities: _Optional[_Iterable[_Union[Priority, str]]] = ..., reason: _Optional[str] = ...) -> None: ...

class ResumeQueueRequest(_message.Message):
    __slots__ = ("task", "priorities")
    TASK_FIELD_NUMBER: _ClassVar[int]
    PRIORITIES_FIELD_NUMBER: _ClassVar[int]
    task: str
    priorities: _containers.RepeatedScalarFieldContainer[Priority]
    def __init__(self, task: _Optional[str] = ..., priorities: _Optional[_Iterable[_Union[Priority, str]]] = ...) -> None: ...

class PurgeQueueRequest(_message.Message):
    __slots__ = ("task", "priorities")
    TASK_FIELD_NUMBER: _ClassVar[int]
    PRIORITIES_FIELD_NUMBER: _ClassVar[int]
    task: str
    priorities: _containers.RepeatedScalarFieldContainer[Priority]
    def __init__(self, task: _Optional[str] = ..., priorities: _Optional[_Iterable[_Union[Priority, str]]] = ...) -> None: ...

class PurgeQueueResponse(_message.Message):
    __slots__ = ("purged",)
    PURGED_FIELD_NUMBER: _ClassVar[int]
    purged: int
    def __init__(self, purged: _Optional[int] = ...) -> None: ...

class QueuePause(_message.Message):
    __slots__ = ("priorities", "since", "reason")
    PRIORITIES_FIELD_NUMBER: _ClassVar[int]
    SINCE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    priorities: _containers.RepeatedScalarFieldContainer[Priority]
    since: _timestamp_pb2.Timestamp
    reason: str
    def __init__(self, priorities: _Optional[_Iterable[_Union[Priority, str]]] = ..., since: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., reason: _Optional[str] = ...) -> None: ...

class QueuePauseResponse(_message.Message):
    __slots__ = ("task", "pause")
    TASK_FIELD_NUMBER: _ClassVar[int]
    PAUSE_FIELD_NUMBER: _ClassVar[int]
    task: str
    pause: QueuePause
    def __init__(self, task: _Optional[str] = ..., pause: _Optional[_Union[QueuePause, _Mapping]] = ...) -> None: ...

class GetTaskHistoryRequest(_message.Message):
    __slots__ = ("task_id",)
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    def __init__(self, task_id: _Optional[str] = ...) -> None: ...

class GetTaskHistoryResponse(_message.Message):
    __slots__ = ("events", "result")
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[TaskInfo]
    result: TaskInfo
    def __init__(self, events: _Optional[_Iterable[_Union[TaskInfo, _Mapping]]] = ..., result: _Optional[_Union[TaskInfo, _Mapping]] = ...) -> None: ...
