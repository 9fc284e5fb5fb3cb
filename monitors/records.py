"""The labelled prediction: what calibration and quality need to know about one event."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray


@dataclass(frozen=True, slots=True)
class LabelledPrediction:
    """A prediction whose true label has arrived."""

    model: str
    version: str
    predicted: int
    """Predicted class index."""
    confidence: float
    """Top-1 probability, in ``[0, 1]``."""
    label: int
    """True class index."""
    time_s: float
    """Event time, epoch seconds."""
    cohort: Mapping[str, str] = field(default_factory=dict)
    """Raw cohort attributes of the event (``{"region": "eu"}``)."""
    probabilities: NDArray[np.float64] | None = None
    """Full probability vector when the model server sent one (needed for the Brier score)."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.confidence <= 1.0:
            raise ValueError(f"confidence must lie in [0, 1], got {self.confidence}: send probabilities, not logits")
        if self.probabilities is not None and self.probabilities.ndim != 1:
            raise ValueError(f"probabilities must be a 1-D vector, got shape {self.probabilities.shape}")
