"""The feed writer's buffer: bounded, oldest first, and a label takes its waiting record by key."""

from __future__ import annotations

from service.feed.buffer import RECORDS, FeedBuffer, Pending


def _record(request_id: str, feed: str = RECORDS) -> Pending:
    return Pending(feed, "digits", request_id, request_id.encode())


def test_the_oldest_leaves_first_when_full_and_is_lost_unless_a_label_took_it() -> None:
    buffer = FeedBuffer(max_records=2)
    assert buffer.append(_record("a")) is None and buffer.append(_record("b")) is None
    lost = buffer.append(_record("c"))
    assert lost is not None and lost.request_id == "a" and not buffer.waits_here("digits", "a")
    assert buffer.take("digits", "b") == b"b"
    assert buffer.append(_record("d")) is None, "b was taken: pushing it out loses nothing"
    assert len(buffer) == 2 and buffer.stored == 2


def test_a_taken_record_is_skipped_when_its_turn_comes() -> None:
    buffer = FeedBuffer(max_records=10)
    for request_id in ("a", "b", "c"):
        buffer.append(_record(request_id))
    buffer.append(_record("a", feed="predictions"))  # the same id on another feed is not a label-join record
    assert buffer.take("digits", "b") == b"b" and buffer.take("digits", "b") is None
    buffer.keep_taken()
    batch, left_queue = buffer.next_batch(10)
    assert [(item.feed, item.request_id) for item in batch] == [(RECORDS, "a"), (RECORDS, "c"), ("predictions", "a")]
    assert left_queue == 4 and buffer.stored == 0 and len(buffer) == 0


def test_given_back_records_wait_again_and_those_pushed_out_meanwhile_are_reported() -> None:
    buffer = FeedBuffer(max_records=2)
    buffer.append(_record("a"))
    buffer.append(_record("b"))
    assert buffer.take("digits", "a") is not None and buffer.take("digits", "b") is not None
    assert buffer.append(_record("c")) is None  # pushes out a, which was taken
    lost = buffer.give_back()
    assert [item.request_id for item in lost] == ["a"]
    assert buffer.waits_here("digits", "b") and len(buffer) == 2


def test_a_batch_put_back_keeps_its_place_and_clear_returns_what_was_still_to_write() -> None:
    buffer = FeedBuffer(max_records=10)
    for request_id in ("a", "b", "c"):
        buffer.append(_record(request_id))
    batch, _ = buffer.next_batch(2)
    buffer.put_back(batch)
    assert [item.request_id for item in buffer.next_batch(10)[0]] == ["a", "b", "c"]
    buffer.append(_record("x"))
    buffer.append(_record("y"))
    buffer.take("digits", "y")
    assert [item.request_id for item in buffer.clear()] == ["x"], "y was taken: nothing left to write of it"
    assert buffer.stored == 0 and len(buffer) == 0


def test_one_taken_record_given_back_waits_again_and_the_others_stay_taken() -> None:
    """A label refused for its class gives its record back alone; the request's other labels joined theirs."""
    buffer = FeedBuffer(max_records=3)
    for request_id in ("a", "b"):
        buffer.append(_record(request_id))
    assert buffer.take("digits", "a") is not None and buffer.take("digits", "b") is not None
    assert buffer.give_back_one("digits", "a") is None
    buffer.keep_taken()
    assert buffer.waits_here("digits", "a") and not buffer.waits_here("digits", "b")
    assert buffer.take("digits", "a") == b"a", "a corrected label still finds it"
    buffer.append(_record("c"))
    buffer.append(_record("d"))
    buffer.append(_record("e"))  # the full queue pushes the taken a out
    lost = buffer.give_back_one("digits", "a")
    assert lost is not None and lost.request_id == "a", "pushed out while taken: lost, to be counted"
