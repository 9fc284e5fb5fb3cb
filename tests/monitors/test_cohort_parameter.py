"""The one reading of a ``cohort`` query parameter (``monitors.cohorts.parse_slice``), shared by the calibration
views and the explanations' filter, which had each their own and disagreed on a key holding ``:``."""

from __future__ import annotations

import pytest

from common.errors import InvalidInput
from monitors.cohorts import parse_slice, slice_name

KEYS = ("region", "k8s:zone")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("region=eu", ("region", "eu"), id="equals"),
        pytest.param("region:eu", ("region", "eu"), id="colon"),
        pytest.param("region=a=b", ("region", "a=b"), id="equals-value-with-equals"),
        pytest.param("region:a=b", ("region", "a=b"), id="colon-value-with-equals"),
        pytest.param("region=a:b", ("region", "a:b"), id="equals-value-with-colon"),
        pytest.param("region:a:b", ("region", "a:b"), id="colon-value-with-colon"),
        pytest.param("k8s:zone=eu", ("k8s:zone", "eu"), id="equals-key-with-colon"),
        pytest.param("k8s:zone:eu", ("k8s:zone", "eu"), id="colon-key-with-colon"),
        pytest.param("k8s:zone:a=b", ("k8s:zone", "a=b"), id="colon-key-with-colon-value-with-equals"),
        pytest.param("k8s=zone:eu", ("k8s", "zone:eu"), id="equals-other-key"),
        pytest.param("device:a=b", ("device:a", "b"), id="both-no-known-key-reads-at-equals"),
        pytest.param("device:a:b", ("device", "a:b"), id="colons-no-known-key-reads-at-first"),
        pytest.param("all", None, id="whole-model"),
    ],
)
def test_a_cohort_is_read_at_the_separator_that_names_a_key(text: str, expected: tuple[str, str] | None) -> None:
    assert parse_slice(text, KEYS) == expected
    assert slice_name(text, KEYS) == ("all" if expected is None else "=".join(expected))


@pytest.mark.parametrize("text", ["eu", "", ":", "=", "region:", "region=", ":eu", "=eu", "k8s:zone:"])
def test_text_naming_no_key_and_value_is_a_422_naming_cohort(text: str) -> None:
    with pytest.raises(InvalidInput) as raised:
        parse_slice(text, KEYS)
    assert raised.value.field == "cohort"
