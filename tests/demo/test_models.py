from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from attribution_workers.loader import LoadedModel
from demo.models import digits, tabular
from demo.models.training import DatasetSplit, TrainingPlan
from helpers import load_torchscript

ONE_EPOCH = TrainingPlan(epochs=1, batch_size=64, learning_rate=1e-3, seed=3)


@pytest.mark.parametrize(
    ("model_fixture", "split_fixture", "minimum"),
    [
        pytest.param("digits_model", "digits_split", 0.95, id="digits-cnn"),
        pytest.param("tabular_model", "tabular_split", 0.93, id="breast-cancer-mlp"),
    ],
)
def test_scripted_model_reaches_test_accuracy(
    request: pytest.FixtureRequest, model_fixture: str, split_fixture: str, minimum: float
) -> None:
    model: LoadedModel = request.getfixturevalue(model_fixture)
    split: DatasetSplit = request.getfixturevalue(split_fixture)

    with torch.no_grad():
        predicted = model.module(torch.from_numpy(split.test.features)).argmax(dim=1).numpy()

    assert (predicted == split.test.labels).mean() >= minimum


@pytest.mark.parametrize(
    ("train", "load_split"),
    [
        pytest.param(digits.train_digits_cnn, digits.load_digits_split, id="digits-cnn"),
        pytest.param(tabular.train_breast_cancer_mlp, tabular.load_breast_cancer_split, id="breast-cancer-mlp"),
    ],
)
def test_training_is_deterministic_and_keeps_global_rng(
    train: Callable[..., nn.Module], load_split: Callable[[], DatasetSplit]
) -> None:
    split = load_split()
    rng_before = torch.random.get_rng_state()

    first, second = train(split, plan=ONE_EPOCH), train(split, plan=ONE_EPOCH)

    assert torch.equal(torch.random.get_rng_state(), rng_before)
    for (name, a), (_, b) in zip(first.state_dict().items(), second.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


def test_digits_split_is_fixed_scaled_and_stratified(digits_split: DatasetSplit) -> None:
    again = digits.load_digits_split()

    assert digits_split.train.features.shape == (1347, *digits.INPUT_SHAPE)
    assert digits_split.test.features.shape == (450, *digits.INPUT_SHAPE)
    assert np.array_equal(again.test.features, digits_split.test.features)
    assert digits_split.test.features.min() >= 0.0
    assert digits_split.test.features.max() <= 1.0
    all_labels = np.concatenate([digits_split.train.labels, digits_split.test.labels])
    expected = np.bincount(all_labels) * len(digits_split.test.labels) / len(all_labels)
    assert np.abs(np.bincount(digits_split.test.labels) - expected).max() <= 1


def test_scripted_digits_entry_points_agree(digits_path: Path, digits_split: DatasetSplit) -> None:
    scripted = load_torchscript(digits_path)
    images = torch.from_numpy(digits_split.test.features[:5])

    with torch.no_grad():
        logits = scripted(images)
        staged = scripted.head(scripted.features(images))
        embedding = scripted.embed(images)

    assert torch.allclose(logits, staged)
    assert embedding.shape == (5, digits.EMBEDDING_DIM)


def test_scripted_tabular_model_standardises_with_train_statistics(
    tabular_path: Path, tabular_split: DatasetSplit
) -> None:
    scripted = load_torchscript(tabular_path)
    train_mean = tabular_split.train.features.mean(axis=0)

    with torch.no_grad():
        baseline = scripted.baseline()
        embedding = scripted.embed(torch.from_numpy(tabular_split.test.features[:5]))

    assert np.allclose(baseline.numpy(), train_mean, rtol=1e-5)
    assert embedding.shape == (5, tabular.EMBEDDING_DIM)
    assert len(tabular.feature_names()) == tabular.NUM_FEATURES


def test_ensure_keeps_an_existing_file(digits_path: Path) -> None:
    modified = digits_path.stat().st_mtime_ns

    assert digits.ensure_digits_model(digits_path.parent) == digits_path
    assert digits_path.stat().st_mtime_ns == modified


def test_held_out_reference_is_a_stratified_third_of_the_training_side(digits_split: DatasetSplit) -> None:
    held = digits.load_digits_split(hold_out_reference=True)

    assert held.reference is not None and digits_split.reference is None
    assert (len(held.train.labels), len(held.reference.labels), len(held.test.labels)) == (898, 449, 450)
    np.testing.assert_array_equal(held.test.features, digits_split.test.features)  # the replay is unchanged
    rows = np.concatenate([held.train.features, held.reference.features]).reshape(len(digits_split.train.labels), -1)
    assert sorted(map(bytes, rows)) == sorted(map(bytes, digits_split.train.features.reshape(len(rows), -1)))
    expected = np.bincount(digits_split.train.labels) / 3
    assert np.abs(np.bincount(held.reference.labels) - expected).max() <= 1
