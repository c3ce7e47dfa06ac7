"""The example tasks served by a plain grpcio server: the generated servicers, gRPC reflection,
and nothing from taskwire's Python package. It shows that any gRPC server of a task contract is
a worker once the worker runtime calls it:

    python examples/plain_worker.py unix:/tmp/tasks.sock &
    taskwire-worker --upstream unix:///tmp/tasks.sock

With `--runtime PATH` it starts that runtime beside itself (as a sidecar would run), stops it
on SIGTERM and exits when it does: the form the conformance suite runs. The attempt and the
task id come in the call's metadata; progress goes to the runtime's `taskwire.v1.TaskContext`
at the address in `taskwire-context`; the status code says whether a failure is worth another
attempt. With TASKWIRE_RUN_LOG set it logs every run as the other test workers do."""

import argparse
import asyncio
import os
import signal
import sys
import tempfile
import time

import grpc
from google.protobuf import any_pb2, duration_pb2
from grpc_reflection.v1alpha import reflection

from examples.chaos.v1 import chaos_pb2, chaos_pb2_grpc
from examples.magic.v1 import magic_pb2, magic_pb2_grpc
from taskwire.v1 import tasks_pb2, worker_pb2, worker_pb2_grpc

RUN_LOG = os.environ.get("TASKWIRE_RUN_LOG")


def meta(context) -> dict:
    return {k: v for k, v in context.invocation_metadata() if isinstance(v, str)}


def attempt(context) -> int:
    return int(meta(context).get("taskwire-attempt", "1"))



def retry_info(code: grpc.StatusCode, message: str, millis: int) -> bytes:
    """A google.rpc.Status (code 1, message 2, details 3) whose one detail is a
    google.rpc.RetryInfo (retry_delay 1): what grpcio-status would build, by hand."""

    def field(number: int, value: bytes) -> bytes:
        return varint(number << 3 | 2) + varint(len(value)) + value

    def varint(n: int) -> bytes:
        out = bytearray()
        while True:
            byte, n = n & 0x7F, n >> 7
            out.append(byte | (0x80 if n else 0))
            if not n:
                return bytes(out)

    delay = duration_pb2.Duration()
    delay.FromMilliseconds(millis)
    detail = any_pb2.Any(type_url="type.googleapis.com/google.rpc.RetryInfo", value=field(1, delay.SerializeToString()))
    return b"\x08" + varint(code.value[0]) + field(2, message.encode()) + field(3, detail.SerializeToString())

class logged_run:
    """`start|end <task id> <attempt> <unix micros> <pid>`, one write a line."""

    def __init__(self, context):
        m = meta(context)
        self.id, self.attempt = m.get("taskwire-task-id", ""), m.get("taskwire-attempt", "1")

    def _log(self, event):
        if RUN_LOG:
            line = f"{event} {self.id} {self.attempt} {time.time_ns() // 1000} {os.getpid()}\n".encode()
            fd = os.open(RUN_LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, line)
            finally:
                os.close(fd)

    def __enter__(self):
        self._log("start")

    def __exit__(self, *exc):
        self._log("end")


class Magic(magic_pb2_grpc.MagicServicer):
    async def Add(self, request, context):
        return magic_pb2.AddResult(sum=request.arg1 + request.arg2 + request.arg3)


class Chaos(chaos_pb2_grpc.ChaosServicer):
    def __init__(self):
        self.flaky_runs = {}
        self.contexts = {}

    async def _sleep(self, request, context):
        with logged_run(context):
            await asyncio.sleep(request.millis / 1000)
        return chaos_pb2.SleepResult(label=request.label, attempt=attempt(context))

    async def Sleep(self, request, context):
        result = await self._sleep(request, context)
        if request.label.startswith("oversized-result"):
            # Larger than any NATS server takes.
            result.label = request.label * (2 * 1024 * 1024 // len(request.label) + 1)
        return result

    async def Limited(self, request, context):
        return await self._sleep(request, context)

    async def Paced(self, request, context):
        return await self._sleep(request, context)

    async def Flaky(self, request, context):
        with logged_run(context):
            run = attempt(context)
            if request.key:
                run = self.flaky_runs[request.key] = self.flaky_runs.get(request.key, 0) + 1
            failing = request.succeed_on_attempt == 0 or run < request.succeed_on_attempt
        if failing:
            # UNAVAILABLE: worth another attempt; FAILED_PRECONDITION: never.
            code = grpc.StatusCode.FAILED_PRECONDITION if request.permanent else grpc.StatusCode.UNAVAILABLE
            message = f"failing on purpose on attempt {attempt(context)}"
            if request.retry_after_ms and not request.permanent:
                # When to try again: a google.rpc.RetryInfo in the status details.
                details = retry_info(code, message, request.retry_after_ms)
                context.set_trailing_metadata((("grpc-status-details-bin", details),))
            await context.abort(code, message)
        return chaos_pb2.FlakyResult(attempt=attempt(context))

    def runtime(self, context) -> worker_pb2_grpc.TaskContextStub:
        """The runtime's `taskwire.v1.TaskContext`, at the address the call names."""
        address = meta(context)["taskwire-context"].removeprefix("http://")
        channel = self.contexts.get(address)
        if channel is None:
            channel = self.contexts[address] = grpc.aio.insecure_channel(address)
        return worker_pb2_grpc.TaskContextStub(channel)

    async def Spawn(self, request, context):
        m = meta(context)
        runtime = self.runtime(context)
        own = dict(task_id=m["taskwire-task-id"], attempt=int(m["taskwire-attempt"]))
        with logged_run(context):
            children = []
            for i in range(request.count):
                child = chaos_pb2.SleepArgs(millis=request.child_millis, label=f"{request.label}-{i}")
                submitted = await runtime.SubmitChild(
                    worker_pb2.SubmitChildRequest(
                        child=tasks_pb2.SubmitRequest(task="examples.chaos.v1.Chaos/Sleep", args_proto=child.SerializeToString()),
                        **own,
                    )
                )
                children.append(submitted.task_id)
                await asyncio.sleep(request.gap_millis / 1000)
            if request.fail_first and attempt(context) == 1:
                await context.abort(grpc.StatusCode.UNAVAILABLE, "spawn: the first attempt fails")
            labels = []
            if request.wait:
                waited = await runtime.WaitForChildren(worker_pb2.WaitForChildrenRequest(**own))
                if not waited.ended:
                    # The runtime parks the task and calls again once the children have ended.
                    await context.abort(grpc.StatusCode.ABORTED, "waiting for its children")
                labels = [chaos_pb2.SleepResult.FromString(c.result).label for c in waited.children]
        return chaos_pb2.SpawnResult(children=children, attempt=attempt(context), labels=labels)

    async def Steps(self, request, context):
        m = meta(context)
        runtime = self.runtime(context)
        for step in range(1, request.steps + 1):
            await asyncio.sleep(request.step_millis / 1000)
            progress = tasks_pb2.TaskProgress(percent=100 * step / request.steps, message=f"step {step} of {request.steps}")
            await runtime.ReportProgress(
                worker_pb2.ReportProgressRequest(
                    task_id=m["taskwire-task-id"], attempt=int(m["taskwire-attempt"]), progress=progress
                )
            )
        return chaos_pb2.StepsResult(label=request.label, steps=request.steps)


async def serve(address: str, runtime: str) -> int:
    server = grpc.aio.server(options=[("grpc.max_send_message_length", 64 << 20)])
    magic_pb2_grpc.add_MagicServicer_to_server(Magic(), server)
    chaos_pb2_grpc.add_ChaosServicer_to_server(Chaos(), server)
    names = [
        magic_pb2.DESCRIPTOR.services_by_name["Magic"].full_name,
        chaos_pb2.DESCRIPTOR.services_by_name["Chaos"].full_name,
        reflection.SERVICE_NAME,
    ]
    reflection.enable_server_reflection(names, server)
    server.add_insecure_port(address)
    await server.start()
    if not runtime:
        await server.wait_for_termination()
        return 0
    # The tasks this server answers (Panic and Charge are the Rust test worker's).
    tasks = [f"examples.magic.v1.Magic/Add"] + [
        f"examples.chaos.v1.Chaos/{m}" for m in ("Sleep", "Limited", "Paced", "Flaky", "Steps", "Spawn")
    ]
    args = [runtime, "--upstream", "unix://" + address.removeprefix("unix:"), "--exit-with-stdin"]
    for task in tasks:
        args += ["--task", task]
    env = dict(os.environ, TASKWIRE_UPSTREAM_NAME="plain grpcio")
    child = await asyncio.create_subprocess_exec(*args, env=env, stdin=asyncio.subprocess.PIPE)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, child.send_signal, sig)
    code = await child.wait()
    await server.stop(grace=1)
    return code


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("address", nargs="?", help="unix:/path or 127.0.0.1:PORT (with --runtime: a socket of its own)")
    parser.add_argument("--runtime", default="", help="start this worker runtime beside the server")
    options = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="plain-worker-") as folder:
        address = options.address or f"unix:{os.path.join(folder, 'tasks.sock')}"
        return asyncio.run(serve(address, options.runtime))


if __name__ == "__main__":
    sys.exit(main())
