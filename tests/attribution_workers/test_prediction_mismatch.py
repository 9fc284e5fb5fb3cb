"""The worker's own model against the server's prediction: another class, or the reported class at another
confidence (version skew, other weights), is recorded with its reason, counted, and makes every map of the event not
trusted; a near tie, or the same weights served in half precision, is not a disagreement."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
import redis
import torch
from prometheus_client import CollectorRegistry
from small_models import CHECK_METHODS, quick_digits_section, sampled_digit

from attribution_workers.config import AttributionConfig
from attribution_workers.prediction import worker_predictions
from attribution_workers.runtime import ModelRuntime
from attribution_workers.settings import WorkerSettings
from common import keys
from demo.models.training import DatasetSplit
from helpers import drain_worker, hash_field
from sampler.contract import SampledEvent
from sampler.explanation_records import ExplanationSummary, SanityFigure

METHODS = CHECK_METHODS
Served = Callable[[Sequence[SampledEvent]], list[SampledEvent]]
"""The ``as_served`` fixture: events with the confidence the worker's own model gives."""


def _rotated(split: DatasetSplit, rows: range, *, labelled: bool = False) -> list[SampledEvent]:
    """Events whose reported class is the true one plus one, as logits rotated by one class (version skew) give;
    the model is right on these digits, so it predicts the true class."""
    return [
        sampled_digit(
            f"r{row}",
            split.test.features[row],
            predicted=(int(split.test.labels[row]) + 1) % 10,
            label=int(split.test.labels[row]) if labelled else None,
        )
        for row in rows
    ]


def test_maps_of_a_class_the_worker_s_model_does_not_predict_are_not_trusted(
    digits_path: Path, digits_split: DatasetSplit
) -> None:
    """With logits rotated by one class every map targeted the reported class, which the worker's model gave a
    probability of 6.5e-10, and read "Trusted: ... beats random deletion": the deletion curve starts near 0."""
    runtime = ModelRuntime("digits", AttributionConfig.model_validate(quick_digits_section(digits_path)), device="cpu")
    passing = SanityFigure(similarity=0.1, flagged=False, samples=16, checked_at=1.0, model_digest=runtime.model.digest)
    events = _rotated(digits_split, range(8), labelled=True)

    result = runtime.explain(events, dict.fromkeys(METHODS, passing))

    assert result.prediction_mismatches == 8
    assert result.fidelity_gain == {} and result.agreement is None, "no mismatched map feeds the batch gauges"
    for event, outcome in zip(events, result.outcomes, strict=True):
        summary, detail = outcome.record.summary, outcome.record.detail
        found = summary.worker_prediction
        assert found is not None and not found.matches and found.mismatch == "class"
        assert found.predicted == event.label and found.top_probability > 0.9 and found.probability < 0.05
        assert set(detail.attributions) == {*METHODS, *(f"{m}@label" for m in METHODS)}
        for name, stored in detail.attributions.items():
            assert stored.target == (event.label if name.endswith("@label") else event.predicted)
            assert stored.verdict is not None and stored.verdict.trusted is False, (name, stored.verdict)
            assert stored.verdict.summary.startswith(
                "Not trusted: the worker's model disagrees with the server's prediction (it predicts class "
                f"{event.label} at "
            ), stored.verdict.summary
            assert "probably version skew or different weights" in stored.verdict.summary
        assert all(trust.verdict.trusted is False for trust in summary.trust.values())


def test_agreeing_events_record_the_worker_s_prediction_and_are_judged_as_before(
    digits_path: Path, digits_split: DatasetSplit, as_served: Served
) -> None:
    runtime = ModelRuntime("digits", AttributionConfig.model_validate(quick_digits_section(digits_path)), device="cpu")
    events = as_served(
        [
            sampled_digit(f"r{row}", digits_split.test.features[row], predicted=int(digits_split.test.labels[row]))
            for row in range(4)
        ]
    )

    result = runtime.explain(events, {})

    assert result.prediction_mismatches == 0 and result.confidence_mismatches == 0
    assert set(result.fidelity_gain) == set(METHODS)
    for event, outcome in zip(events, result.outcomes, strict=True):
        found = outcome.record.summary.worker_prediction
        assert found is not None and found.matches and found.predicted == event.predicted
        assert found.probability == found.top_probability
        assert found.mismatch is None and found.confidence_check == "passed"
        assert found.reported_probability == event.confidence and found.confidence_gap == pytest.approx(0, abs=1e-6)
        assert all("disagrees with the server" not in t.verdict.summary for t in outcome.record.summary.trust.values())


@pytest.mark.parametrize(
    ("gap", "matches"),
    [
        pytest.param(1e-6, True, id="float-error-tie-either-way"),
        pytest.param(0.03, True, id="within-the-tolerance"),
        pytest.param(0.1, False, id="clearly-below-the-top"),
    ],
)
def test_a_near_tie_is_not_a_disagreement(gap: float, matches: bool) -> None:
    """Two classes within float error of each other: the server's argmax may be either, and its class is the one
    the engineer asked about. Only a probability clearly below the worker's top (by more than the tolerance, here
    0.05) is a disagreement; the argmax alone would call the first two mismatches."""
    logits = torch.full((1, 10), -20.0, dtype=torch.float64)
    logits[0, 3] = 0.0
    logits[0, 5] = math.log((1 + gap) / (1 - gap))  # p5 - p3 = gap, the rest next to nothing

    reported = float(logits.softmax(dim=1)[0, 3])  # a server of the same model: its probability of class 3

    (found,) = worker_predictions(logits, [3], [reported], tolerance=0.05, confidence_tolerance=0.05)

    assert found.predicted == 5 and found.top_probability - found.probability == pytest.approx(gap, rel=1e-3)
    assert found.matches is matches and found.mismatch == (None if matches else "class")
    assert found.confidence_check == "passed"


def test_the_worker_counts_the_events_its_model_disagrees_on_by_kind(
    make_worker_settings: Callable[..., WorkerSettings],
    digits_path: Path,
    digits_split: DatasetSplit,
    redis_client: redis.Redis,
    as_served: Served,
) -> None:
    """Two events of another class, one of the reported class at another confidence (the server said 0.55 where
    the worker's model gives the digit 0.99 or more), three that agree: each kind has its own counter."""
    settings = make_worker_settings(
        models={"digits": {"attribution": quick_digits_section(digits_path)}}, worker_retry_after_ms=100
    )
    good = as_served(
        [
            sampled_digit(f"ok{row}", digits_split.test.features[row], predicted=int(digits_split.test.labels[row]))
            for row in range(4)
        ]
    )
    unsure = good[3].model_copy(update={"request_id": "unsure", "confidence": 0.55})
    assert good[3].confidence > 0.99, "the worker's model is sure of this digit"
    for item in [*good[:3], unsure, *_rotated(digits_split, range(4, 6))]:
        redis_client.xadd(keys.sample_stream("digits"), item.encode())  # type: ignore[arg-type]  # redis-py's field types
    ids = ["ok0", "ok1", "ok2", "unsure", "r4", "r5"]

    def done() -> bool:
        return all(hash_field(redis_client, keys.explanation("digits", i), "status") == b"done" for i in ids)

    registry = CollectorRegistry()
    drain_worker(settings, done, registry=registry)

    assert registry.get_sample_value("vai_attribution_prediction_mismatch_total", {"model": "digits"}) == 2
    assert registry.get_sample_value("vai_attribution_confidence_mismatch_total", {"model": "digits"}) == 1
    stored = {i: hash_field(redis_client, keys.explanation("digits", i), "summary") for i in ids}
    kinds = {}
    for request_id, summary in stored.items():
        assert summary is not None
        found = ExplanationSummary.model_validate_json(summary).worker_prediction
        assert found is not None
        kinds[request_id] = found.mismatch
    assert kinds == {"ok0": None, "ok1": None, "ok2": None, "unsure": "confidence", "r4": "class", "r5": "class"}


def test_the_default_tolerance_takes_a_bfloat16_server_s_near_tie_for_the_same_model() -> None:
    """A server running the same model in bfloat16 reported another class than the worker's float32 top with
    probability gaps up to 0.030 on near-tied digits (an audit); the first default, 0.01, flagged its maps."""
    default = AttributionConfig.model_fields["prediction_tie_tolerance"].default
    logits = torch.full((1, 10), -20.0, dtype=torch.float64)
    logits[0, 3] = 0.0
    logits[0, 5] = math.log(1.03 / 0.97)  # p5 - p3 = 0.03, the rest next to nothing

    (found,) = worker_predictions(
        logits, [3], [float(logits.softmax(dim=1)[0, 3])], tolerance=default, confidence_tolerance=0.05
    )

    assert found.predicted == 5 and found.matches
