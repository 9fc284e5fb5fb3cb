"""Layer health over a worker's recent samples of one model: dead units, saturation, activation shift.

Per model version, each layer (each call of a module used more than once: ``name#k``) keeps the
last ``window`` (K) inspected inputs whose output of the layer was finite: per unit, its mean
output on the input (``m_u(x)``, averaged over positions) and whether it was non-zero anywhere. An
input whose output held inf or NaN (a finite but huge input can overflow inside the model) is left
out of every figure, baseline included, and counted (``nonfinite_inputs``). Each layer says how
many inputs its recent figures rest on (``inputs``).

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
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from attribution_workers.inspection import BatchInspection, LayerCapture
from sampler.layers import LayerHealth

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

    def shift(self, now: npt.NDArray[np.float64]) -> float | None:
        if self.eps == 0.0:  # every unit exactly 0 on every baseline input: nothing to measure against
            return None
        value = float(np.mean(np.abs(now - self.mean) / (self.std + self.eps)))
        return value if np.isfinite(value) else None


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
                self._baseline = []

    def health(self, name: str) -> LayerHealth:
        return LayerHealth(
            name=name,
            kind=self.kind,
            units=self.units,
            dead_ratio=self.dead_ratio(),
            saturated_ratio=float(np.mean(self.saturated)) if self.saturated else None,
            activation_shift=self.shift(),
            inputs=len(self.means),
            nonfinite_inputs=self.nonfinite,
        )

    def dead_ratio(self) -> float | None:
        if not self.zero_is_dead or len(self.active) < self.window:
            return None
        return float(1.0 - np.stack(self.active).any(axis=0).mean())

    def shift(self) -> float | None:
        if self.baseline is None or self.finite < 2 * self.window:  # the recent window overlaps the baseline
            return None
        return self.baseline.shift(np.stack(self.means).mean(axis=0))


class _VersionHealth:
    def __init__(self, window: int) -> None:
        self.window = window
        self.samples = 0
        self.layers: dict[str, _LayerWindow] = {}

    def add(self, inspection: BatchInspection, row: int) -> None:
        self.samples += 1
        for capture in inspection.captures:
            name = capture.name
            if name not in self.layers:
                self.layers[name] = _LayerWindow(capture, self.window)
            self.layers[name].add(capture, row)

    def snapshot(self, version: str) -> HealthSnapshot:
        layers = [layer.health(name) for name, layer in self.layers.items()]
        return HealthSnapshot(version, self.samples, min(self.samples, self.window), layers)


class LayerHealthTracker:
    """Windows per model version; not thread-safe (the runtime calls it under its lock)."""

    def __init__(self, *, window: int) -> None:
        self.window = window
        self._versions: OrderedDict[str, _VersionHealth] = OrderedDict()

    def add(self, version: str, inspection: BatchInspection, row: int) -> None:
        health = self._versions.pop(version, None) or _VersionHealth(self.window)
        self._versions[version] = health  # most recently seen last
        while len(self._versions) > MAX_VERSIONS:
            self._versions.popitem(last=False)
        health.add(inspection, row)

    @property
    def versions(self) -> list[str]:
        """The versions kept, least recently seen first."""
        return list(self._versions)

    def snapshot(self, version: str) -> HealthSnapshot | None:
        health = self._versions.get(version)
        return None if health is None or not health.layers else health.snapshot(version)
