"""False-alarm rates and power of the windowed drift tests on clean and shifted synthetic traffic.

Run from the repository root: ``.venv/bin/python -m benchmarks.drift_false_alarms`` (about two minutes on two
cores; ``--trials`` lowers or raises the repetitions).

``embedding_distance``: 16-d gaussian embeddings around an offset mean (``N(3 e_0, I / 4)``); each trial draws a fresh
reference of 449, 1,000 or 5,000 rows and one fresh window of 500, and runs the real
:class:`~monitors.drift.embedding.EmbeddingDistance` at alpha 0.05, so the rate is over references as well as
windows (what a fleet of models sees). Power: the same on windows of shifted traffic, ``1%-outliers`` (1% of the
window's rows moved 6 units along another axis) and ``turn-0.6`` (every row moved 0.6 along another axis).

``repeats``: the detectors :func:`monitors.drift.detectors.build` makes (no online detector: it calibrates for
minutes) from 2,000-event references in which 30% of the events carry one identical embedding (and so one
predicted class and confidence), then fed clean
stationary windows of 500 with the same share of it: the share of windows each test alarms on, over
references and windows.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

if not __package__:
    sys.exit("run it as a module from the repository root: .venv/bin/python -m benchmarks.drift_false_alarms")

import numpy as np
import torch
from numpy.typing import NDArray
from prometheus_client import CollectorRegistry

from monitors.drift.base import DriftBatch
from monitors.drift.config import DriftConfig
from monitors.drift.detectors import build
from monitors.drift.embedding import EmbeddingDistance
from monitors.drift.metrics import DriftMetrics
from monitors.drift.reference import Reference

DIM, WINDOW, ALPHA = 16, 500, 0.05
REFERENCE_ROWS = (449, 1000, 5000)
Shift = Callable[[np.random.Generator, NDArray[np.float32]], NDArray[np.float32]]


def embeddings(rng: np.random.Generator, n: int) -> NDArray[np.float32]:
    x = 0.5 * rng.normal(size=(n, DIM))
    x[:, 0] += 3.0
    return x.astype(np.float32)


def clean(rng: np.random.Generator, x: NDArray[np.float32]) -> NDArray[np.float32]:
    return x


def outliers(rng: np.random.Generator, x: NDArray[np.float32]) -> NDArray[np.float32]:
    moved = x.copy()
    moved[: len(x) // 100, 1] += 6.0
    return moved


def turn(rng: np.random.Generator, x: NDArray[np.float32]) -> NDArray[np.float32]:
    moved = x.copy()
    moved[:, 1] += 0.6
    return moved


def distance_rate(reference_rows: int, shift: Shift, trials: int, seed: int) -> float:
    rng = np.random.default_rng(seed)
    alarms = 0
    for _ in range(trials):
        detector = EmbeddingDistance.fit(embeddings(rng, reference_rows), window_events=WINDOW, p_value=ALPHA)
        alarms += detector.test(shift(rng, embeddings(rng, WINDOW))).drift
    return alarms / trials


def with_repeats(rng: np.random.Generator, n: int, repeated: NDArray[np.float32], share: float) -> DriftBatch:
    x = embeddings(rng, n)
    copies = rng.random(n) < share
    x[copies] = repeated
    predicted = rng.choice(4, size=n, p=[0.4, 0.3, 0.2, 0.1]).astype(np.int64)
    confidence = 0.3 + 0.7 * rng.beta(5.0, 2.0, size=n)
    predicted[copies], confidence[copies] = 3, 0.97  # one input, one output
    return DriftBatch(predicted=predicted, confidence=confidence, embeddings=x, time_s=1.0)


def repeat_rates(references: int, windows: int, seed: int) -> dict[str, float]:
    rng = np.random.default_rng(seed)
    config = DriftConfig(online_detector="none", reference_events=2000, window_events=WINDOW, p_value=ALPHA)
    alarms: dict[str, int] = {}
    for _ in range(references):
        repeated = embeddings(rng, 1)[0]
        reference = Reference.from_batch(with_repeats(rng, 2000, repeated, 0.3))
        metrics = DriftMetrics(registry=CollectorRegistry())
        detectors = build("m", reference, config, metrics, torch.Generator().manual_seed(0))
        for _ in range(windows):
            window = with_repeats(rng, WINDOW, repeated, 0.3)
            for detector in (*detectors.outputs, *detectors.embedded, *detectors.reduced):
                for result in detector.update(window):
                    alarms[result.name] = alarms.get(result.name, 0) + int(result.drift)
    return {name: count / (references * windows) for name, count in sorted(alarms.items())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=600, help="references (and windows) per figure")
    parser.add_argument("--repeat-references", type=int, default=10, help="references of the repeats figure")
    parser.add_argument("--repeat-windows", type=int, default=20, help="clean windows per reference there")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"embedding_distance, alpha {ALPHA}, windows of {WINDOW}, {args.trials} trials (fresh reference each)")
    print(f"{'reference rows':>15} {'clean':>7} {'1%-outliers':>12} {'turn-0.6':>9}")
    for rows in REFERENCE_ROWS:
        rates = [
            distance_rate(rows, shift, args.trials, seed=rows + i) for i, shift in enumerate((clean, outliers, turn))
        ]
        print(f"{rows:>15} {rates[0]:>7.3f} {rates[1]:>12.3f} {rates[2]:>9.3f}")
    print(
        f"\nclean windows of {WINDOW} with 30% repeated embeddings ({args.repeat_references} references x "
        f"{args.repeat_windows} windows): alarm share"
    )
    for name, rate in repeat_rates(args.repeat_references, args.repeat_windows, seed=1).items():
        print(f"  {name:<22} {rate:.3f}")


if __name__ == "__main__":
    main()
