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


class System:
    """nats-server and a gateway on free loopback ports, plus the workers a test adds."""

    def __init__(self, nats_args=(), nats_env=None, **gateway_env):
        self.store = tempfile.mkdtemp(prefix="taskwire-py-")
        self.processes = []
        nats_port = free_port()
        nats = subprocess.Popen(
            [nats_server(), "-js", "-a", "127.0.0.1", "-p", str(nats_port), "-sd", self.store, *nats_args],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        self.processes.append(nats)
        wait_for_port(nats_port, "nats-server", nats)
        self.nats_url = f"nats://127.0.0.1:{nats_port}"
        self.env = dict(os.environ, TASKWIRE_NATS_URL=self.nats_url, TASKWIRE_LOG="warn", **(nats_env or {}))
        gateway_port = free_port()
        gateway = subprocess.Popen(
            [binary("taskwire-gateway")],
            env=dict(self.env, TASKWIRE_GATEWAY_ADDR=f"127.0.0.1:{gateway_port}", **gateway_env),
            stdout=subprocess.DEVNULL,
        )
        self.processes.append(gateway)
        wait_for_port(gateway_port, "the gateway", gateway)
        self.target = f"127.0.0.1:{gateway_port}"

    def start(self, args, **env) -> subprocess.Popen:
        process = subprocess.Popen(args, env=dict(self.env, **env))
        self.processes.append(process)
        return process

    def rust_worker(self, **env) -> subprocess.Popen:
        return self.start([binary("taskwire-test-worker")], **env)

    def python_worker(self, **env) -> subprocess.Popen:
        return self.start([sys.executable, os.path.join(HERE, "..", "examples", "worker.py")], **env)

    def wait_for_tasks(self, names, **client_options) -> None:
        from taskwire.v1 import tasks_pb2

        with taskwire.Client(self.target, **client_options) as client:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                try:
                    listed = client.admin.ListTaskTypes(tasks_pb2.ListTaskTypesRequest()).task_types
                    if set(names) <= {t.name for t in listed}:
                        return
                except grpc.RpcError:
                    pass
                time.sleep(0.1)
        pytest.fail(f"no worker registered {sorted(names)}")

    def close(self) -> None:
        for process in reversed(self.processes):
            if process.poll() is None:
                process.terminate()
        for process in self.processes:
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
        shutil.rmtree(self.store, ignore_errors=True)


@pytest.fixture(scope="session")
def system():
    """A gateway with the Rust test worker; yields the gateway's address."""
    running = System()
    try:
        running.rust_worker()
        running.wait_for_tasks({"examples.magic.v1.Magic/Add", "examples.chaos.v1.Chaos/Flaky"})
        yield running.target
    finally:
        running.close()


@pytest.fixture
def fresh_system():
    """A gateway and nats-server of its own, with no worker yet."""
    running = System()
    try:
        yield running
    finally:
        running.close()


@pytest.fixture
def client(system):
    with taskwire.Client(system) as c:
        yield c
