"""What a task handler sees: its context (attempt, deadline, cancellation, progress), its
options and limits, and the error it raises to fail."""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Dict, List, Optional

from google.protobuf.message import Message

from taskwire.protocol import (
    BACKOFF_INITIAL_MS,
    BACKOFF_MAX_MS,
    MAX_ATTEMPTS,
    PROGRESS,
    REPLAY,
    RESULT_TTL_MS,
    TIMEOUT_MS,
    event_subject,
    parse_duration,
)
from taskwire.v1 import options_pb2, tasks_pb2

if TYPE_CHECKING:
    from taskwire.worker import Task, Worker


class TaskError(Exception):
    """A task's own failure. Retryable ones are tried again while attempts are left."""

    def __init__(self, message: str, retryable: bool = True):
        super().__init__(message)
        self.message = message
        self.retryable = retryable


class _TimedOut(Exception):
    pass


@dataclass
class Options:
    """A task's declared options, as its submitter changed them."""

    max_attempts: int = 3
    timeout: Optional[float] = None
    backoff_initial: float = 1.0
    backoff_max: float = 300.0
    concurrency: int = 0
    result_ttl: Optional[float] = None
    max_concurrency: int = 0
    rate_limit: Optional["Rate"] = None

    @classmethod
    def declared(cls, task: str, proto: options_pb2.TaskOptions) -> "Options":
        def duration(name: str, value: str) -> Optional[float]:
            if not value:
                return None
            try:
                return parse_duration(value)
            except ValueError as e:
                raise ValueError(f"task {task}: option {name}={value!r}: {e}") from None

        return cls(
            max_attempts=proto.max_attempts or 3,
            timeout=duration("timeout", proto.timeout),
            backoff_initial=duration("backoff_initial", proto.backoff_initial) or 1.0,
            backoff_max=duration("backoff_max", proto.backoff_max) or 300.0,
            concurrency=proto.concurrency,
            result_ttl=duration("result_ttl", proto.result_ttl),
            max_concurrency=proto.max_concurrency,
            rate_limit=Rate.parse(proto.rate_limit, task) if proto.rate_limit else None,
        )

    def with_overrides(self, headers: Dict[str, str]) -> "Options":
        def number(name: str) -> Optional[int]:
            try:
                return int(headers[name])
            except (KeyError, ValueError):
                return None

        def millis(name: str) -> Optional[float]:
            n = number(name)
            return None if n is None else n / 1000.0

        attempts = number(MAX_ATTEMPTS)
        timeout, initial, longest, ttl = (
            millis(TIMEOUT_MS),
            millis(BACKOFF_INITIAL_MS),
            millis(BACKOFF_MAX_MS),
            millis(RESULT_TTL_MS),
        )
        return Options(
            max_attempts=attempts if attempts and attempts > 0 else self.max_attempts,
            timeout=timeout if timeout is not None else self.timeout,
            backoff_initial=initial if initial is not None else self.backoff_initial,
            backoff_max=longest if longest is not None else self.backoff_max,
            concurrency=self.concurrency,
            result_ttl=ttl if ttl is not None else self.result_ttl,
            max_concurrency=self.max_concurrency,
            rate_limit=self.rate_limit,
        )

    def backoff(self, attempt: int) -> float:
        """The delay before the attempt after `attempt`, with a fifth of jitter either way."""
        delay = min(self.backoff_initial * (2 ** min(max(attempt - 1, 0), 20)), self.backoff_max)
        return delay * random.uniform(0.8, 1.2)


@dataclass(frozen=True)
class Rate:
    """Starts allowed per period: "10/s", "600/m" or "5/h"."""

    count: int
    per: float

    @classmethod
    def parse(cls, text: str, task: str = "") -> "Rate":
        periods = {"s": 1, "sec": 1, "second": 1, "m": 60, "min": 60, "minute": 60, "h": 3600, "hour": 3600}
        count, _, unit = text.strip().partition("/")
        if not count.strip().isdigit() or unit.strip() not in periods or int(count) == 0:
            raise ValueError(f'{task + ": " if task else ""}{text!r} is not a rate such as "10/s", "600/m" or "5/h"')
        return cls(int(count), float(periods[unit.strip()]))

    def margin(self) -> float:
        """How much longer than its period a start stays counted, in seconds: room for the
        moment between counting a start and running the task (a twentieth of the period, at
        most 250 ms)."""
        return min(self.per / 20, 0.25)



class TaskContext:
    """What a running task knows about itself, and how it reports progress."""

    def __init__(self, worker: "Worker", task: "Task", task_id: str, attempt: int, options: Options, headers: Dict[str, str]):
        self._worker = worker
        self._task = task
        self.id = task_id
        self.task = task.name
        self.attempt = attempt
        self.max_attempts = options.max_attempts
        self.headers = headers
        self.deadline = time.monotonic() + options.timeout if options.timeout else None
        self._cancelled = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._reports: List[asyncio.Future] = []

    @property
    def cancelled(self) -> bool:
        """True once the task was cancelled or ran out of time: stop soon."""
        return self._cancelled.is_set()

    async def wait_cancelled(self) -> None:
        await self._cancelled.wait()

    def progress(self, percent: float, message: str = "", details: Optional[Message] = None) -> None:
        """Reports progress (0 to 100) with a message and optionally a message of the task's
        own; watchers see it as a `running` event. Callable from a thread, too."""
        report = tasks_pb2.TaskProgress(percent=float(percent), message=message)
        if details is not None:
            report.details = details.SerializeToString()
            report.details_type = details.DESCRIPTOR.full_name
        body = report.SerializeToString()

        def send() -> None:
            series = self.headers.get(REPLAY, "0")
            headers = self._worker._event_headers(self.task, self.id, "running", self.attempt, series)
            headers[PROGRESS] = "1"
            subject = event_subject(self.task, self.id)
            self._reports.append(asyncio.ensure_future(self._worker._nc.publish(subject, body, headers=headers)))

        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self._loop:
            send()
        else:
            self._loop.call_soon_threadsafe(send)

    async def _flush(self) -> None:
        await asyncio.sleep(0)
        if self._reports:
            await asyncio.gather(*self._reports, return_exceptions=True)
