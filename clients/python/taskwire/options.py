"""Submit options as keyword arguments, turned into a `taskwire.v1.SubmitOptions`."""

import datetime
from typing import Optional, Union

from google.protobuf import duration_pb2, timestamp_pb2

from taskwire.v1 import tasks_pb2

Seconds = Union[int, float, datetime.timedelta]

PRIORITIES = {
    None: tasks_pb2.PRIORITY_UNSPECIFIED,
    "high": tasks_pb2.PRIORITY_HIGH,
    "normal": tasks_pb2.PRIORITY_NORMAL,
    "low": tasks_pb2.PRIORITY_LOW,
}


def _duration(value: Optional[Seconds]) -> Optional[duration_pb2.Duration]:
    if value is None:
        return None
    d = duration_pb2.Duration()
    d.FromTimedelta(value if isinstance(value, datetime.timedelta) else datetime.timedelta(seconds=value))
    return d


def _timestamp(value: Optional[datetime.datetime]) -> Optional[timestamp_pb2.Timestamp]:
    if value is None:
        return None
    t = timestamp_pb2.Timestamp()
    t.FromDatetime(value if value.tzinfo else value.replace(tzinfo=datetime.timezone.utc))
    return t


def submit_options(
    idempotency_key: Optional[str] = None,
    max_attempts: Optional[int] = None,
    timeout: Optional[Seconds] = None,
    countdown: Optional[Seconds] = None,
    eta: Optional[datetime.datetime] = None,
    priority: Optional[str] = None,
    ttl: Optional[Seconds] = None,
    expires: Optional[datetime.datetime] = None,
    result_ttl: Optional[Seconds] = None,
) -> tasks_pb2.SubmitOptions:
    """The gateway's SubmitOptions; `eta` is Celery's name for not_before."""
    if priority not in PRIORITIES:
        raise ValueError(f"priority {priority!r} is not one of 'high', 'normal', 'low'")
    options = tasks_pb2.SubmitOptions(
        idempotency_key=idempotency_key or "",
        max_attempts=max_attempts or 0,
        priority=PRIORITIES[priority],
    )
    for field, value in [
        ("timeout", _duration(timeout)),
        ("countdown", _duration(countdown)),
        ("ttl", _duration(ttl)),
        ("result_ttl", _duration(result_ttl)),
        ("not_before", _timestamp(eta)),
        ("expires_at", _timestamp(expires)),
    ]:
        if value is not None:
            getattr(options, field).CopyFrom(value)
    return options
