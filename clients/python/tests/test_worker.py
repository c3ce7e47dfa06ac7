"""The Python worker: handlers served through the one worker runtime, so Rust clients reach it
and Python and Rust workers share one queue."""

import json
import os
import sys
import signal
import subprocess
import time
import urllib.error
import urllib.request

import pytest

import taskwire
from conftest import binary, wait_for_file
from examples.chaos.v1 import chaos_pb2
from examples.magic.v1 import magic_pb2
from taskwire.v1 import tasks_pb2

Magic = taskwire.service(magic_pb2, "Magic")
Chaos = taskwire.service(chaos_pb2, "Chaos")
PYTHON_TASKS = {
    "examples.magic.v1.Magic/Add",
    "examples.chaos.v1.Chaos/Sleep",
    "examples.chaos.v1.Chaos/Flaky",
    "examples.chaos.v1.Chaos/Steps",
    "examples.chaos.v1.Chaos/Limited",
}


def cli(system, *args) -> str:
    """The Rust CLI, a Rust client of the gateway."""
    done = subprocess.run(
        [binary("taskwire"), "--gateway", f"http://{system.target}", *args],
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.fixture(scope="module")
def python_only(tmp_path_factory):
    """A gateway whose only worker is the Python one."""
    from conftest import System

    running = System()
    running.execution_log = str(tmp_path_factory.mktemp("limits") / "limited.log")
    ports = str(tmp_path_factory.mktemp("ports") / "worker.json")
    try:
        worker = running.python_worker(
            TASKWIRE_PY_EXECUTION_LOG=running.execution_log,
            TASKWIRE_METRICS_ADDR="127.0.0.1:0",
            TASKWIRE_PORTS_FILE=ports,
        )
        # The worker writes the address of /metrics once it is ready.
        running.metrics = "http://" + wait_for_file(ports, "the Python worker", worker, lambda p: p["http"])
        running.wait_for_tasks(PYTHON_TASKS)
        yield running
    finally:
        running.close()


def test_a_rust_client_gets_the_result_of_a_python_worker(python_only):
    out = cli(python_only, "submit", "examples.magic.v1.Magic/Add", '{"arg1":1,"arg2":2,"arg3":3}', "--wait")
    assert json.loads(out)["sum"] in (6, "6")
    # The registry entry the Python worker wrote is one the Rust tools read.
    listed = cli(python_only, "tasks")
    assert "examples.magic.v1.Magic/Add" in listed and "examples.magic.v1.AddArgs" in listed


def test_retries_failures_and_dead_letters(python_only):
    with taskwire.Client(python_only.target) as client:
        flaky = Chaos(client).flaky(chaos_pb2.FlakyArgs(succeed_on_attempt=2))
        assert flaky.get(timeout=20).attempt == 2
        permanent = Chaos(client).flaky(chaos_pb2.FlakyArgs(permanent=True))
        with pytest.raises(taskwire.TaskFailed) as failed:
            permanent.get(timeout=20)
        assert failed.value.message == "failing on purpose on attempt 1"
        assert failed.value.retryable is False
        exhausted = Chaos(client).flaky(chaos_pb2.FlakyArgs(succeed_on_attempt=0))
        with pytest.raises(taskwire.TaskFailed) as failed:
            exhausted.get(timeout=30)
        assert failed.value.message == "failing on purpose on attempt 3"
        dead = client.admin.ListDeadLetters(tasks_pb2.ListDeadLettersRequest(task="examples.chaos.v1.Chaos/Flaky"))
        reasons = {d.task_id: d.reason for d in dead.dead_letters}
        assert reasons[permanent.id] == "permanent"
        assert reasons[exhausted.id] == "exhausted"


def test_delayed_tasks_that_fail_and_results_too_large_end_failed_with_one_dead_letter(python_only):
    with taskwire.Client(python_only.target) as client:
        # Fired by a message schedule: its headers carry the scheduler's, which a dead letter
        # must not.
        delayed = Chaos(client).flaky(chaos_pb2.FlakyArgs(permanent=True), countdown=1)
        with pytest.raises(taskwire.TaskFailed):
            delayed.get(timeout=20)
        oversized = Chaos(client).sleep(chaos_pb2.SleepArgs(millis=1, label="oversized-result-py"))
        with pytest.raises(taskwire.TaskFailed) as failed:
            oversized.get(timeout=20)
        assert "result could not be stored" in failed.value.message
        assert failed.value.retryable is False
        for task, handle in (("examples.chaos.v1.Chaos/Flaky", delayed), ("examples.chaos.v1.Chaos/Sleep", oversized)):
            dead = client.admin.ListDeadLetters(tasks_pb2.ListDeadLettersRequest(task=task)).dead_letters
            assert [d.reason for d in dead if d.task_id == handle.id] == ["permanent"]
        assert delayed.state() == "failed" and oversized.state() == "failed"


def test_progress_and_cancel(python_only):
    with taskwire.Client(python_only.target) as client:
        steps = Chaos(client).steps(chaos_pb2.StepsArgs(steps=4, step_millis=50, label="py-steps"))
        seen = [info.progress.percent for info in steps.watch() if info.HasField("progress")]
        assert seen == sorted(seen) and seen[-1] == 100
        assert steps.get(timeout=10).steps == 4
        slow = Chaos(client).sleep(chaos_pb2.SleepArgs(millis=60_000, label="py-worker-cancel"))
        for info in slow.watch():
            if info.state == taskwire.client.State.TASK_STATE_RUNNING:
                slow.cancel()
            last = info
        assert last.state == taskwire.client.State.TASK_STATE_CANCELLED


def test_python_and_rust_workers_share_one_queue(fresh_system):
    fresh_system.rust_worker(TASKWIRE_CONCURRENCY="2")
    fresh_system.python_worker(TASKWIRE_CONCURRENCY="2")
    fresh_system.wait_for_tasks(PYTHON_TASKS)
    with taskwire.Client(fresh_system.target) as client:
        handles = [Chaos(client).sleep(chaos_pb2.SleepArgs(millis=150, label=f"shared-{n}")) for n in range(24)]
        assert sorted(h.get(timeout=60).label for h in handles) == sorted(f"shared-{n}" for n in range(24))
        # Heartbeats come every 5 s: wait for both to count their share.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            workers = client.admin.ListWorkers(tasks_pb2.ListWorkersRequest()).workers
            if len(workers) == 2 and sum(w.succeeded for w in workers) == 24:
                break
            time.sleep(0.5)
        by_runtime = {("python" if "python" in w.version else "rust"): w.succeeded for w in workers}
        assert set(by_runtime) == {"python", "rust"}, workers
        assert by_runtime["python"] > 0 and by_runtime["rust"] > 0, by_runtime
        assert sum(by_runtime.values()) == 24


def test_sigterm_lets_the_running_task_finish(fresh_system):
    worker = fresh_system.python_worker()
    fresh_system.wait_for_tasks(PYTHON_TASKS)
    with taskwire.Client(fresh_system.target) as client:
        task = Chaos(client).sleep(chaos_pb2.SleepArgs(millis=1500, label="drained"))
        for info in task.watch():
            if info.state == taskwire.client.State.TASK_STATE_RUNNING:
                break
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=30) == 0
        assert task.get(timeout=5).label == "drained"


def test_the_cluster_wide_concurrency_limit_holds(python_only):
    # Chaos/Limited declares max_concurrency 5; the worker alone could run 100 at once.
    with taskwire.Client(python_only.target) as client:
        handles = [Chaos(client).limited(chaos_pb2.SleepArgs(millis=300, label=f"l{n}")) for n in range(15)]
        for handle in handles:
            handle.get(timeout=60)
    spans = [tuple(map(float, line.split())) for line in open(python_only.execution_log)]
    assert len(spans) == 15
    most = max(sum(1 for s, e in spans if s <= t < e) for t, _ in spans)
    assert 2 <= most <= 5, spans


def test_the_worker_reads_the_nats_credentials_of_the_environment(tmp_path):
    from conftest import System

    # A user whose replies may only come under its own inbox prefix: the gateway and the Python
    # worker work only if both take the prefix from TASKWIRE_NATS_INBOX_PREFIX.
    config = tmp_path / "nats.conf"
    config.write_text(
        """authorization { users: [ { user: taskwire, password: "s3cret-nats-password", permissions: {
          publish: ">", subscribe: { allow: ["_INBOX.taskwire.>", "taskwire.stored.results.>"] } } } ] }\n"""
    )
    login = {
        "TASKWIRE_NATS_USER": "taskwire",
        "TASKWIRE_NATS_PASSWORD": "s3cret-nats-password",
        "TASKWIRE_NATS_INBOX_PREFIX": "_INBOX.taskwire",
    }
    running = System(nats_args=("-c", str(config)), nats_env=login)
    try:
        running.python_worker()
        running.wait_for_tasks({"examples.magic.v1.Magic/Add"})
        with taskwire.Client(running.target) as client:
            assert Magic(client).add.delay(2, 2, 2).get(timeout=20).sum == 6
        # A wrong password stops the worker at once, saying so.
        wrong = running.start(
            [sys.executable, os.path.join(os.path.dirname(__file__), "..", "examples", "worker.py")],
            TASKWIRE_NATS_PASSWORD="wrong",
        )
        assert wrong.wait(timeout=30) != 0
    finally:
        running.close()


def test_without_nats_the_worker_stops_with_a_clear_error(tmp_path):
    done = subprocess.run(
        [sys.executable, os.path.join(os.path.dirname(__file__), "..", "examples", "worker.py")],
        # Port 0 takes no connections.
        env=dict(os.environ, TASKWIRE_NATS_URL="nats://127.0.0.1:0"),
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode != 0
    assert "cannot connect to NATS" in done.stderr


def scrape(system) -> dict:
    """The Python worker's metrics: {"name{labels}": value}."""
    with urllib.request.urlopen(f"{system.metrics}/metrics", timeout=5) as answer:
        assert answer.headers["content-type"].startswith("application/openmetrics-text")
        text = answer.read().decode()
    assert text.endswith("# EOF\n")
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    return samples


def test_metrics_count_what_the_worker_did(python_only):
    add = 'task="examples.magic.v1.Magic/Add"'
    flaky = 'task="examples.chaos.v1.Chaos/Flaky"'
    keys = {
        "started": f"taskwire_tasks_started_total{{{add}}}",
        "succeeded": f'taskwire_tasks_completed_total{{{add},state="succeeded"}}',
        "runs": f"taskwire_task_run_seconds_count{{{add}}}",
        "retried": f"taskwire_tasks_retried_total{{{flaky}}}",
        "flaky_succeeded": f'taskwire_tasks_completed_total{{{flaky},state="succeeded"}}',
        "flaky_failed": f'taskwire_tasks_completed_total{{{flaky},state="failed"}}',
        "dead": f'taskwire_tasks_dead_lettered_total{{{flaky},reason="permanent"}}',
    }
    before = scrape(python_only)
    with taskwire.Client(python_only.target) as client:
        for n in range(3):
            assert Magic(client).add(magic_pb2.AddArgs(arg1=n, arg2=1, arg3=1)).get(timeout=20).sum == n + 2
        assert Chaos(client).flaky(chaos_pb2.FlakyArgs(succeed_on_attempt=2)).get(timeout=20).attempt == 2
        with pytest.raises(taskwire.TaskFailed):
            Chaos(client).flaky(chaos_pb2.FlakyArgs(permanent=True)).get(timeout=20)
    expected = {
        "started": 3, "succeeded": 3, "runs": 3,
        "retried": 1, "flaky_succeeded": 1, "flaky_failed": 1, "dead": 1,
    }
    # A result can reach the caller before the worker has the broker's ack of it and counts it.
    deadline = time.monotonic() + 10
    while True:
        after = scrape(python_only)
        grew = {what: after.get(key, 0) - before.get(key, 0) for what, key in keys.items()}
        if grew == expected or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert grew == expected, grew
    assert after[f"taskwire_tasks_running{{{add}}}"] == 0
    # (the labels in either order)
    inf = [v for k, v in after.items() if k.startswith("taskwire_task_run_seconds_bucket{") and add in k and 'le="+Inf"' in k]
    assert inf == [after[keys["runs"]]], inf
    with urllib.request.urlopen(f"{python_only.metrics}/healthz", timeout=5) as answer:
        assert answer.read() == b"ok"
    with pytest.raises(urllib.error.HTTPError) as missing:
        urllib.request.urlopen(f"{python_only.metrics}/nothing", timeout=5)
    assert missing.value.code == 404


def test_a_bad_metrics_address_is_a_clear_error():
    from taskwire.worker import Worker

    with pytest.raises(ValueError, match="not host:port"):
        Worker(metrics_addr="9464")


def test_a_bad_inbox_prefix_is_a_clear_error():
    done = subprocess.run(
        [sys.executable, os.path.join(os.path.dirname(__file__), "..", "examples", "worker.py")],
        env=dict(os.environ, TASKWIRE_NATS_INBOX_PREFIX="_INBOX.*"),
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode != 0
    assert "TASKWIRE_NATS_INBOX_PREFIX" in done.stderr and "literal subject" in done.stderr, done.stderr


def test_a_python_worker_runs_as_its_own_user_of_the_account_config(tmp_path):
    """deploy/nats/accounts.conf as it is, with passwords in place of the placeholder nkeys: the
    gateway and a Python worker of Magic each as its own NATS user, replies under its own
    inbox prefix."""
    from conftest import System

    root = os.path.join(os.path.dirname(__file__), "..", "..", "..")
    accounts = open(os.path.join(root, "deploy", "nats", "accounts.conf")).read()
    for user in ("gateway", "magic-worker"):
        variable = user.upper().replace("-", "_") + "_NKEY"
        nkey_entry = "{ nkey: $" + variable + ","
        assert nkey_entry in accounts, nkey_entry
        accounts = accounts.replace(nkey_entry, f'{{ user: {user}, password: "{user}-secret",')
        # The key's definition goes too: nats-server refuses unused variables.
        accounts = "\n".join(line for line in accounts.splitlines() if not line.startswith(variable + ":"))
    config = tmp_path / "nats.conf"
    config.write_text(accounts)

    def login(user):
        return {
            "TASKWIRE_NATS_USER": user,
            "TASKWIRE_NATS_PASSWORD": f"{user}-secret",
            "TASKWIRE_NATS_INBOX_PREFIX": f"_INBOX.{user}",
        }

    running = System(nats_args=("-c", str(config)), **login("gateway"))
    try:
        worker = running.start([sys.executable, os.path.join(os.path.dirname(__file__), "magic_worker.py")], **login("magic-worker"))
        running.wait_for_tasks({"examples.magic.v1.Magic/Add"})
        with taskwire.Client(running.target) as client:
            assert Magic(client).add.delay(1, 2, 3).get(timeout=20).sum == 6
        assert worker.poll() is None
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=30) == 0
        # Without its inbox prefix the worker's replies are refused: it stops, saying what to set.
        unprefixed = dict(login("magic-worker"), TASKWIRE_NATS_INBOX_PREFIX="")
        done = subprocess.run(
            [sys.executable, os.path.join(os.path.dirname(__file__), "magic_worker.py")],
            env=dict(running.env, **unprefixed), capture_output=True, text=True, timeout=60,
        )
        assert done.returncode != 0
        assert "TASKWIRE_NATS_INBOX_PREFIX" in done.stderr, done.stderr[-2000:]
    finally:
        running.close()


def test_the_worker_finds_the_runtime_its_wheel_carries(monkeypatch):
    """Without TASKWIRE_WORKER_BIN the runtime is the taskwire-worker-bin wheel's (make test
    builds it from this checkout and installs it), which answers as the runtime does."""
    taskwire_worker_bin = pytest.importorskip("taskwire_worker_bin")
    from taskwire.worker import runtime_binary

    monkeypatch.delenv("TASKWIRE_WORKER_BIN", raising=False)
    found = runtime_binary()
    assert found == taskwire_worker_bin.path()
    done = subprocess.run([found, "--help"], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0 and "--upstream" in done.stdout, done.stderr


def test_the_runtime_sends_attempts_on_the_stream_of_calls(fresh_system):
    # Its task methods fail when called: only calls on the stream succeed.
    fresh_system.start([sys.executable, os.path.join(os.path.dirname(__file__), "stream_only_worker.py")])
    fresh_system.wait_for_tasks({"examples.magic.v1.Magic/Add"})
    with taskwire.Client(fresh_system.target) as client:
        handles = [Magic(client).add(magic_pb2.AddArgs(arg1=i, arg2=1, arg3=1)) for i in range(20)]
        assert [h.get(timeout=30).sum for h in handles] == [i + 2 + 1000 for i in range(20)]


def test_the_stream_of_calls_answers_each_call(tmp_path):
    """The Python half of `taskwire.v1.TaskHandlers/Serve`, called as the runtime calls it."""
    import asyncio

    import grpc

    from taskwire.v1 import worker_pb2
    from taskwire.worker import TaskError, Worker

    worker = Worker()
    magic = worker.service(magic_pb2, "Magic")
    seen = {}

    @magic.add.handler
    async def add(args, ctx):
        seen[ctx.id] = (ctx.task, ctx.attempt, ctx.max_attempts, ctx.deadline is not None)
        if args.arg1 < 0:
            raise TaskError("later", retry_after=5)
        if args.arg1 == 99:
            try:
                await asyncio.sleep(60)
            except asyncio.CancelledError:
                seen["cancelled"] = ctx.cancelled
                raise
        return magic_pb2.AddResult(sum=args.arg1 + args.arg2 + args.arg3)

    def call(id, arg1, method="/examples.magic.v1.Magic/Add", timeout_ms=0):
        return worker_pb2.HandlerCall(
            id=id, method=method, argument=magic_pb2.AddArgs(arg1=arg1, arg2=2, arg3=3).SerializeToString(),
            task_id=f"t{id}", task="examples.magic.v1.Magic/Add", attempt=2, max_attempts=3, timeout_ms=timeout_ms,
        )

    async def run():
        served = list(worker.tasks.values())
        worker._executor = None
        server = worker._server(served)
        socket = f"unix:{tmp_path}/handlers.sock"
        server.add_insecure_port(socket)
        await server.start()
        try:
            async with grpc.aio.insecure_channel(socket) as channel:
                stream = channel.stream_stream(
                    "/taskwire.v1.TaskHandlers/Serve",
                    request_serializer=worker_pb2.HandlerCalls.SerializeToString,
                    response_deserializer=worker_pb2.HandlerOutcomes.FromString,
                )()
                await stream.write(worker_pb2.HandlerCalls(calls=[
                    call(1, 1, timeout_ms=5000), call(2, -1), call(3, 1, method="/examples.magic.v1.Magic/Nope"), call(4, 99),
                ]))
                outcomes = {}
                while len(outcomes) < 3:
                    for outcome in (await stream.read()).outcomes:
                        outcomes[outcome.id] = outcome
                await stream.write(worker_pb2.HandlerCalls(cancels=[4]))
                for _ in range(100):
                    if "cancelled" in seen:
                        break
                    await asyncio.sleep(0.05)
                await stream.done_writing()
                # Cancelled, call 4 is not answered: the stream ends with no more outcomes.
                rest = []
                while (frame := await stream.read()) is not grpc.aio.EOF:
                    rest.extend(frame.outcomes)
                return outcomes, rest
        finally:
            await server.stop(grace=None)

    outcomes, rest = asyncio.run(run())
    assert outcomes[1].code == 0 and magic_pb2.AddResult.FromString(outcomes[1].result).sum == 6
    assert seen["t1"] == ("examples.magic.v1.Magic/Add", 2, 3, True) and seen["t2"][3] is False
    assert outcomes[2].code == grpc.StatusCode.UNAVAILABLE.value[0] and outcomes[2].message == "later"
    assert b"type.googleapis.com/google.rpc.RetryInfo" in outcomes[2].details
    assert outcomes[3].code == grpc.StatusCode.UNIMPLEMENTED.value[0]
    assert seen["cancelled"] is True and rest == []
