"""The Python runtime reads what the Rust runtime reads: shared test vectors."""

import json
import os

import pytest

from taskwire.worker import parse_duration

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
