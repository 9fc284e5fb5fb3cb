"""Drift detection on the digits CNN's real embeddings: calibration, false alarms, detection delay, cost.

    .venv/bin/python -m benchmarks.drift_digits [--cache-dir DIR] [--trials 8] [--window-trials 3]

About two and a half minutes on two cores (printed as it goes). The digits CNN is trained once into ``--cache-dir``
(default: a temporary directory, a few seconds). Its TorchScript ``embed`` gives
the 64-dimensional embeddings and the softmax of its logits the predicted class
and confidence. The reference is the training split (``vai-sidecar demo`` now
uploads a held-out split instead, which the model never trained on); the traffic
is the test split (450 images), clean or corrupted by
:func:`demo.corruptions.corrupt`, replayed as shuffled passes (each image once
per pass, as ``DigitsTraffic`` replays it) or, for the false-alarm runs, also
bootstrap-resampled (with replacement), which repeats images within a window and
makes the windowed tests flag clean traffic (shown). The library is used directly: a
``DriftMonitor`` on a ``Reference``, fed ``DriftBatch`` es of 10 events, each run
on a monitor rebuilt with ``DriftMonitor.from_state`` (cheap, no calibration) so
runs start alike. Calibration is seeded (``torch.manual_seed``); torch runs with
one intra-op thread. Figures are counts of events, in steps of one batch (10).

The windowed tests (``window_mmd``, ``window_ks``, ``output_*``,
``embedding_distance``) decide once per tumbling window of ``window_events``
(500) and do not depend on ERT or the online window, so they are measured once.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

if not __package__:
    sys.exit("run it as a module from the repository root: .venv/bin/python -m benchmarks.drift_digits")

import numpy as np
import torch
from numpy.typing import NDArray
from prometheus_client import CollectorRegistry

from demo.corruptions import CORRUPTIONS, Corruption, corrupt
from demo.models import digits
from monitors.drift.base import DriftBatch
from monitors.drift.config import DriftConfig
from monitors.drift.metrics import DriftMetrics
from monitors.drift.monitor import DriftMonitor
from monitors.drift.online import OnlineDriftDetector
from monitors.drift.reference import Reference
from monitors.drift.states import MonitorState, OnlineState

BATCH = 10
ONLINE = "mmd_online"
WINDOWED = ("window_mmd", "window_ks", "output_confidence_ks", "output_class_chi2", "embedding_distance")
CONFIGS = (("default", DriftConfig()), ("fast", DriftConfig(ert=200, window_size=20)))
SHIFTS: tuple[tuple[str, tuple[Corruption, ...]], ...] = (
    *((kind, (kind,)) for kind in CORRUPTIONS),
    ("mixed", CORRUPTIONS),
)
SHIFT_CAP = 1000
"""Corrupted events fed before a trial counts as missed."""


@dataclass(frozen=True)
class Stream:
    """Embeddings and softmax outputs of some images, in order."""

    embeddings: NDArray[np.float32]
    probabilities: NDArray[np.float64]

    def __len__(self) -> int:
        return len(self.embeddings)

    def batch(self, rows: NDArray[np.intp] | slice) -> DriftBatch:
        p = self.probabilities[rows]
        return DriftBatch(
            predicted=p.argmax(1).astype(np.int64), confidence=p.max(1), embeddings=self.embeddings[rows], time_s=0.0
        )


class Digits:
    """The scripted digits CNN and the fixed train/test split.

    ``held_out``: the demo's model, trained without a third of the training side, which is then the
    reference (449 images, as ``vai-sidecar demo`` uploads it): reference and traffic are both images
    the model never saw. Otherwise the reference is the training split itself (this benchmark's figures).
    """

    def __init__(self, cache_dir: Path, *, held_out: bool = False) -> None:
        path = digits.ensure_digits_model(cache_dir, hold_out_reference=held_out)
        self.model = torch.jit.load(str(path), map_location="cpu").eval()  # type: ignore[no-untyped-call]
        self.split = digits.load_digits_split(hold_out_reference=held_out)
        self.train = self.embed(self.split.train.features)
        self.test = self.embed(self.split.test.features)
        held = self.split.reference
        self.held_out = None if held is None else self.embed(held.features)

    def embed(self, images: NDArray[np.float32]) -> Stream:
        with torch.no_grad():
            x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))
            embeddings = self.model.embed(x).numpy()
            probabilities = torch.softmax(self.model(x), dim=1).numpy().astype(np.float64)
        return Stream(embeddings, probabilities)

    def corrupted(self, rows: NDArray[np.intp], *, kinds: tuple[Corruption, ...], severity: float, seed: int) -> Stream:
        images, _ = corrupt(self.split.test.features[rows], seed=seed, severity=severity, kinds=kinds)
        return self.embed(images)

    def reference(self) -> Reference:
        """The held-out images if the model was trained without them, else the training split."""
        rows = self.train if self.held_out is None else self.held_out
        p = rows.probabilities
        return Reference(predicted=p.argmax(1).astype(np.int64), confidence=p.max(1), embeddings=rows.embeddings)


def fresh(state: MonitorState) -> DriftMonitor:
    return DriftMonitor.from_state(state, metrics=DriftMetrics(registry=CollectorRegistry()))


def online_state(state: MonitorState) -> OnlineState:
    return next(d for d in state.detectors if isinstance(d, OnlineState))


def online_only(state: MonitorState) -> MonitorState:
    """The state without the windowed detectors: the online runs do not pay for their permutation tests."""
    return state.model_copy(update={"detectors": tuple(d for d in state.detectors if isinstance(d, OnlineState))})


def passes(rng: np.random.Generator, count: int, size: int) -> NDArray[np.intp]:
    """``count`` row indices as endless shuffled passes over ``size`` rows (how ``DigitsTraffic`` replays)."""
    order: NDArray[np.intp] = np.concatenate([rng.permutation(size) for _ in range(-(-count // size))])
    return order[:count]


def bootstrap(rng: np.random.Generator, count: int, size: int) -> NDArray[np.intp]:
    """``count`` row indices drawn with replacement."""
    return rng.integers(0, size, count)


Draw = Callable[[np.random.Generator, int, int], NDArray[np.intp]]


def batches(stream: Stream, rows: NDArray[np.intp]) -> Iterator[tuple[int, DriftBatch]]:
    """(events fed so far, batch) for consecutive batches of ``rows``."""
    for start in range(0, len(rows), BATCH):
        chunk = rows[start : start + BATCH]
        yield start + len(chunk), stream.batch(chunk)


def first_alarm(monitor: DriftMonitor, stream: Stream, rows: NDArray[np.intp]) -> int | None:
    """Events fed when ``mmd_online`` first reports drift; ``None`` if it never does."""
    for fed, batch in batches(stream, rows):
        if any(r.name == ONLINE and r.drift for r in monitor.update(batch)):
            return fed
    return None


def calibrated(data: Digits, config: DriftConfig, *, seed: int = 0) -> tuple[MonitorState, float]:
    torch.manual_seed(seed)  # the online detector's bootstrap and reference split draw from torch's generator
    monitor = DriftMonitor(
        model="digits", config=config, metrics=DriftMetrics(registry=CollectorRegistry()), reference=data.reference()
    )
    started = time.perf_counter()
    monitor.calibrate()
    return monitor.export_state(), time.perf_counter() - started


def per_1000(action: Callable[[], object]) -> float:
    started = time.perf_counter()
    action()
    return 1000 * (time.perf_counter() - started)


def feed_all(monitor: DriftMonitor, stream: Stream, rows: NDArray[np.intp]) -> None:
    for _, batch in batches(stream, rows):
        monitor.update(batch)


def cost_lines(data: Digits, config: DriftConfig, state: MonitorState) -> list[str]:
    """ms per 1,000 clean events in batches of 10: online detector (with and without PCA), whole monitor."""
    rows = np.random.default_rng(1).integers(0, len(data.test), 1000)
    online_monitor, whole_monitor = fresh(online_only(state)), fresh(state)  # built outside the timing
    online = per_1000(lambda: feed_all(online_monitor, data.test, rows))
    # Per-event cost depends on the window, the reference rows and the width, not on ERT: a cheap bootstrap will do.
    x = online_state(state).reference.shape[0]
    raw = data.train.embeddings[np.random.default_rng(2).permutation(len(data.train))[:x]]
    detector = OnlineDriftDetector.calibrate(
        raw, method="mmd", ert=50, window_size=config.window_size, n_bootstraps=500
    )
    no_pca = per_1000(lambda: detector.scores(data.test.embeddings[rows]))
    lines = [
        f"online only, PCA 64->32 + {ONLINE} (via the monitor)  {online:7.1f} ms",
        f"online only, no PCA, 64 dims ({x} reference rows)      {no_pca:7.1f} ms",
    ]
    if any(not isinstance(d, OnlineState) for d in state.detectors):
        whole = per_1000(lambda: feed_all(whole_monitor, data.test, rows))
        lines.append(f"whole monitor, all 7 detectors (2 windows of 500)    {whole:7.1f} ms")
    return lines


def run_lengths(state: MonitorState, stream: Stream, draw: Draw, *, runs: int, cap: int, seed: int) -> list[int]:
    """Events until the first alarm on clean traffic, one fresh detector per run."""
    rng = np.random.default_rng(seed)
    lengths = []
    for _ in range(runs):
        found = first_alarm(fresh(state), stream, draw(rng, cap, len(stream)))
        lengths.append(cap if found is None else found)
    return lengths


def run_length_line(label: str, lengths: list[int], *, cap: int, window: int) -> str:
    capped = sum(n == cap for n in lengths)
    early = sum(n <= window for n in lengths)
    return (
        f"{label:28s} mean {np.mean(lengths):6.0f}  median {np.median(lengths):6.0f}  min {min(lengths):5d}  "
        f"capped {capped:2d}/{len(lengths)}  alarmed within the first window {early:2d}"
    )


def false_alarms(data: Digits, config: DriftConfig, state: MonitorState, *, runs: int) -> tuple[list[str], list[int]]:
    """Report lines, and the run lengths on the test split replayed in shuffled passes."""
    cap, online = 3 * config.ert, online_only(state)
    lines = [
        f"{runs} runs each, cap {cap} events (3 x ERT; a capped run counts as {cap}); "
        f"a geometric run length of mean {config.ert} has median {0.693 * config.ert:.0f} and is capped in 5% of runs"
    ]
    streams: tuple[tuple[str, Stream, Draw], ...] = (
        ("test split, bootstrap", data.test, bootstrap),
        ("test split, shuffled passes", data.test, passes),
        ("train split, bootstrap", data.train, bootstrap),
    )
    clean: list[int] = []
    for label, stream, draw in streams:
        lengths = run_lengths(online, stream, draw, runs=runs, cap=cap, seed=10)
        lines.append(run_length_line(label, lengths, cap=cap, window=config.window_size))
        clean = lengths if draw is passes and stream is data.test else clean
    return lines, clean


@dataclass(frozen=True)
class Delay:
    found: list[int]
    missed: int
    early: int
    """Trials left out: an alarm already during the clean prefix."""

    def summary(self, clean: list[int]) -> str:
        """Median over the trials (a miss counts as infinite) and how often clean traffic alarms that early."""
        median = float(np.median([*self.found, *[np.inf] * self.missed])) if self.found or self.missed else np.nan
        shown = f"{median:5.0f}" if np.isfinite(median) else f">{SHIFT_CAP}"
        share = f"{np.mean(np.array(clean) <= median):4.0%}" if np.isfinite(median) else "   -"
        longest = f"{max(self.found):5d}" if self.found else "    -"
        return (
            f"median {shown:>5s}  max found {longest}  missed {self.missed:2d}  left out {self.early}  "
            f"| clean runs alarmed by the median: {share}"
        )


def online_delay(
    data: Digits,
    state: MonitorState,
    config: DriftConfig,
    *,
    kinds: tuple[Corruption, ...],
    severity: float,
    trials: int,
) -> Delay:
    """Clean test events filling one online window, then corrupted ones until ``mmd_online`` alarms."""
    found, missed, early = [], 0, 0
    for trial in range(trials):
        rng = np.random.default_rng(1000 + trial)
        rows = passes(rng, config.window_size + SHIFT_CAP, len(data.test))
        monitor = fresh(online_only(state))
        if first_alarm(monitor, data.test, rows[: config.window_size]) is not None:
            early += 1
            continue
        shifted = data.corrupted(rows[config.window_size :], kinds=kinds, severity=severity, seed=trial)
        delay = first_alarm(monitor, shifted, np.arange(SHIFT_CAP))
        if delay is None:
            missed += 1
        else:
            found.append(delay)
    return Delay(found, missed, early)


def clean_windows_flagged(data: Digits, state: MonitorState, draw: Draw, *, windows: int) -> dict[str, int]:
    """How many of ``windows`` clean test-split windows each windowed test flags."""
    flagged: dict[str, int] = dict.fromkeys(WINDOWED, 0)
    monitor = fresh(state)
    rows = draw(np.random.default_rng(30), windows * state.config.window_events, len(data.test))
    for _, batch in batches(data.test, rows):
        for result in monitor.update(batch):
            if result.name in flagged:
                flagged[result.name] += result.drift
    return flagged


def windowed_delays(
    data: Digits, state: MonitorState, *, kinds: tuple[Corruption, ...], severity: float, trials: int
) -> dict[str, list[int | None]]:
    """Corrupted events (windows aligned with the shift) until each test first flags; ``None``: not by 2 windows."""
    delays: dict[str, list[int | None]] = {name: [] for name in WINDOWED}
    window = state.config.window_events
    for trial in range(trials):
        rng = np.random.default_rng(2000 + trial)
        stream = data.corrupted(passes(rng, 2 * window, len(data.test)), kinds=kinds, severity=severity, seed=trial)
        monitor, first = fresh(state), dict.fromkeys(WINDOWED)
        for fed, batch in batches(stream, np.arange(2 * window)):
            for result in monitor.update(batch):
                if result.name in first and result.drift and first[result.name] is None:
                    first[result.name] = fed
            if all(v is not None for v in first.values()):
                break
        for name, value in first.items():
            delays[name].append(value)
    return delays


def windowed_cell(values: list[int | None]) -> str:
    """Each trial's delay, ``-`` for a miss."""
    return "/".join("-" if v is None else str(v) for v in values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache-dir", type=Path, help="where the digits CNN is trained once (default: a temp dir)")
    parser.add_argument("--trials", type=int, default=8, help="seeded trials per shift for the online detector")
    parser.add_argument("--window-trials", type=int, default=3, help="seeded trials per shift for the windowed tests")
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", message=r"`torch\.jit\.\w+` is deprecated", category=DeprecationWarning)
    started = time.perf_counter()
    with model_dir(args.cache_dir) as cache_dir:
        data = Digits(cache_dir)
    print(
        f"digits CNN: embedding {data.train.embeddings.shape[1]} dims; reference = train split "
        f"({len(data.train)} events), traffic = test split ({len(data.test)} events), batches of {BATCH}"
    )
    for label, config in CONFIGS:
        report_config(data, label, config, args)
        print(f"  [{time.perf_counter() - started:.0f} s so far]", flush=True)
    print(f"Total {time.perf_counter() - started:.0f} s")


def report_config(data: Digits, label: str, config: DriftConfig, args: argparse.Namespace) -> None:
    state, calibration_s = calibrated(data, config)
    online = online_state(state)
    print(
        f"\n== {label}: ERT {config.ert}, online window {config.window_size}, PCA {config.pca_components}, "
        f"{config.bootstraps} bootstraps, {online.reference.shape[0]} reference rows =="
    )
    print(f"calibration (PCA, online thresholds, windowed tests): {calibration_s:.1f} s", flush=True)
    section("cost per 1,000 events", cost_lines(data, config, state))
    runs = 10 if config.ert >= 1000 else 40
    lines, clean = false_alarms(data, config, state, runs=runs)
    section(f"false-alarm run length of {ONLINE} on clean traffic", lines)
    print(
        f"detection delay of {ONLINE}: events after the shift until its alarm ({args.trials} trials; "
        f"{config.window_size} clean events first, a trial alarming during them is left out; a miss = none by "
        f"{SHIFT_CAP}); last column: share of the clean shuffled-passes runs above that alarmed as early"
    )
    for severity in (1.0, 0.5):
        for name, kinds in SHIFTS:
            delay = online_delay(data, state, config, kinds=kinds, severity=severity, trials=args.trials)
            print(f"  {f'{name} severity {severity:3.1f}':22s}: {delay.summary(clean)}", flush=True)
    if label == "default":
        report_windowed(data, state, trials=args.window_trials)


def report_windowed(data: Digits, state: MonitorState, *, trials: int) -> None:
    window = state.config.window_events
    windows = 5
    print(
        f"windowed tests on clean test-split traffic: windows flagged of {windows} ({window} events each, "
        f"p_value {state.config.p_value}; the test split has {len(data.test)} images, fewer than a window)"
    )
    print("  " + f"{'traffic':18s}" + "".join(f"{name:>22s}" for name in WINDOWED))
    for label, draw in (("bootstrap", bootstrap), ("shuffled passes", passes)):
        flagged = clean_windows_flagged(data, state, draw, windows=windows)
        print("  " + f"{label:18s}" + "".join(f"{flagged[name]:>20d}/{windows}" for name in WINDOWED), flush=True)
    print(
        f"windowed tests: events after the shift until the first flagged window, per trial ({trials} trials; "
        f"windows start at the shift, so {window} = the first corrupted window; - = not by {2 * window})"
    )
    print("  " + f"{'shift':18s}" + "".join(f"{name:>22s}" for name in WINDOWED))
    for severity in (1.0, 0.5):
        for name, kinds in SHIFTS:
            delays = windowed_delays(data, state, kinds=kinds, severity=severity, trials=trials)
            cells = "".join(f"{windowed_cell(delays[test]):>22s}" for test in WINDOWED)
            print(f"  {f'{name} sev {severity:.1f}':18s}{cells}", flush=True)


def section(title: str, lines: list[str]) -> None:
    print(title)
    for line in lines:
        print("  " + line, flush=True)


@contextmanager
def model_dir(cache_dir: Path | None) -> Iterator[Path]:
    if cache_dir is not None:
        cache_dir.mkdir(parents=True, exist_ok=True)
        yield cache_dir
        return
    with tempfile.TemporaryDirectory() as temporary:
        yield Path(temporary)


if __name__ == "__main__":
    main()
