"""Layer health over a worker's recent samples of one model: dead units, saturation, activation shift.

Per model version, each layer keeps the last ``window`` (K) inspected inputs: per unit, its mean
output on the input (``m_u(x)``, averaged over positions) and whether it was non-zero anywhere.

- **dead ratio**: share of units that were exactly 0 on every one of the last K inputs;
- **saturated ratio**: mean over the last K inputs of the share of saturated elements (bounded
  activations only);
- **activation shift**: the first K inputs of a version are its baseline: per unit ``mu_u`` and
  ``sigma_u``, the mean and population std of ``m_u(x)`` over them. Then, over the last K inputs,
  with ``nu_u`` the mean of ``m_u(x)``::

      shift = mean over units u of |nu_u - mu_u| / (sigma_u + eps),   eps = 0.1 * mean_u(sigma_u) + 1e-12

  a standardised mean difference per unit, averaged over the layer: 0 while the window is the
  baseline; about ``sqrt(4 / (pi K))`` (0.14 for K = 64) for fresh inputs of the baseline's
  distribution (the expected |difference| of two means of K, in units of sigma); well above 1 when
  the inputs drift. ``eps`` keeps a unit that barely varied
  in the baseline (dead, or constant) from dominating: it is measured against a tenth of the
  layer's typical spread. The shift is None until the baseline is complete.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from attribution_workers.inspection import BatchInspection, LayerCapture
from sampler.layers import LayerHealth, LayerKind

MAX_VERSIONS = 4
"""Model versions tracked at once (the least recently seen is dropped first)."""
EPS_SHARE = 0.1
"""``eps`` of the shift, as a share of the layer's mean baseline spread."""


@dataclass(frozen=True)
class HealthSnapshot:
    """One version's figures after a batch (the worker adds its name and the time)."""

    version: str
    samples: int
    window: int
    layers: list[LayerHealth]


class _LayerWindow:
    def __init__(self, kind: LayerKind, window: int) -> None:
        self.kind = kind
        self.window = window
        self.means: deque[npt.NDArray[np.float64]] = deque(maxlen=window)
        self.active: deque[npt.NDArray[np.bool_]] = deque(maxlen=window)
        self.saturated: deque[float] = deque(maxlen=window)
        self._baseline: list[npt.NDArray[np.float64]] = []
        self.base_mean: npt.NDArray[np.float64] | None = None
        self.base_std: npt.NDArray[np.float64] | None = None

    def add(self, capture: LayerCapture, row: int) -> None:
        means = capture.unit_means[row]
        self.means.append(means)
        self.active.append(capture.unit_active[row])
        if capture.saturated_share is not None:
            self.saturated.append(float(capture.saturated_share[row]))
        if self.base_mean is None:
            self._baseline.append(means)
            if len(self._baseline) >= self.window:
                stacked = np.stack(self._baseline)
                self.base_mean, self.base_std = stacked.mean(axis=0), stacked.std(axis=0)
                self._baseline = []

    def health(self, name: str) -> LayerHealth:
        active = np.stack(self.active).any(axis=0)
        return LayerHealth(
            name=name,
            kind=self.kind,
            units=int(active.size),
            dead_ratio=float(1.0 - active.mean()),
            saturated_ratio=float(np.mean(self.saturated)) if self.saturated else None,
            activation_shift=self.shift(),
        )

    def shift(self) -> float | None:
        if self.base_mean is None or self.base_std is None:
            return None
        now = np.stack(self.means).mean(axis=0)
        eps = EPS_SHARE * float(self.base_std.mean()) + 1e-12
        value = float(np.mean(np.abs(now - self.base_mean) / (self.base_std + eps)))
        return value if np.isfinite(value) else None


class _VersionHealth:
    def __init__(self, window: int) -> None:
        self.window = window
        self.samples = 0
        self.layers: dict[str, _LayerWindow] = {}

    def add(self, inspection: BatchInspection, row: int) -> None:
        self.samples += 1
        for capture in inspection.captures:
            name = capture.layer.name
            if name not in self.layers:
                self.layers[name] = _LayerWindow(capture.layer.kind, self.window)
            self.layers[name].add(capture, row)

    def snapshot(self, version: str) -> HealthSnapshot:
        layers = [layer.health(name) for name, layer in self.layers.items() if layer.active]
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

    def snapshot(self, version: str) -> HealthSnapshot | None:
        health = self._versions.get(version)
        return None if health is None or not health.layers else health.snapshot(version)
