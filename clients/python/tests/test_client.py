"""The Python client against a real gateway, nats-server and Rust worker."""

import asyncio
import datetime

import grpc
import pytest

import taskwire
import taskwire.aio
from examples.chaos.v1 import chaos_pb2
from examples.magic.v1 import magic_pb2, magic_pb2_grpc
from taskwire.v1 import tasks_pb2

Magic = taskwire.service(magic_pb2, "Magic")
Chaos = taskwire.service(chaos_pb2, "Chaos")


def test_typed_stub_gets_the_result(client):
    handle = Magic(client).add(magic_pb2.AddArgs(arg1=1, arg2=2, arg3=3))
    assert len(handle.id) == 32
    assert handle.get(timeout=5).sum == 6
    assert handle.state() == "succeeded"


def test_celery_shape(client):
    assert Magic(client).add.delay(1, 2, 3).get().sum == 6
    assert Magic(client).add.delay(1, arg3=5).get().sum == 6
    with pytest.raises(TypeError):
        Magic(client).add.delay(1, 2, 3, 4)


def test_options_as_keywords(client):
    later = Magic(client).add.apply_async((40, 2), countdown=1.5, priority="high")
    assert later.state() == "scheduled"
    assert later.get(timeout=10).sum == 42
    key = f"order-{datetime.datetime.now().timestamp()}"
    first = Magic(client).add(magic_pb2.AddArgs(arg1=7), idempotency_key=key)
    again = Magic(client).add(magic_pb2.AddArgs(arg1=7), idempotency_key=key)
    assert first.id == again.id
    with pytest.raises(ValueError, match="priority"):
        Magic(client).add(magic_pb2.AddArgs(), priority="urgent")


def test_a_failed_task_raises_with_its_error(client):
    handle = Chaos(client).flaky(chaos_pb2.FlakyArgs(permanent=True))
    with pytest.raises(taskwire.TaskFailed) as failed:
        handle.get(timeout=10)
    assert failed.value.message == "flaky: failed for good"
    assert failed.value.retryable is False
    assert handle.state() == "failed"


def test_bad_input_is_a_clear_error(client):
    with pytest.raises(taskwire.Error) as err:
        client.submit_json("examples.magic.v1.Magic/Add", '{"arg4": 1}')
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "arg4" in err.value.details
    with pytest.raises(taskwire.Error) as err:
        client.get("no-such-task")
    assert err.value.code == grpc.StatusCode.NOT_FOUND


def test_cancel_and_watch(client):
    slow = Chaos(client).sleep(chaos_pb2.SleepArgs(millis=60_000, label="py-cancel"))
    for info in slow.watch():
        if info.state == taskwire.client.State.TASK_STATE_RUNNING:
            slow.cancel()
        last = info
    assert last.state == taskwire.client.State.TASK_STATE_CANCELLED
    with pytest.raises(taskwire.TaskCancelled):
        slow.get(timeout=5)


def test_the_task_by_its_own_method_path(system):
    # A plain generated stub: the gateway runs the task and answers with its result.
    with grpc.insecure_channel(system) as channel:
        result, call = magic_pb2_grpc.MagicStub(channel).Add.with_call(magic_pb2.AddArgs(arg1=2, arg2=2), timeout=10)
        assert result.sum == 4
        assert dict(call.initial_metadata()).get("taskwire-task-id")


def _aio(system, test):
    async def run():
        async with taskwire.aio.Client(system) as client:
            await test(client)

    asyncio.run(run())


def test_asyncio_client(system):
    async def test(client):
        handle = await client.submit("examples.magic.v1.Magic/Add", magic_pb2.AddArgs(arg1=20, arg2=22), magic_pb2.AddResult)
        assert (await handle.get(timeout=10)).sum == 42
        assert await handle.state() == "succeeded"

    _aio(system, test)


def test_asyncio_typed_stub_and_celery_shape(system):
    async def test(client):
        handle = await Magic(client).add(magic_pb2.AddArgs(arg1=1, arg2=2, arg3=3))
        assert isinstance(handle, taskwire.aio.TaskHandle) and len(handle.id) == 32
        assert (await handle.get(timeout=5)).sum == 6
        assert (await (await Magic(client).add.delay(1, 2, 3)).get()).sum == 6
        assert (await (await Magic(client).add.delay(1, arg3=5)).get()).sum == 6
        with pytest.raises(TypeError):
            await Magic(client).add.delay(1, 2, 3, 4)
        listed = {
            t.name: t.descriptor_hash
            for t in (await client.admin.ListTaskTypes(tasks_pb2.ListTaskTypesRequest())).task_types
        }
        assert listed["examples.magic.v1.Magic/Add"] == Magic(client).add.descriptor_hash

    _aio(system, test)


def test_asyncio_options_as_keywords(system):
    async def test(client):
        later = await Magic(client).add.apply_async((40, 2), countdown=1.5, priority="high")
        assert await later.state() == "scheduled"
        assert (await later.get(timeout=10)).sum == 42
        key = f"aio-order-{datetime.datetime.now().timestamp()}"
        first = await Magic(client).add(magic_pb2.AddArgs(arg1=7), idempotency_key=key)
        again = await Magic(client).add(magic_pb2.AddArgs(arg1=7), idempotency_key=key)
        assert first.id == again.id
        with pytest.raises(ValueError, match="priority"):
            await Magic(client).add(magic_pb2.AddArgs(), priority="urgent")

    _aio(system, test)


def test_asyncio_failures_bad_input_cancel_and_watch(system):
    async def test(client):
        failing = await Chaos(client).flaky(chaos_pb2.FlakyArgs(permanent=True))
        with pytest.raises(taskwire.TaskFailed) as failed:
            await failing.get(timeout=10)
        assert failed.value.message == "flaky: failed for good"
        assert await failing.state() == "failed"
        with pytest.raises(taskwire.Error) as err:
            await client.submit_json("examples.magic.v1.Magic/Add", '{"arg4": 1}')
        assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT and "arg4" in err.value.details
        with pytest.raises(taskwire.Error) as err:
            await client.get("no-such-task")
        assert err.value.code == grpc.StatusCode.NOT_FOUND
        slow = await Chaos(client).sleep(chaos_pb2.SleepArgs(millis=60_000, label="py-aio-cancel"))
        async for info in slow.watch():
            if info.state == taskwire.client.State.TASK_STATE_RUNNING:
                await slow.cancel()
            last = info
        assert last.state == taskwire.client.State.TASK_STATE_CANCELLED
        with pytest.raises(taskwire.TaskCancelled):
            await slow.get(timeout=5)

    _aio(system, test)


def test_the_schema_fingerprint_matches_the_workers(client):
    # The Python stub computes the same fingerprint the Rust worker registered...
    listed = {t.name: t.descriptor_hash for t in client.admin.ListTaskTypes(tasks_pb2.ListTaskTypesRequest()).task_types}
    add = Magic(client).add
    assert len(add.descriptor_hash) == 64
    assert listed["examples.magic.v1.Magic/Add"] == add.descriptor_hash
    # ...and a producer built from another version of the proto is refused, naming both.
    with pytest.raises(taskwire.Error) as refused:
        client.submit("examples.magic.v1.Magic/Add", magic_pb2.AddArgs(), descriptor_hash="f" * 64)
    assert refused.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert "ffffffffffff" in refused.value.details and add.descriptor_hash[:12] in refused.value.details


def test_tasks_are_listed_by_filter_and_cancelled_in_bulk(client):
    failing = Chaos(client).flaky(chaos_pb2.FlakyArgs(permanent=True))
    with pytest.raises(taskwire.TaskFailed):
        failing.get(timeout=20)
    failed = [t.task_id for t in client.list_tasks(states=["failed"], since=600, task="examples.chaos.*")]
    assert failing.id in failed
    assert all(t.state == tasks_pb2.TASK_STATE_FAILED for t in client.list_tasks(states="failed", limit=5))
    held = [Magic(client).add.apply_async((n, 1), countdown=3600) for n in range(3)]
    scheduled = {t.task_id for t in client.list_tasks(states=["scheduled"], task="examples.magic.v1.Magic/Add")}
    assert {h.id for h in held} <= scheduled
    assert client.cancel_many(states=["scheduled"], task="examples.magic.v1.Magic/Add") >= 3
    assert all(h.state() == "cancelled" for h in held)
    assert client.cancel_many(states=["scheduled"], task="examples.magic.v1.Magic/Add") == 0
    with pytest.raises(ValueError, match="none of queued"):
        list(client.list_tasks(states=["done"]))
