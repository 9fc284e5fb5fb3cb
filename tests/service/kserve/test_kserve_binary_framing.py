"""The binary tensor extension's framing: on ``/v1/events`` a bad tensor keeps the later sections where they are;
on ``/v1/cloudevents`` bytes that no tensor references refuse the body, as on ``/v1/events``."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import numpy as np
from fastapi.testclient import TestClient

from helpers import binary_body, binary_tensor, event

ClientFactory = Callable[..., TestClient]
HEADER = "inference-header-content-length"
LOGITS = np.array([2.0, 0.5, -1.0], dtype=np.float32)


def test_a_tensor_with_data_and_a_binary_size_rejects_its_event_and_keeps_the_framing(
    make_client: ClientFactory,
) -> None:
    """Its section is there (the protocol says binary_data_size bytes follow): the next event's starts after it."""
    first, first_raw = binary_tensor(LOGITS, "FP32")
    first["data"] = LOGITS.tolist()
    second, second_raw = binary_tensor(LOGITS * 2, "FP32")
    body, headers = binary_body(
        {"events": [event("r0", logits=first), event("r1", logits=second)]}, [first_raw, second_raw]
    )
    response = make_client().post("/v1/events", content=body, headers=headers)
    assert response.status_code == 202, response.text
    assert response.json()["accepted"] == 1
    (rejected,) = response.json()["rejected"]
    assert (rejected["index"], rejected["field"]) == (0, "logits.parameters.binary_data_size")
    assert "data" in rejected["error"]


MODELS: dict[str, Any] = {
    "digits": {"sampling": {"every_n": 1}, "kserve": {"service": "digits-isvc", "scores_are": "logits"}}
}


def _cloudevent(body: bytes, header_length: int) -> dict[str, str]:
    return {
        "ce-specversion": "1.0",
        "ce-id": "stray",
        "ce-type": "org.kubeflow.serving.inference.response",
        "ce-inferenceservicename": "digits-isvc",
        "content-type": "application/octet-stream",
        HEADER: str(header_length),
    }


def test_cloudevent_bytes_that_no_tensor_references_refuse_the_body(make_client: ClientFactory) -> None:
    raw = np.tile(LOGITS, (2, 1)).astype("<f4").tobytes()
    tensor = {"name": "logits", "shape": [2, 3], "datatype": "FP32", "parameters": {"binary_data_size": len(raw)}}
    header = json.dumps({"outputs": [tensor]}).encode()
    client = make_client(models=MODELS)
    good = client.post("/v1/cloudevents", content=header + raw, headers=_cloudevent(header + raw, len(header)))
    assert good.status_code == 200, good.text
    body = header + raw + b"\x00" * 8
    answer = client.post("/v1/cloudevents", content=body, headers=_cloudevent(body, len(header)) | {"ce-id": "stray2"})
    assert answer.status_code == 422, answer.text
    assert answer.json()["field"] == HEADER
