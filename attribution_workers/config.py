"""Per-model attribution settings, from the config file's ``[models.NAME.attribution]`` section."""

from __future__ import annotations

import math
from typing import Any, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import ErrorDetails

from attribution_workers.errors import AttributionError
from attribution_workers.lime import LimeSettings
from attribution_workers.loader import ModelSpec
from attribution_workers.methods import MethodName
from attribution_workers.verdict import VerdictRule


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
    """Gradient SHAP draws per input; Kernel SHAP coalitions per input, at least twice the input's elements (a
    Kernel SHAP fit with fewer is underdetermined: two runs at 16 on 30 features agreed with rho 0.29)."""
    shap_stdev: float = Field(default=0.1, ge=0.0)
    """Gradient SHAP input noise, in input units: fits inputs scaled to about [0, 1]; set 0 for raw-scale tables
    (0.1 exceeds many raw features' own spread)."""
    lime_samples: int = Field(default=64, ge=1, le=4096)
    """LIME: perturbed copies of each input, one model row each (the cost, and the surrogate fit's data)."""
    lime_patch: int | None = Field(default=None, ge=1)
    """LIME: superpixel edge of images in input elements; default: the smallest edge leaving at most
    ``lime_samples // 4`` patches (``attribution_workers.lime``)."""
    fidelity_steps: int = Field(default=16, ge=1)
    """Deletion-curve steps (each costs one forward pass per random order plus one)."""
    fidelity_random_orders: int = Field(default=3, ge=1)
    store_inputs: bool = True
    """Keep the model input with the explanation (needed to draw it under the heatmap)."""
    sanity_every_s: float = Field(default=300.0, gt=0)
    """How often the randomisation sanity check runs on recent inputs."""
    sanity_samples: int = Field(default=16, ge=1)
    """Recent inputs every sanity check runs on. The first check runs as soon as this many have been explained
    (until then no map is judged); later ones every ``sanity_every_s``. A method whose maps are often all zero
    (Grad-CAM on small inputs) needs more for ``sanity_min_pairs`` measured pairs: on the digits CNN, 16 inputs
    left 67% of Grad-CAM's checks inconclusive on clean digits and 42% on corrupted ones, 32 inputs 0% and 8%
    (12 draws each, three seeds per check); the demo uses 32."""
    sanity_max_similarity: float = Field(default=0.5, gt=-1.0, le=1.0)
    """Similarity at or above which a method is flagged as insensitive to the model."""
    sanity_min_pairs: int = Field(default=8, ge=1)
    """Measured pairs of maps (trained and randomised model, on one input) a sanity figure needs before it judges
    maps. A figure on fewer (Grad-CAM's maps of zeros rank nothing and are left out) is stored as inconclusive and
    the maps stay not judged by sanity; an older figure on fewer judges nothing either."""
    sanity_seeds: int = Field(default=3, ge=1, le=16)
    """Randomised copies of the model each sanity check averages over, with seeds that change from one check to
    the next (check k draws seeds k x sanity_seeds onwards), so no single draw of random weights decides for every
    map. Cost per check: one explanation of the ``sanity_samples`` inputs on the trained model plus one per seed
    (the single-draw check cost two)."""
    prediction_tie_tolerance: float = Field(default=0.05, ge=0.0, lt=1.0)
    """The worker's model disagrees with the server's prediction (every map of the event is not trusted) when its
    softmax probability of the reported class is below its own top class's by more than this. Within it the two
    are a near tie that float error or half-precision serving can tip either way (bfloat16 serving: gaps up to
    0.03 on near-tied digits; 0.01 flagged same-model maps)."""
    prediction_confidence_tolerance: float = Field(default=0.05, ge=0.0, lt=1.0)
    """The worker's model is not the server's (every map of the event is not trusted) when its softmax probability
    of the reported class differs from the probability the server reported for it (the event's ``confidence``)
    by more than this, even though it predicts the same class. On the digits CNN the same weights served in
    bfloat16 gave gaps up to 0.027 and logits rounded to one decimal up to 0.023; weights from another training
    seed gave gaps above 0.05 on 6-9% of clean and 42-53% of corrupted digits (``attribution_workers.prediction``).
    """
    verdict_min_fidelity_gain: float = Field(default=0.0, ge=-1.0, lt=1.0)
    """Deletion gain above which a map beats random (``attribution_workers.verdict``)."""
    verdict_min_agreement: float = Field(default=0.2, ge=-1.0, le=1.0)
    """Mean Spearman correlation with the other methods' maps from which a map agrees with them (0.2 for the 8x8
    digits). Not a calibrated test: 1.645 / sqrt(N - 1) would be the one-sided 5% value for N independent,
    untied elements, but block maps (Grad-CAM, LIME) pass by chance far more often (``attribution_workers.verdict``)."""
    verdict_max_convergence_delta: float = Field(default=0.1, gt=0.0)
    """Integrated Gradients: largest convergence delta, as a share of the logit change the map explains, of a map
    that is not failed for it (``attribution_workers.verdict``); raise ``ig_steps`` rather than this."""
    feature_names: tuple[str, ...] | None = None
    """Names of the input features, for the bar charts of flat inputs."""
    inspect_layers: tuple[str, ...] | None = None
    """Dotted names of the layers whose outputs are inspected on every explained input (hooks, one extra
    forward pass per batch); default: the convolution, linear and activation modules, at most
    ``inspect_max_layers`` of them evenly spread. ``[]`` switches inspection off."""
    inspect_max_layers: int = Field(default=16, ge=1, le=64)
    """Cap of the default layer choice."""
    inspect_window: int = Field(default=64, ge=2, le=4096)
    """Recent inputs the layer-health figures (dead units, saturation, shift) are computed over; the first
    this many of a model version are the shift's baseline."""
    feature_map_layers: tuple[str, ...] | None = None
    """Inspected layers whose feature maps are stored with each explanation; default: the convolutions."""
    feature_map_channels: int = Field(default=8, ge=0, le=64)
    """Channels kept per stored feature map, strongest mean |activation| first (0: store none)."""

    @model_validator(mode="after")
    def _enough_kernel_shap_coalitions(self) -> Self:
        needed = 2 * math.prod(self.model.input_shape)
        if self.methods is not None and "kernel_shap" in self.methods and self.shap_samples < needed:
            raise ValueError(
                f"shap_samples must be at least {needed} (twice the input's {needed // 2} elements) when kernel_shap "
                f"is among the methods, got {self.shap_samples}"
            )
        return self

    def lime_settings(self) -> LimeSettings:
        return LimeSettings(samples=self.lime_samples, patch=self.lime_patch)

    def verdict_rule(self) -> VerdictRule:
        return VerdictRule(
            min_fidelity_gain=self.verdict_min_fidelity_gain,
            min_agreement=self.verdict_min_agreement,
            max_convergence_delta=self.verdict_max_convergence_delta,
            min_sanity_pairs=self.sanity_min_pairs,
        )


class ConfigError(AttributionError):
    """One or more ``[models.NAME.attribution]`` sections do not validate; the message names each, one a line."""


def attribution_configs(models: dict[str, Any]) -> dict[str, AttributionConfig]:
    """Every model of the settings that has an ``attribution`` section.

    A section that does not validate is a mistake in the file, not in this model's environment: the file is
    refused as a whole (:class:`ConfigError`, every bad section named), before any model loads, like any other
    invalid setting. Starting without the model would turn a typo in a setting into a model nobody explains."""
    found: dict[str, AttributionConfig] = {}
    problems: list[str] = []
    for name, section in models.items():
        section = getattr(section, "attribution", None)
        if section is None:
            continue
        try:
            found[name] = AttributionConfig.model_validate(section)
        except ValidationError as error:
            problems += [f"{section_name(name)}: {_located(problem)}" for problem in error.errors(include_url=False)]
    if problems:
        raise ConfigError("\n".join(problems))
    return found


def section_name(model: str) -> str:
    """How the config file spells ``model``'s attribution section, to name it in messages."""
    return f"[models.{model}.attribution]"


def _located(problem: ErrorDetails) -> str:
    where = ".".join(str(part) for part in problem["loc"])
    return f"{where}: {problem['msg']}" if where else str(problem["msg"])
