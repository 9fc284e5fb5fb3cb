"""Integer v2 tensors of JSON numbers are read exactly: int64 and uint64 extremes kept, nothing past 2**53 rounded,
and every value that is no integer of the datatype refused naming the field."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx2
import numpy as np
import pytest
from fastapi.testclient import TestClient

from helpers import event
from service.decoding.fast_parsing import BodyDecoder
from service.decoding.parsing import Rejected
from service.events.errors import FieldError
from service.events.tensors import tensor_of
from service.ingest.validation import check

ClientFactory = Callable[..., TestClient]
INT64_MIN, INT64_MAX, UINT64_MAX = -(2**63), 2**63 - 1, 2**64 - 1


def _tensor(datatype: str, data: list[Any]) -> dict[str, Any]:
    return {"shape": [len(data)], "datatype": datatype, "data": data}


def _post(client: TestClient, *events: dict[str, Any]) -> httpx2.Response:
    body = json.dumps({"events": list(events)}).encode()
    return client.post("/v1/events", content=body, headers={"content-type": "application/json"})


@pytest.mark.parametrize(
    ("datatype", "data"),
    [
        pytest.param("INT64", [INT64_MAX, INT64_MIN], id="int64-extremes"),
        pytest.param("UINT64", [UINT64_MAX, 0], id="uint64-extremes"),
    ],
)
def test_int64_and_uint64_extremes_are_accepted(make_client: ClientFactory, datatype: str, data: list[int]) -> None:
    response = _post(make_client(), event("t112", logits=_tensor(datatype, data)))
    assert response.status_code == 202, response.text
    assert response.json()["accepted"] == 1


@pytest.mark.parametrize(
    ("datatype", "data"),
    [
        pytest.param("INT64", [2**53 + 1, INT64_MAX, INT64_MIN, -(2**53) - 1], id="int64"),
        pytest.param("UINT64", [2**53 + 1, UINT64_MAX, 0, 2**63], id="uint64"),
    ],
)
def test_an_integer_input_is_kept_exactly(datatype: str, data: list[int]) -> None:
    """Model inputs are kept for attribution: token ids past 2**53 must not come back as their float64 neighbours."""
    body = json.dumps(event("exact", input={"shape": [1, len(data)], "datatype": datatype, "data": [data]})).encode()
    read = BodyDecoder(max_batch=5).decode(body)
    assert isinstance(read, list)
    (decoded,) = read
    assert not isinstance(decoded, Rejected), decoded
    model_input = check(decoded, received_at=1.7e9).input
    assert model_input is not None
    kept = model_input.decode()
    assert kept.dtype == np.dtype(datatype.lower())
    assert kept.ravel().tolist() == data


def test_integer_valued_floats_are_read_as_integers() -> None:
    """JSON writers may put ``2.0`` for 2; it was accepted before integers were read exactly, and still is."""
    array = tensor_of(_tensor("INT64", [2.0, -3.0, 2**53 + 1]), "input")
    assert array.tolist() == [2, -3, 2**53 + 1]


@pytest.mark.parametrize(
    ("datatype", "data"),
    [
        pytest.param("INT64", [2**63, 0], id="int64-past-max"),
        pytest.param("INT64", [INT64_MIN - 1, 0], id="int64-past-min"),
        pytest.param("INT64", [10**400, 0], id="int64-past-float-range"),
        pytest.param("UINT64", [2**64, 0], id="uint64-past-max"),
        pytest.param("UINT64", [-1, 0], id="uint64-negative"),
        pytest.param("UINT64", [UINT64_MAX, -1], id="uint64-max-beside-a-negative"),
        pytest.param("INT8", [1, 300], id="int8-past-max"),
        pytest.param("UINT16", [1, -1], id="uint16-negative"),
        pytest.param("INT32", [1.5, 1], id="int32-fraction"),
        pytest.param("INT64", [1e300, 1], id="int64-huge-float"),
        pytest.param("INT16", [70000.0, 1], id="int16-float-past-max"),
        pytest.param("INT64", [True, 1], id="int64-bool"),
        pytest.param("INT64", ["1", 1], id="int64-string"),
    ],
)
def test_a_value_that_is_no_integer_of_the_datatype_is_refused_and_the_rest_kept(
    make_client: ClientFactory, datatype: str, data: list[Any]
) -> None:
    response = _post(make_client(), event("good1"), event("bad", logits=_tensor(datatype, data)), event("good2"))
    assert response.status_code == 202, response.text
    answer = response.json()
    assert answer["accepted"] == 2
    assert [(item["index"], item["field"]) for item in answer["rejected"]] == [(1, "logits.data")], answer


@pytest.mark.parametrize("value", [float("nan"), float("inf"), 1.5, 2**63])
def test_a_refused_integer_tensor_says_what_the_datatype_holds(value: float) -> None:
    with pytest.raises(FieldError) as raised:
        tensor_of(_tensor("INT64", [value, 1]), "input", finite=False)
    assert str(raised.value) == (
        "input.data: holds values that are not int64 integers (-9223372036854775808 to 9223372036854775807)"
    )
    assert raised.value.reason == "bad_tensor"
