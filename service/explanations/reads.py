"""What the explanation read routes answer, without HTTP: the filtered list as JSON, the per-method trust report,
and whether the fleet knows a model (a 404 naming ``model`` when it does not).

CPU work that grows with the page runs in a worker thread: parsing the stored summaries (in the store),
serialising a list page, aggregating the trust report. On the event loop a 500-item page took 9–20 ms to write.
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Mapping

from pydantic_core import to_json

from common.errors import InvalidInput, NotFound
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
    ``cohort_keys``: its ``VAI_COHORT_KEYS``, the cohort keys indexed, which also tell where a ``key:value`` filter
    whose key holds ``:`` splits; ``max_cohort_values``: its ``VAI_MAX_COHORT_VALUES``."""

    def __init__(
        self,
        store: ExplanationStore,
        *,
        known_here: Collection[str],
        cohort_keys: Collection[str],
        max_cohort_values: int,
    ) -> None:
        self._store = store
        self._known_here = known_here
        self._cohort_keys = cohort_keys
        self._max_cohort_values = max_cohort_values

    async def listing(self, params: Mapping[str, str]) -> bytes:
        """The page ``params`` ask for, as the JSON of :class:`ExplanationListPublic`. 422 naming a bad parameter;
        404 naming ``model`` when nothing matches and the fleet does not know the model (a typo is not "no
        explanations yet"); an empty page for a known model without (matching) explanations. A cohort filter on a
        key that is not indexed (not in ``VAI_COHORT_KEYS``), or with an empty page on a value the fleet refused (so
        never indexed: ``sampler.explanations``), is a 422 naming ``cohort``: "nothing matches" could be untrue."""
        models = [] if params.get("model") else await self._store.models()
        query = parse_query(params, models=models, cohort_keys=self._cohort_keys)
        if query.cohort is not None and query.cohort[0] not in self._cohort_keys:
            await self.require_known(query.model)  # a typo of the model is named first, as for every filter
            raise InvalidInput(
                f"cohort: the key {query.cohort[0]!r} is not indexed: explanations are listed by the cohort keys of "
                f"VAI_COHORT_KEYS only ({', '.join(map(repr, self._cohort_keys)) or 'none set'})",
                field="cohort",
            )
        page = await self._store.query(query)
        if not page.items:
            await self.require_known(query.model)
            if query.cohort is not None and page.complete:
                await self._require_admitted(query.model, *query.cohort)
        if len(page.items) <= SERIALISED_ON_THE_LOOP:
            return _listing_json(page)
        return await asyncio.to_thread(_listing_json, page)

    async def _require_admitted(self, model: str, key: str, value: str) -> None:
        """Return unless the fleet refused ``value`` of ``model``'s ``key`` (it admitted ``VAI_MAX_COHORT_VALUES``
        others), so never indexed it; else the 422 naming ``cohort``."""
        admitted, size = await self._store.cohort_admitted(model, key, value)
        if admitted or size < self._max_cohort_values:
            return
        raise InvalidInput(
            f"cohort: the value {value!r} of {key!r} is not indexed: the fleet admitted VAI_MAX_COHORT_VALUES="
            f"{self._max_cohort_values} other values of it for {model!r} first (it counts as __other__); list without "
            "this filter",
            field="cohort",
        )

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
