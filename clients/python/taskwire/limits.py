"""Cluster-wide limits of the Python runtime: concurrency slots leased in TASKWIRE_SLOTS,
starts counted against a rate in TASKWIRE_RATES by the broker's clock, and the follower of a
KV bucket that keeps an in-memory view current across reconnects (docs/protocol.md)."""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional

from google.protobuf.message import DecodeError

from taskwire.v1 import tasks_pb2


try:
    import nats
    import nats.errors
    import nats.js.errors
except ImportError as e:  # pragma: no cover - the message is the point
    raise ImportError('taskwire.worker needs nats-py: pip install "taskwire[worker]"') from e

from taskwire.protocol import Backoff, _rfc3339_micros, now_micros, token
from taskwire.context import Rate

if TYPE_CHECKING:
    from taskwire.worker import Task

log = logging.getLogger("taskwire.worker")


async def _follow_bucket(
    js: Any,
    bucket: str,
    put: Callable[[str, bytes], None],
    delete: Callable[[str], Any],
    keys: Callable[[], Any],
    reconnected: asyncio.Event,
    refused: Callable[[], bool] = lambda: False,
) -> asyncio.Task:
    """Applies a KV bucket's entries, then its changes, in the background; returns once the
    entries there now are applied, so that nothing starts on a partial view (a follower that
    ends before that raises). When the watch ends or fails later, the bucket is read again in
    full (keys held that it no longer has are deleted), so the view never stays stale; also at
    once when `reconnected` is set. The first read is tried again for a minute (a broker
    restarting or paused), unless NATS refused something (`refused`)."""
    loaded = asyncio.Event()
    first_read_until = time.monotonic() + FIRST_READ_PATIENCE

    async def follow_once() -> None:
        watcher = await (await js.key_value(bucket)).watchall()
        try:
            await read(watcher)
        finally:
            try:
                await watcher.stop()
            except Exception:
                pass

    async def read(watcher: Any) -> None:
        seen: set = set()
        initial = True
        async for entry in watcher:
            if entry is None:
                if initial:
                    for key in set(keys()) - seen:
                        delete(key)
                    initial = False
                loaded.set()
            elif entry.operation in ("DEL", "PURGE"):
                delete(entry.key)
            else:
                if initial:
                    seen.add(entry.key)
                put(entry.key, entry.value)

    async def follow() -> None:
        backoff = Backoff(0.1, 5.0)
        while True:
            try:
                reconnected.clear()
                once = asyncio.ensure_future(follow_once())
                again = asyncio.ensure_future(reconnected.wait())
                await asyncio.wait([once, again], return_when=asyncio.FIRST_COMPLETED)
                again.cancel()
                if not once.done():
                    # Back from a broker restart: read it all again now, rather than when the
                    # watch notices its consumer is gone.
                    once.cancel()
                    await asyncio.gather(once, return_exceptions=True)
                    log.info("reconnected; reading %s again", bucket)
                    continue
                once.result()
                if not loaded.is_set():
                    raise RuntimeError(f"the watch of {bucket} ended before its entries were read")
                log.warning("the watch of %s ended; reading it again", bucket)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                if not loaded.is_set() and (refused() or time.monotonic() > first_read_until):
                    raise
                log.warning("the watch of %s failed (%s); reading it again", bucket, e)
            await backoff.wait()

    follower = asyncio.ensure_future(follow())
    waited = asyncio.ensure_future(loaded.wait())
    while not loaded.is_set():
        done, _ = await asyncio.wait([waited, follower], timeout=10, return_when=asyncio.FIRST_COMPLETED)
        if follower in done and not loaded.is_set():
            waited.cancel()
            follower.result()  # raises what ended it
        if not done:
            log.warning("still reading the entries of %s; no task starts before they are all read", bucket)
    return follower


# How long the first read of a bucket is tried again before the worker gives up starting.
FIRST_READ_PATIENCE = 60.0


class _Limits:
    """Cluster-wide limits (docs/protocol.md, step 1 of what a worker does): concurrency slots in
    TASKWIRE_SLOTS, counted starts in TASKWIRE_RATES, overrides from TASKWIRE_LIMITS."""

    SLOT_REFRESH = 5.0
    SLOT_RETRY = 0.1
    TROUBLE = 0.2
    # How long the worker trusts its reading of the broker's clock.
    CLOCK_FOR = 60.0
    # Most items a start log keeps.
    MAX_ENTRIES = 64
    # Longest wait before looking at a full start log again (starts given back free room).
    LOOK_AGAIN = 1.0

    def __init__(self, js: Any, nc: Any, owner: str):
        self._js = js
        self._nc = nc
        self._owner = owner.encode()
        self._overrides: Dict[str, tasks_pb2.TaskLimits] = {}
        self._clock: Optional["tuple[float, int]"] = None
        self.slots = None
        self.rates = None

    async def start(self, reconnected: asyncio.Event, refused: Callable[[], bool] = lambda: False) -> asyncio.Task:
        self.slots = await self._js.key_value("TASKWIRE_SLOTS")
        self.rates = await self._js.key_value("TASKWIRE_RATES")

        def put(key: str, value: bytes) -> None:
            try:
                self._overrides[key] = tasks_pb2.TaskLimits.FromString(value)
            except DecodeError:
                log.warning("task limits of %s do not decode; ignored", key)

        return await _follow_bucket(
            self._js,
            "TASKWIRE_LIMITS",
            put,
            lambda key: self._overrides.pop(key, None),
            lambda: list(self._overrides),
            reconnected,
            refused,
        )

    def effective(self, task: "Task") -> "tuple[int, Optional[Rate]]":
        override = self._overrides.get(token(task.name))
        if override is None:
            return task.options.max_concurrency, task.options.rate_limit
        try:
            rate = Rate.parse(override.rate_limit) if override.rate_limit else None
        except ValueError:
            rate = None
        return override.max_concurrency, rate

    def limited(self, task: "Task") -> bool:
        concurrency, rate = self.effective(task)
        return bool(concurrency) or rate is not None

    async def acquire(self, task: "Task", want: int, stop: asyncio.Event) -> Optional["_Grant"]:
        """Waits until at least one of `want` tasks may start; None when stopping first."""
        while not stop.is_set():
            got = await self.try_acquire(task, want)
            if isinstance(got, _Grant):
                return got
            try:
                await asyncio.wait_for(stop.wait(), got)
            except asyncio.TimeoutError:
                pass
        return None

    async def try_acquire(self, task: "Task", want: int) -> "_Grant | float":
        """A grant for what the limits allow now of `want` starts, or the seconds to wait."""
        concurrency, rate = self.effective(task)
        if not concurrency and rate is None:
            return _Grant(want, [])
        allowed, slots = want, []
        if concurrency:
            slots = await self._take_slots(task, concurrency, allowed)
            allowed = len(slots)
            if not allowed:
                return self.SLOT_RETRY
        key = None
        if rate is not None:
            # Only a look: starts are counted when the tasks are in hand.
            key = f"{token(task.name)}.starts"
            room = await self.room(key, rate, allowed)
            if isinstance(room, float):
                for slot in slots:
                    await slot.free()
                return room
            allowed = room
            for extra in slots[allowed:]:
                await extra.free()
            slots = slots[:allowed]
        return _Grant(allowed, slots, self, key, rate)

    def deferred(self, task: "Task") -> "_Grant":
        """A grant that takes its slot and start only when a task is in hand: an idle worker
        waits for tasks without taking and freeing slots in a loop."""
        return _Grant(1, [], self, deferred=task)

    async def _take_slots(self, task: "Task", limit: int, want: int) -> List["_Slot"]:
        start = now_micros() % limit
        slots: List[_Slot] = []
        for n in range(limit):
            if len(slots) >= want:
                break
            key = f"{token(task.name)}.{(start + n) % limit}"
            try:
                revision = await self.slots.create(key, self._owner)
            except nats.js.errors.KeyWrongLastSequenceError:
                continue
            except Exception as e:
                log.warning("%s: cannot take a concurrency slot: %s", task.name, e)
                break
            slots.append(_Slot(self, key, revision))
        return slots

    # ---- the start log of a rate (docs/protocol.md) ------------------------------------------

    async def _broker_now(self) -> Optional[int]:
        """A lower bound of the broker's time now in µs: its stamp on an answer plus the time
        elapsed here since the answer arrived."""
        if self._clock is not None and time.monotonic() - self._clock[0] < self.CLOCK_FOR:
            return self._clock[1] + int((time.monotonic() - self._clock[0]) * 1e6)
        try:
            reply = await self._nc.request("$JS.API.STREAM.INFO.KV_TASKWIRE_RATES", b"", timeout=5)
            micros = _rfc3339_micros(json.loads(reply.data)["ts"])
        except Exception as e:
            log.warning("cannot read the broker's clock: %s", e)
            return None
        self._clock = (time.monotonic(), micros)
        return micros

    async def _read_log(self, key: str):
        """(items, revision or None) of a start log, every start included."""
        subject = f"$KV.TASKWIRE_RATES.{key}"
        reply = await self._nc.request(f"$JS.API.DIRECT.GET.KV_TASKWIRE_RATES.{subject}", b"", timeout=5)
        headers = reply.headers or {}
        status = headers.get("Status")
        if status == "404":
            return [], None, 0
        if status is not None:
            raise RuntimeError(f"status {status} {headers.get('Description', '')}")
        revision = int(headers["Nats-Sequence"])
        stamped = _rfc3339_micros(headers["Nats-Time-Stamp"])
        if headers.get("KV-Operation") in ("DEL", "PURGE"):
            return [], revision, stamped
        try:
            log_ = json.loads(reply.data)
            items = [(int(t), int(c), int(r)) for t, c, r in log_.get("earlier", [])]
            if int(log_.get("taken", 0)) > 0:
                items.append((stamped, int(log_["taken"]), revision))
        except (ValueError, TypeError, KeyError) as e:
            log.warning("the start log %s does not parse (%s); counting afresh", key, e)
            items = []
        return items, revision, stamped

    async def _window(self, key: str, rate: Rate):
        """(items still counted, revision, seconds until the oldest leaves), or the seconds to
        wait on trouble."""
        try:
            items, revision, stamped = await self._read_log(key)
        except Exception as e:
            log.warning("cannot read the start log %s: %s", key, e)
            return self.TROUBLE
        now = await self._broker_now()
        if now is None:
            return self.TROUBLE
        now = max(now, stamped)
        counted_for = int((rate.per + rate.margin()) * 1e6)
        items = [i for i in items if i[0] + counted_for > now]
        leaves_in = min((i[0] + counted_for - now for i in items), default=0) / 1e6
        return items, revision, leaves_in

    async def room(self, key: str, rate: Rate, want: int) -> "int | float":
        """How many of `want` starts the log has room for now, or the seconds to wait."""
        window = await self._window(key, rate)
        if isinstance(window, float):
            return window
        items, _, leaves_in = window
        room = rate.count - sum(i[1] for i in items)
        if room <= 0:
            return min(max(leaves_in, 0.01), self.LOOK_AGAIN)
        return min(room, want)

    async def take_tokens(self, key: str, rate: Rate, want: int) -> "_Tokens | float":
        """Counts up to `want` starts, or says how many seconds to wait."""
        for _ in range(20):
            window = await self._window(key, rate)
            if isinstance(window, float):
                return window
            items, revision, leaves_in = window
            counted = sum(i[1] for i in items)
            if counted >= rate.count:
                return min(max(leaves_in, 0.01), self.LOOK_AGAIN)
            taken = min(rate.count - counted, want)
            value = json.dumps({"taken": taken, "earlier": [list(i) for i in self._merged(items)]}, separators=(",", ":")).encode()
            try:
                if revision is None:
                    written = await self.rates.create(key, value)
                else:
                    written = await self.rates.update(key, value, last=revision)
            except nats.js.errors.KeyWrongLastSequenceError:
                continue  # another worker counted in between: read again
            except Exception as e:
                log.warning("cannot count rate-limited starts in %s: %s", key, e)
                return self.TROUBLE
            return _Tokens(key, written, taken)
        return 0.05

    def _merged(self, items: list) -> list:
        items = sorted(items)
        while len(items) > self.MAX_ENTRIES:
            closest = min(range(len(items) - 1), key=lambda i: items[i + 1][0] - items[i][0])
            earlier = items.pop(closest)
            t, c, r = items[closest]
            items[closest] = (t, c + earlier[1], r)
        return items

    async def give_back(self, tokens: "_Tokens") -> None:
        """Gives back starts that were counted and not used: lowers the count of the item with
        the revision of the write that counted them. The entry's own `taken` becomes an
        `earlier` item with its stamp and revision, so a give-back never takes over the starts
        another worker counted in the latest write."""
        if tokens.left <= 0:
            return
        for tries in range(20):
            if tries:
                # Others count at the same moment: step aside for a moment.
                await asyncio.sleep(random.random() * 0.005)
            try:
                items, revision, _ = await self._read_log(tokens.key)
            except Exception as e:
                log.debug("cannot read the start log %s to give starts back: %s", tokens.key, e)
                continue
            if revision is None:
                return  # gone: nothing is counted any more
            items = [list(i) for i in items]
            ours = [i for i in items if i[2] == tokens.revision]
            if not ours:
                return  # out of the window, or merged with later starts
            ours[0][1] = max(ours[0][1] - tokens.left, 0)
            earlier = self._merged([tuple(i) for i in items if i[1] > 0])
            value = json.dumps({"taken": 0, "earlier": [list(i) for i in earlier]}, separators=(",", ":")).encode()
            try:
                await self.rates.update(tokens.key, value, last=revision)
                return
            except nats.js.errors.KeyWrongLastSequenceError:
                continue
            except Exception as e:
                log.debug("cannot give starts back to %s: %s", tokens.key, e)
        log.warning("cannot give %d unused starts back to %s; they count until they leave the window", tokens.left, tokens.key)


@dataclass
class _Tokens:
    """Starts this worker counted and has not used yet."""

    key: str
    revision: int
    left: int
    taken_at: float = field(default_factory=time.monotonic)



class _Slot:
    """A concurrency slot held while a task runs: refreshed, and freed after. When it cannot be
    refreshed for most of its lease, the task holding it is told to stop (`on_lost`), before
    another worker may take the slot."""

    LEASE = 20.0
    LEASE_MARGIN = 5.0

    def __init__(self, limits: _Limits, key: str, revision: int):
        self._limits = limits
        self.key = key
        self.revision = revision
        self._lost: List[Callable[[], None]] = []
        self._refresher = asyncio.ensure_future(self._refresh())

    def on_lost(self, callback: Callable[[], None]) -> None:
        self._lost.append(callback)

    async def _refresh(self) -> None:
        refreshed = time.monotonic()
        while True:
            give_up = refreshed + self.LEASE - self.LEASE_MARGIN
            await asyncio.sleep(max(0.0, min(_Limits.SLOT_REFRESH, give_up - time.monotonic())))
            if time.monotonic() >= give_up:
                break
            try:
                self.revision = await asyncio.wait_for(
                    self._limits.slots.update(self.key, self._limits._owner, last=self.revision),
                    timeout=max(0.1, give_up - time.monotonic()),
                )
                refreshed = time.monotonic()
            except asyncio.TimeoutError:
                break
            except Exception as e:
                log.warning("cannot refresh concurrency slot %s: %s", self.key, e)
        log.warning("stopping the task that holds concurrency slot %s, which could not be refreshed", self.key)
        for callback in self._lost:
            callback()

    async def free(self) -> None:
        self._refresher.cancel()
        try:
            # Only if it is still ours: a slot whose lease ran out may be someone else's now.
            await self._limits.slots.delete(self.key, last=self.revision)
        except Exception:
            pass


class _Grant:
    """Leave to start some tasks in one pull round."""

    def __init__(self, allowed: int, slots: List[_Slot], limits: Optional[_Limits] = None, key: Optional[str] = None, rate: Optional[Rate] = None, deferred: Optional["Task"] = None):
        self.allowed = allowed
        self._slots = slots
        self._limits = limits
        self._key = key
        self._rate = rate
        self._deferred = deferred
        self._tokens: Optional[_Tokens] = None

    async def take(self, more: int) -> "Optional[_Slot] | float":
        """One start for a task in hand (`more` more are in hand after it): the slot to hold
        while it runs (None without a concurrency limit), or the seconds to wait when the limits
        allow no start now (another worker counted first)."""
        if self._deferred is not None and self._limits is not None:
            got = await self._limits.try_acquire(self._deferred, 1)
            if not isinstance(got, _Grant):
                return got
            self.allowed, self._slots, self._key, self._rate, self._deferred = got.allowed, got._slots, got._key, got._rate, None
        if self._rate is not None and self._limits is not None and self._key is not None:
            tokens = self._tokens
            if tokens is None or tokens.left <= 0 or time.monotonic() - tokens.taken_at >= self._rate.margin() / 2:
                if tokens is not None:
                    self._tokens = None
                    await self._limits.give_back(tokens)
                got_tokens = await self._limits.take_tokens(self._key, self._rate, min(more + 1, self.allowed))
                if not isinstance(got_tokens, _Tokens):
                    return got_tokens
                self._tokens = got_tokens
            self._tokens.left -= 1
        return self._slots.pop() if self._slots else None

    async def close(self) -> None:
        for slot in self._slots:
            await slot.free()
        self._slots = []
        if self._tokens is not None and self._limits is not None:
            tokens, self._tokens = self._tokens, None
            await self._limits.give_back(tokens)
