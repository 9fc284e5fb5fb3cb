"""A model's version labels on the sidecar: at most ``VAI_MAX_VERSIONS_PER_MODEL`` at a time, and a version idle for
``VERSION_IDLE_S`` gives its slot (and its series) up to the newest (the real app, its own clock moved)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from common.cardinality import OTHER
from helpers import event
from service.ingest import known_models

VERSION_IDLE_S: float = getattr(known_models, "VERSION_IDLE_S", 3600.0)  # read so: the test runs on the code before too
VERSION_SWEEP_S: float = getattr(known_models, "VERSION_SWEEP_S", 60.0)

ClientFactory = Callable[..., TestClient]
VERSIONED = ("vai_events_total", "vai_prediction_confidence_count", "vai_logit_margin_count")


class _Clock:
    """Stands in for the ``time`` module of :mod:`service.ingest.known_models` alone."""

    def __init__(self) -> None:
        self.now_s = 1000.0

    def monotonic(self) -> float:
        return self.now_s


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> _Clock:
    moved = _Clock()
    monkeypatch.setattr(known_models, "time", moved, raising=False)
    return moved


def versions_exported(client: TestClient) -> dict[str, dict[str, float]]:
    """Per metric of :data:`VERSIONED`, the value of each version's series of model ``digits``."""
    found: dict[str, dict[str, float]] = {name: {} for name in VERSIONED}
    for family in text_string_to_metric_families(client.get("/metrics").text):
        for sample in family.samples:
            if sample.name in found and sample.labels.get("model") == "digits":
                found[sample.name][sample.labels["version"]] = sample.value
    return found


def post(client: TestClient, *versions: str, at: int = 0) -> None:
    events = [event(f"r{at}-{index}", model_version=version) for index, version in enumerate(versions)]
    answer = client.post("/v1/events", json={"events": events})
    assert answer.status_code == 202 and answer.json()["accepted"] == len(events), answer.text


def test_rolling_versions_keep_the_current_one_and_drop_the_idle_ones(
    make_client: ClientFactory, clock: _Clock
) -> None:
    """v1..v8, one every 20 minutes, each idle once the next comes: the newest is always counted as itself, and
    the series of those idle for longer than ``VERSION_IDLE_S`` are gone (the soak's v6..v8 were ``__other__``)."""
    client = make_client(max_versions_per_model=5)
    step_s = VERSION_IDLE_S / 3
    for number in range(1, 9):
        clock.now_s += step_s
        post(client, f"v{number}", at=number)
        exported = versions_exported(client)
        for name in VERSIONED:
            assert exported[name].get(f"v{number}") == 1.0, (name, number, exported[name])
            assert OTHER not in exported[name], (name, number, exported[name])
    # at the last, v1..v5 are idle for 7, 6, 5, 4 and 3 steps: those idle for longer than 3 are let go
    assert set(versions_exported(client)["vai_events_total"]) == {"v5", "v6", "v7", "v8"}


def test_a_version_back_after_eviction_counts_as_itself_anew(make_client: ClientFactory, clock: _Clock) -> None:
    client = make_client(max_versions_per_model=2)
    post(client, "v1", "v1", "v2", at=1)
    clock.now_s += VERSION_IDLE_S + VERSION_SWEEP_S
    post(client, "v2", at=2)  # v2 stays; v1, idle, is let go with its series
    assert versions_exported(client)["vai_events_total"] == {"v2": 2.0}
    post(client, "v1", at=3)
    assert versions_exported(client)["vai_events_total"] == {"v1": 1.0, "v2": 2.0}, "a new admission: counted anew"


def test_the_cap_holds_while_more_versions_than_it_are_live(make_client: ClientFactory, clock: _Clock) -> None:
    """Seven versions every few minutes: none is idle, so the two past the cap share ``__other__``."""
    client = make_client(max_versions_per_model=5)
    versions = [f"v{number}" for number in range(1, 8)]
    for round_ in range(6):
        clock.now_s += VERSION_IDLE_S / 10
        post(client, *versions, at=round_)
    exported = versions_exported(client)["vai_events_total"]
    assert exported == {**{version: 6.0 for version in versions[:5]}, OTHER: 12.0}
