"""/metrics after a known mix of events: exact values, bounded labels, the accounting invariant, promtool."""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from helpers import event

ClientFactory = Callable[..., TestClient]
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
PROMTOOL = "/usr/bin/promtool"


def _scrape(client: TestClient) -> Samples:
    """Every sample of ``/metrics``, parsed back from the text exposition."""
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def _value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def _by_label(samples: Samples, name: str, label: str) -> dict[str, float]:
    """``name``'s samples keyed by one label's value (summing over the others)."""
    found: dict[str, float] = {}
    for (sample_name, labels), value in samples.items():
        if sample_name == name:
            key = dict(labels)[label]
            found[key] = found.get(key, 0.0) + value
    return found


def _total(samples: Samples, name: str, **labels: str) -> float:
    wanted = set(labels.items())
    return sum(value for (sample_name, found), value in samples.items() if sample_name == name and wanted <= found)


def _scrape_until(client: TestClient, ready: Callable[[Samples], bool], timeout_s: float = 5.0) -> Samples:
    deadline = time.monotonic() + timeout_s
    samples = _scrape(client)
    while not ready(samples):
        if time.monotonic() > deadline:
            raise AssertionError(f"metrics never got ready: {sorted(samples.items())[:60]}")
        samples = _scrape(client)
    return samples


def _softmax_top(logits: list[float]) -> float:
    top = max(logits)
    return 1.0 / sum(math.exp(value - top) for value in logits)


def _buckets(samples: Samples, name: str, **labels: str) -> dict[str, float]:
    return {
        dict(found)["le"]: value
        for (sample_name, found), value in samples.items()
        if sample_name == f"{name}_bucket" and set(labels.items()) <= found
    }


# The mix: every_n 2 and confidence_below 0.5 for every model; two versions and two region values kept.
D1 = event("d1", model_version="v1", logits=[4.0, 1.0, 0.5], cohort={"region": "eu"})  # margin 3
D2 = event("d2", model_version="v1", logits=[2.0, 2.0, 0.0], cohort={"region": "us"})  # margin 0, conf 0.47; 2nd
D3 = event("d3", model_version="v2", logits=[3.0, 0.0, 0.0], cohort={"region": "apac"})  # margin 3, __other__
D4 = event("d4", model_version="v2", logits=[1.5, 0.5, 0.0])  # margin 1; 4th
D5 = event("d5", model_version="v3", logits=[4.0, 1.0, 0.5])  # third version: __other__
T1 = event("t1", model="text", model_version="v1", probabilities=[0.8, 0.2], logits=None, cohort={"region": "eu"})
T2 = event(
    "t2",
    model="text",
    model_version="v1",
    probabilities=[0.3, 0.7],
    logits=None,
    cohort={"region": "us", "tier": "free"},
)  # 2nd of text
MIX_SETTINGS: dict[str, Any] = {
    "cohort_keys": ("region",),
    "max_cohort_values": 2,
    "max_versions_per_model": 2,
    "sampling": {"every_n": 2, "confidence_below": 0.5},
}


@pytest.fixture
def mixed(make_client: ClientFactory) -> TestClient:
    """A sidecar that has seen the mix above and four rejected events."""
    client = make_client(**MIX_SETTINGS)
    accepted = client.post("/v1/events", json={"events": [D1, D2, D3, D4, D5, T1, T2]})
    assert accepted.status_code == 202
    assert accepted.json()["accepted"] == 7
    bad_probabilities = event("t3", model="text", probabilities=[0.5, 0.6], logits=None)
    assert client.post("/v1/events", json={"events": [D1, bad_probabilities]}).status_code == 422
    assert client.post("/v1/events", content=b"").status_code == 422
    nan = b'{"events":[{"model":"digits","request_id":"nan","logits":[NaN,1.0]}]}'
    assert client.post("/v1/events", content=nan, headers={"content-type": "application/json"}).status_code == 422
    return client


def test_event_counts_by_model_and_version(mixed: TestClient) -> None:
    samples = _scrape(mixed)
    assert _by_label(
        {k: v for k, v in samples.items() if ("model", "digits") in k[1]}, "vai_events_total", "version"
    ) == {"v1": 2, "v2": 2, "__other__": 1}
    assert _value(samples, "vai_events_total", model="text", version="v1") == 2
    assert _total(samples, "vai_events_total") == 7


def test_rejections_by_reason(mixed: TestClient) -> None:
    assert _by_label(_scrape(mixed), "vai_events_rejected_total", "reason") == {
        "duplicate": 1,
        "bad_probabilities": 1,
        "invalid_body": 1,
        "non_finite": 1,
    }


def test_confidence_histogram(mixed: TestClient) -> None:
    samples = _scrape(mixed)
    expected = {
        ("digits", "v1"): [_softmax_top(D1["logits"]), _softmax_top(D2["logits"])],
        ("digits", "v2"): [_softmax_top(D3["logits"]), _softmax_top(D4["logits"])],
        ("digits", "__other__"): [_softmax_top(D5["logits"])],
        ("text", "v1"): [0.8, 0.7],
    }
    for (model, version), values in expected.items():
        labels = {"model": model, "version": version}
        assert _value(samples, "vai_prediction_confidence_count", **labels) == len(values)
        # rel 1e-7: the sidecar takes the softmax's exponentials in float32 (service.events.scores.summarise_matrix)
        assert _value(samples, "vai_prediction_confidence_sum", **labels) == pytest.approx(sum(values), rel=1e-7)
    assert _buckets(samples, "vai_prediction_confidence", model="digits", version="v1")["0.5"] == 1


def test_margin_histogram_buckets(mixed: TestClient) -> None:
    samples = _scrape(mixed)
    les = ["0.1", "0.25", "0.5", "1.0", "2.0", "4.0", "8.0", "16.0", "32.0", "+Inf"]
    expected = {
        ("digits", "v1"): [1, 1, 1, 1, 1, 2, 2, 2, 2, 2],  # margins 3 and 0
        ("digits", "v2"): [0, 0, 0, 1, 1, 2, 2, 2, 2, 2],  # margins 3 and 1 (le is inclusive)
        ("digits", "__other__"): [0, 0, 0, 0, 0, 1, 1, 1, 1, 1],  # margin 3
        ("text", "v1"): [0, 0, 0, 1, 2, 2, 2, 2, 2, 2],  # log(7/3) = 0.85 and log(4) = 1.39
    }
    for (model, version), counts in expected.items():
        expected_buckets = dict(zip(les, counts, strict=True))
        assert _buckets(samples, "vai_logit_margin", model=model, version=version) == expected_buckets
    assert _value(samples, "vai_logit_margin_sum", model="text", version="v1") == pytest.approx(
        math.log(0.7 / 0.3) + math.log(0.8 / 0.2), rel=1e-12
    )
    assert _value(samples, "vai_logit_margin_sum", model="digits", version="v2") == pytest.approx(4.0)


def test_low_confidence_counter(mixed: TestClient) -> None:
    samples = _scrape(mixed)
    assert _value(samples, "vai_low_confidence_total", model="digits", version="v1") == 1
    assert _total(samples, "vai_low_confidence_total") == 1


def test_low_confidence_counter_does_not_follow_sampling(make_client: ClientFactory) -> None:
    """Turning low-confidence sampling off (or moving its threshold at run time) must not turn the alert off:
    the counter has a threshold of its own, per model where the config file sets one."""
    client = make_client(sampling={"confidence_below": None}, models={"text": {"low_confidence_below": 0.75}})
    assert client.post("/v1/events", json={"events": [D1, D2, T1, T2]}).status_code == 202  # conf ~.9, .47, .8, .7
    assert client.put("/v1/models/digits/sampling", json={"confidence_below": 0.99}).status_code == 200
    assert client.post("/v1/events", json=event("d6", model_version="v1", logits=[4.0, 1.0, 0.5])).status_code == 202
    samples = _scrape(client)
    assert _value(samples, "vai_low_confidence_total", model="digits", version="v1") == 1  # D2 alone, at 0.5
    assert _value(samples, "vai_low_confidence_total", model="text", version="v1") == 1  # T2 (0.7 < 0.75)


def _cohort_counts(client: TestClient, events: int) -> dict[tuple[str, str, str], float]:
    """``vai_cohort_events_total`` by (model, key, value), once ``events`` are counted: a value new to the fleet
    counts once a decision round (off the request path) has admitted or refused it."""
    samples = _scrape_until(client, lambda s: _total(s, "vai_cohort_events_total") == events)
    return {
        (dict(labels)["model"], dict(labels)["cohort"], dict(labels)["value"]): value
        for (name, labels), value in samples.items()
        if name == "vai_cohort_events_total"
    }


def test_cohort_counter_bounds_values(mixed: TestClient) -> None:
    found = _cohort_counts(mixed, 5)
    assert found == {
        ("digits", "region", "eu"): 1,
        ("digits", "region", "us"): 1,
        ("digits", "region", "__other__"): 1,
        ("text", "region", "eu"): 1,
        ("text", "region", "us"): 1,
    }


def test_sampling_counters_and_queue_length(mixed: TestClient) -> None:
    samples = _scrape_until(
        mixed,
        lambda s: (
            _value(s, "vai_queue_length", model="digits") == 2 and _value(s, "vai_queue_length", model="text") == 1
        ),
    )
    assert {
        (dict(labels)["model"], dict(labels)["reason"]): value
        for (name, labels), value in samples.items()
        if name == "vai_sampled_total"
    } == {("digits", "every_n"): 2, ("digits", "low_confidence"): 1, ("text", "every_n"): 1}
    assert _by_label(samples, "vai_events_not_sampled_total", "model") == {"digits": 3, "text": 1}
    assert _value(samples, "vai_redis_up") == 1


def _invariant_holds(samples: Samples, model: str) -> bool:
    events = _total(samples, "vai_events_total", model=model)
    not_sampled = _total(samples, "vai_events_not_sampled_total", model=model)
    dropped = _total(samples, "vai_sample_dropped_total", model=model)
    queued = _total(samples, "vai_sample_queued_total", model=model)
    return events == not_sampled + dropped + queued


def test_accounting_invariant_of_the_mix(mixed: TestClient) -> None:
    samples = _scrape_until(
        mixed, lambda s: _value(s, "vai_buffer_events") == 0 and _total(s, "vai_sample_queued_total") == 3
    )
    assert _invariant_holds(samples, "digits")
    assert _invariant_holds(samples, "text")


def test_accounting_invariant_with_drops(make_client: ClientFactory) -> None:
    client = make_client(
        queue_max_length=2,
        models={
            "budget": {"sampling": {"every_n": 1, "max_per_second": 0.001}},  # one token, then none for 1000 s
            "full": {"sampling": {"every_n": 1, "max_per_second": 1000.0}},
            "quiet": {"sampling": {"every_n": None, "confidence_below": None}},
        },
    )
    events = [event(f"{model}{i}", model=model) for model in ("budget", "full", "quiet") for i in range(4)]
    assert client.post("/v1/events", json={"events": events}).json()["accepted"] == 12
    samples = _scrape_until(
        client,
        lambda s: (
            _value(s, "vai_buffer_events") == 0
            and _total(s, "vai_sample_queued_total") == 3
            and _value(s, "vai_queue_length", model="full") == 2
        ),
    )
    dropped = {
        (dict(labels)["model"], dict(labels)["reason"]): value
        for (name, labels), value in samples.items()
        if name == "vai_sample_dropped_total"
    }
    assert dropped == {("budget", "budget"): 3, ("full", "queue_full"): 2}
    assert _value(samples, "vai_sample_queued_total", model="budget") == 1
    assert _value(samples, "vai_sample_queued_total", model="full") == 2
    assert _value(samples, "vai_events_not_sampled_total", model="quiet") == 4
    assert _value(samples, "vai_queue_length", model="budget") == 1
    for model in ("budget", "full", "quiet"):
        assert _invariant_holds(samples, model), model


def test_versions_beyond_the_limit_count_as_other(make_client: ClientFactory) -> None:
    client = make_client(max_versions_per_model=2, low_confidence_below=1.0)
    versions = ["v1", "v2", "v3", "v4", "v1", "v2", "v3"]
    events = [event(f"r{i}", model_version=version) for i, version in enumerate(versions)]
    events.append(event("other-model", model="text", model_version="v9"))
    assert client.post("/v1/events", json={"events": events}).status_code == 202
    samples = _scrape(client)
    for name in (
        "vai_events_total",
        "vai_prediction_confidence_count",
        "vai_logit_margin_count",
        "vai_low_confidence_total",
    ):
        assert _by_label({k: v for k, v in samples.items() if ("model", "digits") in k[1]}, name, "version") == {
            "v1": 2,
            "v2": 2,
            "__other__": 3,
        }, name
    assert _value(samples, "vai_events_total", model="text", version="v9") == 1


def test_redis_up_is_zero_when_redis_is_unreachable(make_client: ClientFactory) -> None:
    from common.embedded_redis import free_port

    client = make_client(redis_url=f"redis://127.0.0.1:{free_port()}/0", redis_timeout_s=0.1)
    samples = _scrape(client)
    assert _value(samples, "vai_redis_up") == 0


def test_exposition_passes_promtool(mixed: TestClient) -> None:
    if not os.access(PROMTOOL, os.X_OK) and shutil.which("promtool") is None:
        if os.environ.get("CI"):
            pytest.fail(f"{PROMTOOL} is missing; CI must have promtool")
        pytest.skip("promtool is not installed")
    promtool = PROMTOOL if os.access(PROMTOOL, os.X_OK) else str(shutil.which("promtool"))
    exposition = mixed.get("/metrics").content
    checked = subprocess.run(
        [promtool, "check", "metrics"], input=exposition, capture_output=True, timeout=60, check=False
    )
    assert checked.returncode == 0, (checked.stdout + checked.stderr).decode()


def test_a_request_mixing_models_is_sampled_and_counted_in_arrival_order(make_client: ClientFactory) -> None:
    """Each model's events are decided together; what is sampled still comes back, and is queued, as it arrived."""
    client = make_client(
        models={
            "odd": {"sampling": {"every_n": 2, "confidence_below": None}},
            "all": {"sampling": {"every_n": 1, "confidence_below": None, "max_per_second": 0.001}},  # one token
        },
    )
    events = [event(f"{model}{i}", model=model) for i in range(4) for model in ("odd", "all")]
    result = client.post("/v1/events", json={"events": events}).json()
    assert [s["request_id"] for s in result["sampled"]] == ["all0", "odd1", "odd3"]
    samples = _scrape_until(client, lambda s: _value(s, "vai_buffer_events") == 0)
    assert _by_label(samples, "vai_events_not_sampled_total", "model") == {"odd": 2}
    assert _value(samples, "vai_sample_dropped_total", model="all", reason="budget") == 3
    assert _invariant_holds(samples, "odd") and _invariant_holds(samples, "all")


def test_each_model_has_its_own_cohort_value_slots(make_client: Callable[..., TestClient]) -> None:
    """A process-wide cap let the first model's values take every slot: another model's only value read
    __other__."""
    client = make_client(cohort_keys=("region",), max_cohort_values=2)
    events = [event(f"d{region}", cohort={"region": region}) for region in ("eu", "us", "sa")]
    events.append(event("t1", model="text", cohort={"region": "ap"}))
    assert client.post("/v1/events", json={"events": events}).json()["accepted"] == 4
    found = {(model, value): count for (model, _, value), count in _cohort_counts(client, 4).items()}
    assert found == {("digits", "eu"): 1, ("digits", "us"): 1, ("digits", "__other__"): 1, ("text", "ap"): 1}
