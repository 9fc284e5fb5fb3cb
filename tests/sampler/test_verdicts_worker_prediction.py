"""The stored ``worker_prediction``: records stored before the confidence check stay readable, a mismatch of theirs
reads as a class mismatch (the only check then), and the new fields round-trip."""

from __future__ import annotations

import pytest

from sampler.explanation_records import ExplanationSummary, WorkerPrediction

OLD_SUMMARY = (
    '{"model":"digits","model_version":"v1","request_id":"r1","status":"done","reasons":["every_n"],"predicted":3,'
    '"confidence":0.9,"timestamp":1.0,"worker_prediction":%s}'
)


@pytest.mark.parametrize(
    ("stored", "mismatch"),
    [
        pytest.param(
            '{"predicted":4,"probability":6.5e-10,"top_probability":0.98,"matches":false}', "class", id="disagreeing"
        ),
        pytest.param('{"predicted":3,"probability":0.97,"top_probability":0.97,"matches":true}', None, id="agreeing"),
    ],
)
def test_a_record_stored_before_the_confidence_check_reads_as_it_was(stored: str, mismatch: str | None) -> None:
    summary = ExplanationSummary.model_validate_json(OLD_SUMMARY % stored)

    found = summary.worker_prediction
    assert found is not None and found.mismatch == mismatch
    assert found.confidence_check is None and found.reported_probability is None and found.confidence_gap is None


def test_a_confidence_mismatch_round_trips() -> None:
    found = WorkerPrediction(
        predicted=3,
        probability=0.99,
        top_probability=0.99,
        matches=False,
        reported_probability=0.55,
        confidence_check="failed",
        mismatch="confidence",
    )

    again = WorkerPrediction.model_validate_json(found.model_dump_json())

    assert again == found and again.confidence_gap == pytest.approx(0.44)
