"""The ingest buffer says how many of the first events appended are settled: examined, drained, or dropped."""

from __future__ import annotations

import pytest

from monitors.drift.base import DriftEvent
from monitors.drift.buffer import IngestBuffer


def events(count: int) -> list[DriftEvent]:
    return [DriftEvent(index, 0.5, None, 0.0) for index in range(count)]


def test_a_batch_being_examined_is_settled_only_when_its_block_ends() -> None:
    buffer = IngestBuffer(capacity_events=10)
    for event in events(5):
        buffer.append(event)
    with buffer.examine(3) as batch:
        assert [event.predicted for event in batch] == [0, 1, 2]
        assert buffer.drain(10) and buffer.settled_total == 0  # passed over after it: still behind the batch
    assert buffer.settled_total == 5 == buffer.appended_total


def test_a_batch_the_detectors_fail_on_is_settled_all_the_same() -> None:
    buffer = IngestBuffer(capacity_events=10)
    for event in events(2):
        buffer.append(event)
    with pytest.raises(RuntimeError), buffer.examine(2):
        raise RuntimeError("detector failed")
    assert buffer.settled_total == 2


def test_events_dropped_by_a_full_buffer_are_settled() -> None:
    buffer = IngestBuffer(capacity_events=3)
    for event in events(5):
        buffer.append(event)
    assert buffer.settled_total == 2
    with buffer.examine(1):
        assert buffer.settled_total == 2
    assert buffer.settled_total == 3
