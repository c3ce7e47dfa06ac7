"""A real nats-server, gateway and Rust worker for the tests, started once per session."""

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

import grpc
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "..", "..", ".."))
sys.path.insert(0, os.path.join(HERE, "gen"))
sys.path.insert(0, os.path.normpath(os.path.join(HERE, "..")))

import taskwire  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def binary(name: str) -> str:
    path = os.path.join(os.environ.get("TASKWIRE_BIN_DIR", os.path.join(ROOT, "target", "debug")), name)
    if not os.path.exists(path):
        pytest.fail(f"{path} is missing: run cargo build --workspace --bins first")
    return path


def nats_server() -> str:
    path = os.environ.get("TASKWIRE_NATS_SERVER") or shutil.which("nats-server")
    if not path:
        pytest.fail("nats-server not found: run make tools, or set TASKWIRE_NATS_SERVER")
    return path


def wait_for_port(port: int, what: str, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"{what} exited with {process.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    pytest.fail(f"{what} did not listen on {port}")


@pytest.fixture(scope="session")
def system():
    store = tempfile.mkdtemp(prefix="taskwire-py-")
    processes = []
    try:
        nats_port = free_port()
        nats = subprocess.Popen(
            [nats_server(), "-js", "-a", "127.0.0.1", "-p", str(nats_port), "-sd", store],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        processes.append(nats)
        wait_for_port(nats_port, "nats-server", nats)
        nats_url = f"nats://127.0.0.1:{nats_port}"
        gateway_port = free_port()
        env = dict(os.environ, TASKWIRE_NATS_URL=nats_url, TASKWIRE_LOG="warn")
        gateway = subprocess.Popen(
            [binary("taskwire-gateway")],
            env=dict(env, TASKWIRE_GATEWAY_ADDR=f"127.0.0.1:{gateway_port}"),
            stdout=subprocess.DEVNULL,
        )
        processes.append(gateway)
        worker = subprocess.Popen([binary("taskwire-test-worker")], env=env)
        processes.append(worker)
        wait_for_port(gateway_port, "the gateway", gateway)
        target = f"127.0.0.1:{gateway_port}"
        client = taskwire.Client(target)
        from taskwire.v1 import tasks_pb2

        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                names = {t.name for t in client.admin.ListTaskTypes(tasks_pb2.ListTaskTypesRequest()).task_types}
                if {"examples.magic.v1.Magic/Add", "examples.chaos.v1.Chaos/Flaky"} <= names:
                    break
            except grpc.RpcError:
                pass
            time.sleep(0.1)
        else:
            pytest.fail("the worker did not register its tasks")
        client.close()
        yield target
    finally:
        for process in reversed(processes):
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
        shutil.rmtree(store, ignore_errors=True)


@pytest.fixture
def client(system):
    with taskwire.Client(system) as c:
        yield c
