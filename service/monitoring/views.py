"""The overview views the owning monitor publishes (projections, distributions), as the sidecar reads them, and the
error that says why one is not there. No HTTP here."""

from __future__ import annotations

from dataclasses import dataclass

from common.errors import Conflict, InvalidInput, NotFound, Unavailable, VaiError
from monitors.fleet.views import ProjectionStatus


def unknown_model(model: str) -> NotFound:
    """A model no monitor knows: a typo in a name is not "no data yet"."""
    return NotFound(
        f"model: {model!r} is unknown to the monitors (no events or reference published for it)", field="model"
    )


def no_monitor(model: str, what: str) -> NotFound:
    """A view of a model no monitor owns or is alive to take: nothing will publish it until one runs, so a 503
    (ask again) would be polled for ever. Said as ``/drift`` says it."""
    return NotFound(
        f"model: no monitor has published {what} of {model!r}, and none is running that would: no "
        "`vai-sidecar monitor` owns the model or is alive on this Redis to take it",
        field="model",
    )


@dataclass(frozen=True, slots=True)
class PublishedView:
    """A view as the owning monitor published it (``body`` is its JSON), or why there is none."""

    body: bytes | None
    monitored: bool
    """Whether the model is known to the monitors (some replica published its records or a reference)."""
    status: ProjectionStatus | None = None
    """The owner's projection methods and errors (projections only)."""
    watched: bool = True
    """Whether a monitor owns the model (holds its lease) or is alive to take it: a view missing now is on its way.
    Else none will come until a ``vai-sidecar monitor`` runs (an owner's status left in Redis says nothing then)."""

    def projection_current(self, method: str) -> bool:
        """Whether a ``body`` published by ``method`` is current: one left from before the method was blocked or
        put back to waiting is not."""
        return self.status is None or (method not in self.status.blocked and method not in self.status.waiting)

    def projection_missing(self, model: str, method: str) -> VaiError:
        """Why there is no current projection of ``model`` by ``method``, as the error to answer."""
        if not self.monitored:
            return unknown_model(model)
        if not self.watched:
            return no_monitor(model, f"a {method} projection")
        status = self.status
        if status is not None and method not in status.methods:
            enabled = ", ".join(status.methods) or "none"
            return InvalidInput(
                f"method: {method} is not computed by this fleet's monitors (VAI_PROJECTION_METHODS: {enabled})",
                field="method",
            )
        if status is not None and method in status.blocked:
            return Conflict(f"method: no {method} projection of {model!r}: {status.blocked[method]}", field="method")
        if status is not None and method in status.waiting:
            return Unavailable(f"no {method} projection of {model!r} yet: {status.waiting[method]}", retry_after_s=10)
        error = None if status is None else status.errors.get(method)
        if error is not None:
            return Unavailable(
                f"method: the {method} projection failed ({error}); retried when traffic changes", retry_after_s=30
            )
        wait_s = 10 if method == "umap" else 2
        return Unavailable(
            f"the {method} projection of {model!r} is being computed by its monitor; try again in {wait_s} s",
            retry_after_s=wait_s,
        )

    def distributions_missing(self, model: str) -> VaiError:
        """Why there are no published distributions of ``model``, as the error to answer."""
        if not self.monitored:
            return unknown_model(model)
        if not self.watched:
            return no_monitor(model, "the distributions")
        return Unavailable(
            f"the distributions of {model!r} are being computed by its monitor; try again", retry_after_s=5
        )
