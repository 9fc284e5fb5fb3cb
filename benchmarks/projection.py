"""What the owning monitor's embedding projection costs: time and peak memory of PCA and UMAP, fit and transform.

    .venv/bin/python -m benchmarks.projection [--sizes 2000,10000] [--cache-dir DIR]

A projection of N points is N/2 reference embeddings (fitted on) and N/2 production embeddings (transformed
into the reference's frame), as the monitor computes it (``monitors.fleet.projection``). The embeddings are the
digits CNN's (64 values), of the bundled digit images with light pixel noise so that every row is distinct
(the dataset has 1,797 images). PCA runs here, UMAP in one spawned process like the monitor's worker: its first
fit and transform JIT-compile numba code, so each is run twice: ``first`` includes the compilation (again for
NN-descent, which UMAP uses from 4,096 reference rows), ``again`` is what every later refresh costs.

Peak memory is the largest growth of the process's resident set during a step (sampled every 5 ms), over
what it held when the step started; ``rss`` is the process's whole resident set at the end of the step.
Also printed: the size of the published JSON and the time to build it (the owner does it in a thread), both as
pydantic points (how it was built before) and as published (plain values dumped with orjson).
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import partial
from multiprocessing import get_context
from pathlib import Path
from typing import Any

if not __package__:
    sys.exit("run it as a module from the repository root: .venv/bin/python -m benchmarks.projection")

import numpy as np
from numpy.typing import NDArray

from monitors.fleet.projection import PcaFrame, UmapSettings, fit_umap
from monitors.fleet.projection_body import Finite, Header, Placed, projection_json
from monitors.fleet.projection_sample import ReferenceSample, Seen
from monitors.fleet.views import Projection, ProjectionPoint

_PAGE = os.sysconf("SC_PAGE_SIZE")


@dataclass(frozen=True)
class Step:
    name: str
    seconds: float
    peak_mib: float
    rss_mib: float


def _rss() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * _PAGE


def measure(name: str, work: Callable[[], Any]) -> tuple[Step, Any]:
    """Run ``work``, sampling the resident set in a thread; the step's time and its peak growth."""
    start_rss, peak, done = _rss(), [0], threading.Event()

    def sample() -> None:
        while not done.wait(0.005):
            peak[0] = max(peak[0], _rss())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.perf_counter()
    result = work()
    seconds = time.perf_counter() - started
    done.set()
    sampler.join()
    end_rss = _rss()
    grown = max(peak[0], end_rss) - start_rss
    return Step(name, seconds, max(grown, 0) / 2**20, end_rss / 2**20), result


def digits_embeddings(rows: int, cache_dir: Path, seed: int = 0) -> NDArray[np.float32]:
    """``rows`` embeddings of the digits CNN: bundled images drawn with replacement, plus pixel noise (sd 0.05)."""
    import torch

    from demo.models import digits

    torch.set_num_threads(1)
    module = torch.jit.load(str(digits.ensure_digits_model(cache_dir)))  # type: ignore[no-untyped-call]
    images = digits.load_digits_split().test.features
    everything = np.concatenate([images, digits.load_digits_split().train.features])
    rng = np.random.default_rng(seed)
    chosen = everything[rng.integers(0, len(everything), size=rows)]
    noisy = np.clip(chosen + rng.normal(0.0, 0.05, size=chosen.shape), 0.0, 1.0).astype(np.float32)
    with torch.no_grad():
        return np.asarray(module.embed(torch.from_numpy(noisy)).numpy(), dtype=np.float32)


def umap_steps(reference: NDArray[np.float32], production: NDArray[np.float32], first: bool) -> list[Step]:
    """Runs in the spawned worker: fit and transform twice; the first calls of a process (or of a neighbour
    search path: exact under 4,096 rows, NN-descent above) include numba's compilation, the second do not."""
    steps: list[Step] = []
    if first:
        step, _ = measure("umap import", lambda: __import__("umap"))
        steps.append(step)
    for run in ("first", "again"):
        step, model = measure(f"umap fit ({run})", lambda: fit_umap(reference, UmapSettings()))
        steps.append(step)
        step, _ = measure(f"umap transform ({run})", partial(model.transform, production))
        steps.append(step)
    return steps


def pca_steps(reference: NDArray[np.float32], production: NDArray[np.float32]) -> list[Step]:
    fit, frame = measure("pca fit", lambda: PcaFrame.fit(reference))
    transform, placed = measure("pca transform", lambda: (frame.transform(reference), frame.transform(production)))
    pydantic, _ = measure("build + dump JSON (pydantic points)", lambda: _json(placed[0], placed[1]))
    header, seen, finite = _published_parts(reference, production, placed)
    explained = [n % 10 == 0 for n in range(len(seen))]
    published, body = measure(
        "build + dump JSON (as published, orjson)", lambda: projection_json(header, seen, finite, explained, {})
    )
    Projection.model_validate_json(body)  # what the sidecars read
    print(f"    published JSON: {len(body) / 2**20:.2f} MiB for {len(reference) + len(production)} points")
    return [fit, transform, pydantic, published]


def _published_parts(
    reference: NDArray[np.float32], production: NDArray[np.float32], placed: tuple[NDArray[Any], NDArray[Any]]
) -> tuple[Header, list[Seen], Finite]:
    """What the owner hands :func:`projection_json`: the same points, as :mod:`monitors.fleet.projection_views`
    builds them."""
    sample = ReferenceSample(
        id="r", embeddings=reference, predicted=np.full(len(reference), 3), confidence=None, margin=None
    )
    seen = [Seen(row, 1.7e9 + n, 3, {"region": "eu"}, f"r-{n}", "v1", n + 1) for n, row in enumerate(production)]
    finite = Finite.of(Placed(placed[0], placed[1], 0.0))
    return Header("digits", "pca", sample, "owner", 0), seen, finite


def _json(reference: NDArray[np.float64], production: NDArray[np.float64]) -> str:
    points = [ProjectionPoint(x=x, y=y, source="reference", predicted=3) for x, y in reference.tolist()]
    points += [
        ProjectionPoint(
            x=x, y=y, source="production", time=1.7e9 + n, predicted=3, cohort={"region": "eu"}, request_id=f"r-{n}"
        )
        for n, (x, y) in enumerate(production.tolist())
    ]
    return Projection(
        model="digits",
        method="pca",
        computed_at=0.0,
        seconds=0.0,
        reference_count=len(reference),
        production_count=len(production),
        points=tuple(points),
    ).model_dump_json()


def _print(steps: list[Step]) -> None:
    for step in steps:
        print(
            f"    {step.name:<40} {step.seconds:8.3f} s   peak +{step.peak_mib:7.1f} MiB   rss {step.rss_mib:7.1f} MiB"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="2000,10000", help="total points (half reference, half production)")
    parser.add_argument("--cache-dir", type=Path, default=None, help="where the digits CNN is trained once")
    args = parser.parse_args()
    sizes = [int(size) for size in args.sizes.split(",")]
    cache_dir = args.cache_dir or Path(tempfile.mkdtemp(prefix="vai-projection-"))
    print(f"digits CNN embeddings (64 values); {os.cpu_count()} CPUs; one math thread", flush=True)
    embeddings = digits_embeddings(max(sizes), cache_dir)
    context = get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=context, initializer=_one_thread) as worker:
        for n, size in enumerate(sizes):
            half = size // 2
            reference, production = embeddings[:half], embeddings[half : 2 * half]
            print(f"\n{size} points ({half} reference + {half} production)", flush=True)
            _print(pca_steps(reference, production))
            _print(worker.submit(umap_steps, reference, production, n == 0).result())
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(f"\nUMAP worker process: peak resident set {peak:.0f} MiB over the whole run", flush=True)


def _one_thread() -> None:
    for name in ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[name] = "1"


if __name__ == "__main__":
    main()
