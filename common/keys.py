"""Every Redis key name the sidecar and its workers use, in one place.

All keys share the ``vai:`` prefix so an operator can find (or flush) them with
one pattern, and so the sidecar can share a Redis with other tenants.
"""

from __future__ import annotations

PREFIX = "vai"

POLICY_MODELS = f"{PREFIX}:policy-models"
"""Set of the models that have run-time sampling-policy overrides."""

CONSUMER_GROUP = "attribution"
"""Consumer group the attribution workers read the sample streams with."""


def policy(model: str) -> str:
    """Hash of a model's run-time sampling-policy overrides: field -> JSON value."""
    return f"{PREFIX}:policy:{model}"


def sample_stream(model: str) -> str:
    """Stream of sampled events waiting for attribution, one per model."""
    return f"{PREFIX}:stream:{model}"


def dead_letter_stream(model: str) -> str:
    """Stream of sampled events that failed attribution ``max_deliveries`` times."""
    return f"{PREFIX}:dead:{model}"


def explanation(model: str, request_id: str) -> str:
    """Hash of one sampled event's explanation: ``status``, ``summary`` and ``detail`` (JSON)."""
    return f"{PREFIX}:expl:{model}:{request_id}"


def explanation_index(model: str, facet: str = "time", value: str = "") -> str:
    """Sorted set of request ids by event time: all of a model's (``time``), or one facet value
    (``reason``, ``cohort`` as ``key=value``, ``predicted``, ``version``)."""
    return f"{PREFIX}:idx:{model}:{facet}" + (f":{value}" if value else "")


EXPLAINED_MODELS = f"{PREFIX}:expl-models"
"""Set of the models that have stored explanations."""


def worker_heartbeat(consumer: str) -> str:
    """String with a TTL, refreshed by a live attribution worker."""
    return f"{PREFIX}:worker:{consumer}"


def sanity(model: str) -> str:
    """Hash of method -> JSON of the latest randomisation sanity check of a model."""
    return f"{PREFIX}:sanity:{model}"


def prediction_prefix() -> str:
    """What every :func:`prediction` key starts with."""
    return f"{PREFIX}:pred:"


def prediction(model: str, request_id: str) -> str:
    """A compact prediction record waiting for its delayed label (with a TTL)."""
    return f"{PREFIX}:pred:{model}:{request_id}"


def drift_state(model: str) -> str:
    """JSON of a model's calibrated drift monitor, shared by every replica."""
    return f"{PREFIX}:drift:{model}"


def drift_version(model: str) -> str:
    """Changes whenever :func:`drift_state` is replaced, so replicas know to reload it."""
    return f"{PREFIX}:drift-version:{model}"


# --- the fleet monitor (monitors.fleet) ------------------------------------------------------

MONITORED_MODELS = f"{PREFIX}:monitored-models"
"""Set of the models whose sidecars publish monitoring records."""

LABELLED_MODELS = f"{PREFIX}:labelled-models"
"""Set of the models some replica has received labels for: their predictions wait in Redis for labels."""

MONITOR_GROUP = "monitor"
"""Consumer group the owning monitor reads a model's prediction feed with."""

MONITOR_MEMBERS = f"{PREFIX}:monitor-members"
"""Sorted set of live monitor processes, scored by the time their membership expires (epoch ms)."""


def prediction_feed(model: str) -> str:
    """Stream of compact monitoring records, one per accepted event of a model (``MAXLEN ~``)."""
    return f"{PREFIX}:feed:{model}"


def labelled_feed(model: str) -> str:
    """Stream of labelled monitoring records of a model, trimmed to the calibration window (``MINID ~``)."""
    return f"{PREFIX}:labelled:{model}"


def monitor_lease(model: str) -> str:
    """The id of the monitor process that owns a model, with a TTL it renews."""
    return f"{PREFIX}:lease:{model}"


def drift_status(model: str) -> str:
    """JSON of the owning monitor's latest drift verdicts of a model, read by every sidecar."""
    return f"{PREFIX}:drift-status:{model}"


def quality_report(model: str) -> str:
    """JSON of the owning monitor's calibration and quality figures of a model, read by every sidecar."""
    return f"{PREFIX}:quality:{model}"


def drift_reference(model: str) -> str:
    """An uploaded drift reference (arrays, no pickle), waiting for the owning monitor to calibrate on it."""
    return f"{PREFIX}:reference:{model}"


# --- the KServe inference logger (service.kserve) ---------------------------------------------

KSERVE_PENDING_INDEX = f"{PREFIX}:kserve-pending"
"""Sorted set of the ce-ids of stored KServe requests, scored by when they become orphans (epoch s)."""


def kserve_pending(ce_id: str) -> str:
    """A KServe request waiting for its response (JSON, with a TTL), or the marker a response leaves."""
    return f"{PREFIX}:kserve:{ce_id}"
