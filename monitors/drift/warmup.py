"""The reference a drift monitor collects from traffic when none was given (its ``warming_up`` phase).

The first ``reference_events`` events become the reference. Once an event with an embedding has come, the
reference holds only events with an embedding of that first width (those collected before it, without one, are
let go): a batch without any cannot leave the model without embedding detectors. The rows collected so far can be
read past a mark (:meth:`Warmup.rows_since`), so that an owner stores them as they grow, and a fresh warm-up can
resume another owner's (:meth:`Warmup.resume`); the epoch changes whenever the collected rows are let go.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from prometheus_client import Counter

from monitors.drift.base import DriftBatch
from monitors.drift.metrics import Tally
from monitors.drift.reference import Reference
from monitors.drift.tumbling import concat, head, tail

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class WarmupMark:
    """How far a copy of a warm-up goes: its first ``rows`` rows, of the warm-up numbered ``epoch`` (the number
    changes whenever the monitor lets its collected rows go and collects afresh)."""

    epoch: int
    rows: int


@dataclass(frozen=True, slots=True)
class WarmupRows:
    """Rows of the current warm-up (numbered ``epoch``) from row ``start`` on; ``batch`` is ``None`` when none
    was collected past it."""

    epoch: int
    start: int
    batch: DriftBatch | None


class Warmup:
    """One model's warm-up in progress. Not thread-safe: its :class:`~monitors.drift.monitor.DriftMonitor`'s lock
    guards it."""

    def __init__(self, model: str, wanted: int) -> None:
        self._model = model
        self._wanted = wanted
        self._chunks: list[DriftBatch] = []
        self.count = 0
        """Events collected so far."""
        self.width: int | None = None
        """Embedding width of the warm-up's first event that had one: the reference's."""
        self.epoch = 0
        """Changes whenever the collected rows are let go (see :class:`WarmupMark`)."""
        self._width_unconfirmed = False
        """Rows resumed from another owner's copy whose width the feed has not shown yet (:meth:`resume`)."""

    def take(self, batch: DriftBatch, skipped: Counter | Tally) -> Reference | None:
        """Collect ``batch`` (what is not collected is counted in ``skipped``); the reference once it is complete,
        after which the collected chunks are let go (the reference holds them)."""
        if self._width_unconfirmed and batch.sent_without < len(batch):
            self._width_unconfirmed = False
            if batch.embeddings is None:  # every embedding of another width than the resumed rows' (the batch's)
                log.warning(
                    "model %s: the resumed warm-up's %d-d embeddings are not the feed's; collecting a fresh one",
                    self._model,
                    self.width,
                )
                self.restart()
                skipped.inc(len(batch))  # their embeddings were left out of the batch: the next one sets the width
                return None
        part = batch.embedded_part()
        if part is not None and part.embeddings is not None and self.width is None:
            skipped.inc(self.count)  # collected without embeddings: a reference with them replaces them
            self.restart()
            self.width = int(part.embeddings.shape[1])
        if self.width is not None:
            if part is None or part.embeddings is None or part.embeddings.shape[1] != self.width:
                skipped.inc(len(batch))
                return None
            skipped.inc(len(batch) - len(part))
            batch = part
        wanted = self._wanted - self.count
        self._chunks.append(head(batch, wanted))
        self.count += min(wanted, len(batch))
        if len(batch) > wanted:
            skipped.inc(len(batch) - wanted)
        if self.count < self._wanted:
            return None
        reference = Reference.from_batch(concat(self._chunks))
        self._chunks = []
        return reference

    def resume(self, rows: DriftBatch, skipped: Counter) -> Reference | None:
        """Take ``rows`` (another owner's warm-up, at most ``reference_events``, every one with an embedding of one
        width or none with one) as collected so far, in a fresh warm-up. Their width is checked against the first
        records that come with an embedding: another width lets them go."""
        if self.count:
            raise RuntimeError(f"model {self._model}: a warm-up resumes only in a fresh monitor")
        if len(rows) > self._wanted:
            raise ValueError(f"{len(rows)} rows, more than reference_events={self._wanted}")
        reference = self.take(rows, skipped)
        self._width_unconfirmed = self.width is not None and reference is None
        return reference

    def chunks(self) -> list[DriftBatch]:
        """The batches collected so far, in order (a copy of the list; read them with :func:`rows_past`)."""
        return list(self._chunks)

    def restart(self) -> None:
        """Let the collected rows go: a fresh warm-up, numbered anew."""
        self._chunks, self.count, self.width = [], 0, None
        self.epoch += 1
        self._width_unconfirmed = False


def rows_past(chunks: list[DriftBatch], start: int) -> DriftBatch | None:
    """The rows of ``chunks`` (batches of whole events, in order) past the first ``start``; ``None`` when none."""
    skip = start
    for index, chunk in enumerate(chunks):
        if len(chunk) > skip:
            return tail(concat(chunks[index:]), skip)
        skip -= len(chunk)
    return None
