"""The per-method aggregate of ``GET /v1/explanations/{model}/methods``: which verdicts the trusted share is over."""

from __future__ import annotations

from sampler.verdicts import MethodTrust, Verdict, method_trust_report


def _trust(trusted: bool | None, passes_sanity: bool | None) -> dict[str, MethodTrust]:
    return {"gradcam": MethodTrust(verdict=Verdict(trusted=trusted, passes_sanity=passes_sanity))}


def test_the_trusted_share_is_over_the_verdicts_made_after_a_sanity_check() -> None:
    """Before a method's first sanity check a map can be failed on its own figures but never trusted: a failing map
    was counted (``False``) and a passing one dropped (``None``), so the share was biased low (observed: 0.33 with
    24 verdicts of which 23 came after a check)."""
    trusts = [
        _trust(False, None),  # failed on its deletion figure before any check
        _trust(False, None),
        _trust(None, None),  # passed its map parts before any check: not judged
        _trust(True, True),
        _trust(False, True),
        _trust(None, True),  # only the method was checked: nothing about the map
    ]

    (figures,) = method_trust_report("digits", trusts).methods

    assert (figures.trusted_share, figures.verdict_count, figures.failed_before_sanity) == (0.5, 2, 2)
    assert figures.sanity_checked == 3 and figures.explanations == 6


def test_no_verdict_after_a_sanity_check_leaves_the_share_unknown() -> None:
    (figures,) = method_trust_report("digits", [_trust(False, None)]).methods

    assert (figures.trusted_share, figures.verdict_count, figures.failed_before_sanity) == (None, 0, 1)
