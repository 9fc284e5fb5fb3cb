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


def model_from_stream(key: str) -> str:
    """Inverse of :func:`sample_stream`."""
    return key.removeprefix(f"{PREFIX}:stream:")
