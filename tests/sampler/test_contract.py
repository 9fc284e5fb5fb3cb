"""The queue message: versioned JSON, never pickle."""

from __future__ import annotations

import json
import math
import pickle

import numpy as np
import pytest

from sampler.contract import MESSAGE_FIELD, InputTensor, MessageError, SampledEvent


def message(**fields: object) -> SampledEvent:
    values: dict[str, object] = {
        "model": "digits",
        "model_version": "v1",
        "request_id": "r",
        "timestamp": 1.0,
        "received_at": 2.0,
        "reasons": ("every_n",),
        "predicted": 3,
        "confidence": 0.9,
        "margin": 2.0,
        "num_classes": 10,
    }
    values.update(fields)
    return SampledEvent.model_validate(values)


def test_round_trip_with_input() -> None:
    image = np.arange(64, dtype=np.float32).reshape(1, 8, 8)
    original = message(input=InputTensor.of(image), cohort={"region": "eu"}, label=4)
    decoded = SampledEvent.decode(original.encode())
    assert decoded == original
    assert decoded.input is not None
    np.testing.assert_array_equal(decoded.input.decode(), image)


@pytest.mark.parametrize(
    "fields",
    [
        pytest.param({MESSAGE_FIELD: pickle.dumps({"model": "digits"})}, id="pickled"),
        pytest.param({b"other": b"{}"}, id="wrong-field"),
        pytest.param({MESSAGE_FIELD: b'{"v": 2, "model": "digits"}'}, id="unknown-version"),
        pytest.param({MESSAGE_FIELD: b"not json"}, id="not-json"),
        pytest.param({MESSAGE_FIELD: message().encode()[MESSAGE_FIELD], b"extra": b"1"}, id="extra-field"),
    ],
)
def test_malformed_entries_raise_message_error(fields: dict[bytes, bytes]) -> None:
    with pytest.raises(MessageError):
        SampledEvent.decode(fields)


def test_input_with_wrong_byte_count_is_refused() -> None:
    tensor = InputTensor(shape=(2, 2), dtype="float32", data="AAAAAA==")
    with pytest.raises(MessageError, match="do not fit shape"):
        tensor.decode()


@pytest.mark.parametrize(
    ("field", "value"),
    [
        pytest.param("timestamp", math.nan, id="nan-timestamp"),
        pytest.param("timestamp", math.inf, id="inf-timestamp"),
        pytest.param("received_at", -math.inf, id="minus-inf-received-at"),
        pytest.param("confidence", math.nan, id="nan-confidence"),
        pytest.param("margin", math.inf, id="inf-margin"),
    ],
)
def test_non_finite_numbers_are_refused_naming_the_field(field: str, value: float) -> None:
    """pydantic's JSON parser reads ``NaN`` and ``Infinity`` (``json.dumps`` writes them); none is an event time
    or a probability, and a stored one breaks the explanation store."""
    values = message().model_dump(mode="json") | {field: value}
    with pytest.raises(MessageError, match=f"{field}: Input should be a finite number"):
        SampledEvent.decode({MESSAGE_FIELD: json.dumps(values).encode()})
