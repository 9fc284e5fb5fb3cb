"""The ``/distributions`` histograms the owner publishes: which bin a value on an edge falls in."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest

from monitors.fleet.distributions import BINS, distributions_of
from monitors.fleet.projection_sample import ReferenceSample


def on_every_edge(top: int) -> npt.NDArray[np.float64]:
    """``k * top / 20`` for k = 0..20, each parsed from its decimal text, as a rounded probability arrives."""
    return np.array([float(f"{k * top / BINS:.10g}") for k in range(BINS + 1)])


@pytest.mark.parametrize("top", [pytest.param(1, id="margins-to-1"), pytest.param(7, id="margins-to-7")])
def test_a_value_on_an_edge_opens_the_bin_above_it(top: int) -> None:
    """[a, b) holds exactly the values a <= x < b of the decimal edges: each of the 21 edges lands in the bin it
    opens, the top one in the last bin with the edge below it; a value just under an edge stays in the bin
    below. The published edges are the decimals (0.7, not 0.7000000000000001)."""
    confidence, margin = on_every_edge(1), on_every_edge(top)
    under = np.nextafter(confidence[1:], 0.0), np.nextafter(margin[1:], 0.0)  # just under each edge but 0
    sample = ReferenceSample(id="r", embeddings=None, predicted=None, confidence=under[0], margin=under[1])
    found = distributions_of("m", confidence, margin, sample)

    on_edges, under_edges = (1,) * (BINS - 1) + (2,), (1,) * BINS
    assert (found.confidence.production, found.confidence.reference) == (on_edges, under_edges)
    assert (found.margin.production, found.margin.reference) == (on_edges, under_edges)
    assert found.confidence.edges == tuple(confidence) and 0.7 in found.confidence.edges
    assert found.margin.edges == tuple(margin), "margin edges run to the 99th percentile's next whole number"


def test_values_beyond_the_ends_count_in_the_end_bins() -> None:
    confidence = np.array([-1e-9, 0.0, 1.0, 1.0 + 1e-9])
    found = distributions_of("m", confidence, np.zeros(4), None)
    assert found.confidence.production == (2,) + (0,) * (BINS - 2) + (2,)
    assert found.margin.edges[-1] == 1.0 and found.margin.production == (4,) + (0,) * (BINS - 1)
