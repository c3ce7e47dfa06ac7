"""What a Python worker counts, under the same names and labels as the Rust runtime, served as
OpenMetrics text on `/metrics` (and `/healthz`) when the worker has a metrics address
(`TASKWIRE_METRICS_ADDR`, e.g. `0.0.0.0:9464`). No dependency beyond the standard library."""

import asyncio
import logging
import os
import time
from typing import Dict, Optional, Tuple

log = logging.getLogger("taskwire.worker")

# Run-time buckets in seconds: 1 ms times powers of four, as the Rust runtime has them.
BUCKETS = tuple(round(0.001 * 4**i, 6) for i in range(10))
CONTENT_TYPE = "application/openmetrics-text; version=1.0.0; charset=utf-8"

_FAMILIES = (
    # (name, type, help, label names)
    ("tasks_started", "counter", "Task attempts started by this worker", ("task",)),
    ("tasks_completed", "counter", "Tasks this worker brought to a final state, by state", ("task", "state")),
    ("tasks_retried", "counter", "Attempts that failed and were put back for a retry", ("task",)),
    ("tasks_dead_lettered", "counter", "Tasks moved to the dead letters, by reason", ("task", "reason")),
    ("tasks_running", "gauge", "Tasks running in this worker now", ("task",)),
    ("task_run_seconds", "histogram", "How long attempts ran", ("task",)),
)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(names: Tuple[str, ...], values: Tuple[str, ...], extra: str = "") -> str:
    parts = [f'{n}="{_escape(v)}"' for n, v in zip(names, values)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}"


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


class Metrics:
    """The worker's counters. Every method is called on the event loop's thread."""

    def __init__(self) -> None:
        self._values: Dict[str, Dict[Tuple[str, ...], float]] = {name: {} for name, *_ in _FAMILIES}
        # Per task: bucket counts, sum, count.
        self._runs: Dict[Tuple[str, ...], list] = {}
        self.running_total = 0
        self.succeeded_total = 0
        self.failed_total = 0

    def _add(self, family: str, labels: Tuple[str, ...], by: float = 1) -> None:
        values = self._values[family]
        values[labels] = values.get(labels, 0) + by

    def serve_task(self, task: str) -> None:
        """Shows a served task's series at zero before its first attempt, as the Rust runtime
        does, so that rates over them count the first attempts too."""
        self._add("tasks_started", (task,), 0)
        self._add("tasks_running", (task,), 0)
        self._runs.setdefault((task,), [[0] * len(BUCKETS), 0.0, 0])

    def started(self, task: str) -> "Running":
        """An attempt starts; the returned object's `end()` marks its end."""
        self._add("tasks_started", (task,))
        self._add("tasks_running", (task,))
        self.running_total += 1
        return Running(self, task)

    def _ended(self, task: str, seconds: float) -> None:
        self._add("tasks_running", (task,), -1)
        self.running_total -= 1
        run = self._runs.setdefault((task,), [[0] * len(BUCKETS), 0.0, 0])
        for i, bound in enumerate(BUCKETS):
            if seconds <= bound:
                run[0][i] += 1
        run[1] += seconds
        run[2] += 1

    def completed(self, task: str, state: str) -> None:
        """A task reached its final state here."""
        self._add("tasks_completed", (task, state))
        if state == "succeeded":
            self.succeeded_total += 1
        else:
            self.failed_total += 1

    def retried(self, task: str) -> None:
        self._add("tasks_retried", (task,))

    def dead_lettered(self, task: str, reason: str) -> None:
        self._add("tasks_dead_lettered", (task, reason))

    def render(self) -> str:
        """The metrics in the OpenMetrics text format."""
        lines = []
        for name, kind, help_text, label_names in _FAMILIES:
            full = f"taskwire_{name}"
            lines.append(f"# HELP {full} {help_text}.")
            lines.append(f"# TYPE {full} {kind}")
            if kind == "histogram":
                for labels, (buckets, total, count) in sorted(self._runs.items()):
                    for bound, n in zip(BUCKETS, buckets):
                        le = _labels(label_names, labels, f'le="{bound!r}"')
                        lines.append(f"{full}_bucket{le} {n}")
                    every = _labels(label_names, labels, 'le="+Inf"')
                    lines.append(f"{full}_bucket{every} {count}")
                    lines.append(f"{full}_sum{_labels(label_names, labels)} {_number(total)}")
                    lines.append(f"{full}_count{_labels(label_names, labels)} {count}")
                continue
            suffix = "_total" if kind == "counter" else ""
            for labels, value in sorted(self._values[name].items()):
                lines.append(f"{full}{suffix}{_labels(label_names, labels)} {_number(value)}")
        lines.append("# EOF")
        return "\n".join(lines) + "\n"


class Running:
    """A running attempt, counted until `end()`."""

    __slots__ = ("_metrics", "_task", "_since", "_ended")

    def __init__(self, metrics: Metrics, task: str) -> None:
        self._metrics = metrics
        self._task = task
        self._since = time.monotonic()
        self._ended = False

    def end(self) -> None:
        if not self._ended:
            self._ended = True
            self._metrics._ended(self._task, time.monotonic() - self._since)


def parse_address(address: str) -> Tuple[str, int]:
    """`host:port` (IPv6 as `[::1]:9464`), with an error that says what to fix."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ValueError(f"metrics address {address!r} is not host:port (for example 0.0.0.0:9464)")
    return host.strip("[]"), int(port)


async def serve(metrics: Metrics, address: str) -> asyncio.AbstractServer:
    """Serves `/metrics` and `/healthz` on `address` (HTTP/1.1, one request a connection)."""
    host, port = parse_address(address)

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # A client that stalls, reading or writing, is dropped after a few seconds.
        try:
            await asyncio.wait_for(exchange(reader, writer), 10)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, asyncio.TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()

    async def exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        method, _, rest = head.split(b"\r\n", 1)[0].decode("latin-1").partition(" ")
        path = rest.split(" ", 1)[0].split("?", 1)[0]
        if method not in ("GET", "HEAD"):
            status, kind, body = "405 Method Not Allowed", "text/plain; charset=utf-8", "only GET\n"
        elif path == "/metrics":
            status, kind, body = "200 OK", CONTENT_TYPE, metrics.render()
        elif path == "/healthz":
            status, kind, body = "200 OK", "text/plain; charset=utf-8", "ok"
        else:
            status, kind, body = "404 Not Found", "text/plain; charset=utf-8", "not found: try /metrics or /healthz\n"
        data = body.encode()
        writer.write(
            f"HTTP/1.1 {status}\r\ncontent-type: {kind}\r\ncontent-length: {len(data)}\r\n"
            "connection: close\r\n\r\n".encode()
        )
        if method != "HEAD":
            writer.write(data)
        await writer.drain()

    try:
        return await asyncio.start_server(answer, host, port)
    except OSError as e:
        raise OSError(f"cannot serve metrics on {address}: {e.strerror or e}; set TASKWIRE_METRICS_ADDR to a free address") from e


def address_from_env(given: Optional[str]) -> Optional[str]:
    """The metrics address given, else TASKWIRE_METRICS_ADDR, else none."""
    return given if given is not None else (os.environ.get("TASKWIRE_METRICS_ADDR") or None)
