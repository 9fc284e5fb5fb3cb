"""GET/PUT/DELETE /v1/models/{model}/sampling: partial changes, validation, persistence, effect."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx2
import pytest
import redis
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry
from pydantic import ValidationError

from common import keys
from helpers import event, hash_all, sidecar_of
from service.settings import SidecarSettings

ClientFactory = Callable[..., TestClient]
DEFAULTS: dict[str, Any] = {
    "every_n": 100,
    "confidence_below": 0.5,
    "margin_below": None,
    "flagged_cohorts": [],
    "max_per_second": 50.0,
    "require_input": False,
}
PATH = "/v1/models/digits/sampling"


def _wait_for_policy(client: TestClient, model: str, wanted: dict[str, Any], timeout_s: float = 5.0) -> None:
    """Poll the policy of ``model`` until it has every item of ``wanted``."""
    deadline = time.monotonic() + timeout_s
    policy: dict[str, Any] = {}
    while time.monotonic() < deadline:
        policy = client.get(f"/v1/models/{model}/sampling").json()
        if wanted.items() <= policy.items():
            return
    raise AssertionError(f"policy of {model} is {policy}, still without {wanted}")


def _sampled(client: TestClient, *events: dict[str, Any]) -> list[tuple[str, list[str]]]:
    response = client.post("/v1/events", json={"events": list(events)})
    assert response.status_code == 202, response.text
    return [(sampled["request_id"], sampled["reasons"]) for sampled in response.json()["sampled"]]


def test_default_policy(client: TestClient) -> None:
    response = client.get(PATH)
    assert response.status_code == 200
    assert response.json() == DEFAULTS


def test_settings_change_the_default_of_every_model(make_client: ClientFactory) -> None:
    client = make_client(sampling={"every_n": 10, "margin_below": 0.2})
    for model in ("digits", "text"):
        assert client.get(f"/v1/models/{model}/sampling").json() == {**DEFAULTS, "every_n": 10, "margin_below": 0.2}


def test_put_changes_only_the_fields_sent(client: TestClient, redis_client: redis.Redis) -> None:
    first = client.put(PATH, json={"every_n": 5})
    assert first.status_code == 200
    assert first.json() == {**DEFAULTS, "every_n": 5}
    second = client.put(PATH, json={"confidence_below": None, "flagged_cohorts": [{"region": "eu", "tier": "free"}]})
    assert second.status_code == 200
    expected = {
        **DEFAULTS,
        "every_n": 5,
        "confidence_below": None,
        "flagged_cohorts": [{"region": "eu", "tier": "free"}],
    }
    assert second.json() == expected
    assert client.put(PATH, json={}).json() == expected
    assert client.get(PATH).json() == expected
    assert client.get("/v1/models/text/sampling").json() == DEFAULTS
    raw = hash_all(redis_client, keys.policy("digits"))
    stored = {name.decode(): json.loads(value) for name, value in raw.items()}
    assert stored == {"every_n": 5, "confidence_below": None, "flagged_cohorts": [{"region": "eu", "tier": "free"}]}
    assert redis_client.smembers(keys.POLICY_MODELS) == {b"digits"}


def test_null_disables_a_threshold(client: TestClient) -> None:
    response = client.put(PATH, json={"every_n": None, "confidence_below": None, "margin_below": None})
    assert response.json() == {**DEFAULTS, "every_n": None, "confidence_below": None}
    assert _sampled(client, *(event(f"r{i}", logits=[1.0, 1.0, 1.0]) for i in range(200))) == []


def _put_raw(client: TestClient, body: bytes) -> httpx2.Response:
    return client.put(PATH, content=body, headers={"content-type": "application/json"})


INVALID = [
    pytest.param(b'{"every_m": 5}', "every_m", id="unknown-field"),
    pytest.param(b'{"every_n": 0}', "every_n", id="every-n-0"),
    pytest.param(b'{"every_n": -3}', "every_n", id="every-n-negative"),
    pytest.param(b'{"every_n": 2.5}', "every_n", id="every-n-fraction"),
    pytest.param(b'{"every_n": "ten"}', "every_n", id="every-n-string"),
    pytest.param(b'{"confidence_below": 2}', "confidence_below", id="confidence-below-2"),
    pytest.param(b'{"confidence_below": -0.1}', "confidence_below", id="confidence-below-negative"),
    pytest.param(b'{"confidence_below": NaN}', "confidence_below", id="confidence-below-nan-token"),
    pytest.param(b'{"margin_below": -1}', "margin_below", id="margin-below-negative"),
    pytest.param(b'{"margin_below": Infinity}', "margin_below", id="margin-below-infinity-token"),
    pytest.param(b'{"margin_below": 1e400}', "margin_below", id="margin-below-1e400"),
    pytest.param(b'{"max_per_second": -1}', "max_per_second", id="max-per-second-negative"),
    pytest.param(b'{"max_per_second": 1e9}', "max_per_second", id="max-per-second-too-high"),
    pytest.param(b'{"max_per_second": null}', "max_per_second", id="max-per-second-null"),
    pytest.param(b'{"require_input": "maybe"}', "require_input", id="require-input-not-bool"),
    pytest.param(b'{"require_input": null}', "require_input", id="require-input-null"),
    pytest.param(b'{"flagged_cohorts": "eu"}', "flagged_cohorts", id="flagged-cohorts-string"),
    pytest.param(b'{"flagged_cohorts": {"region": "eu"}}', "flagged_cohorts", id="flagged-cohorts-object"),
    pytest.param(b'{"flagged_cohorts": ["eu"]}', "flagged_cohorts", id="flagged-cohorts-list-of-strings"),
    pytest.param(b'{"flagged_cohorts": [{"region": 1}]}', "flagged_cohorts", id="flagged-cohorts-number-value"),
    pytest.param(b'{"flagged_cohorts": [{"region": ["eu"]}]}', "flagged_cohorts", id="flagged-cohorts-list-value"),
    pytest.param(b'{"flagged_cohorts": null}', "flagged_cohorts", id="flagged-cohorts-null"),
    pytest.param(b'{"flagged_cohorts": [{}]}', "flagged_cohorts.0", id="flagged-cohorts-empty-matcher"),
    pytest.param(b'{"every_n": 1180591620717411303424}', "every_n", id="every-n-2-to-the-70"),
    pytest.param(b'{"margin_below": 1e308}', "margin_below", id="margin-below-beyond-any-margin"),
    pytest.param(b'{"flagged_cohorts": [{"region": "\\ud800"}]}', "flagged_cohorts.0.region", id="lone-surrogate"),
    pytest.param(b"[]", "body", id="body-list"),
    pytest.param(b'"every_n"', "body", id="body-string"),
    pytest.param(b"", "body", id="body-empty"),
    pytest.param(b'{"every_n": 5', "body", id="body-truncated-json"),
]


@pytest.mark.parametrize(("body", "field"), INVALID)
def test_invalid_put_is_422_naming_the_field_and_changes_nothing(
    make_client: ClientFactory, redis_client: redis.Redis, body: bytes, field: str
) -> None:
    client = make_client()
    assert client.put(PATH, json={"every_n": 7}).status_code == 200
    response = _put_raw(client, body)
    assert response.status_code < 500
    assert response.status_code == 422, response.text
    detail = response.json()
    assert detail["field"].startswith(field), detail
    assert field in detail["error"]
    assert client.get(PATH).json() == {**DEFAULTS, "every_n": 7}
    assert redis_client.hgetall(keys.policy("digits")) == {b"every_n": b"7"}


@pytest.mark.parametrize(
    ("path", "status"),
    [
        pytest.param("/v1/models/" + "m" * 65 + "/sampling", 422, id="model-65-chars"),
        pytest.param("/v1/models/bad%20name/sampling", 422, id="model-with-space"),
        pytest.param("/v1/models/a%2Fb/sampling", 404, id="model-with-slash"),
        pytest.param("/v1/models/nl%0A/sampling", 422, id="model-trailing-newline"),
        pytest.param("/v1/models/%0Anl/sampling", 422, id="model-leading-newline"),
    ],
)
def test_bad_model_in_path_is_refused(client: TestClient, path: str, status: int) -> None:
    for method in ("GET", "PUT", "DELETE"):
        response = client.request(method, path, json={"every_n": 3} if method == "PUT" else None)
        assert response.status_code == status, (method, response.text)
        if status == 422:
            assert response.json()["field"] == "model"


def test_another_replica_picks_up_changes_and_resets(make_client: ClientFactory) -> None:
    writer = make_client()
    reader = make_client()
    assert writer.put(PATH, json={"every_n": 3, "flagged_cohorts": [{"region": "eu"}]}).status_code == 200
    _wait_for_policy(reader, "digits", {"every_n": 3, "flagged_cohorts": [{"region": "eu"}]})
    late = make_client()
    assert late.get(PATH).json() == {**DEFAULTS, "every_n": 3, "flagged_cohorts": [{"region": "eu"}]}
    assert reader.delete(PATH).status_code == 200
    _wait_for_policy(writer, "digits", DEFAULTS)
    _wait_for_policy(late, "digits", DEFAULTS)


def test_replicas_changing_different_fields_keep_both_changes(make_client: ClientFactory) -> None:
    one = make_client()
    two = make_client()
    assert one.put(PATH, json={"every_n": 4}).status_code == 200
    assert two.put(PATH, json={"margin_below": 0.3}).status_code == 200
    _wait_for_policy(one, "digits", {"every_n": 4, "margin_below": 0.3})
    _wait_for_policy(two, "digits", {"every_n": 4, "margin_below": 0.3})


def test_delete_resets_to_defaults(client: TestClient, redis_client: redis.Redis) -> None:
    client.put(PATH, json={"every_n": 2, "require_input": True})
    response = client.delete(PATH)
    assert response.status_code == 200
    assert response.json() == DEFAULTS
    assert client.get(PATH).json() == DEFAULTS
    assert not redis_client.exists(keys.policy("digits"))
    assert redis_client.smembers(keys.POLICY_MODELS) == set()
    assert client.delete(PATH).json() == DEFAULTS


def test_new_policy_changes_sampling_of_later_events(client: TestClient) -> None:
    assert _sampled(client, *(event(f"a{i}") for i in range(5))) == []
    client.put(PATH, json={"every_n": 1})
    assert _sampled(client, *(event(f"b{i}") for i in range(3))) == [(f"b{i}", ["every_n"]) for i in range(3)]
    client.put(PATH, json={"every_n": None, "flagged_cohorts": [{"region": "eu"}]})
    assert _sampled(client, event("c0", cohort={"region": "us"}), event("c1", cohort={"region": "eu", "x": "y"})) == [
        ("c1", ["flagged_cohort"])
    ]
    client.put(PATH, json={"flagged_cohorts": [], "confidence_below": 0.9, "require_input": True})
    unsure = [1.0, 1.0, 1.0]
    assert _sampled(client, event("d0", logits=unsure), event("d1", logits=unsure, input=[[0.5, 0.5]])) == [
        ("d1", ["low_confidence"])
    ]
    client.delete(PATH)
    assert _sampled(client, event("e0", logits=unsure)) == [("e0", ["low_confidence"])]


def test_an_event_whose_time_is_further_than_the_retention_from_now_is_not_sampled(
    make_client: ClientFactory,
) -> None:
    """Explanations are listed by event time within the retention: an older one would be trimmed from the lists as
    it was written (found explained, yet never listed), and one far ahead would sit on top of them."""
    registry = CollectorRegistry()
    client = make_client(registry=registry, sampling={"every_n": 1}, explanation_ttl_s=3600)
    now = time.time()
    events = [
        event("old", timestamp=now - 3700),
        event("ahead", timestamp=now + 3700),
        event("skewed", timestamp=now + 60),
        event("recent", timestamp=now - 3500),
    ]
    assert _sampled(client, *events) == [("skewed", ["every_n"]), ("recent", ["every_n"])]
    labels = {"model": "digits", "reason": "outside_retention"}
    assert registry.get_sample_value("vai_sample_dropped_total", labels) == 2


def test_budget_change_applies_to_later_events(client: TestClient) -> None:
    client.put(PATH, json={"every_n": 1, "max_per_second": 1000.0})
    assert len(_sampled(client, *(event(f"a{i}") for i in range(3)))) == 3
    client.put(PATH, json={"max_per_second": 0.0})  # saved tokens are capped to the new (empty) burst
    assert _sampled(client, *(event(f"b{i}") for i in range(3))) == []
    client.put(PATH, json={"max_per_second": 1000.0})  # the bucket refills from empty at the new rate
    deadline = time.monotonic() + 5
    sent = 0
    while not _sampled(client, event(f"c{sent}")):
        sent += 1
        assert time.monotonic() < deadline, "no event sampled after raising the budget"


@pytest.fixture(params=["settings-argument", "toml-file"])
def digits_every_3(request: pytest.FixtureRequest, make_client: ClientFactory, tmp_path: Path) -> TestClient:
    """A sidecar whose config gives model ``digits`` every_n 3, by argument or by TOML file."""
    if request.param == "settings-argument":
        return make_client(models={"digits": {"sampling": {"every_n": 3}}})
    config = tmp_path / "sidecar.toml"
    config.write_text("[models.digits.sampling]\nevery_n = 3\n")
    return make_client(config_file=config)


def test_config_file_overrides_one_model(digits_every_3: TestClient) -> None:
    client = digits_every_3
    assert client.get(PATH).json() == {**DEFAULTS, "every_n": 3}
    assert client.get("/v1/models/text/sampling").json() == DEFAULTS
    assert _sampled(client, *(event(f"r{i}") for i in range(6))) == [("r2", ["every_n"]), ("r5", ["every_n"])]
    assert _sampled(client, *(event(f"r{i}", model="text") for i in range(6))) == []


def test_run_time_changes_layer_over_the_config_file(digits_every_3: TestClient) -> None:
    client = digits_every_3
    assert client.put(PATH, json={"confidence_below": 0.9}).json() == {
        **DEFAULTS,
        "every_n": 3,
        "confidence_below": 0.9,
    }
    assert client.put(PATH, json={"every_n": 50}).json()["every_n"] == 50
    assert client.delete(PATH).json() == {**DEFAULTS, "every_n": 3}


@pytest.mark.parametrize(
    "section",
    [
        pytest.param({"every_n": 0}, id="every-n-0"),
        pytest.param({"confidence_below": 2}, id="confidence-below-2"),
        pytest.param({"every_m": 3}, id="unknown-field"),
    ],
)
def test_invalid_per_model_sampling_in_config_is_refused_at_start(
    make_settings: Callable[..., SidecarSettings], section: dict[str, Any]
) -> None:
    """A bad ``[models.NAME.sampling]`` must fail loading settings, not the first event of that model."""
    with pytest.raises(ValidationError, match=next(iter(section))):
        make_settings(models={"digits": {"sampling": section}})


def test_unreadable_policy_in_redis_is_ignored(make_client: ClientFactory, redis_client: redis.Redis) -> None:
    client = make_client()
    client.put(PATH, json={"every_n": 9})
    redis_client.hset(keys.policy("digits"), mapping={"every_n": "0"})
    redis_client.hset(keys.policy("broken"), mapping={"every_n": "{not json"})
    redis_client.hset(keys.policy("text"), mapping={"every_n": "11"})
    redis_client.sadd(keys.POLICY_MODELS, "broken", "text")
    redis_client.incr(keys.POLICY_VERSION)  # as every writer does, so that the replicas read the policies again
    _wait_for_policy(client, "text", {"every_n": 11})
    assert client.get(PATH).json() == {**DEFAULTS, "every_n": 9}
    assert client.get("/v1/models/broken/sampling").json() == DEFAULTS
    assert client.post("/v1/events", json=event("ok")).status_code == 202


def test_reading_policies_of_unknown_models_keeps_no_state(client: TestClient) -> None:
    """A read token must not be able to grow the sidecar's memory one model name at a time."""
    sampler = sidecar_of(client).sampler
    for i in range(2000):
        response = client.get(f"/v1/models/unknown-{i}/sampling")
        assert response.status_code == 200
        assert response.json() == DEFAULTS
    assert client.delete("/v1/models/unknown-0/sampling").json() == DEFAULTS
    held = {name: getattr(sampler, name) for name in ("_policies", "_overrides", "_seen", "_buckets")}
    assert held == {name: {} for name in held}
    assert _sampled(client, event("r1", logits=[1.0, 1.0, 1.0])) == [("r1", ["low_confidence"])]
    assert set(sampler._policies) == set(sampler._buckets) == {"digits"}
