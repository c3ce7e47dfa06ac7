"""Workflows from Python, in Celery's shape, against a real gateway and Rust worker."""

import grpc
import pytest

import taskwire
from examples.flow.v1 import flow_pb2
from taskwire.canvas import chain, chord, group

Flow = taskwire.service(flow_pb2, "Flow")


def test_a_chain_passes_each_result_on(client):
    flow = Flow(client)
    done = chain(
        flow.sum.s(values=[1, 2, 3]),
        flow.double.s(),
        flow.scale.s(factor=10).fields(total="value"),
    ).apply_async()
    assert len(done.id) == 32
    assert done.get(timeout=30).total == 120
    assert done.state() == "succeeded"
    steps = done.info().steps
    assert [s.task for s in steps] == [
        "examples.flow.v1.Flow/Sum",
        "examples.flow.v1.Flow/Double",
        "examples.flow.v1.Flow/Scale",
    ]
    assert {s.info.trace_id for s in steps} == {done.info().trace_id}


def test_a_chord_takes_every_member(client):
    flow = Flow(client)
    total = chord([flow.scale.s(value=i, factor=2) for i in range(1, 4)])(flow.collect.s())
    result = total.apply_async().get(timeout=30)
    assert (result.total, result.count) == (12, 3)
    # A group then a chain: what comes after the group takes all of it.
    doubled = chain(group(flow.scale.s(value=1, factor=1), flow.scale.s(value=2, factor=1)), flow.collect.s(), flow.double.s())
    assert doubled.apply_async().get(timeout=30).total == 6


def test_steps_that_do_not_fit_are_refused(client):
    flow = Flow(client)
    with pytest.raises(taskwire.Error) as refused:
        chain(flow.sum.s(values=[1]), flow.scale.s(factor=2)).apply_async()
    assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "examples.flow.v1.ScaleArgs" in refused.value.details
    assert "fields" in refused.value.details


def test_a_failing_step_fails_the_workflow_and_names_it(client):
    flow = Flow(client)
    handle = chain(
        flow.sum.s(values=[100]),
        flow.double.s(limit=5).fields(total="total"),
        flow.double.s(),
    ).apply_async()
    with pytest.raises(taskwire.TaskFailed) as failed:
        handle.get(timeout=30)
    assert "double" in str(failed.value)
    assert "above the limit of 5" in str(failed.value)
    info = handle.info()
    assert info.failed_step.startswith("double")
    assert info.steps[2].state == taskwire.canvas.workflows_pb2.STEP_STATE_SKIPPED


def test_cancel_stops_a_workflow(client):
    flow = Flow(client)
    handle = chain(flow.slow.s(millis=60000, total=1), flow.double.s()).apply_async()
    cancelled = handle.cancel()
    assert cancelled.state == taskwire.canvas.workflows_pb2.WORKFLOW_STATE_CANCELLED
    with pytest.raises(taskwire.TaskFailed):
        handle.get(timeout=10)
    assert handle.state() == "cancelled"


def test_an_idempotency_key_submits_once(client):
    flow = Flow(client)
    key = f"py-{id(client)}"
    first = chain(flow.sum.s(values=[2, 3])).apply_async(idempotency_key=key)
    again = chain(flow.sum.s(values=[2, 3])).apply_async(idempotency_key=key)
    assert first.id == again.id and again.duplicate and not first.duplicate
    assert first.get(timeout=30).total == 5


def test_a_map_runs_a_task_per_element(client):
    flow = Flow(client)
    total = chain(flow.split.s(count=100), flow.double.s().map("parts"), flow.collect.s()).apply_async()
    result = total.get(timeout=60)
    assert (result.total, result.count) == (2 * sum(range(100)), 100)
    double = total.info().steps[1]
    assert (double.elements, double.elements_succeeded) == (100, 100)
