"""A real nats-server, gateway and Rust worker for the tests, started once per session."""

import json
import os
import shutil
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


def binary(name: str) -> str:
    path = os.path.join(os.environ.get("TASKWIRE_BIN_DIR", os.path.join(ROOT, "target", "debug")), name)
    if not os.path.exists(path):
        pytest.fail(f"{path} is missing: run cargo build --workspace --bins first")
    return path


# The Python worker starts the worker runtime of the taskwire-worker-bin wheel (make test
# installs it, built from this checkout); without the wheel, the one this build made.
try:
    import taskwire_worker_bin  # noqa: F401
except ImportError:
    os.environ.setdefault(
        "TASKWIRE_WORKER_BIN",
        os.path.join(os.environ.get("TASKWIRE_BIN_DIR", os.path.join(ROOT, "target", "debug")), "taskwire-worker"),
    )


def nats_server() -> str:
    path = os.environ.get("TASKWIRE_NATS_SERVER") or shutil.which("nats-server")
    if not path:
        pytest.fail("nats-server not found: run make tools, or set TASKWIRE_NATS_SERVER")
    return path


def wait_for_file(path, what: str, process: subprocess.Popen, read):
    """What `read` makes of the file a process writes once it listens (its ports file); `path`
    may be a function giving it."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"{what} exited with {process.returncode}")
        try:
            with open(path() if callable(path) else path) as f:
                return read(json.load(f))
        except (FileNotFoundError, ValueError, KeyError, IndexError):
            pass
        time.sleep(0.05)
    pytest.fail(f"{what} wrote no addresses to {path}")


def nats_ports_file(directory: str, process: subprocess.Popen) -> str:
    """nats-server's ports file (`--ports_file_dir`): `<binary>_<pid>.ports`."""
    for name in os.listdir(directory):
        if name.endswith(f"_{process.pid}.ports"):
            return os.path.join(directory, name)
    return os.path.join(directory, f"nats-server_{process.pid}.ports")


class System:
    """nats-server and a gateway on free loopback ports, plus the workers a test adds."""

    def __init__(self, nats_args=(), nats_env=None, **gateway_env):
        self.store = tempfile.mkdtemp(prefix="taskwire-py-")
        self.processes = []
        # Every port is the listener's choice, read from the ports file it writes.
        ports = os.path.join(self.store, "ports")
        os.mkdir(ports)
        nats = subprocess.Popen(
            [nats_server(), "-js", "-a", "127.0.0.1", "-p", "-1", "--ports_file_dir", ports,
             "-sd", os.path.join(self.store, "jetstream"), *nats_args],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        self.processes.append(nats)
        self.nats_url = wait_for_file(
            lambda: nats_ports_file(ports, nats), "nats-server", nats, lambda p: p["nats"][0]
        )
        self.env = dict(os.environ, TASKWIRE_NATS_URL=self.nats_url, TASKWIRE_LOG="warn", **(nats_env or {}))
        gateway_ports = os.path.join(ports, "gateway.json")
        gateway = subprocess.Popen(
            [binary("taskwire-gateway")],
            env=dict(self.env, TASKWIRE_GATEWAY_ADDR="127.0.0.1:0", TASKWIRE_PORTS_FILE=gateway_ports, **gateway_env),
            stdout=subprocess.DEVNULL,
        )
        self.processes.append(gateway)
        self.target = wait_for_file(gateway_ports, "the gateway", gateway, lambda p: p["grpc"])

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
        running.wait_for_tasks({"examples.magic.v1.Magic/Add", "examples.chaos.v1.Chaos/Flaky", "examples.flow.v1.Flow/Split"})
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
