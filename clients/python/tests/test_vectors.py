"""The Python runtime reads what the Rust runtime reads: shared test vectors."""

import json
import os

import pytest

import taskwire.protocol as protocol
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
    # The value the Rust runtime's unit test expects too (testing/vectors/protocol.json).
    assert first == "800023c8c1e052b38052b5e8a7a968f2"
    assert first == scheduled_task_id("examples.chaos.v1.Chaos/Sleep", "nightly", "2026-11-29T22:22:06Z", 42)
    assert first != scheduled_task_id("examples.chaos.v1.Chaos/Sleep", "nightly", "2026-11-29T22:22:07Z", 18)


def _protocol():
    with open(os.path.join(VECTORS, "protocol.json")) as f:
        return json.load(f)


def test_streams_and_headers_are_named_as_the_vectors_say():
    vectors = _protocol()
    assert vectors["streams"] == {
        "tasks": protocol.TASKS_STREAM,
        "results": protocol.RESULTS_STREAM,
        "events": protocol.EVENTS_STREAM,
        "dead": protocol.DEAD_STREAM,
    }
    for key, name in vectors["headers"].items():
        assert getattr(protocol, key.upper() if key != "ttl" else "NATS_TTL") == name, key


@pytest.mark.parametrize("case", _protocol()["tasks"], ids=lambda c: c["task"])
def test_subjects_consumers_and_message_ids_are_as_the_vectors_say(case):
    task, task_id = case["task"], case["id"]
    assert protocol.token(task) == case["token"]
    for level in ("high", "normal", "low"):
        assert protocol.task_subject(task, level) == case["queues"][level]
        assert protocol.consumer_name(task, level) == case["consumers"][level]
    assert protocol.result_subject(task, task_id) == case["result"]
    assert protocol.results_of(task_id) == case["results_of_id"]
    assert protocol.event_subject(task, task_id) == case["event"]
    assert protocol.dead_subject(task, task_id) == case["dead"]
    for series, msg_id in case["result_msg_id"].items():
        assert protocol.result_msg_id(task_id, series) == msg_id


@pytest.mark.parametrize("case", _protocol()["scheduled_ids"], ids=lambda c: str(c["sequence"]))
def test_scheduled_ids_are_as_the_vectors_say(case):
    assert scheduled_task_id(case["task"], case["schedule"], case["next"], case["sequence"]) == case["id"]


def test_the_codes_tried_again_are_those_of_the_vectors():
    vectors = _protocol()
    assert protocol.TRANSIENT_CODES == frozenset(vectors["transient_codes"])
    assert protocol.WRONG_LAST_SEQUENCE == vectors["wrong_last_sequence"]


def test_dead_letter_reasons_are_those_of_the_vectors():
    assert list(protocol.DEAD_REASONS) == _protocol()["dead_reasons"]
