"""The monitoring record: what a sidecar publishes and the monitor reads back."""

from __future__ import annotations

import numpy as np
import pytest

from monitors.feed import FeedFormatError, MonitoringRecord


def _record(**fields: object) -> MonitoringRecord:
    values: dict[str, object] = {
        "model": "m",
        "request_id": "r1",
        "version": "v2",
        "time_s": 1_700_000_000.25,
        "predicted": 2,
        "confidence": 0.7,
        "margin": 1.25,
        "num_classes": 3,
        "cohort": {"region": "eu"},
        "probabilities": np.array([0.1, 0.2, 0.7]),
        "embedding": np.arange(5, dtype=np.float32) / 3,
    }
    values.update(fields)
    return MonitoringRecord(**values)  # type: ignore[arg-type]


def test_fields_round_trip_exactly_with_the_embedding_as_float32_bytes() -> None:
    record = _record()
    fields = record.to_fields()
    assert fields[b"v"] == b"1" and len(fields[b"e"]) == 5 * 4 and len(fields[b"p"]) == 3 * 8
    back = MonitoringRecord.from_fields("m", fields)
    assert back.probabilities is not None and back.embedding is not None
    np.testing.assert_array_equal(back.probabilities, record.probabilities)  # float64: pooled figures stay exact
    np.testing.assert_array_equal(back.embedding, record.embedding)
    assert (back.request_id, back.version, back.time_s, back.cohort, back.label) == (
        "r1",
        "v2",
        1_700_000_000.25,
        {"region": "eu"},
        None,
    )


def test_a_labelled_blob_keeps_the_prediction_and_drops_the_embedding() -> None:
    blob = _record().labelled(1).to_blob()
    back = MonitoringRecord.from_blob("m", blob)
    assert back.label == 1 and back.embedding is None and back.confidence == 0.7


def test_optional_parts_are_absent_not_empty() -> None:
    fields = _record(probabilities=None, embedding=None, cohort={}).to_fields()
    assert set(fields) == {b"v", b"h"}
    back = MonitoringRecord.from_fields("m", fields)
    assert back.probabilities is None and back.embedding is None and back.cohort == {}


@pytest.mark.parametrize(
    "fields",
    [
        pytest.param({b"v": b"2", b"h": b"{}"}, id="newer-version"),
        pytest.param({b"h": b"{}"}, id="no-version"),
        pytest.param({b"v": b"1", b"h": b"not json"}, id="header-not-json"),
        pytest.param({b"v": b"1", b"h": b'{"id": "r"}'}, id="header-missing-fields"),
        pytest.param({**_record().to_fields(), b"e": b"\x00\x01\x02"}, id="embedding-not-whole-floats"),
        pytest.param({**_record().to_fields(), b"p": np.zeros(4).tobytes()}, id="probabilities-wrong-length"),
    ],
)
def test_what_is_not_a_record_is_refused_with_a_reason(fields: dict[bytes, bytes]) -> None:
    with pytest.raises(FeedFormatError):
        MonitoringRecord.from_fields("m", fields)


def test_a_truncated_blob_is_refused() -> None:
    with pytest.raises(FeedFormatError):
        MonitoringRecord.from_blob("m", _record().to_blob()[:-3])
