"""A task worker in plain grpcio: the generated `MagicServicer`, gRPC reflection, and nothing
from taskwire. The worker runtime serves its tasks by calling it:

    python examples/plain_magic.py /tmp/magic.sock &
    taskwire-worker --upstream unix:///tmp/magic.sock
"""

import asyncio
import sys

import grpc
from grpc_reflection.v1alpha import reflection

from examples.magic.v1 import magic_pb2, magic_pb2_grpc


class Magic(magic_pb2_grpc.MagicServicer):
    async def Add(self, request, context):
        total = request.arg1 + request.arg2 + request.arg3
        if not -(2**63) <= total < 2**63:
            # A status that says "this input never works": the task fails at once.
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the sum does not fit in 64 bits")
        return magic_pb2.AddResult(sum=total)


async def main(socket: str) -> None:
    server = grpc.aio.server()
    magic_pb2_grpc.add_MagicServicer_to_server(Magic(), server)
    service = magic_pb2.DESCRIPTOR.services_by_name["Magic"].full_name
    reflection.enable_server_reflection([service, reflection.SERVICE_NAME], server)
    server.add_insecure_port(f"unix:{socket}")
    await server.start()
    await server.wait_for_termination()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
