"""The OpenAPI document says what each route really answers: every route is called with Redis stopped, without a
token, with a token of each scope, and with a body it refuses; each answer's status must be declared for that
route, its body must validate against the declared schema, and a 503's Retry-After must be declared and sent.
Declared statuses a route cannot answer are caught too: a route that declares 503 answers it with Redis stopped,
one that declares 401 and 403 answers them, one that declares 413 and 415 refuses a body with them."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx2
import jsonschema
import pytest
from fastapi.testclient import TestClient
from kserve_events import REQUEST, RESPONSE, cloudevent_headers

from common.embedded_redis import EmbeddedRedis
from common.redis import connect
from helpers import event
from sampler.explanation_records import ExplanationRecord, ExplanationSummary, WorkerPrediction
from sampler.explanations import ExplanationStore
from sampler.verdicts import MethodTrust, Verdict

MODELS: dict[str, Any] = {
    "iris": {"kserve": {"scores_are": "probabilities", "input": "instances"}},
}
"""A KServe mapping that keeps each request's inputs for its response: such a request needs Redis."""
TOKENS = {"ingest_tokens": "i", "read_tokens": "r", "admin_tokens": "a"}


@dataclass(frozen=True)
class Call:
    """One request a route answers with its success when all is well."""

    path: str
    json: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    content: bytes | None = None

    @property
    def has_body(self) -> bool:
        return self.json is not None or self.content is not None


ROUTES: dict[tuple[str, str], Call] = {
    ("POST", "/v1/events"): Call("/v1/events", json=event()),
    ("GET", "/v1/models/{model}/sampling"): Call("/v1/models/digits/sampling"),
    ("PUT", "/v1/models/{model}/sampling"): Call("/v1/models/digits/sampling", json={"every_n": 7}),
    ("DELETE", "/v1/models/{model}/sampling"): Call("/v1/models/digits/sampling"),
    ("GET", "/status"): Call("/status"),
    ("GET", "/v1/explanations"): Call("/v1/explanations?model=digits"),
    ("GET", "/v1/explanations/{model}/methods"): Call("/v1/explanations/digits/methods"),
    ("GET", "/v1/explanations/{model}/{request_id}/heatmap.png"): Call(
        "/v1/explanations/digits/r1/heatmap.png?method=saliency"
    ),
    ("GET", "/v1/explanations/{model}/{request_id}/activations.png"): Call(
        "/v1/explanations/digits/r1/activations.png?layer=conv1"
    ),
    ("GET", "/v1/explanations/{model}/{request_id}"): Call("/v1/explanations/digits/r1"),
    ("GET", "/v1/models/{model}/layers"): Call("/v1/models/digits/layers"),
    ("POST", "/v1/labels"): Call("/v1/labels", json={"labels": [{"model": "digits", "request_id": "r1", "label": 0}]}),
    ("PUT", "/v1/models/{model}/reference"): Call(
        "/v1/models/digits/reference", json={"embeddings": [[0.1 * i, 1.0 - 0.1 * i] for i in range(8)]}
    ),
    ("GET", "/v1/models/{model}/drift"): Call("/v1/models/digits/drift"),
    ("GET", "/v1/models/{model}/calibration"): Call("/v1/models/digits/calibration"),
    ("GET", "/v1/models/{model}/calibration.png"): Call("/v1/models/digits/calibration.png"),
    ("GET", "/v1/models/{model}/projection"): Call("/v1/models/digits/projection"),
    ("GET", "/v1/models/{model}/drift/history"): Call("/v1/models/digits/drift/history"),
    ("GET", "/v1/models/{model}/distributions"): Call("/v1/models/digits/distributions"),
    ("POST", "/v1/cloudevents"): Call(
        "/v1/cloudevents",
        content=json.dumps({"instances": [[5.1, 3.5, 1.4, 0.2]]}).encode(),
        headers=cloudevent_headers("ce-1", REQUEST, "iris"),
    ),
}
"""Every route in the document, by method and documented path, and a request it would answer with success."""
BODIES = [route for route, call in ROUTES.items() if call.has_body]


def _send(client: TestClient, route: tuple[str, str], *, token: str | None = None) -> httpx2.Response:
    call = ROUTES[route]
    headers = dict(call.headers) | ({"authorization": f"Bearer {token}"} if token else {})
    return client.request(route[0], call.path, json=call.json, content=call.content, headers=headers)


def _declared(document: dict[str, Any], route: tuple[str, str]) -> dict[str, Any]:
    responses: dict[str, Any] = document["paths"][route[1]][route[0].lower()]["responses"]
    return responses


def _check(document: dict[str, Any], route: tuple[str, str], answer: httpx2.Response) -> None:
    """``answer``'s status is declared for ``route`` (not only within a range), its JSON body validates against the
    declared schema, and a 503 sends the Retry-After it declares."""
    declared = _declared(document, route).get(str(answer.status_code))
    assert declared is not None, f"{route}: answered {answer.status_code}, not declared: {answer.text[:300]}"
    if answer.status_code == 503:
        assert "Retry-After" in declared.get("headers", {}), f"{route}: Retry-After not declared"
        assert answer.headers["retry-after"].isdigit(), route
    media_type = answer.headers["content-type"].split(";")[0]
    if media_type != "application/json":
        return
    schema = declared["content"][media_type]["schema"]
    validator = jsonschema.Draft202012Validator({**schema, "components": document["components"]})
    problems = [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(answer.json())]
    assert problems == [], f"{route} {answer.status_code}: {problems[:3]}"


def test_every_route_in_the_document_is_exercised_here(client: TestClient) -> None:
    document = client.get("/openapi.json").json()
    documented = {(method.upper(), path) for path, item in document["paths"].items() for method in item}
    assert documented == set(ROUTES)
    assert not any("4XX" in _declared(document, route) for route in ROUTES), "a range says nothing of the route"


def test_with_redis_stopped_every_route_answers_what_it_declares(
    own_redis: EmbeddedRedis, make_client: Callable[..., TestClient]
) -> None:
    """A route that needs Redis answers 503 with Retry-After, declared; one that does not (ingest, the sampling
    policy in memory, /status) answers as ever, and declares a 503 only if it reads a body (the sidecar's budget of
    bodies being read, VAI_MAX_PENDING_BODY_BYTES)."""
    client = make_client(redis_url=own_redis.url, redis_timeout_s=0.2, models=MODELS)
    document = client.get("/openapi.json").json()
    own_redis.kill()
    try:
        answers = {route: _send(client, route) for route in ROUTES}
    finally:
        own_redis.start()
    for route, answer in answers.items():
        _check(document, route, answer)
    unavailable = {route for route, answer in answers.items() if answer.status_code == 503}
    declaring = {route for route in ROUTES if "503" in _declared(document, route)}
    reading_a_body = {route for route in ROUTES if "413" in _declared(document, route)}
    assert unavailable <= declaring and declaring - unavailable <= reading_a_body
    assert answers[("GET", "/status")].json()["redis_up"] is False


def test_every_route_answers_what_it_declares_without_a_token_and_with_each_scope(
    make_client: Callable[..., TestClient],
) -> None:
    """Without a token: 401 everywhere. With an ingest, read or admin token: 403 where its scope may not, and the
    route's own answers where it may (Redis up, nothing stored: 404s, empty lists, accepted events)."""
    client = make_client(models=MODELS, **TOKENS)
    document = client.get("/openapi.json").json()
    for route in ROUTES:
        answers = [_send(client, route, token=token) for token in (None, "i", "r", "a")]
        for answer in answers:
            _check(document, route, answer)
        assert {401, 403} <= {answer.status_code for answer in answers}, route


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        pytest.param({"content-length": str(5 * 2**20)}, 413, id="too-large"),
        pytest.param({"content-encoding": "gzip"}, 415, id="encoded"),
    ],
)
def test_every_route_with_a_body_refuses_one_as_it_declares(
    make_client: Callable[..., TestClient], headers: dict[str, str], status: int
) -> None:
    """Each body route's limit (8 MiB of events, 64 MiB of reference, 4 MiB of labels, 64 KiB of policy) lowered
    where it is a setting; 5 MiB declared passes them all. Routes without a body declare neither."""
    client = make_client(models=MODELS, max_body_bytes=1024, max_reference_bytes=1024)
    document = client.get("/openapi.json").json()
    for route in BODIES:
        call = ROUTES[route]
        answer = client.request(route[0], call.path, content=b"{}", headers=call.headers | headers)
        assert answer.status_code == status, (route, answer.text)
        _check(document, route, answer)
    for route in set(ROUTES) - set(BODIES):
        assert not {"413", "415"} & set(_declared(document, route)), route


def _schema_of(document: dict[str, Any], route: tuple[str, str], status: str) -> dict[str, Any]:
    """The declared JSON schema of ``route``'s ``status`` answer, with the document's components to resolve it."""
    schema = _declared(document, route)[status]["content"]["application/json"]["schema"]
    return {**schema, "components": document["components"]}


def _problems(schema: dict[str, Any], answer: Any) -> list[str]:
    return [error.message for error in jsonschema.Draft202012Validator(schema).iter_errors(answer)]


@pytest.mark.parametrize(
    ("route", "fields", "required"),
    [
        pytest.param(("POST", "/v1/labels"), {"matched", "duplicates", "unmatched", "rejected"}, None, id="labels"),
        pytest.param(
            ("POST", "/v1/cloudevents"),
            {"outcome", "model", "id", "accepted", "rejected"},
            None,
            id="cloudevents",
        ),
    ],
)
def test_the_success_answer_of_labels_and_cloudevents_is_declared_with_its_fields(
    make_client: Callable[..., TestClient], route: tuple[str, str], fields: set[str], required: set[str] | None
) -> None:
    """The 200 is declared as the typed result the route encodes (not an empty schema that any body validates
    against): a real answer validates, one with a field of the wrong type does not, nor one missing a field it
    requires (every field, unless ``required`` says fewer)."""
    client = make_client(models=MODELS)
    document = client.get("/openapi.json").json()
    schema = _schema_of(document, route, "200")
    if route[1] == "/v1/labels":
        labels = [
            {"model": "digits", "request_id": "r1", "label": 0},  # no prediction record: unmatched
            {"model": "digits", "request_id": "r2", "label": -1},  # rejected
        ]
        answer = client.post("/v1/labels", json={"labels": labels})
    else:
        assert _send(client, ("POST", "/v1/cloudevents")).json()["outcome"] == "request_stored"
        response = {"predictions": [[0.8, 0.15, 0.05]]}
        answer = client.post("/v1/cloudevents", json=response, headers=cloudevent_headers("ce-1", RESPONSE, "iris"))
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert set(body) == fields and _problems(schema, body) == []
    if route[1] == "/v1/labels":
        assert (body["matched"], len(body["unmatched"]), len(body["rejected"])) == (0, 1, 1), body
    else:
        assert (body["outcome"], body["accepted"]) == ("joined", 1), body
    missing_refused = {name for name in fields if _problems(schema, {k: v for k, v in body.items() if k != name})}
    assert missing_refused == (fields if required is None else required)
    for name in sorted(fields):
        assert _problems(schema, body | {name: {"a": "dict"}}), f"{name} of any type"


def test_the_cloudevents_body_is_declared_in_both_modes(client: TestClient) -> None:
    """The route reads its body itself: binary mode (a JSON payload, or the binary tensor extension) and structured
    mode are declared, the latter with the attributes it requires."""
    body = client.get("/openapi.json").json()["paths"]["/v1/cloudevents"]["post"]["requestBody"]
    content = body["content"]
    assert body["required"] and set(content) == {
        "application/json",
        "application/octet-stream",
        "application/cloudevents+json",
    }
    assert content["application/cloudevents+json"]["schema"]["required"] == ["specversion", "id", "type"]


def _undeclared(schema: dict[str, Any], body: Any, components: dict[str, Any], where: str = "") -> list[str]:
    """Where ``body`` holds an object field its declared ``schema`` does not name (JSON Schema lets them pass), or
    lacks one the schema requires; follows ``$ref``, ``anyOf``, ``items`` and ``additionalProperties``."""
    if "$ref" in schema:
        return _undeclared(components["schemas"][schema["$ref"].rsplit("/", 1)[1]], body, components, where)
    if "anyOf" in schema:
        fitting = [s for s in schema["anyOf"] if not _problems({**s, "components": components}, body)]
        return _undeclared(fitting[0], body, components, where) if fitting else [f"{where}: fits no anyOf"]
    found: list[str] = []
    if isinstance(body, dict) and "properties" in schema:
        declared = schema["properties"]
        found += [f"{where}.{name}: not declared" for name in sorted(set(body) - set(declared))]
        found += [f"{where}.{name}: required, absent" for name in schema.get("required", []) if name not in body]
        for name in set(body) & set(declared):
            found += _undeclared(declared[name], body[name], components, f"{where}.{name}")
    elif isinstance(body, dict) and isinstance(schema.get("additionalProperties"), dict):
        for name, value in body.items():
            found += _undeclared(schema["additionalProperties"], value, components, f"{where}.{name}")
    elif isinstance(body, list) and "items" in schema:
        for index, value in enumerate(body):
            found += _undeclared(schema["items"], value, components, f"{where}[{index}]")
    return found


def _store_explained(redis_url: str) -> None:
    """One done explanation of ``digits`` with every part of its summary filled, as a worker stores it."""
    trust = {"saliency": MethodTrust(verdict=Verdict(trusted=True, passes_sanity=True), fidelity_gain=0.2)}
    prediction = WorkerPrediction(predicted=1, probability=0.9, top_probability=0.9, matches=True)
    summary = ExplanationSummary(
        model="digits",
        model_version="v1",
        request_id="r1",
        status="done",
        reasons=("every_n",),
        predicted=1,
        confidence=0.9,
        cohort={"region": "eu"},
        timestamp=time.time(),
        label=1,
        methods=("saliency",),
        trust=trust,
        worker_prediction=prediction,
    )

    async def save() -> None:
        redis = connect(redis_url, timeout_s=2.0)
        await ExplanationStore(redis, ttl_s=3600).save(ExplanationRecord(summary=summary))
        await redis.aclose()

    asyncio.run(save())


def test_the_explanation_list_answers_its_declared_schema_field_for_field(client: TestClient, redis_url: str) -> None:
    """The route built its page by hand beside the model it declares: a field added to one and not the other would
    drift unseen, as JSON Schema lets undeclared fields pass. Each object of a real page (a summary with every part
    filled) has the fields its schema names and only those."""
    _store_explained(redis_url)
    document = client.get("/openapi.json").json()
    route = ("GET", "/v1/explanations")
    answer = client.get("/v1/explanations?model=digits")
    _check(document, route, answer)
    schema = _declared(document, route)["200"]["content"]["application/json"]["schema"]
    assert _undeclared(schema, answer.json(), document["components"]) == []
    item = answer.json()["items"][0]
    assert (item["request_id"], item["worker_prediction"]["matches"], item["trust"]["saliency"]["fidelity_gain"]) == (
        "r1",
        True,
        0.2,
    )
