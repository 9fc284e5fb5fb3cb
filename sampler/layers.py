"""Internal state of explained models: the record formats the worker writes and the sidecar reads.

Two kinds of record, both written by the attribution worker (:mod:`attribution_workers.inspection`):

- per explained event, inside its :class:`~sampler.explanation_records.ExplanationDetail`: one
  :class:`LayerStats` per inspected layer, and :class:`FeatureMaps` (float16, a few channels)
  for the layers whose feature maps are kept. Only the statistics are public JSON; the maps are
  drawn as a PNG on request;
- per model and worker: a :class:`LayerHealthReport` over the worker's recent samples (dead units,
  saturation, activation shift against the first window it saw), kept by :class:`LayerHealthStore`
  with a TTL, one key per (model, worker) and an index of the workers that reported lately.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, ValidationError
from redis.asyncio import Redis

from common import keys
from common.codec import ScaledHalf
from common.errors import RedisUnavailable
from common.redis import REDIS_FAILED, execute

LayerKind = Literal["conv", "linear", "activation", "other"]
Baseline = Literal["first_window", "uploaded"]
log = logging.getLogger(__name__)

REPORT_FRESH_S = 3600
"""A worker's report is served for this long after its last update (and expires then)."""


class LayerStats(BaseModel):
    """One layer's output on one explained input (the public ``layers`` items of an explanation).

    ``mean``/``std`` (population) over every element of the per-sample output; None when the output
    held non-finite values. ``zero_share``: share of elements exactly 0. ``saturated_share``: share
    within 1% of the output range of a bound, for bounded activations only (else None).
    """

    model_config = ConfigDict(frozen=True)

    name: str
    """The module's dotted name; ``name#k`` for its k-th call in the forward pass (a module used more than once)."""
    kind: LayerKind
    shape: tuple[int, ...]
    """Per-sample output shape (no batch dimension)."""
    mean: float | None
    std: float | None
    zero_share: float
    saturated_share: float | None = None
    feature_map_channels: tuple[int, ...] = ()
    """Channels whose maps are stored with the explanation (strongest first); empty when none are."""


class FeatureMaps(ScaledHalf):
    """A few channels of one layer's output, compact: ``values / scale`` as float16 in the array codec."""

    channels: tuple[int, ...]
    """Channel indices, ranked by mean |activation| (strongest first); ``shape[0] == len(channels)``.
    ``shape[1:]`` is the layer's ``(H, W)``, or, above 64 on a side, that averaged down over square blocks
    (``attribution_workers.inspection.MAX_MAP_SIDE``)."""

    @classmethod
    def from_array(cls, maps: npt.NDArray[Any], channels: tuple[int, ...]) -> FeatureMaps:
        """``maps`` of shape ``(channels, H, W)``; NaN and infinity are stored as 0."""
        finite = np.nan_to_num(np.asarray(maps, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)
        return cls(channels=channels, **cls.encoded(finite))


class LayerHealth(BaseModel):
    """One layer over a worker's recent samples of one model version.

    The recent figures rest on ``inputs`` inputs (the last ``window`` with a finite output on this layer); the
    activation shift also on the version's first ``window`` such inputs, its baseline.
    """

    name: str
    """The module's dotted name; ``name#k`` for its k-th call in one forward pass (a module used more than once)."""
    kind: LayerKind
    units: int
    """Channels of a channel-first output (a convolution's, and an activation's after one), else features of the last
    axis (see the worker's inspection module)."""
    dead_ratio: float | None
    """Share of units that were exactly 0 on every one of the last ``window`` inputs. None until the window is full,
    and for layers whose dead state is not an exact 0 (convolutions, linear layers, LeakyReLU, SiLU, GELU, ELU,
    sigmoid, tanh...): only ReLU-like activations are measured."""
    saturated_ratio: float | None
    """Mean saturated share of the elements over the recent inputs; None for unbounded layers."""
    activation_shift: float | None
    """Mean over units of |mean now - mean in the baseline| / (std there + eps); None until the recent window
    no longer overlaps the baseline (``2 * window`` finite inputs), and when the layer was 0 all through it."""
    inputs: int | None = None
    """Inputs the recent figures rest on (at most ``window``); None in the reports of older workers."""
    nonfinite_inputs: int = 0
    """Inputs whose output of this layer held inf or NaN (e.g. an overflow), left out of every figure."""


class LayerHealthReport(BaseModel):
    """What one worker saw inside one model lately."""

    worker: str
    version: str
    samples: int
    """Inputs of this version the worker has inspected since it started."""
    window: int
    """Inputs the recent figures are computed over (at most the configured window)."""
    baseline: Baseline = "first_window"
    updated_at: float
    layers: list[LayerHealth]


class ModelLayers(BaseModel):
    """``GET /v1/models/{model}/layers``: one report per worker and model version explained lately."""

    model: str
    reports: list[LayerHealthReport]


class LayerHealthStore:
    """Reports by (model, worker, version), each with a TTL; an index per model finds the fresh ones."""

    def __init__(self, redis: Redis, *, fresh_s: int = REPORT_FRESH_S) -> None:
        self._redis = redis
        self._fresh_s = fresh_s

    async def publish(self, model: str, report: LayerHealthReport) -> None:
        index, key = keys.layer_health_index(model), keys.layer_health(model, report.worker, report.version)
        pipe = self._redis.pipeline(transaction=False)
        pipe.set(key, report.model_dump_json(), ex=self._fresh_s)
        pipe.zadd(index, {key: report.updated_at})
        pipe.zremrangebyscore(index, "-inf", f"({report.updated_at - self._fresh_s}")
        pipe.expire(index, self._fresh_s)
        await execute(pipe)

    async def reports(self, model: str, *, now: float | None = None) -> list[LayerHealthReport]:
        """Fresh reports of ``model``, most recently updated first; ``RedisUnavailable`` when Redis fails."""
        cutoff = (time.time() if now is None else now) - self._fresh_s
        with _reading():
            found: list[bytes] = await self._redis.zrevrangebyscore(  # type: ignore[assignment]
                keys.layer_health_index(model), "+inf", cutoff
            )
            if not found:
                return []
            bodies = await self._redis.mget(found)  # the reports' keys (an older worker's index held its name: None)
        return [report for body in bodies if body is not None and (report := _report(body)) is not None]


def _report(body: bytes | str) -> LayerHealthReport | None:
    """One worker's report, or ``None`` (logged) when it does not parse: a worker of another version during a
    rolling upgrade must not take the other reports down with it."""
    try:
        return LayerHealthReport.model_validate_json(body)
    except ValidationError as error:
        log.warning("layer report skipped, not readable: %s", str(error).splitlines()[0])
        return None


@contextlib.contextmanager
def _reading() -> Iterator[None]:
    try:
        yield
    except REDIS_FAILED as error:
        log.warning("layer reports not read: %s", error)
        raise RedisUnavailable("layer reports cannot be read now") from None
