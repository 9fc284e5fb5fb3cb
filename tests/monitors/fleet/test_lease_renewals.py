"""The leases a monitor holds are renewed on their own cadence: taking a model, however long its labelled window takes
to rebuild, holds up neither their renewal nor that of the model taken."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
import redis

from common import keys
from helpers import MonitorRunner, wait_until
from monitors.fleet.labelled import LabelledFeed
from monitors.fleet.owned import OwnedModel
from monitors.fleet.owned_drift import OwnedDrift
from monitors.fleet.process import MonitorProcess

TTL_S = 1.5
"""Renewed every third of it: a renewal half a second late on a busy runner leaves it live."""


class Gate:
    """Holds one step of model ``b`` (yielding the event loop, as a long replay does once it runs off the loop) until
    released."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.released = threading.Event()

    def hold(self, step: Callable[[Any], Awaitable[None]]) -> Callable[[Any], Awaitable[None]]:
        async def held(part: Any) -> None:
            if part.model == "b":
                self.entered.set()
                while not self.released.is_set():
                    await asyncio.sleep(0.01)
            await step(part)

        return held


@pytest.fixture
def gate() -> Iterator[Gate]:
    gate = Gate()
    yield gate
    gate.released.set()


def renewed_past_the_ttl(client: redis.Redis, process: MonitorProcess, models: list[str]) -> Callable[[], bool]:
    """A predicate that asserts each of ``models`` is owned by ``process`` with its lease live, and is true once each
    lease was renewed four times (a third of the TTL apart: past the TTL)."""
    renewals = dict.fromkeys(models, 0)
    last: dict[str, int] = {}

    def check() -> bool:
        for model in models:
            left = int(client.pttl(keys.monitor_lease(model)))
            assert left > 0, f"the lease of {model} ran out"
            assert client.get(keys.monitor_lease(model)) == process.owner.encode(), f"{model} changed hands"
            renewals[model] += left > last.get(model, left)
            last[model] = left
        return min(renewals.values()) >= 4

    return check


@pytest.mark.parametrize(
    "held",
    [
        pytest.param("replay", id="its-labelled-window-rebuilt"),
        pytest.param("take", id="its-drift-monitor-started"),
    ],
)
def test_leases_are_renewed_while_a_model_is_taken(
    held: str,
    gate: Gate,
    monitors: MonitorRunner,
    redis_client: redis.Redis,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A monitor owning ``a`` takes ``b``, one of whose steps lasts longer than the lease (a labelled feed of 100,000
    records took 4.3 s to replay): ``a``'s lease and ``b``'s are renewed meanwhile, and neither model is dropped.
    (The replay was awaited inside the lease round, after the round's one renewal: ``a``'s lease ran out, then
    ``b``'s, and both went round and round the fleet.)"""
    if held == "replay":
        monkeypatch.setattr(LabelledFeed, "reload", gate.hold(LabelledFeed.reload))
    else:
        monkeypatch.setattr(OwnedDrift, "start", gate.hold(OwnedDrift.start))
    redis_client.sadd(keys.MONITORED_MODELS, "a")
    process = monitors.start(monitor_lease_ttl_s=TTL_S)
    wait_until(lambda: "a" in process.owned, what="a owned")
    with caplog.at_level(logging.WARNING, logger="monitors.fleet.lease_round"):
        redis_client.sadd(keys.MONITORED_MODELS, "b")
        wait_until(gate.entered.is_set, what="b being taken")
        wait_until(renewed_past_the_ttl(redis_client, process, ["a", "b"]), what="both leases renewed past the TTL")
        assert "a" in process.owned
        gate.released.set()
        wait_until(lambda: redis_client.get(keys.quality_report("b")) is not None, what="b's first report")
    assert sorted(process.owned) == ["a", "b"]
    assert not [r.getMessage() for r in caplog.records if "lost the lease" in r.getMessage()]


def test_a_model_whose_lease_is_lost_while_its_window_is_rebuilt_is_dropped(
    gate: Gate, monitors: MonitorRunner, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Exactly one owner: the renewals drop a model whose lease went to another monitor, taken or being taken."""
    monkeypatch.setattr(LabelledFeed, "reload", gate.hold(LabelledFeed.reload))
    redis_client.sadd(keys.MONITORED_MODELS, "b")
    process = monitors.start(monitor_lease_ttl_s=TTL_S)
    wait_until(gate.entered.is_set, what="b being taken")
    redis_client.set(keys.monitor_lease("b"), "another monitor", px=60_000)
    wait_until(lambda: "b" not in process.owned, what="b dropped")
    gate.released.set()
    assert redis_client.get(keys.quality_report("b")) is None
    assert redis_client.get(keys.monitor_lease("b")) == b"another monitor", "not released: it was not ours"


def test_the_leases_are_renewed_while_a_lost_model_is_stopped(
    gate: Gate, monitors: MonitorRunner, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A model whose lease was lost is dropped in a task of its own: its stop (tasks, a replay page, the windows'
    settling: up to seconds) holds up no other lease's renewal."""
    stop = OwnedModel.stop

    async def held(part: OwnedModel, **kwargs: Any) -> None:
        if part.model == "b":
            gate.entered.set()
            while not gate.released.is_set():
                await asyncio.sleep(0.01)
        await stop(part, **kwargs)

    monkeypatch.setattr(OwnedModel, "stop", held)
    redis_client.sadd(keys.MONITORED_MODELS, "a", "b")
    process = monitors.start(monitor_lease_ttl_s=TTL_S)
    wait_until(lambda: sorted(process.owned) == ["a", "b"], what="both owned")
    redis_client.set(keys.monitor_lease("b"), "another monitor", px=60_000)
    wait_until(gate.entered.is_set, what="b being stopped")
    wait_until(renewed_past_the_ttl(redis_client, process, ["a"]), what="a's lease renewed past the TTL")
    gate.released.set()
    wait_until(lambda: "b" not in process.owned, what="b dropped")
    assert redis_client.get(keys.monitor_lease("b")) == b"another monitor"
