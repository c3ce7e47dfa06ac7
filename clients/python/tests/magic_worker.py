"""A Python worker of examples.magic.v1.Magic only, as a deployment of one service runs it (its
NATS user may touch that service's tasks and nothing else)."""

import asyncio
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.normpath(os.path.join(HERE, "..")))
sys.path.insert(0, os.path.join(HERE, "gen"))

from examples.magic.v1 import magic_pb2  # noqa: E402

from taskwire.worker import Worker  # noqa: E402

worker = Worker()
magic = worker.service(magic_pb2, "Magic")


@magic.add.handler
async def add(args, ctx):
    return magic_pb2.AddResult(sum=args.arg1 + args.arg2 + args.arg3)


if __name__ == "__main__":
    asyncio.run(worker.run())
