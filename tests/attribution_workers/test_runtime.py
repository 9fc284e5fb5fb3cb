"""The worker runtime on the real digits CNN: when maps are judged, when the sanity check runs, refused inputs,
per-input deletion orders and the Gradient SHAP noise setting."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from numpy.typing import NDArray
from small_models import sampled_digit

from attribution_workers.config import AttributionConfig
from attribution_workers.runtime import ModelRuntime
from demo.models.training import DatasetSplit
from sampler.contract import SampledEvent
from sampler.explanation_records import SanityFigure

Served = Callable[[Sequence[SampledEvent]], list[SampledEvent]]
"""The ``as_served`` fixture: events with the confidence the worker's own model gives."""


def _runtime(digits_path: Path, *, sanity_seed_start: int | None = 0, **settings: Any) -> ModelRuntime:
    config = AttributionConfig.model_validate(
        {
            "model": {"torchscript": str(digits_path), "input_shape": [1, 8, 8], "num_classes": 10},
            "fidelity_steps": 8,
            "fidelity_random_orders": 2,
            "inspect_layers": [],
            **settings,
        }
    )
    return ModelRuntime("digits", config, device="cpu", sanity_seed_start=sanity_seed_start)


def _event(request_id: str, image: NDArray[np.float32], predicted: int) -> SampledEvent:
    return sampled_digit(request_id, image, predicted=predicted)


def _events(split: DatasetSplit, rows: range) -> list[SampledEvent]:
    return [_event(f"r{row}", split.test.features[row], int(split.test.labels[row])) for row in rows]


def test_no_map_is_trusted_before_its_method_s_first_sanity_check(
    digits_path: Path, digits_split: DatasetSplit, as_served: Served
) -> None:
    """Before any check, 32 of 32 maps of integrated_gradients, gradient_shap and occlusion were stored as trusted;
    after the first check those methods were flagged and such maps got 0 of 16. A map explained before the check
    is not judged, whatever its deletion and agreement figures."""
    runtime = _runtime(digits_path, methods=["saliency", "integrated_gradients", "occlusion"])

    result = runtime.explain(as_served(_events(digits_split, range(6))), {})

    verdicts = [trust.verdict for outcome in result.outcomes for trust in outcome.record.summary.trust.values()]
    assert len(verdicts) == 18 and all(verdict.trusted is not True for verdict in verdicts)
    judged_well = [v for v in verdicts if v.beats_random and v.agrees]
    assert judged_well, "some maps pass both map parts: they are the ones that used to be trusted"
    for verdict in judged_well:
        assert verdict.trusted is None and verdict.passes_sanity is None
        assert verdict.summary.startswith("Not judged: ") and verdict.summary.endswith("(no sanity check has run yet).")


def test_the_first_sanity_check_is_due_as_soon_as_the_recent_window_is_full(
    digits_path: Path, digits_split: DatasetSplit
) -> None:
    """It once waited ``sanity_every_s`` (300 s by default) after start, leaving every map of that time judged
    without it; it runs on ``sanity_samples`` inputs, so the first figure is no noisier than the later ones."""
    runtime = _runtime(digits_path, methods=["saliency"], sanity_samples=4)

    runtime.explain(_events(digits_split, range(3)), {})
    assert not runtime.sanity_due(), "three inputs are not a full window of four"
    runtime.explain(_events(digits_split, range(3, 4)), {})
    assert runtime.sanity_due()
    (check,) = runtime.sanity_check()
    assert check.inputs == 4
    assert not runtime.sanity_due(), "the next one waits sanity_every_s"


@pytest.mark.parametrize(
    "scale",
    [
        pytest.param(1e37, id="finite-logits-too-large-to-attribute"),
        pytest.param(1e38, id="logits-overflow-to-infinity"),
    ],
)
def test_an_input_whose_logits_cannot_be_attributed_is_refused_at_once_and_its_neighbours_explained(
    digits_path: Path, digits_split: DatasetSplit, scale: float, as_served: Served
) -> None:
    """Finite pixels of 1e37 give logits of about 1e37, of 1e38 infinite ones: the maps were stored as "Trusted"
    (identical deletion figures, IG delta 1e30), and with LIME the batch failed as retryable (its regression
    overflowed), redelivered until max deliveries."""
    runtime = _runtime(digits_path, methods=["saliency", "integrated_gradients", "lime"])
    huge = (digits_split.test.features[0] * scale).astype(np.float32)
    with torch.no_grad():
        logits = runtime.model.module(torch.from_numpy(huge)[None])
    assert not torch.isfinite(logits).all() or logits.abs().max() > 1e30
    events = [*as_served(_events(digits_split, range(2))), _event("huge", huge, 0)]

    result = runtime.explain(events, {})

    outcomes = {outcome.record.summary.request_id: outcome for outcome in result.outcomes}
    assert outcomes["r0"].ok and outcomes["r1"].ok
    refused = outcomes["huge"]
    assert not refused.ok and refused.retry is False
    assert refused.record.detail.error is not None
    assert refused.record.detail.error.startswith("the model's outputs on this input cannot be attributed")
    # Explained one event at a time, the batch still gives its figures: only the outcomes were kept, so such a
    # batch was missing from the method timings and the trust gauges.
    assert set(result.seconds) == {"saliency", "integrated_gradients", "lime"} and all(result.seconds.values())
    assert set(result.fidelity_gain) == set(result.seconds) and result.agreement is not None


def test_each_input_gets_its_own_random_deletion_orders_reproducible_by_request_id(
    digits_path: Path, digits_split: DatasetSplit
) -> None:
    """Every call once re-drew the same seeded orders, so batches of one shared one fixed random reference and
    the mean gain carried its bias however many maps it averaged."""
    runtime = _runtime(digits_path, methods=["saliency", "occlusion"])
    image, label = digits_split.test.features[5], int(digits_split.test.labels[5])

    def random_auc(request_id: str) -> float:
        (outcome,) = runtime.explain([_event(request_id, image, label)], {}).outcomes
        fidelity = outcome.record.detail.attributions["saliency"].fidelity
        assert fidelity is not None
        return fidelity.random_auc

    first, other, again = random_auc("a"), random_auc("b"), random_auc("a")

    assert first != other, "two inputs drew the same random orders"
    assert first == again, "an input's orders follow its request id"


def test_integrated_gradients_maps_whose_integral_did_not_converge_are_not_trusted(
    digits_path: Path, digits_split: DatasetSplit
) -> None:
    """The convergence delta was stored and never read: a map that does not add up to the logit change it explains
    (too few steps for this input) was trusted like any other."""
    methods = ["saliency", "integrated_gradients"]
    events = _events(digits_split, range(16))

    def verdicts(ig_steps: int) -> list[Any]:
        runtime = _runtime(digits_path, methods=methods, ig_steps=ig_steps)
        outcomes = runtime.explain(events, _passing(methods, runtime.model.digest)).outcomes
        assert all(o.record.summary.trust["saliency"].verdict.converges is None for o in outcomes)
        return [o.record.summary.trust["integrated_gradients"].verdict for o in outcomes]

    coarse, fine = verdicts(ig_steps=1), verdicts(ig_steps=64)

    assert all(v.converges is True for v in fine)
    failing = [v for v in coarse if v.converges is False]
    assert failing, [v.summary for v in coarse]
    for verdict in failing:
        assert verdict.trusted is False and "the integral did not converge" in verdict.summary


@pytest.mark.parametrize(
    ("settings", "zero"),
    [
        pytest.param({"shap_stdev": 0.0}, True, id="no-noise-for-raw-scale-inputs"),
        pytest.param({}, False, id="default-noise"),
    ],
)
def test_the_gradient_shap_noise_is_configurable(digits_path: Path, settings: dict[str, Any], zero: bool) -> None:
    """On the baseline itself (all zeros) Gradient SHAP multiplies by ``input - baseline``: zero without noise."""
    runtime = _runtime(digits_path, methods=["gradient_shap"], **settings)

    (outcome,) = runtime.explain([_event("zeros", np.zeros((1, 8, 8), dtype=np.float32), 0)], {}).outcomes

    values = outcome.record.detail.attributions["gradient_shap"].to_array()
    assert bool((values == 0).all()) is zero


def test_a_sanity_figure_of_other_weights_judges_no_map(digits_path: Path, digits_split: DatasetSplit) -> None:
    """Sanity figures are stored per model name: after new weights under the same name, the old model's figure
    judged the new model's maps until the next check. Only a figure of this very model counts."""
    runtime = _runtime(digits_path, methods=["saliency"])
    events = _events(digits_split, range(16))

    def trusted(digest: str | None) -> set[bool | None]:
        outcomes = runtime.explain(events, _passing(["saliency"], digest)).outcomes
        return {o.record.summary.trust["saliency"].verdict.trusted for o in outcomes}

    assert len(runtime.model.digest) == 16
    assert True in trusted(runtime.model.digest)
    for other in ("0123456789abcdef", None):  # other weights; a figure of a worker that stored no digest
        assert True not in trusted(other), other  # not judged (or failed on the map's own figures)


def _passing(methods: list[str], digest: str | None) -> dict[str, SanityFigure]:
    figure = SanityFigure(similarity=0.1, flagged=False, samples=16, checked_at=1.0, model_digest=digest)
    return dict.fromkeys(methods, figure)


def test_maps_towards_the_label_go_to_the_labelled_event_even_when_two_share_a_request_id(
    digits_path: Path, digits_split: DatasetSplit
) -> None:
    """Duplicates are refused per replica only, so one batch may hold two events of one id; the label's maps
    were looked up by id and given to both."""
    runtime = _runtime(digits_path, methods=["saliency"])
    image, label = digits_split.test.features[3], int(digits_split.test.labels[3])
    wrong = (label + 1) % 10
    events = [
        sampled_digit("dup", image, predicted=wrong),
        sampled_digit("dup", image, predicted=wrong, label=label),
    ]

    unlabelled, labelled = (outcome.record.detail.attributions for outcome in runtime.explain(events, {}).outcomes)

    assert set(unlabelled) == {"saliency"}
    assert set(labelled) == {"saliency", "saliency@label"}
    assert labelled["saliency@label"].target == label


def test_integrated_gradients_maps_towards_the_label_are_judged_on_their_convergence(
    digits_path: Path, digits_split: DatasetSplit, as_served: Served
) -> None:
    """``integrated_gradients@label`` with a delta of 13 times the 10% limit read ``converges: null`` and "nothing
    about this map itself was measured": only the maps towards the prediction were tested."""
    methods = ["saliency", "integrated_gradients"]
    events = as_served(
        [
            sampled_digit(
                f"r{row}",
                digits_split.test.features[row],
                predicted=int(digits_split.test.labels[row]),
                label=int(digits_split.test.labels[row + 1]),
            )
            for row in range(12)
            if digits_split.test.labels[row] != digits_split.test.labels[row + 1]
        ]
    )

    def label_verdicts(ig_steps: int) -> list[Any]:
        runtime = _runtime(digits_path, methods=methods, ig_steps=ig_steps)
        outcomes = runtime.explain(events, _passing(methods, runtime.model.digest)).outcomes
        found = {
            name: [o.record.detail.attributions[f"{name}@label"].verdict for o in outcomes]
            for name in ("saliency", "integrated_gradients")
        }
        assert all(v is not None and v.converges is None for v in found["saliency"])
        return found["integrated_gradients"]

    coarse, fine = label_verdicts(ig_steps=1), label_verdicts(ig_steps=64)

    assert len(events) >= 8 and all(v.converges is True for v in fine)
    assert all(v.trusted is None for v in fine), "converging alone judges no map"
    failing = [v for v in coarse if v.converges is False]
    assert failing, [v.summary for v in coarse]
    for verdict in failing:
        assert verdict.trusted is False and "the integral did not converge" in verdict.summary


def test_each_sanity_check_draws_new_random_weights_and_averages_several(
    digits_path: Path, digits_split: DatasetSplit
) -> None:
    """Every check re-drew the one randomised copy of seed 0, so a single draw (Grad-CAM: -0.12 to 0.30 over
    seeds 0-3 on 16 digits) decided "passes sanity" for every map of the method for ever."""
    runtime = _runtime(digits_path, methods=["saliency"], sanity_samples=4, sanity_seeds=2)
    runtime.explain(_events(digits_split, range(4)), {})

    (first,) = runtime.sanity_check()
    (second,) = runtime.sanity_check()

    assert (first.seeds, second.seeds) == ((0, 1), (2, 3))
    draws = [draw for draw in first.draws if draw is not None]
    assert len(draws) == 2 and first.draws != second.draws
    assert first.spread == pytest.approx(max(draws) - min(draws))


def test_sanity_seeds_start_somewhere_else_in_every_process(digits_path: Path, digits_split: DatasetSplit) -> None:
    """The seeds restarted at 0 in every worker process: after each restart, and on every replica, the first check
    re-drew the same random weights. Each runtime now starts at a number of its own, and goes on from there."""
    runtimes = [_runtime(digits_path, sanity_seed_start=None, methods=["saliency"], sanity_samples=4) for _ in "ab"]
    for runtime in runtimes:
        runtime.explain(_events(digits_split, range(4)), {})

    (a_first,), (a_second,) = runtimes[0].sanity_check(), runtimes[0].sanity_check()
    (b_first,) = runtimes[1].sanity_check()

    count = len(a_first.seeds)
    assert a_second.seeds == tuple(range(a_first.seeds[0] + count, a_first.seeds[0] + 2 * count))
    assert a_first.seeds != b_first.seeds, "two processes (2**31 starts) drew the same seeds"


def test_each_record_says_how_its_maps_were_made(digits_path: Path, digits_split: DatasetSplit) -> None:
    """Without them a stored figure could not be read once the config changed (steps, samples, windows)."""
    runtime = _runtime(digits_path, methods=["integrated_gradients", "occlusion"], ig_steps=8, occlusion_window=3)
    (outcome,) = runtime.explain(_events(digits_split, range(1)), {}).outcomes

    settings = outcome.record.detail.settings
    assert settings is not None
    assert (settings.ig_steps, settings.occlusion_window) == (8, 3)
    assert (settings.fidelity_steps, settings.fidelity_random_orders) == (8, 2)
    assert settings.lime_samples is None and settings.shap_samples is None and settings.gradcam_layer is None
