"""The stored window of recent predictions: format 2 names the feed entries counted and not acknowledged; format 1
(the previous release's) is read as naming none."""

from __future__ import annotations

import json

import numpy as np
import pytest

from common.codec import EncodedArray
from monitors.cohorts import CohortGuard
from monitors.fleet.recent_store import decode, encode
from monitors.prediction_window import PredictionWindow, WindowCopy


def test_the_window_and_its_unacknowledged_entries_read_back_aged() -> None:
    window = PredictionWindow(guard=CohortGuard(keys=[], max_values_per_key=1), clock=lambda: 50.0)
    for entry in (b"1700000000000-10", b"1700000000000-9", b"999-0"):
        window.append("m", "v1", {}, 0.75, entry=entry)
    window.settle("m", [b"999-0"])
    body = encode(window.export("m"), owner="a", at=1_000.0)
    assert json.loads(body)["v"] == 2
    assert json.loads(body)["entries"] == ["1700000000000-9", "1700000000000-10"]  # in id order
    copy = decode(body, now=1_004.0)
    assert copy.entries == {b"1700000000000-9", b"1700000000000-10"}
    (series,) = copy.series
    assert (series.version, series.cohort, series.confidence.tolist()) == ("v1", "all", [0.75] * 3)
    np.testing.assert_allclose(series.ages_s, [4.0] * 3)


def test_a_window_the_previous_release_stored_reads_back_without_entries() -> None:
    body = json.dumps(
        {
            "v": 1,
            "owner": "old",
            "at": 100.0,
            "series": [
                {
                    "version": "v1",
                    "cohort": "all",
                    "ages_s": EncodedArray.of(np.array([1.0, 2.0], dtype=np.float32)).model_dump(mode="json"),
                    "confidence": EncodedArray.of(np.array([0.5, 0.9])).model_dump(mode="json"),
                }
            ],
        }
    )
    copy = decode(body, now=110.0)
    assert copy.entries == frozenset()
    assert [(s.ages_s.tolist(), s.confidence.tolist()) for s in copy.series] == [([11.0, 12.0], [0.5, 0.9])]


@pytest.mark.parametrize(
    "entries",
    [
        pytest.param(["12"], id="no-sequence"),
        pytest.param(["12-0-1"], id="three-parts"),
        pytest.param(["a-0"], id="not-a-number"),
    ],
)
def test_a_window_naming_entries_that_are_not_ids_does_not_read_back(entries: list[str]) -> None:
    body = json.loads(encode(WindowCopy([]), owner="a", at=1.0))
    with pytest.raises(ValueError, match="entries"):
        decode(json.dumps({**body, "entries": entries}), now=1.0)
