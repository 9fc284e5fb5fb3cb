"""2-D projections of embeddings in the reference's frame: PCA (numpy) and UMAP (umap-learn, in a child process).

Both are fitted on the reference sample once per reference id and only *transform* production, so a
point keeps its place between refreshes and production is drawn in the reference's coordinates.

PCA is a centred SVD (milliseconds for a few thousand rows; run in a thread). UMAP's first fit costs
seconds to tens of seconds (``import umap`` and numba's JIT included; the JIT's code is kept on disk by
:mod:`monitors.fleet.jit_cache`, so only the machine's first process pays it in full), so it runs in one spawned
worker process (:class:`ProjectionPool`) that keeps the fitted models, and never stalls the monitor's event loop,
its lease renewals or its detectors. umap is imported in that process only.

A reference neither method can be fitted on raises :class:`Unprojectable` (PCA: fewer than 2 rows; UMAP: fewer than
4 distinct rows): no traffic changes that, only a new reference does. A reference whose rows are all one point is
fitted by PCA (every reference point at the origin) and flagged (:attr:`PcaFrame.flat`). UMAP works on the distinct
rows centred on their mean and divided by their largest magnitude (:class:`UmapScale`): umap-learn's float32
distances overflow on embeddings of magnitude ~1e19 and more (1e30 made its fit fail inside numpy), and a uniform
scale and a shift leave its neighbour graph, and so the layout, as it was. A production row that lies more than
:data:`UMAP_MAX_SCALED` reference spreads away is not transformed: its coordinates are NaN, which the publisher
leaves out and counts.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import signal
import time
from collections import OrderedDict
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import numpy.typing as npt
from threadpoolctl import threadpool_limits

from monitors.fleet.jit_cache import keep_compiled

Coordinates = npt.NDArray[np.float64]
"""Shape ``(n, 2)``."""
UMAP_MIN_ROWS = 4
"""Fewest distinct reference rows UMAP is fitted on."""
UMAP_MAX_SCALED = 1e15
"""Largest magnitude of a production row, in reference spreads (:class:`UmapScale`), that UMAP transforms: the
squared distances of float32 stay far from overflow for any embedding width."""


class Unprojectable(ValueError):
    """The reference cannot be projected by the method, whatever the traffic: the message says why (a new reference
    cures it)."""


@dataclass(frozen=True, slots=True)
class PcaFrame:
    """The reference's mean and its two principal axes (rows of ``components``)."""

    mean: npt.NDArray[np.float64]
    components: npt.NDArray[np.float64]
    flat: bool = False
    """Every reference row is the same point (no variance): the axes are the embedding's first two dimensions, chosen
    by nothing in the data, and every reference point sits at the origin."""

    @classmethod
    def fit(cls, reference: npt.NDArray[np.floating[Any]]) -> PcaFrame:
        """Centred SVD; each axis's sign fixed so its largest loading is positive (as scikit-learn does)."""
        x = np.asarray(reference, dtype=np.float64)
        if x.ndim != 2 or len(x) < 2:
            raise Unprojectable(f"PCA needs at least 2 reference rows, got shape {list(x.shape)}")
        mean = x.mean(axis=0)
        centred = x - mean
        flat = not centred.any()
        components = np.zeros((2, x.shape[1]))
        if flat:  # no direction to find: the SVD of zeros would name arbitrary ones
            components[np.arange(min(2, x.shape[1])), np.arange(min(2, x.shape[1]))] = 1.0
            return cls(mean=mean, components=components, flat=True)
        _, _, vt = np.linalg.svd(centred, full_matrices=False)
        axes = vt[: min(2, len(vt))]
        signs = np.sign(axes[np.arange(len(axes)), np.abs(axes).argmax(axis=1)])
        components[: len(axes)] = axes * np.where(signs == 0, 1.0, signs)[:, None]
        return cls(mean=mean, components=components)

    def transform(self, x: npt.NDArray[np.floating[Any]]) -> Coordinates:
        if len(x) == 0:
            return np.zeros((0, 2))
        return np.asarray((np.asarray(x, dtype=np.float64) - self.mean) @ self.components.T, dtype=np.float64)


@dataclass(frozen=True, slots=True)
class UmapSettings:
    n_neighbors: int = 15
    min_dist: float = 0.1
    seed: int = 0
    cached_models: int = 8
    """Fitted models kept by the worker process (one per reference id)."""


@dataclass(frozen=True, slots=True)
class UmapResult:
    reference: Coordinates
    production: Coordinates
    fit_s: float
    transform_s: float
    cached: bool
    """Whether the reference's fitted model was reused (no fit ran)."""


@dataclass(frozen=True, slots=True)
class UmapScale:
    """The frame UMAP works in: rows minus the reference's mean, over its largest magnitude after that (float64)."""

    mean: npt.NDArray[np.float64]
    spread: float

    @classmethod
    def of(cls, reference: npt.NDArray[np.floating[Any]]) -> UmapScale:
        """From the distinct reference rows (at least two, so the spread is above 0)."""
        x = np.asarray(reference, dtype=np.float64)
        mean = x.mean(axis=0)
        spread = float(np.abs(x - mean).max())
        return cls(mean, spread if spread > 0 and np.isfinite(spread) else 1.0)

    def scaled(self, rows: npt.NDArray[np.floating[Any]]) -> npt.NDArray[np.float64]:
        return (np.asarray(rows, dtype=np.float64) - self.mean) / self.spread


_FITTED: OrderedDict[str, tuple[Any, npt.NDArray[np.intp], UmapScale]] = OrderedDict()
"""The worker process's fitted UMAP models by reference id, least recently used first, each with the map from
the reference's rows to the distinct rows it was fitted on, and the scale it was fitted in."""


def fit_umap(reference: npt.NDArray[np.float32], settings: UmapSettings) -> Any:
    """A UMAP model fitted on ``reference`` (seeded, so single-threaded and reproducible); its rows should be
    distinct (:func:`distinct_rows`) and of moderate magnitude (:class:`UmapScale`)."""
    if len(reference) < UMAP_MIN_ROWS:
        raise Unprojectable(
            f"UMAP needs at least {UMAP_MIN_ROWS} distinct reference embeddings, the reference has {len(reference)}"
        )
    import umap  # heavy (numba): only ever in the projection process or a benchmark

    keep_compiled(("umap", "pynndescent"))
    model = umap.UMAP(
        n_components=2,
        n_neighbors=min(settings.n_neighbors, len(reference) - 1),
        min_dist=settings.min_dist,
        random_state=settings.seed,
        n_jobs=1,
    )
    model.fit(np.asarray(reference, dtype=np.float32))
    return model


def umap_project(
    reference_id: str,
    reference: npt.NDArray[np.float32],
    production: npt.NDArray[np.float32],
    settings: UmapSettings,
) -> UmapResult:
    """Runs in the worker process: fit on ``reference`` unless cached under ``reference_id``; transform production.

    Both are projected as distinct rows, and every copy of a row gets its coordinates: UMAP would scatter
    identical rows (a repeated request, a blank input) into apparent structure, where PCA puts them on one point.
    Both are scaled first (:class:`UmapScale`); a production row too far out to place gets NaN coordinates.
    """
    started = time.perf_counter()
    found = _FITTED.get(reference_id)
    cached = found is not None
    if found is None:
        rows, inverse = distinct_rows(reference)
        if len(rows) < UMAP_MIN_ROWS:
            fit_umap(rows, settings)  # raises Unprojectable, before umap is imported
        scale = UmapScale.of(rows)
        found = _FITTED[reference_id] = (fit_umap(scale.scaled(rows).astype(np.float32), settings), inverse, scale)
        while len(_FITTED) > settings.cached_models:
            _FITTED.popitem(last=False)
    _FITTED.move_to_end(reference_id)
    model, reference_rows, scale = found
    fitted = time.perf_counter()
    placed = np.zeros((0, 2))
    if len(production):
        placed = _transformed(model, scale, production)
    return UmapResult(
        reference=np.asarray(model.embedding_, dtype=np.float64)[reference_rows],
        production=np.asarray(placed, dtype=np.float64),
        fit_s=fitted - started,
        transform_s=time.perf_counter() - fitted,
        cached=cached,
    )


def _transformed(model: Any, scale: UmapScale, production: npt.NDArray[np.float32]) -> Coordinates:
    """Production placed by ``model`` (distinct rows, copies share them); rows beyond reach are NaN."""
    rows, inverse = distinct_rows(production)
    scaled = scale.scaled(rows)
    near = np.abs(scaled).max(axis=1) <= UMAP_MAX_SCALED
    placed = np.full((len(rows), 2), np.nan)
    if near.any():
        placed[near] = np.asarray(model.transform(scaled[near].astype(np.float32)), dtype=np.float64)
    return placed[inverse]


def distinct_rows(rows: npt.NDArray[Any]) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.intp]]:
    """The distinct rows of ``rows`` (float32) and, for each row, the index of its distinct row."""
    found, inverse = np.unique(np.asarray(rows, dtype=np.float32), axis=0, return_inverse=True)
    return found, inverse.reshape(-1)


_LIMITS: list[Any] = []


def _limit_threads(threads: int) -> None:
    """Initializer of the worker: bounded math threads. numba reads its variable when umap is first imported;
    BLAS is already loaded with numpy (this module's import), so it is limited through threadpoolctl. It ignores
    SIGINT: Ctrl-C in a terminal reaches the whole process group, and the monitor stops the pool itself."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for name in ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[name] = str(threads)
    _LIMITS.append(threadpool_limits(limits=threads))  # kept: the limit holds for the worker's life


class ProjectionPool:
    """One spawned worker process for UMAP, started on first use, shared by every model this monitor owns."""

    def __init__(self, *, threads: int = 1, umap: UmapSettings | None = None) -> None:
        self._threads = threads
        self.umap_settings = umap or UmapSettings()
        self._executor: ProcessPoolExecutor | None = None
        self._calls: set[Future[UmapResult]] = set()
        """Calls submitted and not finished (a caller cancelled may leave one running): with none, ``close`` lets
        the worker exit by itself (a killed one leaves its queue's semaphore for the resource tracker to report)."""

    async def umap(
        self, reference_id: str, reference: npt.NDArray[np.float32], production: npt.NDArray[np.float32]
    ) -> UmapResult:
        executor = self._start()
        call = partial(umap_project, reference_id, reference, production, self.umap_settings)
        submitted = executor.submit(call)
        self._calls.add(submitted)
        submitted.add_done_callback(self._calls.discard)
        try:
            return await asyncio.wrap_future(submitted)
        except BrokenProcessPool:
            if self._executor is executor:  # not a fresh pool another model's call has started since
                self.close()  # the worker died (killed, out of memory): the next call starts a fresh one
            raise

    def _start(self) -> ProcessPoolExecutor:
        if self._executor is None:
            self._executor = ProcessPoolExecutor(
                max_workers=1,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_limit_threads,
                initargs=(self._threads,),
            )
        return self._executor

    def close(self) -> None:
        """Stop the worker now, even in the middle of a fit (a fit can take tens of seconds); an idle one is shut
        down as the pool does it, so that it exits by itself."""
        executor, self._executor = self._executor, None
        if executor is None:
            return
        if all(call.done() for call in list(self._calls)):
            executor.shutdown(wait=True, cancel_futures=True)
            return
        processes: dict[int, Any] = dict(getattr(executor, "_processes", None) or {})  # no public way to kill
        for process in processes.values():
            with contextlib.suppress(OSError, ValueError):
                process.terminate()
        executor.shutdown(wait=True, cancel_futures=True)  # returns once the pool saw its worker go
