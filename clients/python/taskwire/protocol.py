"""The taskwire wire protocol as the Python runtime writes it (docs/protocol.md): stream and
header names, subjects, message ids, the duration grammar, the ids of scheduled ticks and the
JetStream error codes tried again. testing/vectors/protocol.json holds the same, and the tests
check this module against it."""

from __future__ import annotations

import asyncio
import datetime
import random
import re
import time
import uuid
from typing import Dict, Optional

from taskwire.v1 import tasks_pb2


TASKS_STREAM = "TASKWIRE_TASKS"
# Consumers the tasks stream may have: three per task type, so 10,000 task types.
MAX_TASK_CONSUMERS = 30_000



RESULTS_STREAM = "TASKWIRE_RESULTS"



EVENTS_STREAM = "TASKWIRE_EVENTS"



DEAD_STREAM = "TASKWIRE_DEAD"



# Header names (docs/protocol.md).
TASK_ID = "Taskwire-Task-Id"



TASK = "Taskwire-Task"



ATTEMPT = "Taskwire-Attempt"



STATE = "Taskwire-State"



REPLAY = "Taskwire-Replay"



SCHEDULE_NAME = "Taskwire-Schedule"



SCHEDULE_NEXT = "Nats-Schedule-Next"



EXPIRES_AT = "Taskwire-Expires-At"



PROGRESS = "Taskwire-Progress"



DEAD_REASON = "Taskwire-Dead-Reason"



ERROR = "Taskwire-Error"



MAX_ATTEMPTS = "Taskwire-Max-Attempts"



TIMEOUT_MS = "Taskwire-Timeout-Ms"



BACKOFF_INITIAL_MS = "Taskwire-Backoff-Initial-Ms"



BACKOFF_MAX_MS = "Taskwire-Backoff-Max-Ms"



RESULT_TTL_MS = "Taskwire-Result-Ttl-Ms"



MSG_ID = "Nats-Msg-Id"



EXPECTED_LAST_SUBJECT_SEQUENCE = "Nats-Expected-Last-Subject-Sequence"



EXPECTED_LAST_SUBJECT_SEQUENCE_SUBJECT = "Nats-Expected-Last-Subject-Sequence-Subject"



NATS_TTL = "Nats-TTL"

# Why a task ended in the dead letters (Taskwire-Dead-Reason).
DEAD_POISON = "poison"
DEAD_PERMANENT = "permanent"
DEAD_EXHAUSTED = "exhausted"
DEAD_TIMEOUT = "timeout"
DEAD_PANIC = "panic"
DEAD_LOST = "lost"
DEAD_REASONS = (DEAD_POISON, DEAD_PERMANENT, DEAD_EXHAUSTED, DEAD_TIMEOUT, DEAD_PANIC, DEAD_LOST)

ID_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")



WRONG_LAST_SEQUENCE = 10071



# JetStream error codes of refusals that may pass when tried again (busy, short of resources,
# electing a leader, a limit full for now); any other error code is a refusal for good.
TRANSIENT_CODES = frozenset({10002, 10004, 10005, 10008, 10009, 10023, 10039, 10041, 10047, 10076, 10077, 10158})



_UNIT_NANOS = {}



for _names, _nanos in (
    (("nanos", "nsec", "ns"), 1),
    (("usec", "us", "µs"), 1_000),
    (("millis", "msec", "ms"), 1_000_000),
    (("seconds", "second", "secs", "sec", "s"), 1_000_000_000),
    (("minutes", "minute", "min", "mins", "m"), 60 * 1_000_000_000),
    (("hours", "hour", "hr", "hrs", "h"), 3600 * 1_000_000_000),
    (("days", "day", "d"), 86400 * 1_000_000_000),
    (("weeks", "week", "wk", "wks", "w"), 7 * 86400 * 1_000_000_000),
    (("months", "month", "M"), 2_630_016 * 1_000_000_000),
    (("years", "year", "yr", "yrs", "y"), 31_557_600 * 1_000_000_000),
):
    for _name in _names:
        _UNIT_NANOS[_name] = _nanos



_SPAN = re.compile(r"\s*(\d+)(?:\.(\d+))?\s*([A-Za-zµ]+)")


def parse_duration(text: str) -> float:
    """Seconds in a duration such as "10s", "1m30s", "1min", "1.5s", "500ms" or "2h 30m": the
    grammar of the Rust runtime (testing/vectors/durations.json holds the cases both check)."""
    bad = ValueError(f'{text!r} is not a duration such as "10s", "1m30s", "1.5s" or "500ms"')
    position, nanos, spans = 0, 0, 0
    stripped = text.rstrip()
    while position < len(stripped):
        span = _SPAN.match(stripped, position)
        if span is None:
            raise bad
        whole, fraction, unit = span.groups()
        if unit not in _UNIT_NANOS:
            raise bad
        scale = _UNIT_NANOS[unit]
        nanos += int(whole) * scale
        if fraction is not None:
            if scale == 1:
                raise bad
            nanos += int(fraction) * scale // 10 ** len(fraction)
        position = span.end()
        spans += 1
    if spans == 0:
        raise bad
    return nanos / 1_000_000_000


def token(task: str) -> str:
    return task.replace("/", ".")


def _parse_headers(raw: bytes) -> Dict[str, str]:
    """NATS message headers (`NATS/1.0\r\nName: value\r\n...`) as a dict."""
    headers: Dict[str, str] = {}
    for line in raw.decode(errors="replace").split("\r\n")[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip()] = value.strip()
    return headers


def _subject_covers(wide: str, narrow: str) -> bool:
    """Whether every subject `narrow` matches, `wide` matches too."""
    w, n = wide.split("."), narrow.split(".")
    for i, part in enumerate(w):
        if part == ">":
            return len(n) > i
        if i >= len(n) or not (part == n[i] or (part == "*" and n[i] != ">")):
            return False
    return len(w) == len(n)


def consumer_name(task: str, priority: str = "normal") -> str:
    base = task.replace(".", "-").replace("/", "-")
    return base if priority == "normal" else f"{base}-{priority}"


def task_subject(task: str, priority: str = "normal") -> str:
    prefix = "taskwire.tasks" if priority == "normal" else f"taskwire.tasks-{priority}"
    return f"{prefix}.{token(task)}"


def result_subject(task: str, task_id: str) -> str:
    """Where a task's one result is stored: `taskwire.results.<id>.<token>`."""
    return f"taskwire.results.{task_id}.{token(task)}"


def results_of(task_id: str) -> str:
    """Every result subject of a task id, whatever its type: `taskwire.results.<id>.>`."""
    return f"taskwire.results.{task_id}.>"


def event_subject(task: str, task_id: str) -> str:
    """Where a task's state changes go: `taskwire.events.<id>.<token>`."""
    return f"taskwire.events.{task_id}.{token(task)}"


def dead_subject(task: str, task_id: str) -> str:
    """Where a task that failed for good is kept: `taskwire.dead.<id>.<token>`."""
    return f"taskwire.dead.{task_id}.{token(task)}"


def result_msg_id(task_id: str, series: str) -> str:
    """The message id of a task's result in a series of attempts (0, or the replay count)."""
    return f"{task_id}.result.{series}"


def scheduled_task_id(task: str, schedule: str, next_tick: Optional[str], sequence: int) -> str:
    """The id of the task a schedule fired: from the tick, which the fired message's
    Nats-Schedule-Next names (a tick fired twice by a new stream leader is one task), else from
    its `sequence` in the tasks stream."""
    tick = f"next\0{next_tick}" if next_tick is not None else str(sequence)
    return uuid.uuid5(uuid.NAMESPACE_OID, f"{task}\0schedule\0{schedule}\0{tick}").hex


def uuid7() -> str:
    millis = time.time_ns() // 1_000_000
    value = (millis & ((1 << 48) - 1)) << 80 | random.getrandbits(80)
    value = (value & ~(0xF << 76)) | (0x7 << 76)
    value = (value & ~(0x3 << 62)) | (0x2 << 62)
    return f"{value:032x}"



def now_micros() -> int:
    return time.time_ns() // 1000



def _rfc3339_micros(text: str) -> int:
    """µs since the epoch of a time as NATS writes it (`2026-11-29T20:47:35.536041599Z`)."""
    base, _, rest = text.partition(".")
    if rest:
        digits = "".join(ch for ch in rest if ch.isdigit())
        zone = rest[len(digits):]
    else:
        base, digits, zone = text[:19], "", text[19:]
    zone = "+00:00" if zone in ("Z", "z", "") else zone
    seconds = datetime.datetime.fromisoformat(base + zone).timestamp()
    return int(seconds) * 1_000_000 + int((digits + "000000")[:6])



def _failure(message: str, retryable: bool) -> bytes:
    return tasks_pb2.TaskFailure(message=message, retryable=retryable).SerializeToString()


class Backoff:
    """The one way the worker tries a call again after an error that may pass (an election, a
    reconnect, a bucket still being created): waits that double from `first` up to `longest`,
    for at most `patience` seconds from now when given (as the Rust runtime's `Backoff`)."""

    def __init__(self, first: float, longest: float, patience: Optional[float] = None):
        self._next = first
        self._longest = longest
        self._until = None if patience is None else time.monotonic() + patience

    def next_wait(self) -> Optional[float]:
        """The wait before the next try, or None when the patience would run out first."""
        wait = self._next
        if self._until is not None and time.monotonic() + wait > self._until:
            return None
        self._next = min(self._next * 2, self._longest)
        return wait

    async def wait(self) -> bool:
        """Sleeps before the next try; False at once when the patience would run out first."""
        wait = self.next_wait()
        if wait is None:
            return False
        await asyncio.sleep(wait)
        return True

    def reset(self, first: float) -> None:
        """Back to the first wait (after a success)."""
        self._next = first

