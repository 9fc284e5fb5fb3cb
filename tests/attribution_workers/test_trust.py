from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from attribution_workers.errors import AttributionError
from attribution_workers.explainer import Attribution, Explainer, Explanation, stack_maps
from attribution_workers.loader import LoadedModel
from attribution_workers.trust import agreement, deletion_fidelity, randomisation_check, spearman_rows
from sampler.explanation_records import Fidelity

Batch = tuple[torch.Tensor, torch.Tensor]


class InputEchoExplainer:
    """A broken explainer: its "saliency" is the input itself, whatever the model."""

    def __init__(self, model: LoadedModel) -> None:
        self._model = model

    @property
    def model(self) -> LoadedModel:
        return self._model

    def with_model(self, model: LoadedModel) -> InputEchoExplainer:
        return InputEchoExplainer(model)

    def explain(self, inputs: torch.Tensor, targets: torch.Tensor) -> list[Explanation]:
        return [
            Explanation(target=int(target), attributions=(Attribution(method="saliency", values=row.numpy()),))
            for row, target in zip(inputs, targets, strict=True)
        ]


def test_spearman_rows_matches_scipy_and_scores_constant_rows_zero() -> None:
    rng = np.random.default_rng(0)
    first, second = rng.normal(size=(5, 20)), rng.normal(size=(5, 20))
    second[1] = first[1] ** 3
    second[2, :10] = 0.0

    expected = [spearmanr(a, b).statistic for a, b in zip(first, second, strict=True)]

    assert np.allclose(spearman_rows(first, second), expected)
    assert spearman_rows(first, second)[1] == pytest.approx(1.0)
    assert spearman_rows(first, np.zeros_like(first)).tolist() == [0.0] * 5


def test_spearman_rows_needs_matching_2d_arrays() -> None:
    with pytest.raises(AttributionError, match=r"two \[B, N\] arrays"):
        spearman_rows(np.zeros((2, 3)), np.zeros((2, 4)))


def test_integrated_gradients_order_deletes_evidence_faster_than_random(
    digits_model: LoadedModel, digits_batch: Batch
) -> None:
    images, targets = digits_batch
    maps = stack_maps(
        Explainer(digits_model, methods=["integrated_gradients"]).explain(images, targets), "integrated_gradients"
    )

    faithful = measured(deletion_fidelity(digits_model, images, targets, maps))
    reversed_order = measured(deletion_fidelity(digits_model, images, targets, -maps))

    assert all(0.0 <= f.deletion_auc <= 1.0 and 0.0 <= f.random_auc <= 1.0 for f in faithful)
    assert np.mean([f.gain for f in faithful]) > 0.2
    assert np.mean([f.gain > 0 for f in faithful]) >= 0.9
    assert np.mean([f.gain for f in reversed_order]) < 0


def test_deletion_fidelity_is_reproducible_and_batching_does_not_change_it(
    digits_model: LoadedModel, digits_batch: Batch
) -> None:
    images, targets = digits_batch
    maps = np.random.default_rng(1).normal(size=images.shape)

    whole = measured(deletion_fidelity(digits_model, images, targets, maps, seed=4))
    in_small_passes = measured(deletion_fidelity(digits_model, images, targets, maps, seed=4, rows_per_pass=40))

    assert [f.deletion_auc for f in whole] == pytest.approx([f.deletion_auc for f in in_small_passes])
    assert [f.random_auc for f in whole] == pytest.approx([f.random_auc for f in in_small_passes])


def measured(found: list[Fidelity | None]) -> list[Fidelity]:
    """The fidelities of maps that all ranked something."""
    assert all(f is not None for f in found)
    return [f for f in found if f is not None]


def test_a_constant_map_has_no_fidelity(digits_model: LoadedModel, digits_batch: Batch) -> None:
    """A map of zeros (Grad-CAM's, when nothing activates) orders nothing: its "order" would be random tie-breaks,
    and its gain a coin flip that once passed half of such maps as faithful. Not measured."""
    images, targets = digits_batch
    maps = np.random.default_rng(2).normal(size=images.shape)
    maps[1] = 0.0
    maps[3] = 0.5

    found = deletion_fidelity(digits_model, images, targets, maps)

    assert found[1] is None and found[3] is None
    assert all(f is not None for i, f in enumerate(found) if i not in (1, 3))


def test_deletion_fidelity_needs_input_shaped_maps(digits_model: LoadedModel, digits_batch: Batch) -> None:
    with pytest.raises(AttributionError, match="shaped like the inputs"):
        deletion_fidelity(digits_model, *digits_batch, np.zeros((16, 10)))


def test_agreement_is_a_symmetric_rank_correlation_matrix(digits_model: LoadedModel, digits_batch: Batch) -> None:
    explanations = Explainer(digits_model, ig_steps=16).explain(*digits_batch)

    result = agreement(explanations)

    assert result.methods == explanations[0].methods
    assert np.allclose(result.matrix, result.matrix.T)
    assert np.allclose(np.diag(result.matrix), 1.0)
    assert np.abs(result.matrix).max() <= 1.0
    assert result.mean is not None and -1.0 <= result.mean <= 1.0


def test_a_constant_map_is_left_out_of_agreement_not_counted_as_disagreeing() -> None:
    """A Grad-CAM map of zeros ranks nothing: it neither agrees nor disagrees. Counted as 0, it halved the
    agreement of methods that agree perfectly with each other, and the viewer warned of low agreement."""
    rng = np.random.default_rng(0)
    ranked = rng.normal(size=(1, 8, 8)).astype(np.float32)

    def explanation(zeros_too: bool) -> Explanation:
        maps = [Attribution(method="saliency", values=ranked[0]), Attribution(method="occlusion", values=2 * ranked[0])]
        if zeros_too:
            maps.append(Attribution(method="gradcam", values=np.zeros((8, 8), dtype=np.float32)))
        return Explanation(target=0, attributions=tuple(maps))

    result = agreement([explanation(zeros_too=True)])

    assert result.of("saliency") == pytest.approx(1.0) and result.of("occlusion") == pytest.approx(1.0)
    assert result.of("gradcam") is None, "not measured, rather than disagreeing"
    assert result.mean == pytest.approx(1.0)
    two_inputs = agreement([explanation(zeros_too=True), explanation(zeros_too=True)])
    assert two_inputs.mean == pytest.approx(1.0)
    zeros = Attribution(method="saliency", values=np.zeros((8, 8), dtype=np.float32))
    nothing = Explanation(target=0, attributions=(zeros, Attribution(method="gradcam", values=zeros.values)))
    assert agreement([nothing]).mean is None


def test_agreement_needs_two_methods(digits_model: LoadedModel, digits_batch: Batch) -> None:
    explanations = Explainer(digits_model, methods=["saliency"]).explain(*digits_batch)

    with pytest.raises(AttributionError, match="two or more methods"):
        agreement(explanations)


def test_randomisation_check_flags_an_explainer_that_ignores_the_model(
    digits_model: LoadedModel, digits_batch: Batch
) -> None:
    images, targets = digits_batch[0][:8], digits_batch[1][:8]

    (echo,) = randomisation_check(InputEchoExplainer(digits_model), images, targets)
    real = randomisation_check(Explainer(digits_model, methods=["saliency", "gradcam"]), images, targets)

    assert echo.flagged
    assert echo.similarity == pytest.approx(1.0)
    assert [check.method for check in real] == ["saliency", "gradcam"]
    for check in real:
        assert not check.flagged, check
        assert check.similarity < echo.similarity - 0.5, check
