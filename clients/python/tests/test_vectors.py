"""The Python runtime reads what the Rust runtime reads: shared test vectors."""

import json
import os

import pytest

from taskwire.worker import parse_duration, scheduled_task_id

VECTORS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "testing", "vectors")


def _cases(name):
    with open(os.path.join(VECTORS, name)) as f:
        return json.load(f)["cases"]


@pytest.mark.parametrize("case", _cases("durations.json"), ids=lambda c: repr(c["text"]))
def test_durations_read_as_the_shared_vectors_say(case):
    if case["millis"] is None:
        with pytest.raises(ValueError):
            parse_duration(case["text"])
    else:
        assert int(parse_duration(case["text"]) * 1000) == case["millis"]


def test_a_tick_fired_twice_is_one_task_with_the_id_the_rust_runtime_makes():
    first = scheduled_task_id("examples.chaos.v1.Chaos/Sleep", "nightly", "2026-11-29T22:22:06Z", 17)
    # The value the Rust runtime's unit test expects too (src/broker.rs).
    assert first == "800023c8c1e052b38052b5e8a7a968f2"
    assert first == scheduled_task_id("examples.chaos.v1.Chaos/Sleep", "nightly", "2026-11-29T22:22:06Z", 42)
    assert first != scheduled_task_id("examples.chaos.v1.Chaos/Sleep", "nightly", "2026-11-29T22:22:07Z", 18)
