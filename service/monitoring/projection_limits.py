"""Published projections cut to a ``limit`` of points, remembered per body: the viewer asks for the same cut on
every refresh, and reading a body of several thousand points takes 17-35 ms of a thread (and of the GIL that
ingest shares)."""

from __future__ import annotations

import hashlib
import logging
import threading
from collections import OrderedDict

from pydantic import ValidationError

from common.errors import Unavailable
from monitors.fleet.views import Projection

log = logging.getLogger(__name__)


class ProjectionLimits:
    """The last ``size`` cuts, keyed by the published body's digest and the limit (a republished body is another
    key, so nothing is ever stale). Thread-safe: routes call :meth:`limited` from the thread pool."""

    def __init__(self, size: int = 16) -> None:
        self._size = size
        self._cuts: OrderedDict[tuple[bytes, int], bytes] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._cuts)

    def limited(self, body: bytes, limit: int, model: str) -> bytes:
        """At most ``limit`` points of ``body`` (:meth:`Projection.limited`). A body this sidecar cannot read (a
        monitor of another release, a value out of its contract) is a 503 while the owner writes it again, as the
        other views answer; it is not remembered."""
        key = (hashlib.blake2b(body, digest_size=16).digest(), limit)
        with self._lock:
            cut = self._cuts.get(key)
            if cut is not None:
                self._cuts.move_to_end(key)
                return cut
        try:
            projection = Projection.model_validate_json(body)
        except ValidationError as error:
            log.warning("projection of model %s unreadable: %s", model, error.errors(include_url=False)[:1])
            raise Unavailable(
                f"the projection of model {model!r} cannot be read now; try again", retry_after_s=5
            ) from None
        cut = projection.limited(limit).model_dump_json().encode()
        with self._lock:
            self._cuts[key] = cut
            while len(self._cuts) > self._size:
                self._cuts.popitem(last=False)
        return cut
