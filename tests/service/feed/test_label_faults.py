"""Labels under a full Redis (``maxmemory`` with ``noeviction``): a label is published or not taken, and a labelled
record Redis refuses waits to be written again; never a 200 for a label the monitor will not see."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import redis
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from common import keys
from helpers import event, full_redis, stream_entries, wait_until
from monitors.feed import MonitoringRecord
from service.feed.labels import _PUBLISH

LABELLED = {"digits": {"delayed_labels": True}}
"""Predictions of ``digits`` wait in Redis for their labels from the first event."""


def _labelled(redis_client: redis.Redis) -> list[MonitoringRecord]:
    entries = stream_entries(redis_client, keys.labelled_feed("digits"))
    return [MonitoringRecord.from_entry("digits", fields) for _, fields in entries]


def _label(request_id: str, label: int) -> dict[str, Any]:
    return {"labels": [{"model": "digits", "request_id": request_id, "label": label}]}


def test_a_label_redis_cannot_publish_is_503_and_its_record_waits_for_it_again(
    make_client: Callable[..., TestClient], redis_client: redis.Redis
) -> None:
    """The audit's defect: the record was taken (a delete is allowed under OOM), the answer said matched, and the
    labelled record Redis then refused was lost with no way to send the label again."""
    registry = CollectorRegistry()
    client = make_client(registry=registry, models=LABELLED)
    assert client.post("/v1/events", json=event("oom1")).status_code == 202
    wait_until(lambda: redis_client.exists(keys.prediction("digits", "oom1")), what="the record in Redis")
    with full_redis(redis_client):
        refused = client.post("/v1/labels", json=_label("oom1", 2))
        assert refused.status_code == 503, refused.text
        assert refused.headers["retry-after"].isdigit()
        assert redis_client.exists(keys.prediction("digits", "oom1")), "the record was taken"
    assert not redis_client.exists(keys.labelled_feed("digits"))
    assert registry.get_sample_value("vai_labels_total", {"model": "digits", "matched": "true"}) is None

    answer = client.post("/v1/labels", json=_label("oom1", 2)).json()
    assert answer["matched"] == 1 and answer["unmatched"] == []
    [record] = _labelled(redis_client)
    assert (record.request_id, record.label) == ("oom1", 2)
    assert redis_client.get(keys.prediction("digits", "oom1")) == b"joined:2"
    assert registry.get_sample_value("vai_labels_total", {"model": "digits", "matched": "true"}) == 1
    written = {"model": "digits", "feed": "labelled"}
    assert registry.get_sample_value("vai_feed_records_written_total", written) == 1


def test_a_labelled_record_redis_refuses_waits_and_is_written_once_it_has_room(
    make_client: Callable[..., TestClient], redis_client: redis.Redis
) -> None:
    """A labelled record that goes through the buffer (the label came with its event, or found its record still
    here) is not dropped when Redis is full: it waits, counted once however often it is refused."""
    registry = CollectorRegistry()
    client = make_client(registry=registry)

    def figure(name: str, **labels: str) -> float:
        return registry.get_sample_value(name, {"model": "digits", **labels}) or 0.0

    with full_redis(redis_client):
        assert client.post("/v1/events", json=event("oom2", label=1)).status_code == 202
        wait_until(lambda: figure("vai_feed_records_refused_total", feed="labelled") == 1, what="the refusal")
        wait_until(
            lambda: figure("vai_feed_records_dropped_total", feed="predictions", reason="redis_error") == 1,
            what="the drift record dropped",
        )
    wait_until(lambda: _labelled(redis_client), what="the labelled record written")
    [record] = _labelled(redis_client)
    assert (record.request_id, record.label) == ("oom2", 1)
    assert figure("vai_feed_records_written_total", feed="labelled") == 1
    assert figure("vai_feed_records_refused_total", feed="labelled") == 1, "counted once, refused many times"
    assert figure("vai_feed_records_dropped_total", feed="labelled", reason="redis_error") == 0


def test_a_record_another_label_took_or_replaced_since_it_was_read_is_left_alone(redis_client: redis.Redis) -> None:
    """Between the read and the publishing script another replica may take the record: the script publishes and
    replaces (with the joined marker, for a while) only a record still as it was read."""
    feed, record = keys.labelled_feed("digits"), keys.prediction("digits", "r1")
    redis_client.set(record, b"written since")
    assert redis_client.eval(_PUBLISH, 2, feed, record, 100, "r", 60, b"labelled", b"as read", b"joined:1") == [-1]
    assert redis_client.get(record) == b"written since"
    assert not redis_client.exists(feed)
    published = redis_client.eval(_PUBLISH, 2, feed, record, 100, "r", 60, b"labelled", b"written since", b"joined:1")
    assert published == [0]
    assert redis_client.get(record) == b"joined:1" and 0 < redis_client.ttl(record) <= 60
    assert [fields for _, fields in stream_entries(redis_client, feed)] == [{b"r": b"labelled"}]
    assert redis_client.eval(_PUBLISH, 2, feed, record, 100, "r", 60, b"again", b"written since", b"joined:1") == [-1]
