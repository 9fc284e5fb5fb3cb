"""Internal state of explained models: the record formats the worker writes and the sidecar reads.

Two kinds of record, both written by the attribution worker (:mod:`attribution_workers.inspection`):

- per explained event, inside its :class:`~sampler.explanation_records.ExplanationDetail`: one
  :class:`LayerStats` per inspected layer, and :class:`FeatureMaps` (float16, a few channels)
  for the layers whose feature maps are kept. Only the statistics are public JSON; the maps are
  drawn as a PNG on request;
- per model, worker and model version: a :class:`LayerHealthReport` over the worker's recent samples of the
  version (dead units, saturation, activation shift against the version's baseline), kept by
  :class:`LayerHealthStore` with a TTL, one key per (model, worker, version) and an index of those keys;
- per model version and weights: the activation-shift baseline, a :class:`LayerBaselineRecord` kept by
  :class:`LayerBaselineStore`. The first worker to complete one stores it (``SET NX``: the first wins) and every
  worker of that version and those weights adopts it, so a restarted worker or another replica measures the shift
  against the same baseline instead of re-basing it on the traffic of the moment.
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
from common.codec import EncodedArray, ScaledHalf
from common.errors import RedisUnavailable
from common.redis import REDIS_FAILED, execute

LayerKind = Literal["conv", "linear", "activation", "other"]
Baseline = Literal["first_window", "uploaded"]
log = logging.getLogger(__name__)

REPORT_FRESH_S = 3600
"""A worker's report is served for this long after its last update (and expires then)."""
BASELINE_TTL_S = 90 * 24 * 3600
"""A stored baseline expires this long after it was stored (90 days): long enough for any version's life, short
enough that the baselines of retired versions do not pile up. The next worker to complete one afterwards stores its
own."""


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
    no longer overlaps the baseline (``window`` finite inputs on the version's stored baseline, ``2 * window`` on the
    worker's own), and when the layer was 0 all through it."""
    shift_units: int | None = None
    """Units the shift averages over: those that varied in the baseline, and those constant there (dead) that have
    left that value since; a unit constant through the baseline and still so carries no evidence and is left out.
    None with the shift, and in the reports of older workers."""
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
    """The version's first ``window`` inputs; with ``baseline_stored``, those of the worker that stored it first."""
    baseline_stored: bool = False
    """Whether the baseline is the version's stored one, shared by every worker of the model (else this worker's own,
    not stored yet, or the reports of older workers)."""
    baseline_worker: str | None = None
    """The worker whose first window the baseline is; None until it is complete, and in older workers' reports."""
    baseline_taken_at: float | None = None
    """When that window completed (epoch s); None until it is complete, and in older workers' reports."""
    updated_at: float
    layers: list[LayerHealth]


class LayerBaseline(BaseModel):
    """One layer's baseline: per unit, the mean and population std of its mean output over the window."""

    model_config = ConfigDict(frozen=True)

    name: str
    units: int
    mean: EncodedArray
    """float64, shape ``(units,)``."""
    std: EncodedArray
    """float64, shape ``(units,)``."""
    eps: float

    def arrays(self) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]] | None:
        """``(mean, std)``, or None when they do not decode to ``units`` finite values each."""
        try:
            mean, std = (np.asarray(a.decode(), dtype=np.float64) for a in (self.mean, self.std))
        except ValueError:
            return None
        if mean.shape != (self.units,) or std.shape != (self.units,):
            return None
        return (mean, std) if np.isfinite(mean).all() and np.isfinite(std).all() else None


class LayerBaselineRecord(BaseModel):
    """The activation-shift baseline of one version of a model (format 1), stored by the first worker to complete
    it. Only workers whose model has ``model_digest`` adopt it: the baseline of other weights measures nothing."""

    model_config = ConfigDict(frozen=True)

    v: Literal[1] = 1
    model_digest: str
    window: int
    """Inputs it rests on (the worker's ``inspect_window``)."""
    worker: str
    taken_at: float
    """When the window completed (epoch s)."""
    layers: list[LayerBaseline]


class LayerBaselineStore:
    """One baseline per (model, version, weights digest): the first stored wins, and every worker of those weights
    reads it."""

    def __init__(self, redis: Redis, *, ttl_s: int = BASELINE_TTL_S) -> None:
        self._redis = redis
        self._ttl_s = ttl_s

    async def fetch(self, model: str, versions: list[str], digest: str) -> dict[str, LayerBaselineRecord]:
        """The stored baselines of ``versions`` of the model with weights ``digest`` (those missing or unreadable
        are left out); ``RedisUnavailable`` when Redis fails."""
        if not versions:
            return {}
        with _reading("layer baselines"):
            bodies = await self._redis.mget([keys.layer_baseline(model, version, digest) for version in versions])
        found = {}
        for version, body in zip(versions, bodies, strict=True):
            if body is not None and (record := _baseline(model, version, body)) is not None:
                found[version] = record
        return found

    async def store(self, model: str, version: str, record: LayerBaselineRecord) -> bool:
        """Store ``record`` unless a baseline of the version is stored already; True when it was stored. Raises
        the client's error when Redis fails."""
        key = keys.layer_baseline(model, version, record.model_digest)
        return bool(await self._redis.set(key, record.model_dump_json(), nx=True, ex=self._ttl_s))


def _baseline(model: str, version: str, body: bytes | str) -> LayerBaselineRecord | None:
    """A stored baseline, or None (logged) when it does not parse: another format, or damaged."""
    try:
        return LayerBaselineRecord.model_validate_json(body)
    except ValidationError as error:
        log.warning("baseline of %s %s ignored, not readable: %s", model, version, str(error).splitlines()[0])
        return None


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
        with _reading("layer reports"):
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
def _reading(what: str) -> Iterator[None]:
    try:
        yield
    except REDIS_FAILED as error:
        log.warning("%s not read: %s", what, error)
        raise RedisUnavailable(f"{what} cannot be read now") from None
