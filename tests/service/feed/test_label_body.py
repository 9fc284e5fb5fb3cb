"""``POST /v1/labels`` refuses a body it would misread, in the sender's terms: a key other than ``labels`` is refused
naming it (as ``/v1/events`` and the sampling policy refuse theirs), and no error names a class of the sidecar."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

LABEL = {"model": "digits", "request_id": "r1", "label": 1}


@pytest.mark.parametrize(
    ("body", "field", "says"),
    [
        pytest.param(
            {"labels": [LABEL], "label": [LABEL]},
            "label",
            'unknown field; the body holds only "labels"',
            id="extra-key",
        ),
        pytest.param({"events": {}}, "events", "events go to POST /v1/events", id="events-posted-here"),
        pytest.param([LABEL], "body", 'expected a JSON object {"labels": [', id="a-list"),
        pytest.param("labels", "body", "got a string", id="a-string"),
        pytest.param({}, "labels", 'labels: missing; the body is {"labels": [', id="no-labels"),
        pytest.param({"labels": {"0": LABEL}}, "labels", "expected a list of", id="labels-an-object"),
        pytest.param({"labels": []}, "labels", "0 labels; send 1 to 10000", id="no-label"),
        pytest.param({"labels": [LABEL] * 10_001}, "labels", "10001 labels; send 1 to 10000", id="too-many"),
        pytest.param({"labels": [1]}, "labels.0", 'labels.0: expected a label object {"model"', id="a-number-label"),
        pytest.param({"labels": [[LABEL]]}, "labels.0", "got a list", id="a-list-label"),
    ],
)
def test_a_body_that_is_not_labels_is_refused_naming_what_is_expected(
    client: TestClient, body: Any, field: str, says: str
) -> None:
    answer = client.post("/v1/labels", json=body)
    assert answer.status_code == 422, answer.text
    error = answer.json()
    assert error["field"] == field and says in error["error"], error
    for internal in ("instance of", "Envelope", "LabelIn", "Input should"):
        assert internal not in error["error"], error


def test_one_label_that_is_no_object_is_rejected_in_the_senders_terms_and_the_others_go_on(client: TestClient) -> None:
    answer = client.post("/v1/labels", json={"labels": [LABEL, None]})
    assert answer.status_code == 200, answer.text
    (rejected,) = answer.json()["rejected"]
    assert rejected["index"] == 1 and rejected["error"] == (
        'labels.1: expected a label object {"model", "request_id", "label"}, got null'
    )
    assert answer.json()["unmatched"][0]["request_id"] == "r1"


def test_the_documented_body_refuses_other_keys(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()["paths"]["/v1/labels"]["post"]["requestBody"]
    assert schema["content"]["application/json"]["schema"]["additionalProperties"] is False


def test_a_label_with_a_key_of_another_name_is_rejected_naming_it_and_the_others_go_on(client: TestClient) -> None:
    """``lable`` misspelt: read as a label without one it would be refused as missing ``label`` anyway, but a key
    beside a good ``label`` (``confidence``) was dropped unseen."""
    answer = client.post("/v1/labels", json={"labels": [LABEL, {**LABEL, "request_id": "r2", "confidence": 0.9}]})
    assert answer.status_code == 200, answer.text
    (rejected,) = answer.json()["rejected"]
    assert (rejected["index"], rejected["request_id"]) == (1, "r2") and rejected[
        "error"
    ] == "labels.1.confidence: unknown field"
    assert [item["request_id"] for item in answer.json()["unmatched"]] == ["r1"]
