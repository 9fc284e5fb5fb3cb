"""Tensors in the event API: v2 objects, the compact form and the binary extension, every dtype, every refusal."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import Any

import httpx2
import numpy as np
import numpy.typing as npt
import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from common.errors import InvalidInput
from helpers import binary_body, binary_tensor, event
from service.decoding.fast_parsing import BodyDecoder
from service.decoding.parsing import Rejected, decode_body
from service.decoding.tensor_lanes import Lane
from service.events.errors import FieldError
from service.events.tensors import BinaryTensor, Vector, tensor_of, vector_of, vectors_of
from service.ingest.validation import check, summarised

ClientFactory = Callable[..., TestClient]
DTYPES = {
    "FP16": "float16",
    "FP32": "float32",
    "FP64": "float64",
    "INT8": "int8",
    "INT16": "int16",
    "INT32": "int32",
    "INT64": "int64",
    "UINT8": "uint8",
    "UINT16": "uint16",
    "UINT32": "uint32",
    "UINT64": "uint64",
    "BOOL": "bool",
}
LOGITS = np.array([4.0, 1.0, 0.5, 2.0])
INTEGERS = np.array([4, 1, 0, 2])


def _values(datatype: str) -> npt.NDArray[Any]:
    return (INTEGERS if datatype.startswith(("INT", "UINT", "BOOL")) else LOGITS).astype(DTYPES[datatype])


def _compact(array: npt.NDArray[Any]) -> dict[str, Any]:
    raw = array.astype(array.dtype.newbyteorder("<")).tobytes()
    return {"shape": list(array.shape), "dtype": array.dtype.name, "data": base64.b64encode(raw).decode()}


def _v2(array: npt.NDArray[Any], datatype: str) -> dict[str, Any]:
    return {"name": "logits", "shape": list(array.shape), "datatype": datatype, "data": array.tolist()}


def _post(client: TestClient, body: bytes, headers: dict[str, str] | None = None) -> httpx2.Response:
    return client.post("/v1/events", content=body, headers=headers or {"content-type": "application/json"})


def _rejections(registry: CollectorRegistry) -> dict[str, float]:
    value = registry.get_sample_value
    reasons = ("bad_tensor", "shape_mismatch", "non_finite", "invalid", "invalid_body")
    return {reason: found for reason in reasons if (found := value("vai_events_rejected_total", {"reason": reason}))}


def _scores(body: bytes, headers: dict[str, str] | None = None) -> list[npt.NDArray[Any]]:
    decoder = BodyDecoder(max_batch=50)
    header_length = (headers or {}).get("inference-header-content-length")
    decoded = decoder.decode(body, header_length=header_length)
    if isinstance(decoded, Lane):
        return list(decoded.vectors["logits"])
    assert not [item for item in decoded if isinstance(item, Rejected)], decoded
    checked = [check(item, received_at=1.7e9) for item in decoded if not isinstance(item, Rejected)]
    return summarised(checked, received_at=1.7e9).scores  # type: ignore[return-value]


@pytest.mark.parametrize("datatype", list(DTYPES))
def test_every_dtype_in_every_form_gives_the_same_scores(datatype: str) -> None:
    array = _values(datatype)
    expected = array.astype(np.float64)
    as_list = json.dumps(event("list", logits=expected.tolist())).encode()
    compact = json.dumps(event("compact", logits=_compact(array))).encode()
    v2 = json.dumps(event("v2", logits=_v2(array, datatype))).encode()
    batched = json.dumps(event("batched", logits=_v2(array.reshape(1, -1), datatype))).encode()
    tensor, raw = binary_tensor(array, datatype)
    binary, headers = binary_body(event("binary", logits=tensor), [raw])
    for body, sent_headers in ((as_list, None), (compact, None), (v2, None), (batched, None), (binary, headers)):
        (scores,) = _scores(body, sent_headers)
        np.testing.assert_array_equal(scores, expected)


def test_the_careful_path_reads_tensors_like_the_fast_path() -> None:
    body = json.dumps(
        {"events": [event("a", logits=_compact(LOGITS.astype(np.float32))), event("b", logits=_v2(LOGITS, "FP64"))]}
    ).encode()
    fast = _scores(body)
    careful = decode_body(body, max_batch=50)
    assert [check(item, received_at=1.7e9).scores.tolist() for item in careful if not isinstance(item, Rejected)] == [
        scores.tolist() for scores in fast
    ]


@pytest.mark.parametrize("datatype", list(DTYPES))
def test_binary_bodies_with_every_dtype_are_accepted(make_client: ClientFactory, datatype: str) -> None:
    array = _values(datatype)
    logits, logits_raw = binary_tensor(array, datatype)
    embedding, embedding_raw = binary_tensor(array.reshape(1, -1), datatype)
    model_input, input_raw = binary_tensor(array.reshape(2, 2), datatype)
    body, headers = binary_body(
        {"events": [event("r1", logits=logits, embedding=embedding, input=model_input), event("r2")]},
        [logits_raw, embedding_raw, input_raw],
    )
    response = _post(make_client(), body, headers)
    assert response.status_code == 202, response.text
    assert response.json()["accepted"] == 2


def test_an_input_tensor_keeps_its_shape_and_dtype() -> None:
    array = np.arange(6, dtype=np.int16).reshape(2, 3)
    tensor, raw = binary_tensor(array, "INT16")
    body, headers = binary_body(event("r", input=tensor), [raw])
    read = BodyDecoder(max_batch=5).decode(body, header_length=headers["inference-header-content-length"])
    assert isinstance(read, list)  # an input section: the general reader
    (decoded,) = read
    assert not isinstance(decoded, Rejected)
    model_input = check(decoded, received_at=1.7e9).input
    assert model_input is not None
    np.testing.assert_array_equal(model_input.decode(), array)
    v2 = json.dumps(event("v", input=_v2(np.ones((1, 2, 2)), "FP32"))).encode()
    read = BodyDecoder(max_batch=5).decode(v2)
    assert isinstance(read, list)
    (decoded,) = read
    assert not isinstance(decoded, Rejected)
    found = check(decoded, received_at=1.7e9).input
    assert found is not None and (found.shape, found.dtype) == ((1, 2, 2), "float32")


def _float32_b64(*values: float) -> str:
    return base64.b64encode(np.array(values, dtype="<f4").tobytes()).decode()


BAD = [
    pytest.param(
        {"logits": {"shape": [2], "dtype": "float32", "data": _float32_b64(np.nan, 1.0)}},
        "logits.data",
        "non_finite",
        id="compact-nan",
    ),
    pytest.param(
        {"logits": {"shape": [2], "datatype": "FP16", "data": [1.0, 1e6]}},
        "logits.data",
        "non_finite",
        id="v2-beyond-fp16",
    ),
    pytest.param(
        {"embedding": {"shape": [2], "datatype": "FP32", "data": [1.0, 1e39]}},
        "embedding.data",
        "non_finite",
        id="v2-beyond-fp32",
    ),
    pytest.param(
        {"logits": {"shape": [3], "datatype": "FP32", "data": [[1.0, 2.0], [3.0]]}},
        "logits.data",
        "shape_mismatch",
        id="v2-ragged-nesting",
    ),
    pytest.param(
        {"logits": {"shape": [1, 4], "datatype": "FP32", "data": [[1.0, 2.0], [3.0, 4.0]]}},
        "logits.data",
        "shape_mismatch",
        id="v2-nested-across-the-shape",
    ),
    pytest.param(
        {"logits": {"shape": [3], "dtype": "float32", "data": _float32_b64(1.0, 2.0)}},
        "logits.data",
        "shape_mismatch",
        id="compact-shape-product-differs",
    ),
    pytest.param(
        {"logits": {"shape": [3], "datatype": "FP32", "data": [1.0, 2.0]}},
        "logits.data",
        "shape_mismatch",
        id="v2-shape-product-differs",
    ),
    pytest.param(
        {"logits": {"shape": [2, 2], "datatype": "FP32", "data": [[1.0, 2.0], [3.0, 4.0]]}},
        "logits.shape",
        "bad_tensor",
        id="logits-two-dimensional",
    ),
    pytest.param(
        {"embedding": {"shape": [2, 1], "datatype": "FP32", "data": [1.0, 2.0]}},
        "embedding.shape",
        "bad_tensor",
        id="embedding-two-dimensional",
    ),
    pytest.param(
        {"logits": {"shape": [2], "datatype": "FP128", "data": [1.0, 2.0]}},
        "logits.datatype",
        "bad_tensor",
        id="v2-unknown-datatype",
    ),
    pytest.param(
        {"logits": {"shape": [2], "datatype": "BYTES", "data": ["a", "b"]}},
        "logits.datatype",
        "bad_tensor",
        id="v2-bytes-datatype",
    ),
    pytest.param(
        {"logits": {"shape": [2], "dtype": "complex64", "data": "AAAA"}},
        "logits.dtype",
        "bad_tensor",
        id="compact-unknown-dtype",
    ),
    pytest.param(
        {"logits": {"shape": [2], "dtype": "float32", "data": "not base64!"}},
        "logits.data",
        "bad_tensor",
        id="compact-bad-base64",
    ),
    pytest.param(
        {"logits": {"shape": [2], "datatype": "INT8", "data": [1, 300]}},
        "logits.data",
        "bad_tensor",
        id="v2-int8-out-of-range",
    ),
    pytest.param(
        {"logits": {"shape": [2], "datatype": "FP32", "data": [1.0, "2"]}},
        "logits.data",
        "bad_tensor",
        id="v2-string-element",
    ),
    pytest.param(
        {"logits": {"shape": [2], "datatype": "FP32"}},
        "logits.data",
        "bad_tensor",
        id="v2-no-data-without-binary-header",
    ),
    pytest.param(
        {"logits": {"shape": [], "datatype": "FP32", "data": []}}, "logits.shape", "bad_tensor", id="v2-empty-shape"
    ),
    pytest.param(
        {"logits": {"shape": [2], "datatype": "BOOL", "data": [True, 1]}},
        "logits.data",
        "bad_tensor",
        id="v2-bool-holding-a-number",
    ),
    pytest.param(
        {"logits": {"shape": [2], "datatype": "UINT16", "data": [1, -1]}},
        "logits.data",
        "bad_tensor",
        id="v2-uint16-negative",
    ),
    pytest.param(
        {"logits": {"shape": [3], "dtype": "bool", "data": base64.b64encode(bytes([1, 2, 0])).decode()}},
        "logits.data",
        "bad_tensor",
        id="compact-bool-byte-neither-0-nor-1",
    ),
    pytest.param(
        {"input": {"shape": [1, 2], "dtype": "bool", "data": base64.b64encode(bytes([0, 255])).decode()}},
        "input.data",
        "bad_tensor",
        id="compact-bool-input-byte-neither-0-nor-1",
    ),
    pytest.param(
        {"logits": {"shape": [2], "dtype": "float32", "data": _float32_b64(1, 2), "x": 1}},
        "logits",
        "bad_tensor",
        id="compact-unknown-key",
    ),
]


@pytest.mark.parametrize(("fields", "field", "reason"), BAD)
def test_a_bad_tensor_is_refused_naming_event_and_field_and_the_rest_kept(
    make_client: ClientFactory, fields: dict[str, Any], field: str, reason: str
) -> None:
    registry = CollectorRegistry()
    bad = event("bad", **fields)
    if "embedding" in fields:
        bad["logits"] = [1.0, 2.0]
    body = json.dumps({"events": [event("good1"), bad, event("good2")]}).encode()
    response = _post(make_client(registry=registry), body)
    assert response.status_code == 202, response.text
    answer = response.json()
    assert answer["accepted"] == 2
    assert [(item["index"], item["field"]) for item in answer["rejected"]] == [(1, field)], answer
    assert _rejections(registry) == {reason: 1.0}


@pytest.mark.parametrize(
    ("tensor", "error"),
    [
        pytest.param(
            {"shape": [2], "datatype": "FP32", "data": [1.0, 1e39]},
            "embedding.data: holds a value beyond float32 range (±3.403e+38)",
            id="fp32",
        ),
        pytest.param(
            {"shape": [2], "datatype": "FP16", "data": [1.0, 1e6]},
            "embedding.data: holds a value beyond float16 range (±6.55e+04)",
            id="fp16",
        ),
        pytest.param(
            {"shape": [3], "datatype": "FP32", "data": [[1.0, 2.0], [3.0]]},
            "embedding.data: nested lists must follow shape [3]: send the data flat, or nested exactly as the shape",
            id="ragged",
        ),
    ],
)
def test_a_refused_tensor_says_what_is_wrong(tensor: dict[str, Any], error: str) -> None:
    with pytest.raises(FieldError) as raised:
        vector_of(tensor, "embedding")
    assert str(raised.value) == error


@pytest.mark.parametrize(
    ("shape", "data"),
    [
        pytest.param([2, 3], [1, 2, 3, 4, 5, 6], id="flat"),
        pytest.param([2, 3], [[1, 2, 3], [4, 5, 6]], id="nested-as-the-shape"),
        pytest.param([1, 2, 3], [[[1, 2, 3], [4, 5, 6]]], id="three-levels"),
    ],
)
def test_v2_data_flat_or_nested_as_its_shape_is_read(shape: list[int], data: list[Any]) -> None:
    tensor = {"shape": shape, "datatype": "FP32", "data": data}
    assert tensor_of(tensor, "input").ravel().tolist() == [1, 2, 3, 4, 5, 6]


def _binary_batch() -> tuple[list[dict[str, Any]], list[bytes]]:
    events, sections = [], []
    for index in range(3):
        tensor, raw = binary_tensor(LOGITS.astype(np.float32), "FP32")
        events.append(event(f"r{index}", logits=tensor))
        sections.append(raw)
    return events, sections


def test_a_binary_size_that_disagrees_with_the_shape_rejects_that_event_only(make_client: ClientFactory) -> None:
    events, sections = _binary_batch()
    sections[1] = sections[1][:-4]
    events[1]["logits"]["parameters"]["binary_data_size"] -= 4
    registry = CollectorRegistry()
    body, headers = binary_body({"events": events}, sections)
    response = _post(make_client(registry=registry), body, headers)
    assert response.status_code == 202, response.text
    assert response.json()["accepted"] == 2
    assert [(r["index"], r["field"]) for r in response.json()["rejected"]] == [
        (1, "logits.parameters.binary_data_size")
    ]
    assert _rejections(registry) == {"shape_mismatch": 1.0}


def test_a_binary_bool_byte_neither_0_nor_1_rejects_that_event_only(make_client: ClientFactory) -> None:
    events, sections = [], []
    for index, raw in enumerate((bytes([1, 0, 1, 1]), bytes([1, 0, 2, 1]), bytes([0, 0, 1, 0]))):
        events.append(
            event(f"r{index}", logits={"shape": [4], "datatype": "BOOL", "parameters": {"binary_data_size": 4}})
        )
        sections.append(raw)
    registry = CollectorRegistry()
    body, headers = binary_body({"events": events}, sections)
    response = _post(make_client(registry=registry), body, headers)
    assert response.status_code == 202, response.text
    assert response.json()["accepted"] == 2
    assert [(r["index"], r["field"]) for r in response.json()["rejected"]] == [(1, "logits.data")]
    assert _rejections(registry) == {"bad_tensor": 1.0}


def test_a_truncated_binary_section_rejects_its_event_and_keeps_the_earlier_ones(make_client: ClientFactory) -> None:
    events, sections = _binary_batch()
    body, headers = binary_body({"events": events}, sections)
    response = _post(make_client(), body[:-5], headers)
    assert response.status_code == 202, response.text
    assert response.json()["accepted"] == 2
    (rejected,) = response.json()["rejected"]
    assert (rejected["index"], rejected["field"]) == (2, "logits.parameters.binary_data_size")
    assert "runs past the body" in rejected["error"]


HEADER = "inference-header-content-length"


@pytest.mark.parametrize(
    ("header_length", "extra", "field"),
    [
        pytest.param(lambda size: str(size + 10_000), b"", HEADER, id="header-length-past-the-body"),
        pytest.param(lambda size: "twelve", b"", HEADER, id="header-length-not-a-number"),
        pytest.param(lambda size: str(size - 3), b"", HEADER, id="header-length-cuts-the-json"),
        pytest.param(lambda size: str(size), b"\x00" * 8, HEADER, id="bytes-no-tensor-references"),
    ],
)
def test_bad_framing_refuses_the_body(
    make_client: ClientFactory, header_length: Callable[[int], str], extra: bytes, field: str
) -> None:
    events, sections = _binary_batch()
    body, headers = binary_body({"events": events}, sections)
    size = int(headers["inference-header-content-length"])
    registry = CollectorRegistry()
    response = _post(
        make_client(registry=registry),
        body + extra,
        {**headers, "inference-header-content-length": header_length(size)},
    )
    assert response.status_code == 422, response.text
    assert response.json()["field"] == field, response.text
    assert _rejections(registry) == {"invalid_body": 1.0}


@pytest.mark.parametrize("header_length", ["\u00b2", "\u00b9\u00b2", "\uff11\uff12", "0" * 5000 + "65"])
def test_a_header_length_of_non_ascii_digits_is_refused_not_a_crash(header_length: str) -> None:
    """``str.isdigit()`` is true for '²' (latin-1 0xb2, which a header can carry) but ``int()`` refuses it, and
    more than 4,300 digits."""
    events, sections = _binary_batch()
    body, _ = binary_body({"events": events}, sections)
    with pytest.raises(InvalidInput) as refused:
        BodyDecoder(max_batch=50).decode(body, header_length=header_length)
    assert refused.value.field == "inference-header-content-length"


def test_a_nan_token_in_the_json_header_names_its_field(make_client: ClientFactory) -> None:
    events, sections = _binary_batch()
    header = json.dumps({"events": events}).replace('"request_id": "r1"', '"timestamp": NaN, "request_id": "r1"')
    body = header.encode() + b"".join(sections)
    response = _post(make_client(), body, {"inference-header-content-length": str(len(header.encode()))})
    assert response.status_code == 202, response.text
    assert [(r["index"], r["field"]) for r in response.json()["rejected"]] == [(1, "timestamp")]


def test_a_binary_body_over_the_limit_is_413(make_client: ClientFactory) -> None:
    events, sections = _binary_batch()
    body, headers = binary_body({"events": events}, [*sections, b"\x00" * 4096])
    response = _post(make_client(max_body_bytes=2048), body, headers)
    assert response.status_code == 413


def _one_by_one(value: Any, field: str) -> Vector | FieldError:
    try:
        return vector_of(value, field)
    except FieldError as error:
        return error


def test_a_request_s_tensors_read_together_get_the_verdicts_of_one_by_one() -> None:
    """vectors_of groups tensors by dtype and length; every verdict must be vector_of's, in order."""
    rng = np.random.default_rng(3)
    nan_row, inf_row, big = rng.normal(size=6), rng.normal(size=6), np.full(6, 1e308)
    nan_row[2], inf_row[5] = np.nan, -np.inf
    sections = np.array([3.0, 1.0, 2.0], dtype="<f4").tobytes()
    tensors: list[tuple[Any, str]] = [
        (_compact(rng.normal(size=6).astype(np.float32)), "logits"),
        (_compact(nan_row.astype(np.float32)), "logits"),  # same group as the first: only this row refused
        (_compact(rng.normal(size=6).astype(np.float32)), "logits"),
        (_compact(inf_row), "embedding"),
        (_compact(big), "embedding"),  # finite, though its float64 sum overflows
        (_compact(np.full(6, 60000.0, dtype=np.float16)), "logits"),  # finite float16 past float16's sum range
        (_compact(rng.normal(size=(1, 6)).astype(np.float32)), "logits"),  # [1, n] joins the [n] group
        (_compact(rng.normal(size=(2, 3)).astype(np.float32)), "logits"),  # not a vector
        ({**_compact(np.ones(6, dtype=np.float32)), "data": "not base64!"}, "logits"),
        ({**_compact(np.ones(6, dtype=np.float32)), "shape": [7]}, "logits"),  # bytes do not fill the shape
        (_compact(INTEGERS.astype(np.int16)), "logits"),
        (_v2(LOGITS, "FP32"), "probabilities"),
        (BinaryTensor({"shape": [3], "datatype": "FP32"}, sections), "logits"),
        (BinaryTensor({"shape": [3], "datatype": "FP32"}, None, "runs past the body"), "logits"),
        ([1.0, 2.0], "logits"),
    ]
    with np.errstate(all="raise"):  # nothing may warn, e.g. on the overflowing sums
        together = vectors_of(tensors)
    alone = [_one_by_one(value, field) for value, field in tensors]
    assert len(together) == len(alone)
    for found, expected in zip(together, alone, strict=True):
        if isinstance(expected, FieldError):
            assert isinstance(found, FieldError)
            assert (found.field, str(found), found.reason) == (expected.field, str(expected), expected.reason)
        else:
            assert isinstance(found, np.ndarray) and isinstance(expected, np.ndarray)
            assert found.dtype == expected.dtype == (np.float32 if found.dtype == np.float32 else np.float64)
            np.testing.assert_array_equal(found, expected)
    float32, int16 = together[0], together[10]
    assert isinstance(float32, np.ndarray) and float32.dtype == np.float32  # kept as sent
    assert isinstance(int16, np.ndarray) and int16.dtype == np.float64  # widened
    refused = [found.field for found in together if isinstance(found, FieldError)]
    assert refused == [
        "logits.data",
        "embedding.data",
        "logits.shape",
        "logits.data",
        "logits.data",
        "logits.parameters.binary_data_size",
        "logits",
    ]
