"""A Python worker of examples.magic.v1.Magic whose task methods, called one gRPC call an attempt,
fail: its tasks succeed only when the runtime sends them on the stream of calls."""

import asyncio
import os
import sys

import grpc

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.normpath(os.path.join(HERE, "..")))
sys.path.insert(0, os.path.join(HERE, "gen"))

from examples.magic.v1 import magic_pb2  # noqa: E402

from taskwire.worker import Worker  # noqa: E402


class StreamOnly(Worker):
    async def _call(self, task, coroutine, args, context):
        await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "called one gRPC call an attempt")


worker = StreamOnly()
magic = worker.service(magic_pb2, "Magic")


@magic.add.handler
async def add(args, ctx):
    return magic_pb2.AddResult(sum=args.arg1 + args.arg2 + args.arg3 + ctx.attempt * 1000)


if __name__ == "__main__":
    asyncio.run(worker.run())
