"""One verdict per map: the rule on fixed figures, per-method agreement, and the worker runtime storing verdicts."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from numpy.typing import NDArray
from scipy.stats import spearmanr
from small_models import sampled_digit

from attribution_workers.config import AttributionConfig
from attribution_workers.explainer import Attribution, Explainer, Explanation
from attribution_workers.methods import MethodName
from attribution_workers.outcomes import LABEL_SUFFIX
from attribution_workers.runtime import ModelRuntime
from attribution_workers.trust import agreement
from attribution_workers.verdict import VerdictRule
from demo.models.training import DatasetSplit
from sampler.contract import SampledEvent
from sampler.explanation_records import Fidelity, SanityFigure

Served = Callable[[Sequence[SampledEvent]], list[SampledEvent]]
"""The ``as_served`` fixture: events with the confidence the worker's own model gives."""

RULE = VerdictRule(min_fidelity_gain=0.0, min_agreement=0.2)
PASSING_SANITY = SanityFigure(similarity=0.21, flagged=False, samples=16, checked_at=1.0)
FAILING_SANITY = SanityFigure(similarity=0.91, flagged=True, samples=16, checked_at=1.0)
GOOD_DELETION = Fidelity(deletion_auc=0.2, random_auc=0.5)
BAD_DELETION = Fidelity(deletion_auc=0.5, random_auc=0.45)


@pytest.mark.parametrize(
    ("sanity", "fidelity", "agreement_value", "expected"),
    [
        pytest.param(PASSING_SANITY, GOOD_DELETION, 0.35, (True, True, True, True), id="all-pass"),
        pytest.param(FAILING_SANITY, GOOD_DELETION, 0.35, (False, False, True, True), id="fails-sanity"),
        pytest.param(PASSING_SANITY, BAD_DELETION, 0.35, (False, True, False, True), id="worse-than-random"),
        pytest.param(PASSING_SANITY, GOOD_DELETION, 0.05, (False, True, True, False), id="disagrees"),
        pytest.param(FAILING_SANITY, BAD_DELETION, -0.1, (False, False, False, False), id="fails-everything"),
        pytest.param(None, GOOD_DELETION, 0.35, (None, None, True, True), id="no-sanity-check-yet"),
        pytest.param(PASSING_SANITY, GOOD_DELETION, None, (True, True, True, None), id="one-method"),
        pytest.param(None, BAD_DELETION, None, (False, None, False, None), id="only-deletion-fails"),
        pytest.param(None, None, None, (None, None, None, None), id="nothing-measured"),
        pytest.param(PASSING_SANITY, None, None, (None, True, None, None), id="only-the-method-checked"),
        pytest.param(FAILING_SANITY, None, None, (False, False, None, None), id="only-the-method-fails"),
    ],
)
def test_a_map_is_trusted_when_every_part_passes_its_method_s_sanity_check_included(
    sanity: SanityFigure | None,
    fidelity: Fidelity | None,
    agreement_value: float | None,
    expected: tuple[bool | None, ...],
) -> None:
    verdict = RULE.judge(sanity=sanity, fidelity=fidelity, agreement=agreement_value)

    assert (verdict.trusted, verdict.passes_sanity, verdict.beats_random, verdict.agrees) == expected
    head = {True: "Trusted: ", False: "Not trusted: ", None: "Not judged"}[expected[0]]
    assert verdict.summary.startswith(head) and verdict.summary.endswith(".")


def test_the_summary_gives_the_failures_first_with_their_figures() -> None:
    verdict = RULE.judge(sanity=FAILING_SANITY, fidelity=GOOD_DELETION, agreement=None)

    assert verdict.summary == (
        "Not trusted: fails the sanity check (similarity 0.91 to a randomised model's maps); "
        "beats random deletion (gain +0.30) (agreement not measured)."
    )
    assert RULE.judge(sanity=None, fidelity=None, agreement=None).summary == (
        "Not judged (no sanity check has run yet; deletion not tested; agreement not measured)."
    )
    assert RULE.judge(sanity=None, fidelity=GOOD_DELETION, agreement=0.35).summary == (
        "Not judged: beats random deletion (gain +0.30); agrees with the other methods (mean rho +0.35) "
        "(no sanity check has run yet)."
    )
    assert RULE.judge(sanity=None, fidelity=BAD_DELETION, agreement=None).summary == (
        "Not trusted: does not beat random deletion (gain -0.05) (no sanity check has run yet; agreement not measured)."
    )
    assert RULE.judge(sanity=PASSING_SANITY, fidelity=None, agreement=None).summary == (
        "Not judged: passes the sanity check (similarity 0.21 to a randomised model's maps) (deletion not tested; "
        "agreement not measured; nothing about this map's ranking was measured)."
    )


@pytest.mark.parametrize(
    ("convergence", "trusted", "converges", "text"),
    [
        pytest.param(0.02, True, True, "the integral converged (delta 2.0% of the logit change)", id="converged"),
        pytest.param(0.1, True, True, "the integral converged (delta 10.0% of the logit change)", id="at-the-limit"),
        pytest.param(
            0.3,
            False,
            False,
            "the integral did not converge (delta 30.0% of the logit change > 10%; raise ig_steps)",
            id="too-coarse",
        ),
        pytest.param(None, True, None, None, id="not-integrated-gradients"),
    ],
)
def test_an_integrated_gradients_map_fails_when_its_delta_is_a_large_share_of_the_logit_change(
    convergence: float | None, trusted: bool, converges: bool | None, text: str | None
) -> None:
    verdict = RULE.judge(sanity=PASSING_SANITY, fidelity=GOOD_DELETION, agreement=0.35, convergence=convergence)

    assert (verdict.trusted, verdict.converges) == (trusted, converges)
    assert text is None or text in verdict.summary
    unjudged = RULE.judge(sanity=PASSING_SANITY, fidelity=None, agreement=None, convergence=0.02)
    assert unjudged.trusted is None, "converging says nothing about the map's ranking"


def test_the_thresholds_are_strict_for_deletion_and_inclusive_for_agreement() -> None:
    even = Fidelity(deletion_auc=0.4, random_auc=0.4)
    strict = VerdictRule(min_fidelity_gain=0.1, min_agreement=0.5)

    assert RULE.judge(sanity=None, fidelity=even, agreement=0.2).beats_random is False
    assert RULE.judge(sanity=None, fidelity=even, agreement=0.2).agrees is True
    assert strict.judge(sanity=None, fidelity=GOOD_DELETION, agreement=0.49).agrees is False
    assert (
        strict.judge(sanity=None, fidelity=Fidelity(deletion_auc=0.4, random_auc=0.45), agreement=None).beats_random
        is False
    )


def _explanation(maps: dict[MethodName, NDArray[np.float64]]) -> Explanation:
    return Explanation(
        target=0,
        attributions=tuple(Attribution(method=m, values=v.astype(np.float32)) for m, v in maps.items()),
    )


def test_per_method_agreement_is_the_mean_spearman_with_the_other_methods() -> None:
    rng = np.random.default_rng(3)
    maps: dict[MethodName, NDArray[np.float64]] = {
        m: rng.normal(size=(1, 4, 4)) for m in ("gradcam", "saliency", "lime")
    }
    maps["lime"] = maps["saliency"] * 2 + rng.normal(scale=0.3, size=(1, 4, 4))

    matrix = agreement([_explanation(maps)])

    for method in maps:
        others = [other for other in maps if other != method]
        expected = np.mean(
            [spearmanr(np.abs(maps[method]).ravel(), np.abs(maps[other]).ravel()).statistic for other in others]
        )
        assert matrix.of(method) == pytest.approx(expected)
    assert np.mean([np.nan if (v := matrix.of(m)) is None else v for m in maps]) == pytest.approx(matrix.mean)


def test_a_row_of_verdicts_covers_every_method_and_the_label_maps() -> None:
    rng = np.random.default_rng(4)
    maps: dict[MethodName, NDArray[np.float64]] = {m: rng.normal(size=(1, 4, 4)) for m in ("saliency", "lime")}
    matrix = agreement([_explanation(maps)])

    row = RULE.row(
        ["saliency", "lime"],
        fidelity={"saliency": GOOD_DELETION, "lime": BAD_DELETION},
        agreement=matrix,
        sanity={"saliency": FAILING_SANITY},
        label_suffix="@label",
    )

    assert set(row) == {"saliency", "lime", "saliency@label", "lime@label"}
    assert row["saliency"].agreement == row["lime"].agreement == pytest.approx(matrix.of("lime"))
    assert row["saliency"].fidelity_gain == pytest.approx(0.3) and row["lime"].fidelity_gain == pytest.approx(-0.05)
    assert row["saliency"].verdict.passes_sanity is False and row["lime"].verdict.passes_sanity is None
    assert row["lime"].verdict.beats_random is False
    label = row["saliency@label"].verdict
    assert (label.trusted, label.passes_sanity, label.beats_random, label.agrees) == (False, False, None, None)
    assert row["lime@label"].verdict.trusted is None
    alone = RULE.row(["lime"], fidelity={"lime": GOOD_DELETION}, agreement=None, sanity={})
    assert set(alone) == {"lime"} and alone["lime"].verdict.agrees is None and alone["lime"].agreement is None


def _events(split: DatasetSplit, count: int) -> list[SampledEvent]:
    return [
        sampled_digit(
            f"r{row}",
            split.test.features[row],
            predicted=int(split.test.labels[row]),
            label=int(split.test.labels[row + 1]),
        )
        for row in range(count)
    ]


def test_the_runtime_stores_a_verdict_with_every_map_and_its_figures_in_the_summary(
    digits_path: Path, digits_split: DatasetSplit, as_served: Served
) -> None:
    methods: list[MethodName] = ["gradcam", "saliency", "lime"]
    config = AttributionConfig.model_validate(
        {
            "model": {"torchscript": str(digits_path), "input_shape": [1, 8, 8], "num_classes": 10},
            "methods": methods,
            "fidelity_steps": 4,
            "fidelity_random_orders": 1,
            "inspect_layers": [],
        }
    )
    runtime = ModelRuntime("digits", config, device="cpu")
    events = as_served(_events(digits_split, 4))

    sanity = {  # figures measured on this very model: the runtime ignores those of other weights
        method: figure.model_copy(update={"model_digest": runtime.model.digest})
        for method, figure in {"saliency": FAILING_SANITY, "lime": PASSING_SANITY}.items()
    }
    result = runtime.explain(events, sanity)

    maps = Explainer(runtime.model, methods=methods).explain(*_inputs_and_targets(events, runtime.model.device.type))
    for outcome, explanation in zip(result.outcomes, maps, strict=True):
        record = outcome.record
        assert set(record.summary.trust) == set(methods)
        for method in methods:
            stored = record.detail.attributions[method]
            trust = record.summary.trust[method]
            assert stored.verdict == trust.verdict and stored.agreement == trust.agreement
            if np.ptp(explanation[method].values) == 0:  # a blank map (Grad-CAM's, say) ranks nothing: no fidelity
                assert stored.fidelity is None and trust.fidelity_gain is None
            else:
                assert stored.fidelity is not None and trust.fidelity_gain == pytest.approx(stored.fidelity.gain)
            # A blank map ranks nothing: its pairs are left out of the agreement (None when it has no pair left).
            ranking = [m for m in methods if m != method and np.ptp(explanation[m].values) > 0]
            if np.ptp(explanation[method].values) == 0 or not ranking:
                assert trust.agreement is None
            else:
                expected = np.mean([_spearman(explanation[method].values, explanation[m].values) for m in ranking])
                assert trust.agreement == pytest.approx(expected, abs=1e-9)
            assert trust.verdict == RULE.judge(
                sanity=sanity.get(method),
                fidelity=stored.fidelity,
                agreement=trust.agreement,
            )
        assert record.summary.trust["saliency"].verdict.trusted is False
        assert record.summary.trust["gradcam"].verdict.passes_sanity is None
        if record.summary.label != record.summary.predicted:
            label_verdict = record.detail.attributions["saliency" + LABEL_SUFFIX].verdict
            assert label_verdict is not None and label_verdict.passes_sanity is False
            assert label_verdict.beats_random is None and label_verdict.agrees is None


def _inputs_and_targets(events: list[SampledEvent], device: str) -> tuple[torch.Tensor, torch.Tensor]:
    inputs = torch.stack([torch.from_numpy(e.input.decode()) for e in events if e.input is not None]).to(device)
    return inputs, torch.tensor([e.predicted for e in events], device=device)


def _spearman(first: NDArray[np.floating[Any]], second: NDArray[np.floating[Any]]) -> float:
    first, second = np.abs(first).ravel(), np.abs(second).ravel()
    if first.std() == 0 or second.std() == 0:
        return 0.0
    return float(spearmanr(first, second).statistic)


@pytest.mark.parametrize(
    "figure",
    [
        pytest.param(
            SanityFigure(similarity=0.1, flagged=False, samples=3, checked_at=1.0, conclusive=False),
            id="stored-as-inconclusive",
        ),
        pytest.param(
            SanityFigure.model_validate_json('{"similarity": 0.1, "flagged": false, "samples": 1, "checked_at": 1.0}'),
            id="older-record-on-one-pair",
        ),
    ],
)
def test_a_sanity_figure_on_too_few_pairs_of_maps_judges_no_map(figure: SanityFigure) -> None:
    """``upkeep`` stored any figure that measured one pair, so a single pair could decide "passes sanity" for every
    map of the method. Below ``min_sanity_pairs`` the maps stay not judged by sanity, figures of older workers
    included (they parse: the new fields have defaults)."""
    verdict = RULE.judge(sanity=figure, fidelity=GOOD_DELETION, agreement=0.35)

    assert (verdict.trusted, verdict.passes_sanity) == (None, None)
    assert verdict.summary == (
        "Not judged: beats random deletion (gain +0.30); agrees with the other methods (mean rho +0.35) "
        f"(the sanity check measured only {figure.samples} pairs of maps, fewer than 8: not enough evidence)."
    )
    failing = RULE.judge(sanity=figure.model_copy(update={"flagged": True}), fidelity=GOOD_DELETION, agreement=0.35)
    assert (failing.trusted, failing.passes_sanity) == (None, None), "nor can it fail them"
    assert RULE.judge(
        sanity=PASSING_SANITY.model_copy(update={"samples": 8}), fidelity=None, agreement=0.3
    ).passes_sanity
