"""Layer health over a worker's recent samples of one model: dead units, saturation, activation shift.

Per model version, each layer (each call of a module used more than once: ``name#k``) keeps the
last ``window`` (K) inspected inputs whose output of the layer was finite: per unit, its mean
output on the input (``m_u(x)``, averaged over positions) and whether it was non-zero anywhere. An
input whose output held inf or NaN (a finite but huge input can overflow inside the model) is left
out of every figure, baseline included, and counted (``nonfinite_inputs``). Each layer says how
many inputs its recent figures rest on (``inputs``). A layer keeps the number of units it first
gave: an input on which it gives another (an output whose length follows the input's) is left out
of its figures, and logged once, rather than failing the batch.

- **dead ratio**: share of units that were exactly 0 on every one of the last K inputs. None
  until the window holds K inputs (on fewer inputs the ratio is biased upwards: 1 input of the
  digits CNN reads 0.38-0.62 where 64 read 0.36), and for layers whose dead state is not an exact
  0 (see :attr:`~attribution_workers.inspection.InspectedLayer.zero_is_dead`);
- **saturated ratio**: mean over the last K inputs of the share of saturated elements (bounded
  activations only); a plain mean, shown from the first input on;
- **activation shift**: the first K inputs of a version are its baseline: per unit ``mu_u`` and
  ``sigma_u``, the mean and population std of ``m_u(x)`` over them. Then, over the last K inputs,
  with ``nu_u`` the mean of ``m_u(x)``::

      shift = mean over units u of |nu_u - mu_u| / (sigma_u + eps)
      eps   = max(0.1 * mean_u(sigma_u), 0.001 * rms)

  over the units that varied in the baseline (``sigma_u > 0``) or have left their constant baseline
  value since (a dead unit come alive); ``shift_units`` says how many.

  with ``rms`` the root mean square of ``m_u(x)`` over the baseline's units and inputs (the
  layer's activation scale). A standardised mean difference per unit, averaged over the layer:
  about ``sqrt(4 / (pi K))`` (0.14 for K = 64) for fresh inputs of the baseline's distribution
  (the expected |difference| of two means of K, in units of sigma); well above 1 when the inputs
  drift. ``eps`` keeps a unit that barely varied in the baseline (dead, or constant) from
  dominating: it is measured against a tenth of the layer's typical spread, and never against
  less than 0.1% of the layer's scale, so a layer that was constant through the baseline does not
  turn a 1e-6 wobble into a shift of thousands (on every layer of the digits CNN the floor is
  9-90 times below the first term: it changes nothing there). The shift is None until the recent
  window no longer overlaps the baseline (2K finite inputs; before that it is biased towards 0,
  and exactly 0 at K), and for a layer that was exactly 0 all through its baseline (no scale to
  measure by).

The baseline of a version is shared by the workers of a model (:class:`~sampler.layers.LayerBaselineRecord`): the
first one a worker completes is stored, and the others adopt it (:meth:`LayerHealthTracker.adopt`) instead of taking
their own, so a restart during drift does not re-base the shift on drifted traffic. A layer whose name or units the
stored baseline lacks keeps its own. On an adopted baseline the shift is shown after ``window`` inputs (the recent
window never overlaps it); on the worker's own, after ``2 * window`` as above.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict, deque
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from attribution_workers.inspection import BatchInspection, LayerCapture
from common.codec import EncodedArray
from sampler.layers import LayerBaseline, LayerBaselineRecord, LayerHealth

log = logging.getLogger(__name__)
MAX_VERSIONS = 4
"""Model versions tracked at once (the least recently seen is dropped first)."""
EPS_SHARE = 0.1
"""``eps`` of the shift, as a share of the layer's mean baseline spread."""
EPS_SCALE = 0.001
"""The least ``eps`` of the shift, as a share of the layer's activation scale (rms over the baseline)."""


@dataclass(frozen=True)
class HealthSnapshot:
    """One version's figures after a batch (the worker adds its name and the time)."""

    version: str
    samples: int
    window: int
    layers: list[LayerHealth]
    baseline_stored: bool = False
    """Whether the baseline is the version's stored one (else this worker's own, not stored yet)."""
    baseline_worker: str | None = None
    """The worker that took the stored baseline; None for this worker's own."""
    baseline_taken_at: float | None = None
    """When the baseline's window completed (epoch s); None while it is incomplete."""


@dataclass(frozen=True)
class BaselineDraft:
    """A version's own baseline, complete and not stored yet: for the worker to store (and add who took it)."""

    taken_at: float
    layers: list[LayerBaseline]


@dataclass(frozen=True)
class _Baseline:
    mean: npt.NDArray[np.float64]
    std: npt.NDArray[np.float64]
    eps: float

    @classmethod
    def of(cls, means: npt.NDArray[np.float64]) -> _Baseline:
        """From ``[K, units]`` unit means (all finite)."""
        std = means.std(axis=0)
        scale = float(np.sqrt(np.mean(np.square(means))))
        return cls(means.mean(axis=0), std, max(EPS_SHARE * float(std.mean()), EPS_SCALE * scale))

    def record(self, name: str) -> LayerBaseline:
        mean, std = EncodedArray.of(self.mean), EncodedArray.of(self.std)
        return LayerBaseline(name=name, units=len(self.mean), mean=mean, std=std, eps=self.eps)

    def same(self, other: _Baseline) -> bool:
        return bool(np.array_equal(self.mean, other.mean) and np.array_equal(self.std, other.std))

    def shift(self, now: npt.NDArray[np.float64]) -> tuple[float, int] | None:
        """The shift and the number of units it averages over: those that varied in the baseline, and those that
        were constant there (a dead unit) but have left that value since. A unit constant through the baseline and
        still at its value carries no evidence either way; counted, it pulled the mean towards 0 by the layer's
        share of such units (23 of 64 on the digits CNN's ``dense.2``), so each layer read on its own scale."""
        if self.eps == 0.0:  # every unit exactly 0 on every baseline input: nothing to measure against
            return None
        counted = (self.std > 0.0) | ~np.isclose(now, self.mean, rtol=1e-9, atol=0.0)
        if not counted.any():
            return 0.0, 0
        value = float(np.mean(np.abs(now[counted] - self.mean[counted]) / (self.std[counted] + self.eps)))
        return (value, int(counted.sum())) if np.isfinite(value) else None


class _LayerWindow:
    def __init__(self, capture: LayerCapture, window: int) -> None:
        self.kind = capture.layer.kind
        self.zero_is_dead = capture.layer.zero_is_dead
        self.units = int(capture.unit_means.shape[1])
        self.window = window
        self.means: deque[npt.NDArray[np.float64]] = deque(maxlen=window)
        self.active: deque[npt.NDArray[np.bool_]] = deque(maxlen=window)
        self.saturated: deque[float] = deque(maxlen=window)
        self.finite = 0
        self.nonfinite = 0
        self._baseline: list[npt.NDArray[np.float64]] = []
        self.baseline: _Baseline | None = None
        self.taken_at: float | None = None
        self.adopted = False
        """Whether :attr:`baseline` is another worker's (else this worker's first window, or None)."""
        self.shared = False
        """Whether :attr:`baseline` is the stored one (another worker's, or this worker's own, stored)."""

    def adopt(self, stored: LayerBaseline | None) -> None:
        """Take ``stored`` as the baseline, unless it does not fit this layer (then the layer keeps its own) or it
        is this worker's own baseline, stored."""
        arrays = None if stored is None or stored.units != self.units else stored.arrays()
        if stored is None or arrays is None or not np.isfinite(stored.eps) or stored.eps < 0:
            return
        baseline = _Baseline(arrays[0], arrays[1], stored.eps)
        self.shared = True
        if self.baseline is not None and not self.adopted and self.baseline.same(baseline):
            return
        self.baseline, self._baseline, self.adopted = baseline, [], True

    def add(self, capture: LayerCapture, row: int) -> None:
        means = capture.unit_means[row]
        if not np.isfinite(means).all():
            self.nonfinite += 1
            return
        self.finite += 1
        self.means.append(means)
        self.active.append(capture.unit_active[row])
        if capture.saturated_share is not None:
            self.saturated.append(float(capture.saturated_share[row]))
        if self.baseline is None:
            self._baseline.append(means)
            if len(self._baseline) >= self.window:
                self.baseline = _Baseline.of(np.stack(self._baseline))
                self._baseline, self.taken_at = [], time.time()

    def health(self, name: str) -> LayerHealth:
        shift = self.shift()
        return LayerHealth(
            name=name,
            kind=self.kind,
            units=self.units,
            dead_ratio=self.dead_ratio(),
            saturated_ratio=float(np.mean(self.saturated)) if self.saturated else None,
            activation_shift=None if shift is None else shift[0],
            shift_units=None if shift is None else shift[1],
            inputs=len(self.means),
            nonfinite_inputs=self.nonfinite,
        )

    def dead_ratio(self) -> float | None:
        if not self.zero_is_dead or len(self.active) < self.window:
            return None
        return float(1.0 - np.stack(self.active).any(axis=0).mean())

    def shift(self) -> tuple[float, int] | None:
        overlap = self.window if self.adopted else 2 * self.window  # until then the recent window overlaps its own
        if self.baseline is None or self.finite < overlap:
            return None
        return self.baseline.shift(np.stack(self.means).mean(axis=0))


class _VersionHealth:
    def __init__(self, window: int) -> None:
        self.window = window
        self.samples = 0
        self.layers: dict[str, _LayerWindow] = {}
        self.stored: LayerBaselineRecord | None = None
        """The version's stored baseline, once adopted (it may be this worker's own)."""
        self.mismatched: set[str] = set()
        """Layers that gave another number of units than their window holds (logged once)."""

    def adopt(self, record: LayerBaselineRecord) -> None:
        self.stored = record
        for name, layer in self.layers.items():
            layer.adopt(self._stored_layer(name))

    def _stored_layer(self, name: str) -> LayerBaseline | None:
        return None if self.stored is None else next((s for s in self.stored.layers if s.name == name), None)

    def add(self, inspection: BatchInspection, row: int) -> None:
        self.samples += 1
        for capture in inspection.captures:
            name = capture.name
            if name not in self.layers:
                self.layers[name] = _LayerWindow(capture, self.window)
                self.layers[name].adopt(self._stored_layer(name))
            layer = self.layers[name]
            if capture.unit_means.shape[1] != layer.units:  # its window's figures could not be stacked with it
                if name not in self.mismatched:
                    self.mismatched.add(name)
                    log.warning(
                        "layer %s gave %d units where its window holds %d: such inputs are left out of its health",
                        name,
                        capture.unit_means.shape[1],
                        layer.units,
                    )
                continue
            layer.add(capture, row)

    def draft(self) -> BaselineDraft | None:
        """This worker's own baseline once every layer's is complete, until a stored one is adopted."""
        own = [(name, layer.baseline, layer.taken_at) for name, layer in self.layers.items() if not layer.adopted]
        if self.stored is not None or not own or any(baseline is None for _, baseline, _ in own):
            return None
        taken_at = max(at or 0.0 for _, _, at in own)
        return BaselineDraft(taken_at, [baseline.record(name) for name, baseline, _ in own if baseline is not None])

    def snapshot(self, version: str) -> HealthSnapshot:
        layers = [layer.health(name) for name, layer in self.layers.items()]
        window = min(self.samples, self.window)
        if self.stored is not None and any(layer.shared for layer in self.layers.values()):
            stored = self.stored
            return HealthSnapshot(version, self.samples, window, layers, True, stored.worker, stored.taken_at)
        times = [layer.taken_at for layer in self.layers.values()]
        taken_at = None if None in times else max(t for t in times if t is not None)
        return HealthSnapshot(version, self.samples, window, layers, baseline_taken_at=taken_at)


class LayerHealthTracker:
    """Windows per model version; not thread-safe (the runtime calls it under its lock)."""

    def __init__(self, *, window: int) -> None:
        self.window = window
        self._versions: OrderedDict[str, _VersionHealth] = OrderedDict()

    def add(self, version: str, inspection: BatchInspection, row: int) -> None:
        self._seen(version).add(inspection, row)

    def _seen(self, version: str) -> _VersionHealth:
        health = self._versions.pop(version, None) or _VersionHealth(self.window)
        self._versions[version] = health  # most recently seen last
        while len(self._versions) > MAX_VERSIONS:
            self._versions.popitem(last=False)
        return health

    def adopt(self, version: str, record: LayerBaselineRecord) -> None:
        """Take the stored baseline of ``version`` (the caller checked it was taken on this very model; one taken
        over another window size serves as well: the shift compares the recent window with its per-unit figures)."""
        self._seen(version).adopt(record)

    def without_stored(self, versions: Iterable[str]) -> list[str]:
        """Those of ``versions`` that have no stored baseline adopted yet."""
        return [v for v in dict.fromkeys(versions) if (h := self._versions.get(v)) is None or h.stored is None]

    def drafts(self) -> dict[str, BaselineDraft]:
        """The versions whose own baseline is complete and not stored yet, with it."""
        return {version: draft for version, health in self._versions.items() if (draft := health.draft()) is not None}

    @property
    def versions(self) -> list[str]:
        """The versions kept, least recently seen first."""
        return list(self._versions)

    def snapshot(self, version: str) -> HealthSnapshot | None:
        health = self._versions.get(version)
        return None if health is None or not health.layers else health.snapshot(version)
