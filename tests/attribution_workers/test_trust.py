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

    seeds = range(4, 4 + len(images))

    whole = measured(deletion_fidelity(digits_model, images, targets, maps, seeds=seeds))
    in_small_passes = measured(deletion_fidelity(digits_model, images, targets, maps, seeds=seeds, rows_per_pass=40))
    alone = measured(deletion_fidelity(digits_model, images[3:4], targets[3:4], maps[3:4], seeds=[seeds[3]]))

    assert [f.deletion_auc for f in whole] == pytest.approx([f.deletion_auc for f in in_small_passes])
    assert [f.random_auc for f in whole] == pytest.approx([f.random_auc for f in in_small_passes])
    assert alone[0].random_auc == pytest.approx(whole[3].random_auc), "a row's orders depend on its seed alone"


def test_each_row_draws_its_own_random_orders(digits_model: LoadedModel, digits_batch: Batch) -> None:
    """One generator re-created per call once gave every input of every batch the same random orders."""
    images, targets = digits_batch[0][:1].repeat(3, 1, 1, 1), digits_batch[1][:1].repeat(3)
    maps = np.random.default_rng(1).normal(size=images.shape)

    found = measured(deletion_fidelity(digits_model, images, targets, maps, seeds=[7, 8, 7]))

    assert found[0].random_auc != found[1].random_auc
    assert found[0].random_auc == found[2].random_auc


def test_the_random_reference_deletes_the_input_s_support_first(digits_model: LoadedModel, digits_batch: Batch) -> None:
    """Half of a digit's pixels already equal the baseline; random orders over every pixel wasted half their steps,
    so any map that merely put the ink first "beat random" (noise on the ink: 60 of 64 maps trusted). Against random
    orders of the ink itself such a map gains nothing on average, while Integrated Gradients still does."""
    images, targets = digits_batch
    ink = (images != digits_model.baseline).numpy()
    noise_on_ink = np.random.default_rng(5).random(size=images.shape) * ink
    integrated = stack_maps(
        Explainer(digits_model, methods=["integrated_gradients"]).explain(images, targets), "integrated_gradients"
    )

    noise_gains = [f.gain for f in measured(deletion_fidelity(digits_model, images, targets, noise_on_ink))]
    ig_gains = [f.gain for f in measured(deletion_fidelity(digits_model, images, targets, integrated))]

    assert abs(np.mean(noise_gains)) < 0.06, noise_gains
    assert np.mean(ig_gains) > 0.15 and np.mean(ig_gains) > np.mean(noise_gains) + 0.1


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


def test_an_input_equal_to_the_baseline_has_no_fidelity(digits_model: LoadedModel, digits_batch: Batch) -> None:
    """Nothing to delete: every curve is the same, so a gain of 0 would read as "does not beat random deletion"."""
    images, targets = digits_batch
    images = images.clone()
    images[2] = digits_model.baseline.reshape(images[2].shape)
    maps = np.random.default_rng(4).normal(size=images.shape)

    found = deletion_fidelity(digits_model, images, targets, maps)

    assert found[2] is None
    assert all(f is not None for i, f in enumerate(found) if i != 2)


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
        assert check.similarity is not None and check.similarity < 0.5, check
    assert (echo.inputs, echo.measured) == (8, 8)


class BlankWhenRandomisedExplainer(InputEchoExplainer):
    """Echoes the input on the trained model; on a randomised one, ``blank`` (zeros or NaN) in the chosen rows."""

    def __init__(self, model: LoadedModel, rows: tuple[int, ...], blank: float, *, randomised: bool = False) -> None:
        super().__init__(model)
        self._rows, self._blank, self._randomised = rows, blank, randomised

    def with_model(self, model: LoadedModel) -> BlankWhenRandomisedExplainer:
        return BlankWhenRandomisedExplainer(model, self._rows, self._blank, randomised=True)

    def explain(self, inputs: torch.Tensor, targets: torch.Tensor) -> list[Explanation]:
        found = super().explain(inputs, targets)
        if not self._randomised:
            return found
        blank = Attribution(method="saliency", values=np.full(inputs.shape[1:], self._blank, dtype=np.float32))
        return [
            Explanation(target=e.target, attributions=(blank,)) if i in self._rows else e for i, e in enumerate(found)
        ]


@pytest.mark.parametrize("blank", [pytest.param(0.0, id="constant"), pytest.param(np.nan, id="nan")])
def test_randomisation_pairs_with_a_blank_map_are_left_out_not_counted_as_passing(
    digits_model: LoadedModel, digits_batch: Batch, blank: float
) -> None:
    """A constant or NaN map ranks nothing, so it is no evidence that the method follows the weights; counted as
    similarity 0 it pulled the figure down (a method echoing the input passed with only NaN maps randomised)."""
    images, targets = digits_batch[0][:8], digits_batch[1][:8]

    (some,) = randomisation_check(BlankWhenRandomisedExplainer(digits_model, (1, 4, 6), blank), images, targets)
    (every,) = randomisation_check(BlankWhenRandomisedExplainer(digits_model, tuple(range(8)), blank), images, targets)

    assert (some.inputs, some.measured) == (8, 5)
    assert some.similarity == pytest.approx(1.0) and some.flagged
    assert (every.inputs, every.measured) == (8, 0)
    assert every.similarity is None and not every.flagged


class ModelFreeExplainer(InputEchoExplainer):
    """Ignores the model's weights: ``kind`` "ink-noise" draws fresh uniform noise on the input's support (the
    pixels off the baseline) at every call; "negated" echoes the input, negated on a randomised model."""

    def __init__(self, model: LoadedModel, kind: str, *, calls: int = 0, randomised: bool = False) -> None:
        super().__init__(model)
        self._kind, self._calls, self._randomised = kind, calls, randomised

    def with_model(self, model: LoadedModel) -> ModelFreeExplainer:
        return ModelFreeExplainer(model, self._kind, calls=self._calls + 1, randomised=True)

    def explain(self, inputs: torch.Tensor, targets: torch.Tensor) -> list[Explanation]:
        if self._kind == "ink-noise":
            ink = (inputs != self.model.baseline).numpy()
            values = np.random.default_rng(self._calls).random(size=inputs.shape) * ink
        else:
            values = -inputs.numpy() if self._randomised else inputs.numpy()
        return [
            Explanation(target=int(t), attributions=(Attribution(method="saliency", values=v.astype(np.float32)),))
            for v, t in zip(values, targets, strict=True)
        ]


@pytest.mark.parametrize(
    ("kind", "absolute", "signed", "flagged"),
    [
        pytest.param("ink-noise", (-0.3, 0.3), (-0.3, 0.3), False, id="noise-sharing-only-the-ink"),
        pytest.param("negated", (0.99, 1.0), (-1.0, -0.99), True, id="sign-flipped-by-the-weights"),
    ],
)
def test_the_randomisation_check_compares_the_maps_on_the_input_s_support_with_their_signs(
    digits_model: LoadedModel,
    digits_batch: Batch,
    kind: str,
    absolute: tuple[float, float],
    signed: tuple[float, float],
    flagged: bool,
) -> None:
    """Spearman of |map| over every pixel scored two independent noise maps that share only the ink 0.85 (the
    background both leave at 0 ranks alike): flagged, and with them every method that scales by
    ``input - baseline``. Over the support they are not. A map whose sign the weights flip keeps its magnitudes
    exactly: flagged on |map| (its signed figure is -1)."""
    images, targets = digits_batch

    (check,) = randomisation_check(ModelFreeExplainer(digits_model, kind), images, targets)

    assert check.absolute is not None and absolute[0] <= check.absolute <= absolute[1], check
    assert check.signed is not None and signed[0] <= check.signed <= signed[1], check
    assert check.similarity == max(check.absolute, check.signed)
    assert check.flagged is flagged and check.measured == 16


def test_the_randomisation_check_averages_its_draws_and_keeps_each(
    digits_model: LoadedModel, digits_batch: Batch
) -> None:
    """One draw of random weights decided the figure (Integrated Gradients 0.41-0.45, Gradient SHAP 0.36-0.44 over
    seeds 0-3, right under the 0.5 limit). The figures are the means over the draws; each draw's similarity is kept
    and the pairs counted are the fewest any draw measured."""
    images, targets = digits_batch
    explainer = Explainer(digits_model, methods=["saliency", "gradcam"])
    alone = {seed: randomisation_check(explainer, images, targets, seeds=(seed,)) for seed in (1, 2, 3)}

    together = randomisation_check(explainer, images, targets, seeds=(1, 2, 3))

    for index, check in enumerate(together):
        singles = [alone[seed][index] for seed in (1, 2, 3)]
        assert check.seeds == (1, 2, 3) and check.draws == tuple(single.similarity for single in singles)
        assert check.absolute == pytest.approx(np.mean([single.absolute or np.nan for single in singles]))
        assert check.signed == pytest.approx(np.mean([single.signed or np.nan for single in singles]))
        assert check.measured == min(single.measured for single in singles)
        assert check.spread is not None and check.spread > 0
    with pytest.raises(AttributionError, match="at least one seed"):
        randomisation_check(explainer, images, targets, seeds=())
