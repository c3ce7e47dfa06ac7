"""Workflows in Celery's shape: signatures, chains, groups and chords of typed tasks.

    from taskwire.canvas import chain, chord, group

    Flow = taskwire.service(flow_pb2, "Flow")
    flow = Flow(client)
    # sum(1, 2, 3), doubled, then scaled by 10: the doubled total becomes ScaleArgs.value.
    done = chain(flow.sum.s(values=[1, 2, 3]), flow.double.s(), flow.scale.s(factor=10).fields(total="value"))
    assert done.apply_async().get(timeout=30).total == 120
    # A chord: the members side by side, then one task that takes all their results.
    total = chord([flow.scale.s(value=i, factor=2) for i in range(3)])(flow.collect.s())
    assert total.apply_async().get().total == 6

The gateway checks that the steps fit together before anything is stored (a step's input is
the result it takes, or `fields` say which result field goes where, or the repeated field of
a chord's callback takes its members' results) and raises `taskwire.Error` (INVALID_ARGUMENT)
naming the step otherwise.
"""

from typing import Any, Iterable, List, Optional

from google.protobuf import message as _message

from taskwire.client import Client, Error, TaskFailed, _call, _seconds, outcome
from taskwire.options import submit_options
from taskwire.v1 import workflows_pb2


class Signature:
    """A task with (some of) its arguments, not submitted yet: `flow.scale.s(factor=10)`."""

    def __init__(self, method: Any, args: Optional[_message.Message], options: dict):
        self.method = method
        self.args = args
        self.options = options
        self.mapping: dict = {}
        self.collect_into = ""
        self.for_each = ""
        self.after_map = False
        self.name = ""

    def __repr__(self) -> str:
        return f"<Signature {self.method.name}>"

    def fields(self, **mapping: str) -> "Signature":
        """Copies fields of the result this step takes to its input: `fields(total="value")`
        sets `value` of its input from `total` of the result."""
        self.mapping.update(mapping)
        return self

    def collect(self, field: str) -> "Signature":
        """The repeated field of its input that takes the results of the steps before it."""
        self.collect_into = field
        return self

    def map(self, field: str) -> "Signature":
        """A map: this task once per element of the repeated field `field` of the result it
        takes, each with its element as input."""
        self.for_each = field
        return self

    def named(self, name: str) -> "Signature":
        self.name = name
        return self

    def apply_async(self, **options) -> "WorkflowHandle":
        return chain(self).apply_async(**options)

    def _step(self, name: str, after: List[str]) -> workflows_pb2.Step:
        step = workflows_pb2.Step(name=self.name or name, task=self.method.name, after=after)
        if self.args is not None:
            step.args_proto = self.args.SerializeToString()
        for source, target in self.mapping.items():
            step.fields.add(**{"from": source, "to": target})
        if self.for_each:
            step.for_each = self.for_each
        elif self.collect_into:
            step.collect = self.collect_into
        elif len(after) > 1 or self.after_map:
            step.collect = self._collect_field()
        if self.options:
            step.options.CopyFrom(submit_options(**self.options))
        return step

    def _collect_field(self) -> str:
        """The one repeated message field of the input: where a chord's results go."""
        repeated = [
            f.name
            for f in self.method.input.DESCRIPTOR.fields
            if f.message_type is not None and _is_repeated(f)
        ]
        if len(repeated) != 1:
            raise TypeError(
                f"{self.method.name} takes the results of several steps: name the repeated field of "
                f"{self.method.input.DESCRIPTOR.full_name} that takes them with .collect(...)"
            )
        return repeated[0]


def _is_repeated(field) -> bool:
    is_repeated = getattr(field, "is_repeated", None)
    if is_repeated is not None:
        return bool(is_repeated)
    return field.label == field.LABEL_REPEATED


class _Canvas:
    """Steps and what each comes after, built by chain, group and chord."""

    def __init__(self):
        self.steps: List[workflows_pb2.Step] = []
        self.last: List[str] = []
        self.client: Optional[Client] = None
        self.output: Optional[type] = None
        self.on_failure_step: Optional[workflows_pb2.Step] = None

    def _add(self, part: Any, after: List[str]) -> List[str]:
        """Adds a signature or a canvas after `after`; the names nothing comes after yet."""
        if isinstance(part, Signature):
            part.after_map = any(s.name in after and s.for_each for s in self.steps)
            step = part._step(f"{_short(part.method.name)}-{len(self.steps)}", after)
            self.steps.append(step)
            self.client = self.client or part.method.client
            self.output = part.method.output
            return [step.name]
        if isinstance(part, _Canvas):
            return part._into(self, after)
        raise TypeError(f"a workflow is made of signatures (task.s(...)), not {type(part).__name__}")

    def _into(self, other: "_Canvas", after: List[str]) -> List[str]:
        raise NotImplementedError

    def workflow(self) -> workflows_pb2.Workflow:
        workflow = workflows_pb2.Workflow()
        canvas = _Canvas()
        canvas.last = self._into(canvas, [])
        workflow.steps.extend(canvas.steps)
        if self.on_failure_step is not None:
            workflow.on_failure.CopyFrom(self.on_failure_step)
        self.client = self.client or canvas.client
        self.output = canvas.output
        return workflow

    def on_error(self, signature: Signature) -> "_Canvas":
        """The step submitted when the workflow fails; its task takes a
        taskwire.v1.WorkflowFailure."""
        self.on_failure_step = signature._step("on-failure", [])
        return self

    def apply_async(self, idempotency_key: str = "", client: Optional[Client] = None) -> "WorkflowHandle":
        workflow = self.workflow()
        client = client or self.client
        if client is None:
            raise TypeError("the workflow has no steps")
        request = workflows_pb2.SubmitWorkflowRequest(workflow=workflow, idempotency_key=idempotency_key)
        response = _call(client.workflows.Submit, request)
        return WorkflowHandle(client, response.workflow_id, self.output, response.duplicate)

    def delay(self) -> "WorkflowHandle":
        return self.apply_async()


def _short(task: str) -> str:
    return task.rsplit("/", 1)[-1].lower()


class chain(_Canvas):  # noqa: N801 - Celery's name
    """Each part after the one before it, taking its result(s)."""

    def __init__(self, *parts: Any):
        super().__init__()
        self.parts = list(parts)

    def _into(self, canvas: _Canvas, after: List[str]) -> List[str]:
        for part in self.parts:
            after = canvas._add(part, after)
        return after


class group(_Canvas):  # noqa: N801
    """Parts side by side; what comes after takes all their results, in order."""

    def __init__(self, *parts: Any):
        super().__init__()
        if len(parts) == 1 and not isinstance(parts[0], (Signature, _Canvas)):
            parts = tuple(parts[0])
        self.parts = list(parts)

    def _into(self, canvas: _Canvas, after: List[str]) -> List[str]:
        last: List[str] = []
        for part in self.parts:
            last.extend(canvas._add(part, after))
        return last


class chord(_Canvas):  # noqa: N801
    """`chord(header)(callback)`: the header's parts side by side, then the callback with all
    their results in its repeated field."""

    def __init__(self, header: Iterable[Any], body: Optional[Signature] = None):
        super().__init__()
        self.header = group(*header) if not isinstance(header, group) else header
        self.body = body

    def __call__(self, body: Signature) -> "chord":
        self.body = body
        return self

    def _into(self, canvas: _Canvas, after: List[str]) -> List[str]:
        if self.body is None:
            raise TypeError("a chord needs its callback: chord(header)(callback.s())")
        last = self.header._into(canvas, after)
        if not self.body.collect_into:
            self.body.collect(self.body._collect_field())
        return canvas._add(self.body, last)


class WorkflowHandle:
    """A submitted workflow."""

    def __init__(self, client: Client, workflow_id: str, output: Optional[type] = None, duplicate: bool = False):
        self.client = client
        self.id = workflow_id
        self.output = output
        self.duplicate = duplicate

    def __repr__(self) -> str:
        return f"<WorkflowHandle {self.id}>"

    def info(self) -> workflows_pb2.WorkflowInfo:
        return _call(self.client.workflows.Get, workflows_pb2.GetWorkflowRequest(workflow_id=self.id))

    def state(self) -> str:
        """`running`, `succeeded`, `failed` or `cancelled`."""
        return workflows_pb2.WorkflowState.Name(self.info().state).removeprefix("WORKFLOW_STATE_").lower()

    def wait(self, timeout: float = 30.0) -> workflows_pb2.WorkflowInfo:
        """Waits for the workflow to end; raises TimeoutError when it does not in time."""
        request = workflows_pb2.WaitWorkflowRequest(workflow_id=self.id, timeout=_seconds(timeout))
        return _call(self.client.workflows.Wait, request, timeout=timeout + 5)

    def get(self, timeout: float = 30.0) -> Any:
        """The result of the workflow's last step; raises TaskFailed when the workflow failed or
        was cancelled (naming the step), TimeoutError when it is not done in time."""
        info = self.wait(timeout)
        if info.state != workflows_pb2.WORKFLOW_STATE_SUCCEEDED:
            state = workflows_pb2.WorkflowState.Name(info.state).removeprefix("WORKFLOW_STATE_").lower()
            step = f" at step {info.failed_step}" if info.failed_step else ""
            raise TaskFailed(self.id, f"workflow {state}{step}: {info.error.message}", False, 0)
        last = [s for s in info.steps if not s.on_failure][-1]
        return outcome(last.info, self.output)

    def cancel(self) -> workflows_pb2.WorkflowInfo:
        return _call(self.client.workflows.Cancel, workflows_pb2.CancelWorkflowRequest(workflow_id=self.id))


def signature(method: Any, *fields: Any, **values: Any) -> Signature:
    """`method.s(...)`: the task with its input's fields given in order or by name (those not
    given come from the step before it, through `fields` or a chord)."""
    options = {k: values.pop(k) for k in list(values) if k in _OPTIONS}
    args = method._args(fields, values) if (fields or values) else None
    return Signature(method, args, options)


_OPTIONS = {"max_attempts", "timeout", "priority", "ttl", "result_ttl"}
__all__ = ["Error", "Signature", "WorkflowHandle", "chain", "chord", "group", "signature"]
