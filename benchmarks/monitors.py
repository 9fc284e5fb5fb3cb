"""Drift-detector figures: cost per 1,000 events, calibration time, false-alarm run length, detection delay.

Run from the repository root: ``.venv/bin/python -m benchmarks.monitors`` (about two minutes on two cores).
Run as a path, this file would shadow the ``monitors`` package, hence the check below.

Embeddings are synthetic: a 16-dimensional gaussian latent mapped linearly to
``D`` dimensions plus noise and an offset; a shift moves the latent mean. torch
runs with one intra-op thread, as the drift runner should (its tensors are small).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

if not __package__:
    sys.exit("run it as a module from the repository root: .venv/bin/python -m benchmarks.monitors")

import numpy as np
import torch
from numpy.typing import NDArray

from monitors.drift.base import DriftBatch
from monitors.drift.embedding import EmbeddingDistance
from monitors.drift.online import OnlineDriftDetector
from monitors.drift.output import OutputDrift
from monitors.drift.reduction import Pca
from monitors.drift.window_tests import WindowTests

LATENT = 16
REFERENCE = 1000
EVENTS = 1000
ERT, WINDOW = 1000, 50


class Embeddings:
    def __init__(self, dim: int, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.mixing = self.rng.normal(size=(LATENT, dim)) / np.sqrt(LATENT)
        self.offset = self.rng.normal(size=dim) * 0.5

    def sample(self, n: int, shift: float = 0.0) -> NDArray[np.float32]:
        latent = self.rng.normal(size=(n, LATENT))
        latent[:, :4] += shift
        noise = self.rng.normal(size=(n, self.mixing.shape[1])) * 0.3
        embeddings: NDArray[np.float32] = (latent @ self.mixing + noise + self.offset).astype(np.float32)
        return embeddings


def timed(action: Callable[[], object]) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def batch_of(x: NDArray[np.float32], rng: np.random.Generator) -> DriftBatch:
    n = len(x)
    return DriftBatch(
        predicted=rng.integers(0, 10, n).astype(np.int64), confidence=rng.uniform(0.3, 1.0, n), embeddings=x, time_s=0.0
    )


def cost_row(dim: int, pca_components: int | None) -> str:
    data = Embeddings(dim, seed=dim)
    rng = np.random.default_rng(0)
    reference = data.sample(2 * REFERENCE)
    pca = None if pca_components is None else Pca.fit(reference[:REFERENCE], n_components=pca_components)
    detector_ref = reference[REFERENCE:] if pca is None else pca.transform(reference[REFERENCE:])
    holder: list[OnlineDriftDetector] = []
    calibration_s = timed(
        lambda: holder.append(
            OnlineDriftDetector.calibrate(
                detector_ref, method="mmd", ert=ERT, window_size=WINDOW, n_bootstraps=10 * ERT
            )
        )
    )
    online = holder[0]
    windows = WindowTests(detector_ref, window_events=500, p_value=0.05, n_permutations=100)
    distance = EmbeddingDistance.fit(reference, window_events=500, p_value=0.05)
    outputs = OutputDrift.fit(
        predicted=rng.integers(0, 10, REFERENCE).astype(np.int64),
        confidence=rng.uniform(0.3, 1.0, REFERENCE),
        window_events=500,
        p_value=0.05,
    )
    x = data.sample(EVENTS)
    reduced = x if pca is None else pca.transform(x)
    batch, reduced_batch = batch_of(x, rng), batch_of(reduced, rng)
    costs = {
        "pca": 0.0 if pca is None else timed(lambda: pca.transform(x)),
        "online": timed(lambda: online.update(reduced_batch)),
        "window": timed(lambda: windows.update(reduced_batch)),
        "distance": timed(lambda: distance.update(batch)),
        "output": timed(lambda: outputs.update(batch)),
    }
    parts = "  ".join(f"{name} {1000 * s:7.1f}" for name, s in costs.items())
    label = f"PCA {pca_components}" if pca_components else "no PCA"
    total_ms = 1000 * sum(costs.values())
    return f"D={dim:4d} {label:7s} | {parts}  | total {total_ms:7.1f} ms | calibration {calibration_s:5.1f} s"


def run_lengths(
    detector: OnlineDriftDetector, sample: Callable[[int], NDArray[np.float32]], runs: int, cap: int
) -> list[int]:
    lengths = []
    for _ in range(runs):
        detector.reset()
        scores, thresholds = detector.scores(sample(cap))
        hits = np.nonzero(scores > thresholds)[0]
        lengths.append(int(hits[0]) + 1 if hits.size else cap)
    return lengths


def pipeline(dim: int, ert: int, window: int) -> tuple[Embeddings, Pca, OnlineDriftDetector]:
    data = Embeddings(dim, seed=7)
    reference = data.sample(2 * REFERENCE)
    pca = Pca.fit(reference[:REFERENCE], n_components=32)
    detector = OnlineDriftDetector.calibrate(
        pca.transform(reference[REFERENCE:]), method="mmd", ert=ert, window_size=window, n_bootstraps=10 * ert
    )
    return data, pca, detector


def false_alarms(ert: int, window: int, runs: int) -> str:
    data, pca, detector = pipeline(128, ert, window)
    cap = 4 * ert
    lengths = run_lengths(detector, lambda n: pca.transform(data.sample(n)), runs, cap)
    censored = sum(length == cap for length in lengths)
    return (
        f"ERT {ert:5d} window {window:3d}: mean run {np.mean(lengths):7.1f}  median {np.median(lengths):6.0f}  "
        f"({runs} runs, {censored} reached the {cap}-event cap and count as {cap})"
    )


def detection_delay(shift: float, trials: int, detector: OnlineDriftDetector, data: Embeddings, pca: Pca) -> str:
    delays = []
    for _ in range(trials):
        detector.reset()
        detector.scores(pca.transform(data.sample(2 * WINDOW)))
        scores, thresholds = detector.scores(pca.transform(data.sample(10 * WINDOW, shift=shift)))
        hits = np.nonzero(scores > thresholds)[0]
        delays.append(int(hits[0]) + 1 if hits.size else None)
    found = [d for d in delays if d is not None]
    summary = f"median {np.median(found):5.0f}  max {max(found):5d}" if found else "never"
    return f"latent mean shift {shift:.2f} sd: events to alarm {summary}  (missed {len(delays) - len(found)}/{trials})"


def lsdd_and_loop_calibration() -> str:
    data = Embeddings(128, seed=3)
    x = Pca.fit(data.sample(REFERENCE), n_components=32).transform(data.sample(REFERENCE))
    ert, window = 200, 20
    lsdd_s = timed(
        lambda: OnlineDriftDetector.calibrate(x, method="lsdd", ert=ert, window_size=window, n_bootstraps=10 * ert)
    )
    mmd_s = timed(
        lambda: OnlineDriftDetector.calibrate(x, method="mmd", ert=ert, window_size=window, n_bootstraps=10 * ert)
    )
    setting = f"ERT {ert}, window {window}, {10 * ert} bootstraps, 1000 x 32 reference"
    return f"{setting}: MMD (vectorised) {mmd_s:.1f} s, LSDD (alibi loop) {lsdd_s:.1f} s"


def main() -> None:
    torch.set_num_threads(1)
    started = time.perf_counter()
    print(
        f"Cost per {EVENTS} events (ms), reference {REFERENCE}, online MMD ERT {ERT} window {WINDOW}, 500-event windows"
    )
    for dim in (128, 768):
        for components in (32, None):
            print("  " + cost_row(dim, components), flush=True)
    print("Calibration")
    print("  " + lsdd_and_loop_calibration(), flush=True)
    print("False-alarm run length on clean data (D=128 -> PCA 32), events")
    print("  " + false_alarms(200, 20, runs=40), flush=True)
    print("  " + false_alarms(ERT, WINDOW, runs=12), flush=True)
    print(f"Detection delay after a shift (D=128 -> PCA 32, ERT {ERT}, window {WINDOW}, 10 trials)")
    data, pca, detector = pipeline(128, ERT, WINDOW)
    for shift in (0.25, 0.5, 1.0):
        print("  " + detection_delay(shift, 10, detector, data, pca), flush=True)
    print(f"Total {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
