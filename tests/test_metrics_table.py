"""The README's metric tables (Metrics) name every metric the product declares, and only those."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("service", "sampler", "monitors", "attribution_workers", "common")
NOT_METRICS = {"vai_sidecar"}
"""``vai_`` string literals that name no metric (the sidecar's logger)."""


def _declared() -> set[str]:
    names: set[str] = set()
    for package in PACKAGES:
        for source in (REPO / package).rglob("*.py"):
            names |= set(re.findall(r'"(vai_[a-z0-9_]+)"', source.read_text(encoding="utf-8")))
    return {_family(name) for name in names - NOT_METRICS}


def _documented() -> set[str]:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text[text.index("\n## Metrics") : text.index("\n## Dependencies and why")]
    names: set[str] = set()
    for row in re.findall(r"^\| (`vai_[^|]+)\|", section, flags=re.MULTILINE):
        names |= set(re.findall(r"`(vai_[a-z0-9_]+)`", row))
    return {_family(name) for name in names}


def _family(name: str) -> str:
    """prometheus_client declares a counter with or without ``_total`` and exports it with it."""
    return name.removesuffix("_total")


def test_every_declared_metric_is_documented_and_every_documented_one_declared() -> None:
    declared, documented = _declared(), _documented()
    assert len(declared) > 50
    assert declared - documented == set(), "metrics the README's tables leave out"
    assert documented - declared == set(), "metrics in the README that nothing declares"
