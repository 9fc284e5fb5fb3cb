"""LIME on the real digits CNN: superpixel masks, shapes, determinism, fidelity; and the demo's choice of methods."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from attribution_workers.config import AttributionConfig
from attribution_workers.errors import AttributionError
from attribution_workers.explainer import Explainer, stack_maps
from attribution_workers.lime import LimeSettings
from attribution_workers.loader import LoadedModel
from attribution_workers.trust import deletion_fidelity, randomisation_check
from demo.models import digits
from demo.models.training import DatasetSplit
from demo.settings import ATTRIBUTION, METHODS

Batch = tuple[torch.Tensor, torch.Tensor]


@pytest.mark.parametrize(
    ("settings", "shape", "edge", "groups"),
    [
        pytest.param(LimeSettings(), (1, 8, 8), 2, 16, id="digits-64-samples"),
        pytest.param(LimeSettings(samples=256), (1, 28, 28), 4, 49, id="mnist-256-samples"),
        pytest.param(LimeSettings(), (3, 224, 224), 56, 16, id="rgb-224"),
        pytest.param(LimeSettings(samples=16), (1, 8, 8), 4, 4, id="few-samples-big-patches"),
        pytest.param(LimeSettings(samples=4), (1, 8, 8), 8, 1, id="one-sample-per-group-at-most"),
        pytest.param(LimeSettings(patch=3), (1, 8, 8), 3, 9, id="explicit-patch-ragged-edge"),
        pytest.param(LimeSettings(patch=100), (2, 5, 7), 7, 1, id="patch-larger-than-input"),
        pytest.param(LimeSettings(samples=8), (2, 12), 6, 2, id="one-spatial-dimension"),
        pytest.param(LimeSettings(samples=4), (10,), 1, 10, id="flat-one-group-per-feature"),
    ],
)
def test_feature_mask_tiles_the_input_in_numbered_patches(
    settings: LimeSettings, shape: tuple[int, ...], edge: int, groups: int
) -> None:
    mask = settings.feature_mask(shape)

    assert settings.patch_edge(shape) == edge
    assert mask.shape == (1, *shape) and mask.dtype == torch.int64
    assert sorted(torch.unique(mask).tolist()) == list(range(groups))
    if len(shape) > 1:
        assert (mask[0] == mask[0, :1]).all()  # every channel of a patch is one group
        spatial = mask[0, 0].numpy()
        for index in np.ndindex(spatial.shape):
            corner = tuple(i // edge * edge for i in index)
            assert spatial[index] == spatial[corner]


def test_the_automatic_patch_is_the_smallest_leaving_four_samples_per_group() -> None:
    def groups(edge: int) -> int:
        return math.ceil(28 / edge) ** 2

    for samples in (4, 16, 64, 100, 256, 1024, 4096):
        edge = LimeSettings(samples=samples).patch_edge((1, 28, 28))
        most = max(1, samples // 4)
        assert groups(edge) <= most, samples
        assert edge == 1 or groups(edge - 1) > most, samples


def test_lime_maps_have_the_input_shape_and_are_constant_per_patch(
    digits_model: LoadedModel, digits_batch: Batch
) -> None:
    images, targets = digits_batch

    maps = stack_maps(Explainer(digits_model, methods=["lime"]).explain(images, targets), "lime")

    assert maps.shape == (len(images), *digits.INPUT_SHAPE) and maps.dtype == np.float32
    assert np.isfinite(maps).all() and (np.abs(maps).reshape(len(maps), -1).max(axis=1) > 0).all()
    patches = maps.reshape(len(maps), 1, 4, 2, 4, 2)
    assert np.array_equal(patches, np.broadcast_to(patches[:, :, :, :1, :, :1], patches.shape))


def test_lime_is_deterministic_under_its_seed(digits_model: LoadedModel, digits_batch: Batch) -> None:
    images, targets = digits_batch[0][:6], digits_batch[1][:6]
    explainer = Explainer(digits_model, methods=["lime"], lime=LimeSettings(seed=7))

    first = stack_maps(explainer.explain(images, targets), "lime")
    again = stack_maps(explainer.explain(images, targets), "lime")
    alone = explainer.explain(images[4:5], targets[4:5])[0]["lime"].values
    other_seed = stack_maps(
        Explainer(digits_model, methods=["lime"], lime=LimeSettings(seed=8)).explain(images, targets), "lime"
    )
    copied = stack_maps(explainer.with_model(digits_model).explain(images, targets), "lime")

    assert np.array_equal(first, again) and np.array_equal(first, copied)
    assert np.array_equal(first[4], alone)
    assert not np.array_equal(first, other_seed)


def test_lime_maps_do_not_depend_on_the_global_random_state(digits_model: LoadedModel, digits_batch: Batch) -> None:
    images, targets = digits_batch[0][:3], digits_batch[1][:3]
    explainer = Explainer(digits_model, methods=["lime"])

    torch.manual_seed(1)
    first = stack_maps(explainer.explain(images, targets), "lime")
    torch.manual_seed(2)
    second = stack_maps(explainer.explain(images, targets), "lime")

    assert np.array_equal(first, second)


def test_lime_beats_random_deletion_on_clean_digits(digits_model: LoadedModel, digits_split: DatasetSplit) -> None:
    images = torch.from_numpy(digits_split.test.features[:32])
    with torch.no_grad():
        targets = digits_model.module(images).argmax(dim=1)
    maps = stack_maps(Explainer(digits_model, methods=["lime"]).explain(images, targets), "lime")

    figures = deletion_fidelity(digits_model, images, targets, maps)
    gains = np.array([figure.gain for figure in figures if figure is not None])
    assert len(gains) == len(figures)

    # Measured: mean gain +0.39, every one of the 32 above 0 (a random map: +0.00 +- 0.21 per image).
    assert gains.mean() > 0.2
    assert (gains > 0).mean() >= 0.9


def test_every_method_passes_the_sanity_check_on_the_digits_support(
    digits_model: LoadedModel, digits_split: DatasetSplit
) -> None:
    """The demo's choice of methods and the ones that scale by ``input - baseline``, on three demo-sized sanity
    batches of clean test digits. Over every pixel, Integrated Gradients' |map| scored 0.91 and was flagged from the
    ink's layout alone (independent noise on the ink scores 0.85 so); compared on the ink it passes, on |map| (the
    deciding, larger figure) as well as with signs. Gradient SHAP draws its baselines from torch's global generator:
    seeded here, or what earlier tests drew (a number of explanations that depends on timing) decides them."""
    torch.manual_seed(0)
    images = torch.from_numpy(digits_split.test.features[:48])
    with torch.no_grad():
        targets = digits_model.module(images).argmax(dim=1)
    explainer = Explainer(
        digits_model,
        methods=[*METHODS, "integrated_gradients", "occlusion", "gradient_shap"],
        ig_steps=ATTRIBUTION["ig_steps"],
        shap_samples=ATTRIBUTION["shap_samples"],
    )
    similarity: dict[str, list[float]] = {}
    absolute: dict[str, list[float]] = {}
    for start in range(0, 48, 16):
        part = slice(start, start + 16)
        for check in randomisation_check(explainer, images[part], targets[part]):
            assert check.similarity is not None and check.absolute is not None, check
            similarity.setdefault(check.method, []).append(check.similarity)
            absolute.setdefault(check.method, []).append(check.absolute)

    means = {method: float(np.mean(values)) for method, values in similarity.items()}
    # Measured (the larger of |map| and signed): integrated_gradients 0.40, gradient_shap and lime below it,
    # flagged at 0.5; signed alone, integrated_gradients is near 0: the weights flip its signs.
    assert all(max(values) < 0.5 for values in similarity.values()), similarity
    assert means["integrated_gradients"] == pytest.approx(np.mean(absolute["integrated_gradients"]))


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        pytest.param({"samples": 0}, "samples >= 1", id="no-samples"),
        pytest.param({"patch": 0}, "patch >= 1 or None", id="zero-patch"),
    ],
)
def test_lime_settings_refuse_nonsense(settings: dict[str, int], message: str) -> None:
    with pytest.raises(AttributionError, match=message):
        LimeSettings(**settings)


@pytest.mark.parametrize(
    ("section", "field"),
    [
        pytest.param({"lime_samples": 0}, "lime_samples", id="no-samples"),
        pytest.param({"lime_samples": 5000}, "lime_samples", id="unbounded-samples"),
        pytest.param({"lime_patch": 0}, "lime_patch", id="zero-patch"),
        pytest.param({"methods": ["lime", "deeplift"]}, "methods", id="unknown-method"),
    ],
)
def test_the_config_validates_lime(section: dict[str, object], field: str) -> None:
    model = {"torchscript": "/models/x.pt", "input_shape": [1, 8, 8], "num_classes": 10}

    with pytest.raises(ValidationError, match=field):
        AttributionConfig.model_validate({"model": model, **section})


def test_the_config_passes_lime_settings_on() -> None:
    model = {"torchscript": "/models/x.pt", "input_shape": [1, 8, 8], "num_classes": 10}

    config = AttributionConfig.model_validate(
        {"model": model, "methods": ["lime"], "lime_samples": 32, "lime_patch": 4}
    )

    assert config.lime_settings() == LimeSettings(samples=32, patch=4)
    assert config.methods == ("lime",)
