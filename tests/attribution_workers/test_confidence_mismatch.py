"""The worker's model predicts the reported class at another confidence than the server reported: other weights that
agree on the class explain another function, so the maps are not trusted, with the confidence reason. The same
weights served in bfloat16 are not flagged, and an event without a usable probability is recorded as unchecked."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from numpy.typing import NDArray
from safetensors.torch import load_file
from small_models import CHECK_METHODS, quick_digits_section, sampled_digit

from attribution_workers.batch_result import BatchResult
from attribution_workers.config import AttributionConfig
from attribution_workers.prediction import worker_predictions
from attribution_workers.runtime import ModelRuntime
from demo.corruptions import corrupt
from demo.models import digits
from demo.models.training import DatasetSplit
from sampler.contract import SampledEvent
from sampler.explanation_records import SanityFigure
from service.events.scores import summarise_matrix

METHODS = CHECK_METHODS
DEFAULT = AttributionConfig.model_fields["prediction_confidence_tolerance"].default


def _runtime(digits_path: Path) -> ModelRuntime:
    return ModelRuntime("digits", AttributionConfig.model_validate(quick_digits_section(digits_path)), device="cpu")


def _explain(runtime: ModelRuntime, events: list[SampledEvent]) -> BatchResult:
    """Explained with passing sanity figures of the worker's model: a map that passes the rest is trusted."""
    digest = runtime.model.digest
    passing = SanityFigure(similarity=0.1, flagged=False, samples=16, checked_at=1.0, model_digest=digest)
    return runtime.explain(events, dict.fromkeys(METHODS, passing))


def _images(split: DatasetSplit) -> NDArray[np.float32]:
    """The test digits, clean and corrupted as in the demo's drift phase (the models are less sure of these)."""
    corrupted, _ = corrupt(split.test.features, seed=1, severity=1.0)
    return np.concatenate([split.test.features, corrupted])


def _eager(digits_path: Path) -> digits.DigitsCNN:
    """The worker's very weights in the eager model (which, unlike the scripted file, casts to bfloat16)."""
    module = digits.DigitsCNN()
    module.load_state_dict(load_file(str(digits.ensure_digits_weights(digits_path))))
    return module.eval()


def _logits(module: torch.nn.Module, images: NDArray[np.float32]) -> torch.Tensor:
    """The module's logits, in the module's own dtype."""
    dtype = next(module.parameters()).dtype
    with torch.no_grad():
        found: torch.Tensor = module(torch.from_numpy(images).to(dtype))
        return found


def _events(
    images: NDArray[np.float32], rows: list[int], predicted: list[int], confidence: list[float]
) -> list[SampledEvent]:
    """The events of ``rows`` as the server reported them: its class and its probability of that class."""
    return [
        sampled_digit(f"r{row}", images[row], predicted=predicted[row]).model_copy(
            update={"confidence": confidence[row]}
        )
        for row in rows
    ]


@pytest.fixture(scope="module")
def other_weights(digits_split: DatasetSplit) -> digits.DigitsCNN:
    """The digits CNN trained as the worker's was, with another seed: the server's model after a retraining."""
    return digits.train_digits_cnn(digits_split, plan=dataclasses.replace(digits.PLAN, seed=1))


def test_other_weights_that_predict_the_same_class_at_another_confidence_are_not_trusted(
    digits_path: Path, digits_split: DatasetSplit, other_weights: digits.DigitsCNN
) -> None:
    """The server's model (another training) and the worker's agree on the class of these digits but not on how
    sure they are, by more than 0.2; the class check passes them, and their maps were stored as trusted."""
    images = _images(digits_split)
    server = _logits(other_weights, images).double().softmax(dim=1)
    worker = _logits(_eager(digits_path), images).double().softmax(dim=1)
    predicted = server.argmax(dim=1).tolist()
    confidence = server.max(dim=1).values.tolist()
    gaps = (worker[range(len(images)), predicted] - server.max(dim=1).values).abs()
    same_class = worker.argmax(dim=1) == server.argmax(dim=1)
    rows = torch.nonzero(same_class & (gaps > 0.2)).flatten().tolist()[:6]
    assert len(rows) >= 4, "another training disagrees on the confidence of a few percent of the digits"
    events = _events(images, rows, predicted, confidence)
    runtime = _runtime(digits_path)

    result = _explain(runtime, events)

    assert result.prediction_mismatches == 0 and result.confidence_mismatches == len(events)
    assert result.fidelity_gain == {} and result.agreement is None, "no mismatched map feeds the batch gauges"
    for event, outcome in zip(events, result.outcomes, strict=True):
        found = outcome.record.summary.worker_prediction
        assert found is not None and not found.matches and found.mismatch == "confidence"
        assert found.confidence_check == "failed" and found.predicted == event.predicted
        assert found.reported_probability == event.confidence
        assert found.confidence_gap is not None and found.confidence_gap > 0.2
        for name, stored in outcome.record.detail.attributions.items():
            assert stored.verdict is not None and stored.verdict.trusted is False, (name, stored.verdict)
            assert stored.verdict.summary.startswith(
                "Not trusted: the worker's model predicts the reported class at another confidence than the server "
                f"({found.probability:.2g} where the server reported {event.confidence:.2g}: "
            ), stored.verdict.summary


@pytest.mark.parametrize(
    "served",
    [
        pytest.param("logits", id="bfloat16-logits-softmaxed-by-the-sidecar"),
        pytest.param("probabilities", id="bfloat16-probabilities"),
        pytest.param("rounded", id="float32-probabilities-rounded-to-bfloat16"),
    ],
)
def test_the_same_weights_served_in_bfloat16_are_not_flagged(
    digits_path: Path, digits_split: DatasetSplit, served: str
) -> None:
    """The server runs the worker's weights in bfloat16 and reports what it gives, summarised as the sidecar does
    at ingest; the worker's float32 model is the same model, on every digit and on the worst ones explained."""
    images = _images(digits_split)
    worker_logits = _logits(_eager(digits_path), images)
    if served == "rounded":
        scores = worker_logits.double().softmax(dim=1).to(torch.bfloat16)
    else:
        scores = _logits(_eager(digits_path).to(torch.bfloat16), images)
        scores = scores if served == "logits" else scores.softmax(dim=1)
    predicted, confidence, _ = summarise_matrix(scores.float().numpy(), from_logits=served == "logits")

    every = worker_predictions(worker_logits, predicted, confidence, tolerance=0.05, confidence_tolerance=DEFAULT)
    gaps = np.array([found.confidence_gap for found in every], dtype=np.float64)
    assert all(found.matches for found in every), max(gaps)
    assert gaps.max() > 1e-3, "bfloat16 does move the reported confidence"
    worst = np.argsort(gaps)[-4:].tolist()
    result = _explain(_runtime(digits_path), _events(images, worst, predicted, confidence))

    assert result.prediction_mismatches == 0 and result.confidence_mismatches == 0
    for outcome in result.outcomes:
        found = outcome.record.summary.worker_prediction
        assert found is not None and found.matches and found.confidence_check == "passed"
        for stored in outcome.record.detail.attributions.values():
            assert stored.verdict is not None and "worker's model" not in stored.verdict.summary


def test_an_event_without_a_usable_probability_is_recorded_as_unchecked(
    digits_path: Path, digits_split: DatasetSplit
) -> None:
    """A confidence outside [0, 1] is not a probability (the sidecar never queues one): the check is skipped, not
    passed, and the record and each map's summary say so (which alone fails no map); the class check still runs."""
    image = digits_split.test.features[0]
    event = sampled_digit("r0", image, predicted=int(digits_split.test.labels[0])).model_copy(
        update={"confidence": 1.5}
    )

    result = _explain(_runtime(digits_path), [event])

    (outcome,) = result.outcomes
    found = outcome.record.summary.worker_prediction
    assert found is not None and found.matches and found.mismatch is None
    assert found.confidence_check == "skipped" and found.reported_probability is None and found.confidence_gap is None
    assert result.confidence_unchecked == 1 and result.confidence_mismatches == 0
    for stored in outcome.record.detail.attributions.values():
        assert stored.verdict is not None and "another confidence" not in stored.verdict.summary
        assert "the server reported no probability to compare" in stored.verdict.summary
