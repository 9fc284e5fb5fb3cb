"""The short lanes for well-formed tensor bodies: they answer for the bodies serving stacks send, and
whatever they answer is exactly what the general readers answer; anything else they leave to them."""

from __future__ import annotations

import base64
import json
from typing import Any

import msgspec
import numpy as np
import numpy.typing as npt
import pytest

from helpers import binary_body, binary_tensor, event
from service.binary_body import decode_binary
from service.parsing import Decoded, decode_body, read_tensors
from service.schemas import EventIn
from service.tensor_lanes import decode_binary_fast, decode_compact

RNG = np.random.default_rng(11)
FIELDS = EventIn.__struct_fields__


def _compact(array: npt.NDArray[Any]) -> dict[str, Any]:
    raw = array.astype(array.dtype.newbyteorder("<")).tobytes()
    return {"shape": list(array.shape), "dtype": array.dtype.name, "data": base64.b64encode(raw).decode()}


def _events(count: int, dtype: str = "float32", *, classes: int = 10, dims: int = 8) -> list[dict[str, Any]]:
    return [
        event(
            f"r{index}",
            model="lanes",
            logits=RNG.normal(size=classes).astype(dtype),
            embedding=RNG.normal(size=dims).astype(dtype),
            cohort={"region": "eu"},
        )
        for index in range(count)
    ]


def _compact_body(events: list[dict[str, Any]]) -> bytes:
    encoded = [
        {key: _compact(value) if isinstance(value, np.ndarray) else value for key, value in item.items()}
        for item in events
    ]
    return json.dumps(encoded[0] if len(encoded) == 1 else {"events": encoded}).encode()


def _binary(events: list[dict[str, Any]], datatype: str = "FP32") -> tuple[bytes, str]:
    sections, documents = [], []
    for item in events:
        document = {}
        for key, value in item.items():
            if isinstance(value, np.ndarray):
                document[key], raw = binary_tensor(value, datatype)
                sections.append(raw)
            else:
                document[key] = value
        documents.append(document)
    body, headers = binary_body({"events": documents}, sections)
    return body, headers["inference-header-content-length"]


def _same(lane: list[Decoded], general: list[Decoded]) -> None:
    assert len(lane) == len(general)
    for found, expected in zip(lane, general, strict=True):
        assert isinstance(found, EventIn) and isinstance(expected, EventIn), (found, expected)
        for name in FIELDS:
            mine, theirs = getattr(found, name), getattr(expected, name)
            if isinstance(theirs, np.ndarray):
                assert isinstance(mine, np.ndarray) and mine.dtype == theirs.dtype, name
                np.testing.assert_array_equal(mine, theirs)
            else:
                assert mine == theirs, name


@pytest.mark.parametrize("dtype", ["float32", "float64", "float16", "int16", "uint8"])
def test_a_compact_batch_takes_the_lane_and_reads_as_the_general_reader_does(dtype: str) -> None:
    body = _compact_body(_events(7, dtype))
    lane = decode_compact(body, max_batch=50)
    assert lane is not None
    _same(lane, read_tensors(decode_body(body, max_batch=50)))
    assert lane[0].logits.dtype == (np.float32 if dtype == "float32" else np.float64)  # type: ignore[union-attr]


def test_a_single_compact_event_takes_the_lane() -> None:
    body = _compact_body(_events(1))
    lane = decode_compact(body, max_batch=50)
    assert lane is not None
    _same(lane, read_tensors(decode_body(body, max_batch=50)))


@pytest.mark.parametrize("datatype", ["FP32", "FP64", "FP16", "INT8", "INT64"])
def test_a_binary_batch_takes_the_lane_and_reads_as_the_general_reader_does(datatype: str) -> None:
    dtype = {"FP32": "float32", "FP64": "float64", "FP16": "float16", "INT8": "int8", "INT64": "int64"}[datatype]
    body, length = _binary(_events(9, dtype), datatype)
    lane = decode_binary_fast(body, length, max_batch=50)
    assert lane is not None
    _same(lane, read_tensors(decode_binary(body, length, max_batch=50)))


def _compact_variants() -> dict[str, bytes]:
    """Bodies the compact lane must leave to the general reader (each is odd in one way)."""
    events = _events(4)
    nan = RNG.normal(size=10).astype(np.float32)
    nan[3] = np.nan
    good = _compact_body(events)
    escaped = good.replace(b"/", b"\\/", 1)  # valid JSON, the same string, but not plain base64 in the body
    assert escaped != good
    document = json.loads(_compact_body(events))
    number_data = json.loads(json.dumps(document))
    number_data["events"][1]["logits"]["data"] = 1234567890
    wrong_length = json.loads(json.dumps(document))
    wrong_length["events"][2]["embedding"]["shape"] = [9]
    bad_base64 = json.loads(json.dumps(document))
    bad_base64["events"][0]["logits"]["data"] = "not base64!"
    return {
        "nan": _compact_body([*events[:2], {**events[2], "logits": nan}, events[3]]),
        "mixed dtypes": _compact_body([*events[:3], {**events[3], "logits": events[3]["logits"].astype(np.float64)}]),
        "a missing embedding": _compact_body([*events[:3], {k: v for k, v in events[3].items() if k != "embedding"}]),
        "a list of numbers": _compact_body([*events[:3], {**events[3], "logits": [4.0, 1.0, 0.5]}]),
        "shape [1, n] beside [n]": _compact_body([*events[:3], {**events[3], "logits": events[3]["logits"][None]}]),
        "escaped base64": escaped,
        "data a number": json.dumps(number_data).encode(),
        "wrong length": json.dumps(wrong_length).encode(),
        "bad base64": json.dumps(bad_base64).encode(),
        "a bad model name": _compact_body([*events[:3], {**events[3], "model": "no spaces"}]),
        "a model name ending in a newline": _compact_body([*events[:3], {**events[3], "model": "nl\n"}]),
        "a bad version": _compact_body([*events[:3], {**events[3], "model_version": "v 1"}]),
        "a version not a string": _compact_body([*events[:3], {**events[3], "model_version": 2}]),
        "an unknown key": _compact_body([*events[:3], {**events[3], "extra": 1}]),
        "too many events": _compact_body(_events(51)),
    }


@pytest.mark.parametrize("case", list(_compact_variants()))
def test_the_compact_lane_leaves_every_odd_body_to_the_general_reader(case: str) -> None:
    assert decode_compact(_compact_variants()[case], max_batch=50) is None


def _binary_variants() -> dict[str, tuple[bytes, str]]:
    events = _events(4)
    body, length = _binary(events)
    reordered = [*events[:3], {key: events[3][key] for key in ("model", "request_id", "embedding", "logits")}]
    model_input = {**events[3], "input": RNG.normal(size=(2, 2)).astype(np.float32)}
    nan = RNG.normal(size=10).astype(np.float32)
    nan[0] = np.inf
    return {
        "another field order": _binary(reordered),
        "an input section": _binary([*events[:3], model_input]),
        "inf": _binary([{**events[0], "logits": nan}, *events[1:]]),
        "mixed dtypes": _binary([*events[:3], {**events[3], "logits": events[3]["logits"].astype(np.float64)}]),
        "a trailing byte": (body + b"\0", length),
        "a missing byte": (body[:-1], length),
        "a header length past the body": (body, str(len(body) + 1)),
        "a header length that is not a number": (body, "12a"),
        "a bad model name": _binary([*events[:3], {**events[3], "model": "no spaces"}]),
        "a model name ending in a newline": _binary([*events[:3], {**events[3], "model": "nl\n"}]),
        "a bad version": _binary([*events[:3], {**events[3], "model_version": "v 1"}]),
        "a list as datatype": _edited_header(body, length, 0, "datatype", ["FP32"]),
        "a float size in a later event": _edited_header(body, length, 2, "parameters", {"binary_data_size": 40.0}),
        "a float in a later event's shape": _edited_header(body, length, 2, "shape", [10.0]),
        "true for 1 in a later event's shape": _edited_header(body, length, 2, "shape", [True, 10]),
    }


def _edited_header(body: bytes, length: str, index: int, key: str, value: Any) -> tuple[bytes, str]:
    """``body`` with one key of event ``index``'s logits tensor replaced (``==`` may call the new value equal)."""
    document = json.loads(body[: int(length)])
    document["events"][index]["logits"][key] = value
    header = json.dumps(document).encode()
    return header + body[int(length) :], str(len(header))


@pytest.mark.parametrize("case", list(_binary_variants()))
def test_the_binary_lane_leaves_every_odd_body_to_the_general_reader(case: str) -> None:
    body, length = _binary_variants()[case]
    assert decode_binary_fast(body, length, max_batch=50) is None


def test_duplicate_keys_read_alike_in_the_lane_and_the_general_reader() -> None:
    events = _events(2)
    other = _compact(RNG.normal(size=10).astype(np.float32))
    body = _compact_body(events).replace(b'"logits": ', b'"logits": ' + json.dumps(other).encode() + b', "logits": ', 1)
    lane = decode_compact(body, max_batch=50)
    assert lane is not None
    _same(lane, read_tensors(decode_body(body, max_batch=50)))
    np.testing.assert_array_equal(lane[0].logits, events[0]["logits"])  # type: ignore[union-attr]  # the last wins


def test_the_lane_s_events_are_events() -> None:
    """The rest of ingest takes the lane's events as it takes the general reader's."""
    lane = decode_compact(_compact_body(_events(1)), max_batch=5)
    assert lane is not None and isinstance(lane[0], EventIn)
    assert msgspec.structs.asdict(lane[0]).keys() == set(FIELDS)


def _mutations(body: bytes, count: int, rng: np.random.Generator) -> list[bytes]:
    """``body`` with one byte replaced, at random places, by bytes JSON and base64 care about."""
    alphabet = b'AZaz09+/=\\"{}[],:. -1e'
    found = []
    for _ in range(count):
        mutated = bytearray(body)
        mutated[int(rng.integers(len(body)))] = alphabet[int(rng.integers(len(alphabet)))]
        found.append(bytes(mutated))
    return found


def test_whatever_the_compact_lane_answers_is_what_the_general_reader_answers() -> None:
    rng = np.random.default_rng(5)
    answered = 0
    for body in _mutations(_compact_body(_events(3, classes=4, dims=3)), 400, rng):
        lane = decode_compact(body, max_batch=50)
        if lane is not None:
            answered += 1
            _same(lane, read_tensors(decode_body(body, max_batch=50)))
    assert answered > 50  # most mutations change a value or a name, and the lane still reads the body


def test_whatever_the_binary_lane_answers_is_what_the_general_reader_answers() -> None:
    rng = np.random.default_rng(6)
    body, length = _binary(_events(3, classes=4, dims=3))
    answered = 0
    for mutated in _mutations(body, 400, rng):
        lane = decode_binary_fast(mutated, length, max_batch=50)
        if lane is not None:
            answered += 1
            _same(lane, read_tensors(decode_binary(mutated, length, max_batch=50)))
    assert answered > 50
