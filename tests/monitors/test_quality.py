from __future__ import annotations

import numpy as np
import pytest

from monitors.quality import compute_quality, quality_of, wilson_interval
from monitors.records import LabelledPrediction


@pytest.mark.parametrize(
    ("successes", "count", "lower", "upper"),
    [
        pytest.param(8, 10, 0.4902, 0.9433, id="8-of-10"),
        pytest.param(0, 10, 0.0, 0.2775, id="0-of-10"),
        pytest.param(10, 10, 0.7225, 1.0, id="10-of-10"),
        pytest.param(50, 100, 0.4038, 0.5962, id="50-of-100"),
        pytest.param(1, 1, 0.2065, 1.0, id="1-of-1"),
    ],
)
def test_wilson_known_values(successes: int, count: int, lower: float, upper: float) -> None:
    interval = wilson_interval(successes, count)
    assert interval.value == pytest.approx(successes / count)
    assert interval.lower == pytest.approx(lower, abs=5e-5)
    assert interval.upper == pytest.approx(upper, abs=5e-5)


@pytest.mark.parametrize(
    ("successes", "count"),
    [pytest.param(1, 0, id="no-trials"), pytest.param(5, 4, id="more-successes-than-trials")],
)
def test_wilson_rejects(successes: int, count: int) -> None:
    with pytest.raises(ValueError):
        wilson_interval(successes, count)


def test_per_class_precision_and_recall() -> None:
    #            predicted  0  0  1  1  1  2
    #            label      0  1  1  1  2  2
    report = compute_quality(predicted=[0, 0, 1, 1, 1, 2], labels=[0, 1, 1, 1, 2, 2])
    assert report.accuracy.successes == 4 and report.accuracy.count == 6
    by_class = {c.class_index: c for c in report.classes}
    assert (by_class[0].true_positives, by_class[0].predicted_count, by_class[0].support) == (1, 2, 1)
    assert by_class[0].precision == pytest.approx(0.5) and by_class[0].recall == pytest.approx(1.0)
    assert by_class[1].precision == pytest.approx(2 / 3) and by_class[1].recall == pytest.approx(2 / 3)
    assert by_class[2].precision == pytest.approx(1.0) and by_class[2].recall == pytest.approx(0.5)


def test_never_predicted_class_has_no_precision() -> None:
    report = compute_quality(predicted=[0, 0], labels=[0, 3])
    by_class = {c.class_index: c for c in report.classes}
    assert by_class[3].precision is None
    assert by_class[3].recall == 0.0


def test_worse_smaller_cohort_scores_lower_with_wider_interval() -> None:
    rng = np.random.default_rng(0)

    def records(cohort: str, n: int, accuracy: float) -> list[LabelledPrediction]:
        labels = rng.integers(0, 4, n)
        predicted = np.where(rng.random(n) < accuracy, labels, (labels + 1) % 4)
        return [
            LabelledPrediction(
                model="m",
                version="1",
                predicted=int(p),
                confidence=0.9,
                label=int(y),
                time_s=0.0,
                cohort={"region": cohort},
            )
            for p, y in zip(predicted, labels, strict=True)
        ]

    good = quality_of(records("eu", 2000, 0.9)).accuracy
    bad = quality_of(records("ap", 200, 0.6)).accuracy

    assert bad.value < good.value
    assert bad.upper < good.lower
    assert bad.upper - bad.lower > good.upper - good.lower
