"""Which versions of a model the monitors know, read from the owning monitor's report, and the error that says a
version is unknown. No HTTP here.

A version is known once the owning monitor has read a prediction or a label of it: its report names every version
it has seen (``QualityReport.versions``, carried over a take-over), so one seen in traffic without labels yet is
known, not a typo. Versions past ``VAI_MAX_VERSIONS_PER_MODEL`` count as ``__other__``, always known. Before the
first report, or from a monitor of an earlier release (whose report names none), any version is taken as known.
"""

from __future__ import annotations

from common.cardinality import OTHER
from common.errors import NotFound
from monitors.fleet.results import QualityReport
from service.monitoring.cohorts import listed


def check_version(model: str, version: str, report: QualityReport | None) -> None:
    """``NotFound`` naming ``version`` and the known versions unless ``report`` knows it or cannot say."""
    if report is None or report.versions is None:
        return
    named = {*report.versions, *(s.version for s in report.series), *(e.version for e in report.estimates)}
    named.update(t.version for t in report.temperature)
    named.discard(OTHER)
    if version != OTHER and version not in named:
        raise _unknown(model, version, [*sorted(named), OTHER])


def _unknown(model: str, version: str, known: list[str]) -> NotFound:
    return NotFound(
        f"version: the monitors know no version {version!r} of {model!r} (known: {listed(known)}); a version is "
        "known once the owning monitor has read a prediction of it, and versions past VAI_MAX_VERSIONS_PER_MODEL "
        "count as __other__",
        field="version",
    )
