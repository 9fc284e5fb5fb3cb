"""The monitoring record: what a sidecar publishes and the monitor reads back."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from monitors.feed import ENTRY_FIELD, FeedFormatError, MonitoringRecord


def _record(**fields: Any) -> MonitoringRecord:
    values: dict[str, Any] = {
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
    return MonitoringRecord(**values)


def test_an_entry_round_trips_exactly_with_the_embedding_as_float32_bytes() -> None:
    record = _record()
    blob = record.blob()
    assert len(blob) - len(record.blob(embedding=False)) == 5 + 5 * 4, "the embedding part: tag, length, float32s"
    back = MonitoringRecord.from_entry("m", {ENTRY_FIELD: blob})
    assert record.probabilities is not None and record.embedding is not None
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
    blob = _record().labelled(1).blob()
    back = MonitoringRecord.from_blob("m", blob)
    assert back.label == 1 and back.embedding is None and back.confidence == 0.7


def test_optional_parts_are_absent_not_empty() -> None:
    blob = _record(probabilities=None, embedding=None, cohort={}).blob()
    assert b'"co"' not in blob
    back = MonitoringRecord.from_blob("m", blob)
    assert back.probabilities is None and back.embedding is None and back.cohort == {}


def _part(tag: bytes, value: bytes) -> bytes:
    return tag + len(value).to_bytes(4, "little") + value


GOOD_HEADER = b'{"id":"r","ver":"v","t":1.0,"c":0,"p":0.5,"m":0.0,"n":2}'


@pytest.mark.parametrize(
    "blob",
    [
        pytest.param(_part(b"v", b"2") + _part(b"h", GOOD_HEADER), id="newer-version"),
        pytest.param(_part(b"h", GOOD_HEADER), id="no-version"),
        pytest.param(_part(b"v", b"1") + _part(b"h", b"not json"), id="header-not-json"),
        pytest.param(_part(b"v", b"1") + _part(b"h", b'{"id": "r"}'), id="header-missing-fields"),
        pytest.param(_part(b"v", b"1") + _part(b"h", b"[1, 2]"), id="header-not-an-object"),
        pytest.param(
            _part(b"v", b"1") + _part(b"h", GOOD_HEADER) + _part(b"e", b"\x00\x01\x02"), id="embedding-ragged"
        ),
        pytest.param(_part(b"v", b"1") + _part(b"h", GOOD_HEADER) + _part(b"p", bytes(24)), id="probabilities-3-of-2"),
    ],
)
def test_what_is_not_a_record_is_refused_with_a_reason(blob: bytes) -> None:
    with pytest.raises(FeedFormatError):
        MonitoringRecord.from_blob("m", blob)


def test_an_entry_without_the_record_field_is_refused() -> None:
    with pytest.raises(FeedFormatError):
        MonitoringRecord.from_entry("m", {b"h": b"{}"})


def test_a_truncated_blob_is_refused() -> None:
    with pytest.raises(FeedFormatError):
        MonitoringRecord.from_blob("m", _record().blob()[:-3])


@pytest.mark.parametrize(
    "fields",
    [
        pytest.param({"embedding": np.array([0.5, np.nan], np.float32)}, id="embedding-nan"),
        pytest.param({"embedding": np.array([np.inf, 0.5], np.float32)}, id="embedding-inf"),
        pytest.param({"probabilities": np.array([0.1, np.nan, 0.7])}, id="probabilities-nan"),
        pytest.param({"probabilities": np.array([-0.5, 0.8, 0.7])}, id="probabilities-negative"),
        pytest.param({"confidence": float("nan")}, id="confidence-nan"),
        pytest.param({"confidence": 1.5}, id="confidence-above-1"),
        pytest.param({"margin": float("inf")}, id="margin-inf"),
        pytest.param({"time_s": float("nan")}, id="time-nan"),
        pytest.param({"predicted": 3}, id="predicted-past-the-classes"),
        pytest.param({"predicted": -1}, id="predicted-negative"),
        pytest.param({"label": 3}, id="label-past-the-classes"),
    ],
)
def test_a_record_no_sidecar_writes_is_refused(fields: dict[str, Any]) -> None:
    """Values a sidecar never publishes would turn drift scores or calibration into NaN: the record is refused
    (and counted as invalid by its reader), never examined."""
    with pytest.raises(FeedFormatError):
        MonitoringRecord.from_blob("m", _record(**fields).blob())


def test_a_probability_a_rounding_past_1_is_read() -> None:
    back = MonitoringRecord.from_blob("m", _record(confidence=1.0 + 1e-12).blob())
    assert back.confidence == 1.0 + 1e-12
