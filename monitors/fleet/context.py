"""What every model a monitor process owns shares: built once by :class:`monitors.fleet.process.MonitorProcess`."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from redis.asyncio import Redis

from monitors.collector import QualityCollector
from monitors.drift.runner import DriftRunner
from monitors.fleet.carried import FleetDriftMetrics
from monitors.fleet.drift_state import DriftStates
from monitors.fleet.lease import Leases
from monitors.fleet.metrics import MonitorMetrics
from monitors.fleet.settings import MonitorSettings
from monitors.prediction_window import PredictionWindow
from monitors.window import WindowStore


@dataclass(frozen=True, slots=True)
class OwnerContext:
    """The process's clients, stores and metrics, handed to each :class:`~monitors.fleet.owned.OwnedModel` and its
    :class:`~monitors.fleet.labelled.LabelledFeed`."""

    redis: Redis
    readers: Redis
    """For the blocking reads alone (see ``MonitorProcess.readers``)."""
    leases: Leases
    states: DriftStates
    runner: DriftRunner
    windows: WindowStore
    """The labelled windows of every owned model."""
    recent: PredictionWindow
    """The confidences of every owned model's recent predictions (accuracy estimates)."""
    collector: QualityCollector
    metrics: MonitorMetrics
    drift_metrics: FleetDriftMetrics
    settings: MonitorSettings
    rebuilds: asyncio.Lock = field(default_factory=asyncio.Lock)
    """Held by the one owned model whose labelled window is being rebuilt (one replay at a time)."""
