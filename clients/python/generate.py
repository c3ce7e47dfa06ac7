"""Generates the Python modules of taskwire's protos with grpcio-tools.

    python generate.py          # writes taskwire/v1/*_pb2*.py and tests/gen/examples/...
    python generate.py --check  # fails if the committed modules differ from a fresh generation
"""

import filecmp
import os
import shutil
import sys
import tempfile

from grpc_tools import protoc
import grpc_tools

HERE = os.path.dirname(os.path.abspath(__file__))
PROTO = os.path.normpath(os.path.join(HERE, "..", "..", "proto"))
WELL_KNOWN = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")

# (proto files, output directory relative to this folder)
TARGETS = [
    (["taskwire/v1/options.proto", "taskwire/v1/tasks.proto", "taskwire/v1/schedules.proto", "taskwire/v1/worker.proto", "taskwire/v1/workflows.proto"], "."),
    (["examples/magic/v1/magic.proto", "examples/chaos/v1/chaos.proto", "examples/flow/v1/flow.proto"], "tests/gen"),
    # What a gRPC server in Python needs to serve tasks without taskwire's package
    # (examples/plain_worker.py): the context service of the worker runtime, and the task
    # options the contracts import. A folder apart, so that its `taskwire` is never the package.
    (["taskwire/v1/options.proto", "taskwire/v1/tasks.proto", "taskwire/v1/worker.proto"], "tests/gen_plain"),
]


def generate(into: str) -> None:
    for protos, out in TARGETS:
        target = os.path.join(into, out)
        os.makedirs(target, exist_ok=True)
        args = [
            "grpc_tools.protoc",
            f"-I{PROTO}",
            f"-I{WELL_KNOWN}",
            f"--python_out={target}",
            f"--pyi_out={target}",
            f"--grpc_python_out={target}",
            *protos,
        ]
        if protoc.main(args) != 0:
            raise SystemExit(f"protoc failed for {protos}")


def generated_files(root: str):
    for dirpath, _, names in os.walk(root):
        for name in names:
            if "_pb2" in name and name.endswith((".py", ".pyi")):
                yield os.path.relpath(os.path.join(dirpath, name), root)


def main() -> int:
    if "--check" in sys.argv:
        with tempfile.TemporaryDirectory() as fresh:
            generate(fresh)
            want = set(generated_files(fresh))
            have = {f for f in generated_files(HERE) if not f.startswith(("build", "."))}
            drift = sorted(want ^ have) + sorted(
                f for f in want & have if not filecmp.cmp(os.path.join(fresh, f), os.path.join(HERE, f), shallow=False)
            )
            if drift:
                print("generated modules are out of date; run python clients/python/generate.py:")
                for f in drift:
                    print("  " + f)
                return 1
            print(f"{len(want)} generated modules are up to date")
            return 0
    generate(HERE)
    for package in ["taskwire/v1", "tests/gen/examples", "tests/gen/examples/magic", "tests/gen/examples/magic/v1",
                    "tests/gen/examples/chaos", "tests/gen/examples/chaos/v1", "tests/gen_plain/taskwire", "tests/gen_plain/taskwire/v1"]:
        path = os.path.join(HERE, package)
        if os.path.isdir(path):
            open(os.path.join(path, "__init__.py"), "a").close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
