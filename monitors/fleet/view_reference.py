"""The reference a model's overview views compare production with, held between refreshes: the uploaded one
(re-read only when its id changes), else the traffic standing in for one, adopted from the previous owner if it
shared one, else the first traffic this owner saw (then shared in Redis for the next owner)."""

from __future__ import annotations

import asyncio
import logging

from redis.asyncio import Redis

from common import keys
from monitors.fleet.lease import Leases
from monitors.fleet.projection_sample import ReferenceSample, StoredTraffic, ViewSamples
from monitors.fleet.references import ReferenceStore
from monitors.fleet.settings import MonitorSettings

log = logging.getLogger(__name__)


class ViewReference:
    """The reference of one owned model's views, and the traffic sample shared in its stead."""

    def __init__(
        self,
        model: str,
        *,
        redis: Redis,
        leases: Leases,
        references: ReferenceStore,
        settings: MonitorSettings,
        samples: ViewSamples,
    ) -> None:
        self.model = model
        self._redis = redis
        self._leases = leases
        self._references = references
        self._settings = settings
        self._samples = samples
        self._reference: ReferenceSample | None = None
        self._adoption_tried = False
        self._shared_traffic_id: str | None = None

    async def get(self) -> ReferenceSample | None:
        """The uploaded reference (re-read when its id changes), else the traffic standing in for one: adopted
        from the previous owner if it shared one, else the first traffic this owner saw (then shared)."""
        latest = await self._references.latest_id(self.model)
        if latest is None:
            return await self._traffic_reference()
        if self._reference is None or self._reference.id != latest:
            stored = await self._references.get(self.model)
            if stored is None:
                return await self._traffic_reference()
            self._reference = await asyncio.to_thread(
                ReferenceSample.of,
                stored,
                max_rows=self._settings.projection_max_reference,
                seed=self._settings.projection_seed,
            )
        return self._reference

    async def _traffic_reference(self) -> ReferenceSample | None:
        if not self._adoption_tried:
            body = await self._redis.get(keys.projection_traffic_reference(self.model))
            self._adoption_tried = True  # only once Redis answered: a failed read is tried again next refresh
            if body is not None:
                await self._adopt(body)
        sample = self._samples.traffic_reference(self._leases.owner)
        if sample is not None and sample.id != self._shared_traffic_id:
            body = await asyncio.to_thread(lambda: StoredTraffic.of(sample).model_dump_json())
            if await self._leases.set_if_owner(self.model, {keys.projection_traffic_reference(self.model): body}):
                self._shared_traffic_id = sample.id
        return sample

    async def _adopt(self, body: bytes | str) -> None:
        try:
            sample = await asyncio.to_thread(lambda: StoredTraffic.model_validate_json(body).sample())
        except ValueError as error:  # pydantic's ValidationError included: another release's record
            log.warning("ignoring the unreadable traffic reference of %s: %s", self.model, error)
            return
        self._samples.adopt(sample)
        self._shared_traffic_id = sample.id
        log.info("projection reference of %s adopted from its previous owner (%s)", self.model, sample.id)
