import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from taskwire.v1 import tasks_pb2 as _tasks_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class WorkflowState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    WORKFLOW_STATE_UNSPECIFIED: _ClassVar[WorkflowState]
    WORKFLOW_STATE_RUNNING: _ClassVar[WorkflowState]
    WORKFLOW_STATE_SUCCEEDED: _ClassVar[WorkflowState]
    WORKFLOW_STATE_FAILED: _ClassVar[WorkflowState]
    WORKFLOW_STATE_CANCELLED: _ClassVar[WorkflowState]

class StepState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    STEP_STATE_UNSPECIFIED: _ClassVar[StepState]
    STEP_STATE_WAITING: _ClassVar[StepState]
    STEP_STATE_SUBMITTED: _ClassVar[StepState]
    STEP_STATE_SKIPPED: _ClassVar[StepState]
WORKFLOW_STATE_UNSPECIFIED: WorkflowState
WORKFLOW_STATE_RUNNING: WorkflowState
WORKFLOW_STATE_SUCCEEDED: WorkflowState
WORKFLOW_STATE_FAILED: WorkflowState
WORKFLOW_STATE_CANCELLED: WorkflowState
STEP_STATE_UNSPECIFIED: StepState
STEP_STATE_WAITING: StepState
STEP_STATE_SUBMITTED: StepState
STEP_STATE_SKIPPED: StepState

class Workflow(_message.Message):
    __slots__ = ("steps", "let_running_finish", "on_failure")
    STEPS_FIELD_NUMBER: _ClassVar[int]
    LET_RUNNING_FINISH_FIELD_NUMBER: _ClassVar[int]
    ON_FAILURE_FIELD_NUMBER: _ClassVar[int]
    steps: _containers.RepeatedCompositeFieldContainer[Step]
    let_running_finish: bool
    on_failure: Step
    def __init__(self, steps: _Optional[_Iterable[_Union[Step, _Mapping]]] = ..., let_running_finish: _Optional[bool] = ..., on_failure: _Optional[_Union[Step, _Mapping]] = ...) -> None: ...

class Step(_message.Message):
    __slots__ = ("name", "task", "after", "args_proto", "args_json", "fields", "collect", "options", "for_each")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    AFTER_FIELD_NUMBER: _ClassVar[int]
    ARGS_PROTO_FIELD_NUMBER: _ClassVar[int]
    ARGS_JSON_FIELD_NUMBER: _ClassVar[int]
    FIELDS_FIELD_NUMBER: _ClassVar[int]
    COLLECT_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    FOR_EACH_FIELD_NUMBER: _ClassVar[int]
    name: str
    task: str
    after: _containers.RepeatedScalarFieldContainer[str]
    args_proto: bytes
    args_json: str
    fields: _containers.RepeatedCompositeFieldContainer[FieldMapping]
    collect: str
    options: _tasks_pb2.SubmitOptions
    for_each: str
    def __init__(self, name: _Optional[str] = ..., task: _Optional[str] = ..., after: _Optional[_Iterable[str]] = ..., args_proto: _Optional[bytes] = ..., args_json: _Optional[str] = ..., fields: _Optional[_Iterable[_Union[FieldMapping, _Mapping]]] = ..., collect: _Optional[str] = ..., options: _Optional[_Union[_tasks_pb2.SubmitOptions, _Mapping]] = ..., for_each: _Optional[str] = ...) -> None: ...

class FieldMapping(_message.Message):
    __slots__ = ("to",)
    FROM_FIELD_NUMBER: _ClassVar[int]
    TO_FIELD_NUMBER: _ClassVar[int]
    to: str
    def __init__(self, to: _Optional[str] = ..., **kwargs) -> None: ...

class WorkflowFailure(_message.Message):
    __slots__ = ("workflow_id", "step", "task_id", "state", "error")
    WORKFLOW_ID_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    workflow_id: str
    step: str
    task_id: str
    state: _tasks_pb2.TaskState
    error: _tasks_pb2.TaskFailure
    def __init__(self, workflow_id: _Optional[str] = ..., step: _Optional[str] = ..., task_id: _Optional[str] = ..., state: _Optional[_Union[_tasks_pb2.TaskState, str]] = ..., error: _Optional[_Union[_tasks_pb2.TaskFailure, _Mapping]] = ...) -> None: ...

class SubmitWorkflowRequest(_message.Message):
    __slots__ = ("workflow", "idempotency_key")
    WORKFLOW_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    workflow: Workflow
    idempotency_key: str
    def __init__(self, workflow: _Optional[_Union[Workflow, _Mapping]] = ..., idempotency_key: _Optional[str] = ...) -> None: ...

class SubmitWorkflowResponse(_message.Message):
    __slots__ = ("workflow_id", "duplicate")
    WORKFLOW_ID_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    workflow_id: str
    duplicate: bool
    def __init__(self, workflow_id: _Optional[str] = ..., duplicate: _Optional[bool] = ...) -> None: ...

class GetWorkflowRequest(_message.Message):
    __slots__ = ("workflow_id", "include_json")
    WORKFLOW_ID_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_JSON_FIELD_NUMBER: _ClassVar[int]
    workflow_id: str
    include_json: bool
    def __init__(self, workflow_id: _Optional[str] = ..., include_json: _Optional[bool] = ...) -> None: ...

class WaitWorkflowRequest(_message.Message):
    __slots__ = ("workflow_id", "timeout", "include_json")
    WORKFLOW_ID_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_JSON_FIELD_NUMBER: _ClassVar[int]
    workflow_id: str
    timeout: _duration_pb2.Duration
    include_json: bool
    def __init__(self, workflow_id: _Optional[str] = ..., timeout: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., include_json: _Optional[bool] = ...) -> None: ...

class WatchWorkflowRequest(_message.Message):
    __slots__ = ("workflow_id", "include_json")
    WORKFLOW_ID_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_JSON_FIELD_NUMBER: _ClassVar[int]
    workflow_id: str
    include_json: bool
    def __init__(self, workflow_id: _Optional[str] = ..., include_json: _Optional[bool] = ...) -> None: ...

class CancelWorkflowRequest(_message.Message):
    __slots__ = ("workflow_id",)
    WORKFLOW_ID_FIELD_NUMBER: _ClassVar[int]
    workflow_id: str
    def __init__(self, workflow_id: _Optional[str] = ...) -> None: ...

class WorkflowInfo(_message.Message):
    __slots__ = ("workflow_id", "state", "steps", "failed_step", "error", "created_at", "ended_at", "trace_id")
    WORKFLOW_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    FAILED_STEP_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    ENDED_AT_FIELD_NUMBER: _ClassVar[int]
    TRACE_ID_FIELD_NUMBER: _ClassVar[int]
    workflow_id: str
    state: WorkflowState
    steps: _containers.RepeatedCompositeFieldContainer[StepInfo]
    failed_step: str
    error: _tasks_pb2.TaskFailure
    created_at: _timestamp_pb2.Timestamp
    ended_at: _timestamp_pb2.Timestamp
    trace_id: str
    def __init__(self, workflow_id: _Optional[str] = ..., state: _Optional[_Union[WorkflowState, str]] = ..., steps: _Optional[_Iterable[_Union[StepInfo, _Mapping]]] = ..., failed_step: _Optional[str] = ..., error: _Optional[_Union[_tasks_pb2.TaskFailure, _Mapping]] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., ended_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., trace_id: _Optional[str] = ...) -> None: ...

class StepInfo(_message.Message):
    __slots__ = ("name", "task", "task_id", "state", "info", "on_failure", "elements", "elements_succeeded")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    INFO_FIELD_NUMBER: _ClassVar[int]
    ON_FAILURE_FIELD_NUMBER: _ClassVar[int]
    ELEMENTS_FIELD_NUMBER: _ClassVar[int]
    ELEMENTS_SUCCEEDED_FIELD_NUMBER: _ClassVar[int]
    name: str
    task: str
    task_id: str
    state: StepState
    info: _tasks_pb2.TaskInfo
    on_failure: bool
    elements: int
    elements_succeeded: int
    def __init__(self, name: _Optional[str] = ..., task: _Optional[str] = ..., task_id: _Optional[str] = ..., state: _Optional[_Union[StepState, str]] = ..., info: _Optional[_Union[_tasks_pb2.TaskInfo, _Mapping]] = ..., on_failure: _Optional[bool] = ..., elements: _Optional[int] = ..., elements_succeeded: _Optional[int] = ...) -> None: ...

class StoredWorkflow(_message.Message):
    __slots__ = ("workflow", "created_at", "traceparent")
    WORKFLOW_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    TRACEPARENT_FIELD_NUMBER: _ClassVar[int]
    workflow: Workflow
    created_at: _timestamp_pb2.Timestamp
    traceparent: str
    def __init__(self, workflow: _Optional[_Union[Workflow, _Mapping]] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., traceparent: _Optional[str] = ...) -> None: ...

class WorkflowEnd(_message.Message):
    __slots__ = ("state", "failed_step", "task_id", "step_state", "error", "ended_at")
    STATE_FIELD_NUMBER: _ClassVar[int]
    FAILED_STEP_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    STEP_STATE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    ENDED_AT_FIELD_NUMBER: _ClassVar[int]
    state: WorkflowState
    failed_step: str
    task_id: str
    step_state: _tasks_pb2.TaskState
    error: _tasks_pb2.TaskFailure
    ended_at: _timestamp_pb2.Timestamp
    def __init__(self, state: _Optional[_Union[WorkflowState, str]] = ..., failed_step: _Optional[str] = ..., task_id: _Optional[str] = ..., step_state: _Optional[_Union[_tasks_pb2.TaskState, str]] = ..., error: _Optional[_Union[_tasks_pb2.TaskFailure, _Mapping]] = ..., ended_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...
