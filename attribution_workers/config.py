"""Per-model attribution settings, from the config file's ``[models.NAME.attribution]`` section."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from attribution_workers.loader import ModelSpec
from attribution_workers.methods import MethodName


class AttributionConfig(BaseModel):
    """How one model is loaded and explained."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    model: ModelSpec
    """Where the weights come from, the input shape and the number of classes."""
    methods: tuple[MethodName, ...] | None = None
    """Methods to run; default: every method the model supports."""
    ig_steps: int = Field(default=32, ge=1)
    occlusion_window: int = Field(default=2, ge=1)
    shap_samples: int = Field(default=16, ge=1)
    fidelity_steps: int = Field(default=16, ge=1)
    """Deletion-curve steps (each costs one forward pass per random order plus one)."""
    fidelity_random_orders: int = Field(default=3, ge=1)
    store_inputs: bool = True
    """Keep the model input with the explanation (needed to draw it under the heatmap)."""
    sanity_every_s: float = Field(default=300.0, gt=0)
    """How often the randomisation sanity check runs on recent inputs."""
    sanity_samples: int = Field(default=16, ge=1)
    sanity_max_similarity: float = Field(default=0.5, gt=-1.0, le=1.0)
    """Similarity at or above which a method is flagged as insensitive to the model."""
    feature_names: tuple[str, ...] | None = None
    """Names of the input features, for the bar charts of flat inputs."""


def attribution_configs(models: dict[str, Any]) -> dict[str, AttributionConfig]:
    """Every model of the settings that has an ``attribution`` section."""
    found: dict[str, AttributionConfig] = {}
    for name, section in models.items():
        section = getattr(section, "attribution", None)
        if section is not None:
            found[name] = AttributionConfig.model_validate(section)
    return found
