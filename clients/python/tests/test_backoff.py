"""The worker's one way to try a call again: waits that double up to a longest one, within a
patience (as the Rust runtime's `Backoff`)."""

import asyncio

from taskwire.protocol import Backoff


def test_waits_double_up_to_the_longest():
    backoff = Backoff(0.1, 0.35)
    assert [backoff.next_wait() for _ in range(4)] == [0.1, 0.2, 0.35, 0.35]
    backoff.reset(0.1)
    assert backoff.next_wait() == 0.1


def test_patience_ends_the_tries():
    assert Backoff(1.0, 1.0, patience=1.5).next_wait() == 1.0
    short = Backoff(2.0, 2.0, patience=1.0)
    assert short.next_wait() is None
    assert asyncio.run(short.wait()) is False
