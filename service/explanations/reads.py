"""What the explanation read routes answer, without HTTP: the filtered list as JSON, the per-method trust report,
and whether the fleet knows a model (a 404 naming ``model`` when it does not).

CPU work that grows with the page runs in a worker thread: parsing the stored summaries (in the store),
serialising a list page, aggregating the trust report. On the event loop a 500-item page took 9–20 ms to write.
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Mapping

from pydantic_core import to_json

from common.errors import NotFound
from sampler.explanation_records import SanityFigure
from sampler.explanations import ExplanationStore, ScannedPage
from sampler.verdicts import LatestSanity, MethodTrustReport, method_trust_report
from service.explanations.public import ExplanationListPublic, encode_cursor, parse_query

UNKNOWN_WHY = (
    "no event of it received by this sidecar, sampled for explanation or published to the monitors, and no reference "
    "of it"
)
UNKNOWN_MODEL = f"No such model in this fleet: {UNKNOWN_WHY}"
"""What a 404 naming ``model`` means on these routes."""

SERIALISED_ON_THE_LOOP = 16
"""Items of a list page written as JSON on the event loop at most (~10 µs each); a larger page is written in a
worker thread."""


class ExplanationReads:
    """One request's reads of the stored explanations. ``known_here``: the models this sidecar took events of;
    ``cohort_keys``: its ``VAI_COHORT_KEYS``, which tell where a ``key:value`` filter whose key holds ``:`` splits."""

    def __init__(self, store: ExplanationStore, *, known_here: Collection[str], cohort_keys: Collection[str]) -> None:
        self._store = store
        self._known_here = known_here
        self._cohort_keys = cohort_keys

    async def listing(self, params: Mapping[str, str]) -> bytes:
        """The page ``params`` ask for, as the JSON of :class:`ExplanationListPublic`. 422 naming a bad parameter;
        404 naming ``model`` when nothing matches and the fleet does not know the model (a typo is not "no
        explanations yet"); an empty page for a known model without (matching) explanations."""
        models = [] if params.get("model") else await self._store.models()
        query = parse_query(params, models=models, cohort_keys=self._cohort_keys)
        page = await self._store.query(query)
        if not page.items:
            await self.require_known(query.model)
        if len(page.items) <= SERIALISED_ON_THE_LOOP:
            return _listing_json(page)
        return await asyncio.to_thread(_listing_json, page)

    async def method_report(self, model: str, *, limit: int) -> MethodTrustReport:
        """Per method over the model's latest ``limit`` done explanations, with its latest sanity check; an empty
        report for a known model without any, a 404 naming ``model`` for one the fleet does not know."""
        summaries = await self._store.latest_done(model, limit=limit)
        figures = await self._store.sanity(model)
        if not summaries and not figures:
            await self.require_known(model)
        latest = {method: latest_sanity(figure) for method, figure in figures.items()}
        return await asyncio.to_thread(method_trust_report, model, [summary.trust for summary in summaries], latest)

    async def require_known(self, model: str) -> None:
        """Return when this sidecar took the model's events (none sampled yet, say) or the fleet knows it; else
        raise the 404 naming ``model``."""
        if model in self._known_here or await self._store.fleet_knows(model):
            return
        raise NotFound(f"model: {model!r} is unknown to this fleet ({UNKNOWN_WHY})", field="model")


def latest_sanity(figure: SanityFigure) -> LatestSanity:
    """The report's view of a stored figure: ``conclusive`` as the checking worker stored it (figures of workers
    older than the flag read conclusive: they stored none)."""
    return LatestSanity(
        similarity=figure.similarity,
        flagged=figure.flagged,
        samples=figure.samples,
        conclusive=figure.conclusive,
        checked_at=figure.checked_at,
    )


def _listing_json(page: ScannedPage) -> bytes:
    listing = ExplanationListPublic(
        items=page.items, next_cursor=encode_cursor(page.next_cursor), examined=page.examined, complete=page.complete
    )
    return to_json(listing)
