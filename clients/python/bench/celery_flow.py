"""Celery with Redis on this machine, doing the task flow of `taskwire bench`: tasks that add
three numbers, each submitted and waited for (`add.delay(i, 2, 3).get()`), many in flight at
once. It starts its own redis-server (on a free loopback port, nothing saved) and Celery worker,
and prints one JSON object: `tasks_per_sec`, or `skipped` with the reason when Celery or
redis-server is not installed.

    python celery_flow.py --tasks 20000 --concurrency 64
"""

import argparse
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

APP = '''
from celery import Celery

app = Celery("flow", broker="redis://127.0.0.1:{port}/0", backend="redis://127.0.0.1:{port}/1")
app.conf.worker_prefetch_multiplier = 4


@app.task
def add(a, b, c):
    return a + b + c
'''


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_with_parent():
    """In a child before it starts: SIGTERM it when this process ends, however it ends (Linux;
    elsewhere the `finally` below is all there is)."""
    try:
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


def wait_for_port(port, limit=20.0):
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"redis-server did not listen on port {port} within {limit} s")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=20000)
    parser.add_argument("--concurrency", type=int, default=64, help="tasks in flight at once")
    parser.add_argument("--worker-concurrency", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    # A SIGTERM ends the run through the `finally` below, which stops Redis and the worker.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    redis_server = shutil.which("redis-server")
    try:
        import celery
    except ImportError as e:
        print(json.dumps({"skipped": f"Celery is not installed ({e})"}))
        return 0
    if importlib.util.find_spec("redis") is None:
        print(json.dumps({"skipped": "the Redis client for Python (redis) is not installed"}))
        return 0
    if redis_server is None:
        print(json.dumps({"skipped": "no redis-server on PATH"}))
        return 0

    with tempfile.TemporaryDirectory() as home:
        port = free_port()
        with open(os.path.join(home, "flow.py"), "w") as f:
            f.write(APP.format(port=port))
        redis_proc = subprocess.Popen(
            [redis_server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", home],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=stop_with_parent,
        )
        worker = None
        try:
            wait_for_port(port)
            env = dict(os.environ, PYTHONPATH=home)
            worker = subprocess.Popen(
                [
                    sys.executable, "-m", "celery", "-A", "flow", "worker",
                    "--concurrency", str(args.worker_concurrency), "--loglevel", "WARNING",
                    "--without-gossip", "--without-mingle", "--without-heartbeat",
                ],
                cwd=home,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                preexec_fn=stop_with_parent,
            )
            sys.path.insert(0, home)
            from flow import add

            # Until the worker answers, then a warm-up.
            add.delay(1, 2, 3).get(timeout=60)
            with ThreadPoolExecutor(args.concurrency) as pool:
                list(pool.map(lambda i: add.delay(i, 2, 3).get(timeout=60), range(200)))

            def one(i):
                assert add.delay(i, 2, 3).get(timeout=60) == i + 5

            started = time.monotonic()
            with ThreadPoolExecutor(args.concurrency) as pool:
                list(pool.map(one, range(args.tasks)))
            seconds = time.monotonic() - started
            print(json.dumps({
                "celery": celery.__version__,
                "tasks": args.tasks,
                "concurrency": args.concurrency,
                "worker_concurrency": args.worker_concurrency,
                "tasks_per_sec": round(args.tasks / seconds, 1),
            }))
        finally:
            if worker is not None:
                worker.terminate()
                try:
                    worker.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    worker.kill()
            redis_proc.terminate()
            redis_proc.wait(timeout=10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
