"""The models a sidecar knows, as its ingest admits their events: a slot per model (``VAI_MAX_MODELS``) with its
bounded version labels, each model's embedding width (its events', or an uploaded reference's until an event has
it), and its recent request ids (a duplicate is refused). No HTTP here.

A model's version labels are at most ``VAI_MAX_VERSIONS_PER_MODEL`` at a time, and a version idle for
:data:`VERSION_IDLE_S` gives its slot up (:meth:`KnownModels.versions_let_go` says which, so that their series are
removed): the newest version takes it, and ``__other__`` is only what is beyond the cap at one time."""

from __future__ import annotations

import contextlib
import time
from collections import OrderedDict
from collections.abc import Iterator

from common.cardinality import OTHER, ReleasableLabel
from common.errors import InvalidInput, TooManyModels
from service.events.errors import FieldError
from service.settings import SidecarSettings

VERSION_IDLE_S = 3600.0
"""A version with no event for this long gives its label slot up, and its series are removed. The monitor's default
calibration window (``VAI_CALIBRATION_WINDOW_S``): a version is exported here as long as its labelled figures can
still be in the monitor's window, and an hour without one event is a version retired, not a quiet one (a version
that comes back is admitted anew, its counters starting again from 0, as after a restart)."""
VERSION_SWEEP_S = 60.0
"""How often idle versions are looked for at all (when no new version is waiting for a slot): a request reads the
clock once, and a version's series outlive its idle time by at most this much."""


def _monotonic() -> float:
    return time.monotonic()  # looked up at each call: a test moves this module's clock alone


class KnownModels:
    """What the checks that depend on earlier events read and record, per model."""

    def __init__(self, settings: SidecarSettings) -> None:
        self._settings = settings
        self._models: dict[str, ReleasableLabel] = {}
        """Known models, each with the bounded set of its version labels."""
        self.embedding_dims: dict[str, int] = {}
        self._width_by_upload: set[str] = set()
        """Models whose ``embedding_dims`` an uploaded reference set and no event has had since: a later upload
        may still change it (see :meth:`embedding_width_claimed`)."""
        self._let_go: list[tuple[str, str]] = []
        """(model, version) whose slot was given up since :meth:`versions_let_go` last said."""
        self._next_sweep_s = _monotonic() + VERSION_SWEEP_S
        self._recent: dict[str, OrderedDict[str, None]] = {}
        """Recent request ids per model, oldest first. An OrderedDict: evicting a plain dict's first key
        (``next(iter(d))``) walks over every key deleted before it, ~8 µs per event at 10,000 ids."""

    @property
    def models(self) -> list[str]:
        return sorted(self._models)

    @property
    def known_models(self) -> set[str]:
        return set(self._models)

    def register(self, model: str) -> None:
        """Know ``model`` before any event of it (e.g. a drift reference); raises ``TooManyModels`` past the cap."""
        if model not in self._models:
            if (refused := self._no_slot()) is not None:
                raise TooManyModels(f"model: {refused}")
            self._models[model] = ReleasableLabel(self._settings.max_versions_per_model, clock=_monotonic)

    def _no_slot(self) -> str | None:
        """Why one more model is refused, or ``None`` while there are fewer than ``VAI_MAX_MODELS``."""
        if len(self._models) < self._settings.max_models:
            return None
        return f"unknown model and already {self._settings.max_models} models (raise VAI_MAX_MODELS)"

    def version_label(self, model: str, version: str) -> str:
        """The label of ``version`` among the known ``model``'s, taken now if there is room, or the slot of a version
        idle for :data:`VERSION_IDLE_S` (see :meth:`versions_let_go`). Call it once per distinct version of a
        request: it marks the version used now."""
        versions = self._models[model]
        label = versions(version)
        if label == OTHER and version != OTHER:  # every slot taken: one idle long enough is this version's
            let_go = versions.release(unused_since=versions.now() - VERSION_IDLE_S)
            if let_go:
                self._let_go += [(model, gone) for gone in let_go]
                label = versions(version)
        return label

    def versions_let_go(self) -> list[tuple[str, str]]:
        """The (model, version) pairs that gave their slot up since the last call, idle for
        :data:`VERSION_IDLE_S`: their series are to be removed before anything is counted again. Looks for idle
        versions every :data:`VERSION_SWEEP_S`; otherwise one clock read (call it once per request)."""
        now = _monotonic()
        if now >= self._next_sweep_s:
            self._next_sweep_s = now + VERSION_SWEEP_S
            for model, versions in self._models.items():
                self._let_go += [(model, gone) for gone in versions.release(unused_since=now - VERSION_IDLE_S)]
        if not self._let_go:
            return []
        let_go, self._let_go = self._let_go, []
        return let_go

    @contextlib.contextmanager
    def embedding_width_claimed(self, model: str, dims: int) -> Iterator[None]:
        """Hold ``model``'s embedding width at ``dims`` for an uploaded reference of that width: ``InvalidInput``
        when its events already have another; events of another width arriving meanwhile are refused rather than
        stored beside a reference they do not match. A width that only an earlier upload set (no event of it since)
        is replaced: that upload may have been the mistake. Put back as it was if the upload fails and no event
        has had the claimed width meanwhile."""
        if dims > self._settings.max_embedding_dims:
            raise InvalidInput(
                f"embeddings: {dims} values per row, more than {self._settings.max_embedding_dims} "
                "(VAI_MAX_EMBEDDING_DIMS)",
                field="embeddings",
            )
        known = self.embedding_dims.get(model)
        by_upload = model in self._width_by_upload
        if known is not None and not by_upload:
            if known != dims:
                raise InvalidInput(
                    f"embeddings: {dims} values per row, but this model's events have {known}", field="embeddings"
                )
            yield  # the events' width: nothing to claim or give back
            return
        self.embedding_dims[model] = dims
        self._width_by_upload.add(model)
        try:
            yield
        except BaseException:
            if model in self._width_by_upload:  # no event took the claimed width meanwhile
                if known is None:
                    self.embedding_dims.pop(model, None)
                    self._width_by_upload.discard(model)
                else:
                    self.embedding_dims[model] = known  # the earlier upload's, still stored
            raise

    def admit(self, model: str, request_id: str, dims: int) -> None:
        """Checks that depend on what came before (and the request id's text, checked here for both readers);
        records the event once it passes them all."""
        if not request_id.isprintable():  # a newline or NUL in an id breaks logs, keys and the viewer's links
            raise FieldError("request_id", "must be printable text: no control characters")
        if model not in self._models:  # the cap's error, before any other check: this event's rejection
            if (refused := self._no_slot()) is not None:
                raise FieldError("model", refused, reason="too_many_models")
            self.register(model)
        if dims > self._settings.max_embedding_dims:
            raise FieldError(
                "embedding",
                f"{dims} values: more than {self._settings.max_embedding_dims} (VAI_MAX_EMBEDDING_DIMS)",
                reason="embedding_length",
            )
        known_dims = self.embedding_dims.get(model)
        if dims and known_dims is not None and known_dims != dims:
            raise FieldError(
                "embedding", f"expected {known_dims} values for model {model!r}, got {dims}", reason="embedding_length"
            )
        recent = self._recent.get(model)
        if recent is None:
            recent = self._recent[model] = OrderedDict()
        if request_id in recent:
            raise FieldError("request_id", f"duplicate of a recent event of model {model!r}", reason="duplicate")
        window = self._settings.dedupe_window
        if window:
            recent[request_id] = None
            if len(recent) > window:
                recent.popitem(last=False)
        if dims and known_dims is None:
            self.embedding_dims[model] = dims
        elif dims and model in self._width_by_upload:
            self._width_by_upload.discard(model)  # an event of the uploaded width: now the events' width too
