"""A Python worker for the example tasks: `python examples/worker.py` (TASKWIRE_NATS_URL says
where NATS is). It serves examples.magic.v1.Magic/Add and some of examples.chaos.v1.Chaos, next
to or instead of the Rust workers of the same tasks."""

import asyncio
import logging
import os
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.normpath(os.path.join(HERE, "..")))
sys.path.insert(0, os.path.normpath(os.path.join(HERE, "..", "tests", "gen")))

from examples.chaos.v1 import chaos_pb2  # noqa: E402
from examples.magic.v1 import magic_pb2, magic_pb2_grpc  # noqa: E402

from taskwire.worker import TaskError, Worker  # noqa: E402

worker = Worker()

RUN_LOG = os.environ.get("TASKWIRE_RUN_LOG")


class logged_run:
    """With TASKWIRE_RUN_LOG set, the start and end of every run go there, one line each
    (`start|end <task id> <attempt> <unix micros> <pid>`), as the Rust test worker writes them: the
    model test's record of executions."""

    def __init__(self, ctx):
        self.ctx = ctx

    def _log(self, event):
        if RUN_LOG:
            line = f"{event} {self.ctx.id} {self.ctx.attempt} {time.time_ns() // 1000} {os.getpid()}\n".encode()
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
    """A servicer subclass: the methods it overrides are served."""

    async def Add(self, args, ctx):
        return magic_pb2.AddResult(sum=args.arg1 + args.arg2 + args.arg3)


worker.add_servicer(Magic(), magic_pb2)
chaos = worker.service(chaos_pb2, "Chaos")


@chaos.sleep.handler
async def sleep(args, ctx):
    with logged_run(ctx):
        await asyncio.sleep(args.millis / 1000)
    label = args.label
    if label.startswith("oversized-result"):
        # A result larger than any NATS server takes, as the Rust test worker answers too.
        label = label * (2 * 1024 * 1024 // len(label) + 1)
    return chaos_pb2.SleepResult(label=label, attempt=ctx.attempt)


@chaos.limited.handler
async def limited(args, ctx):
    # At most five of these run at once across all workers (max_concurrency in the proto).
    log = os.environ.get("TASKWIRE_PY_EXECUTION_LOG")
    started = time.time()
    with logged_run(ctx):
        await asyncio.sleep(args.millis / 1000)
    if log:
        with open(log, "a") as f:
            f.write(f"{started} {time.time()}\n")
    return chaos_pb2.SleepResult(label=args.label, attempt=ctx.attempt)


@chaos.paced.handler
async def paced(args, ctx):
    # At most 20 of these start a second across all workers (rate_limit in the proto).
    with logged_run(ctx):
        await asyncio.sleep(args.millis / 1000)
    return chaos_pb2.SleepResult(label=args.label, attempt=ctx.attempt)


# Runs of each Flaky key on this worker, across attempts and replays.
_flaky_runs = {}
_flaky_lock = threading.Lock()


@chaos.flaky.handler
def flaky(args, ctx):  # a plain function runs in a thread
    with logged_run(ctx):
        run = ctx.attempt
        if args.key:
            with _flaky_lock:
                run = _flaky_runs[args.key] = _flaky_runs.get(args.key, 0) + 1
        if args.succeed_on_attempt == 0 or run < args.succeed_on_attempt:
            later = args.retry_after_ms / 1000 if args.retry_after_ms and not args.permanent else None
            raise TaskError(f"failing on purpose on attempt {ctx.attempt}", retryable=not args.permanent, retry_after=later)
        return chaos_pb2.FlakyResult(attempt=ctx.attempt)


@chaos.steps.handler
async def steps(args, ctx):
    for step in range(1, args.steps + 1):
        await asyncio.sleep(args.step_millis / 1000)
        ctx.progress(100 * step / args.steps, f"step {step} of {args.steps}")
    return chaos_pb2.StepsResult(label=args.label, steps=args.steps)


@chaos.spawn.handler
async def spawn(args, ctx):
    with logged_run(ctx):
        children = []
        for i in range(args.count):
            child = chaos_pb2.SleepArgs(millis=args.child_millis, label=f"{args.label}-{i}")
            children.append(await ctx.submit_child("examples.chaos.v1.Chaos/Sleep", child))
            await asyncio.sleep(args.gap_millis / 1000)
        if args.fail_first and ctx.attempt == 1:
            raise TaskError("spawn: the first attempt fails")
        labels = []
        if args.wait:
            for child in await ctx.wait_for_children():
                labels.append(chaos_pb2.SleepResult.FromString(child.result).label)
        return chaos_pb2.SpawnResult(children=children, attempt=ctx.attempt, labels=labels)


if __name__ == "__main__":
    logging.basicConfig(level=os.environ.get("TASKWIRE_PY_LOG", "WARNING"))
    # `worker.py --serve unix:/path.sock` serves the handlers only, for a runtime beside it.
    if len(sys.argv) == 3 and sys.argv[1] == "--serve":
        asyncio.run(worker.serve(sys.argv[2]))
    else:
        asyncio.run(worker.run())
