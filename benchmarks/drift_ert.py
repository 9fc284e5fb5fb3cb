"""Does one calibration of the online MMD detector hold its ERT? Per calibration seed, on real embeddings.

    .venv/bin/python -m benchmarks.drift_ert [--data digits|sentences] [--corpus small|large] [--reference N]
        [--max-reference N] [--pca-share S] [--pca-components N|none] [--steady-steps-per-ert N] [--cache-dir DIR]
        [--seeds 10] [--streams 200] [--sequential] [--before] [--random-split] [--ert 1000]
        [--repeat-share S] [--repeat-inputs K] [--distinct-reference]

For each seed (``DriftConfig(seed=s)``: the PCA rows, the detector's rows, the spare rows and the torch draws) the
monitor is calibrated as deployed (default config: ERT 1000, window 50, 10,000 bootstrap samples; online detector
only; ``--ert`` sets the ERT, and with it the bootstrap samples, the cap and the early mark; ``--max-reference``,
``--pca-share``, ``--pca-components`` and ``--steady-steps-per-ert`` set those settings; without the last,
``steady_steps_per_ert`` is automatic as deployed: 1,000 from a reference of 5,000 rows, else 0, printed per seed)
and the script prints the last threshold, the run length of clean streams (the clean traffic replayed in shuffled
passes, capped at 6 x ERT): its mean, which the ERT is, estimated as events observed / alarms (the
maximum-likelihood mean of a geometric run length censored at the cap; at 6 x ERT a geometric run is capped 0.25%
of the time), its median and the share alarming within 0.8 x ERT events (a geometric run length of mean 1000 has
median 693 and alarms within 800 with probability 0.55, so a median within 25% of the ERT is not what a calibrated
detector gives); the share of the clean streams' events above their threshold (the detector is not reset after an
alarm, so an alarm lasts while the window holds what set it off: a few times 1/ERT on clean traffic); and the
median detection delay on each shift (one window of clean events first, trials alarming in it left out).
``--sequential`` also calibrates the same seed with ``steady_steps_per_ert=0`` (every threshold from the
``10 x ERT`` bootstrap runs; the same split and draws otherwise). ``--before`` also calibrates the same detector
rows the way alibi-detect does (each bootstrap sample re-splits them; the kept reference is one more random split).

Digits (default): the demo's CNN, trained without a held-out third of its training side; the reference
is that held-out third (449 images, as ``vai-sidecar demo`` uploads it) and the clean traffic the test
split (450 images), so both are images the model never saw; the shifts are the test split corrupted
(``mixed`` and ``blur`` at severity 1). Both splits are stratified by label: their class counts match, so
the test split sits closer to the reference than traffic sampled at random does (its unbiased squared MMD
to the detector's rows is below that of 77-99% of random splits of the same images, and typical of
label-stratified ones), and the runs come out longer than such traffic gives. ``--random-split`` splits
the 899 unseen images at random instead, anew per seed (the traffic and its corrupted copies follow).

``--data sentences``: MiniLM sentence embeddings of local text (:mod:`benchmarks.sentence_embeddings`,
optional extra ``bench``): the monitor's reference is the first ``--reference`` sentences of the
reference pool (default 2000, the default ``reference_events`` until 2026-11-30, now 5,000: pass
``--corpus large --reference 5000`` to measure the deployed default); the clean streams replay the 2,000
held-out sentences and the pool's sentences the reference does not use (5,000 in all at reference
2,000), and the shifts are ``domain`` (scientific-library documentation) and ``typos`` (the held-out
sentences with one character in ten replaced). ``--corpus large`` takes the larger clean corpus (standard-library
docstrings and comments, the language reference and general-purpose packages' docstrings: 2,000 held-out
sentences and a pool of 20,549), for references of ~10,000 rows: at ``--reference 10000 --pca-share 0.25
--max-reference 2500``, 2,500 rows fit PCA, 2,500 are the detector's and the other 5,000 are spare, so the
calibration draws its windows from 7,450 rows (the 1,715 kept, 735 held out and the spare), and the clean
streams replay 12,549 sentences.

``--repeat-share S``: traffic that repeats inputs (a blank request, a cached query). ``--repeat-inputs K``
(default 1) embeddings of the clean traffic, drawn once with a fixed seed, are the repeated inputs; the
monitor's reference gets copies of them appended (K equal shares) until they are a share S of its rows,
its own rows all kept, and each event of every stream (clean, and clean and shifted in the delay trials) is
one of them with probability S. ``--distinct-reference`` calibrates on one row per distinct embedding of
that reference (``steady_steps_per_ert`` still resolved on all its rows): what the online detector took
before it kept copies (the same rows and draws, so the same thresholds).

Run lengths are computed from the kernel matrix of the pool of rows at once
(the statistic of every window of a stream from cumulative sums), not event by
event; the first seed checks it against ``OnlineDriftDetector.scores``.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

if not __package__:
    sys.exit("run it as a module from the repository root: .venv/bin/python -m benchmarks.drift_ert")

import numpy as np
import torch
from numpy.typing import NDArray
from prometheus_client import CollectorRegistry

from benchmarks import sentence_embeddings
from benchmarks.drift_digits import Digits, model_dir, passes
from common.codec import EncodedArray
from demo.corruptions import CORRUPTIONS, Corruption, corrupt
from monitors.drift.config import DriftConfig
from monitors.drift.metrics import DriftMetrics
from monitors.drift.mmd_thresholds import bootstrap_mmd_thresholds
from monitors.drift.monitor import DriftMonitor
from monitors.drift.online import OnlineDriftDetector
from monitors.drift.reduction import Pca
from monitors.drift.reference import Reference
from monitors.drift.states import OnlineState

CAP_PER_ERT = 6
EARLY_PER_ERT = 0.8
REPEATS_SEED = 7
SHIFTS: tuple[tuple[str, tuple[Corruption, ...]], ...] = (("mixed", CORRUPTIONS), ("blur", ("blur",)))


def rbf(a: NDArray[np.float64], b: NDArray[np.float64], sigma: float) -> NDArray[np.float64]:
    """The Gaussian kernel matrix, computed in place in blocks of rows: one ``len(a) x len(b)`` array (2 GB at
    16,000 rows; whole-matrix temporaries held up to three), with the same rounding as whole-matrix arithmetic."""
    k: NDArray[np.float64] = (2 * a) @ b.T
    a_norms, b_norms = (a * a).sum(1), (b * b).sum(1)
    for start in range(0, len(a), 1024):
        block = k[start : start + 1024]
        np.subtract(a_norms[start : start + 1024, None] + b_norms[None, :], block, out=block)
    np.maximum(k, 0, out=k)
    np.divide(k, -(2 * sigma**2), out=k)
    return np.exp(k, out=k)


@dataclass(frozen=True)
class Data:
    """The monitor's reference, the clean traffic its streams replay, and shifted traffic."""

    name: str
    reference: Reference
    traffic: NDArray[np.float32]
    shifts: tuple[tuple[str, NDArray[np.float32]], ...]
    described: str


@dataclass(frozen=True)
class Repeats:
    """Repeated inputs: pool rows ``[offset, offset + count)``, each event one of them with probability ``share``."""

    offset: int
    count: int
    share: float

    def into(self, rng: np.random.Generator, rows: NDArray[np.intp]) -> NDArray[np.intp]:
        """``rows`` with each replaced, with probability ``share``, by one of the repeated inputs."""
        if self.share <= 0:
            return rows
        copies = rng.random(len(rows)) < self.share
        which = self.offset + rng.integers(0, self.count, len(rows))
        return np.where(copies, which, rows)


NO_REPEATS = Repeats(offset=0, count=1, share=0.0)


def repeated_inputs(data: Data, count: int) -> NDArray[np.float32]:
    """``count`` embeddings of the clean traffic that traffic and reference repeat (the same for every seed)."""
    chosen = np.random.default_rng(REPEATS_SEED).choice(len(data.traffic), size=count, replace=False)
    return np.ascontiguousarray(data.traffic[chosen])


def with_copies(reference: Reference, repeated: NDArray[np.float32], share: float) -> Reference:
    """``reference`` with copies of ``repeated`` (equal shares) appended until they are ``share`` of its rows,
    shuffled with a fixed seed: a reference collected from traffic repeats an input as often as traffic does."""
    if share <= 0:
        return reference
    copies = round(share / (1 - share) * len(reference))
    which = np.arange(copies) % len(repeated)
    embeddings = reference.embeddings
    if embeddings is None:
        raise SystemExit("the reference has no embeddings")
    n = len(reference) + copies
    order = np.random.default_rng(REPEATS_SEED).permutation(n)
    return Reference(
        predicted=np.concatenate([reference.predicted, np.zeros(copies, np.int64)])[order],
        confidence=np.concatenate([reference.confidence, np.full(copies, 0.97)])[order],
        embeddings=np.concatenate([embeddings, repeated[which]])[order],
        has_outputs=reference.has_outputs,
    )


def digits_data(cache_dir: Path | None) -> Data:
    with model_dir(cache_dir) as directory:
        digits = Digits(directory, held_out=True)
    rows = np.arange(len(digits.test))
    shifts = tuple(
        (name, digits.corrupted(rows, kinds=kinds, severity=1.0, seed=0).embeddings) for name, kinds in SHIFTS
    )
    reference = digits.reference()
    described = f"the test split ({len(rows)} images); reference the held-out {len(reference)} images"
    return Data("digits", reference, digits.test.embeddings, shifts, described)


def digits_random_split(digits: Digits, seed: int) -> Data:
    """The unseen images (held-out and test) split at random: a reference as large as the held-out one, the rest
    traffic. Both demo splits are stratified by label, so their class counts match and the test split sits closer
    to the reference than traffic does whose counts vary by chance, as a random sample's do."""
    held = digits.split.reference
    if held is None or digits.held_out is None:
        raise SystemExit("the random split needs the held-out digits model")
    images = np.concatenate([held.features, digits.split.test.features])
    embeddings = np.concatenate([digits.held_out.embeddings, digits.test.embeddings])
    probabilities = np.concatenate([digits.held_out.probabilities, digits.test.probabilities])
    order = np.random.default_rng(seed).permutation(len(images))
    ref, traffic = order[: len(held.features)], order[len(held.features) :]
    p = probabilities[ref]
    reference = Reference(predicted=p.argmax(1).astype(np.int64), confidence=p.max(1), embeddings=embeddings[ref])
    shifts = tuple(
        (name, digits.embed(corrupt(images[traffic], seed=0, severity=1.0, kinds=kinds)[0]).embeddings)
        for name, kinds in SHIFTS
    )
    described = (
        f"a random {len(traffic)} of the {len(images)} unseen images, split anew per seed; reference the other "
        f"{len(ref)}"
    )
    return Data("digits", reference, embeddings[traffic], shifts, described)


def sentence_data(cache_dir: Path | None, reference_rows: int, corpus: str) -> Data:
    sentences = sentence_embeddings.load(cache_dir or sentence_embeddings.DEFAULT_CACHE, corpus)
    if not 2 <= reference_rows <= len(sentences.reference_pool):
        raise SystemExit(f"--reference must be 2 to {len(sentences.reference_pool)} sentences")
    x = sentences.reference_pool[:reference_rows]
    n = len(x)
    reference = Reference(predicted=np.zeros(n, np.int64), confidence=np.ones(n), embeddings=x, has_outputs=False)
    # The pool's unused sentences are clean traffic too: more of it, less of the benchmark's own sampling error.
    traffic = np.concatenate([sentences.traffic, sentences.reference_pool[reference_rows:]])
    described = (
        f"held-out sentences ({len(sentences.traffic)}) and unused pool sentences "
        f"({len(traffic) - len(sentences.traffic)}) of the {corpus} corpus; reference {n} sentences"
    )
    return Data("sentences", reference, traffic, sentences.shifts, described)


@dataclass(frozen=True)
class Split:
    reference: NDArray[np.float32]
    ref_inds: NDArray[np.int64]
    init_test_inds: NDArray[np.int64]
    sigma: float
    thresholds: tuple[float, ...]


class Pool:
    """A calibrated detector's kernel sums against a finite pool of rows (its initial window first)."""

    def __init__(self, split: Split, rows: NDArray[np.float32], window: int) -> None:
        x = split.reference.astype(np.float64)
        ref = x[split.ref_inds]
        pool = np.concatenate([x[split.init_test_inds], rows.astype(np.float64)])
        k_ref = rbf(ref, ref, split.sigma)
        self.k_xx_sum = (k_ref.sum() - np.trace(k_ref)) / (len(ref) * (len(ref) - 1))
        self.col_means = rbf(ref, pool, split.sigma).mean(0)
        self.kernel = rbf(pool, pool, split.sigma)
        self.window = window
        self.thresholds = np.array(split.thresholds)

    def scores(self, rows: NDArray[np.intp]) -> NDArray[np.float64]:
        """The statistic after each event of a stream of pool rows (0 = the first row after the initial window)."""
        w = self.window
        z = np.concatenate([np.arange(w), rows + w])
        t = np.arange(1, len(rows) + 1)
        pairs = np.zeros(len(rows))
        for lag in range(1, w):
            sums = np.concatenate([[0.0], self.kernel[z[:-lag], z[lag:]].cumsum()])
            pairs += sums[t + w - lag] - sums[t]
        means = np.concatenate([[0.0], self.col_means[z].cumsum()])
        statistic: NDArray[np.float64] = self.k_xx_sum + 2 * pairs / (w * (w - 1)) - 2 * (means[t + w] - means[t]) / w
        return statistic

    def above(self, rows: NDArray[np.intp]) -> NDArray[np.bool_]:
        """Whether the statistic after each event of the stream is above its threshold."""
        steps = np.minimum(np.arange(1, len(rows) + 1), self.window - 1)
        above: NDArray[np.bool_] = self.scores(rows) > self.thresholds[steps]
        return above

    def first_alarm(self, rows: NDArray[np.intp]) -> int | None:
        hits = np.nonzero(self.above(rows))[0]
        return int(hits[0]) + 1 if hits.size else None


def deployed(data: Data, config: DriftConfig, *, distinct: bool = False) -> tuple[Pca | None, Split, float, int]:
    """PCA, the online detector's split and thresholds, the calibration's seconds, and the steady steps per ERT
    it used (``steady_steps_per_ert`` resolved on the reference); ``distinct``: calibrated on one row per distinct
    embedding of the reference, the settings resolved on all its rows."""
    reference = data.reference
    if distinct:
        config, reference = config.resolved(len(reference)), reference.rows(reference.distinct_rows())
    monitor = DriftMonitor(
        model=data.name, config=config, metrics=DriftMetrics(registry=CollectorRegistry()), reference=reference
    )
    started = time.perf_counter()
    monitor.calibrate()
    took = time.perf_counter() - started
    state = monitor.export_state()
    online = next(d for d in state.detectors if isinstance(d, OnlineState))
    steady = state.config.steady_steps_per_ert
    if steady is None:
        raise SystemExit("the monitor stored an unresolved steady_steps_per_ert")
    return None if state.pca is None else Pca.from_state(state.pca), split_of(online), took, steady


def split_of(state: OnlineState) -> Split:
    return Split(
        reference=state.reference.decode().astype(np.float32),
        ref_inds=state.ref_inds.decode().astype(np.int64),
        init_test_inds=state.init_test_inds.decode().astype(np.int64),
        sigma=state.sigma,
        thresholds=state.thresholds,
    )


def alibi_style(after: Split, config: DriftConfig, seed: int) -> tuple[Split, float]:
    """The previous calibration on the same rows: re-split bootstrap, then one random kept split."""
    torch.manual_seed(seed)
    started = time.perf_counter()
    x = after.reference.astype(np.float64)
    kernel = torch.from_numpy(rbf(x, x, after.sigma)).float()
    w = config.window_size
    thresholds = bootstrap_mmd_thresholds(kernel, window_size=w, ert=config.ert, n_bootstraps=config.bootstraps)
    perm = torch.randperm(len(x)).numpy().astype(np.int64)
    took = time.perf_counter() - started
    split = Split(after.reference, perm[: len(x) - (2 * w - 1)], perm[-w:], after.sigma, tuple(thresholds))
    return split, took


def run_lengths(
    pool: Pool, size: int, *, streams: int, cap: int, repeats: Repeats = NO_REPEATS
) -> tuple[NDArray[np.int64], float]:
    """First alarm of each clean stream (``cap + 1`` for a stream without one: censored), and the share of the
    streams' events above their threshold (the detector not reset after an alarm)."""
    rng = np.random.default_rng(1)
    found, above = [], 0
    for _ in range(streams):
        above_threshold = pool.above(repeats.into(rng, passes(rng, cap, size)))
        hits = np.nonzero(above_threshold)[0]
        found.append(int(hits[0]) + 1 if hits.size else None)
        above += int(above_threshold.sum())
    return np.array([cap + 1 if f is None else f for f in found]), above / (streams * cap)


def censored_mean(lengths: NDArray[np.int64], cap: int) -> float:
    """Events observed / alarms: the maximum-likelihood mean of a geometric run length censored at ``cap``."""
    alarms = int(np.sum(lengths <= cap))
    return float(np.minimum(lengths, cap).sum() / alarms) if alarms else float("inf")


def delay(pool: Pool, size: int, shifted: tuple[int, int], *, trials: int = 20, repeats: Repeats = NO_REPEATS) -> float:
    """Median events after the shift (pool rows ``[offset, offset + count)``) until the alarm (a miss: infinite)."""
    (offset, count), w, delays = shifted, pool.window, []
    for trial in range(trials):
        rng = np.random.default_rng(1000 + trial)
        rows = np.concatenate([rng.permutation(size)[:w], offset + np.concatenate([rng.permutation(count)] * 2)])
        rows = repeats.into(rng, rows)
        first = pool.first_alarm(rows)
        if first is not None and first <= w:
            continue
        delays.append(np.inf if first is None else first - w)
    return float(np.median(delays)) if delays else float("nan")


Summary = dict[str, list[tuple[float, float]]]
"""Per label, each seed's (mean, median) run length, for the closing lines."""


def report(
    label: str,
    split: Split,
    rows: NDArray[np.float32],
    data: Data,
    args: argparse.Namespace,
    summary: Summary,
    repeats: Repeats = NO_REPEATS,
) -> str:
    """One seed's line for ``label``; its mean and median run also go into ``summary``."""
    config, size = DriftConfig(ert=args.ert), len(data.traffic)
    cap, early = CAP_PER_ERT * config.ert, round(EARLY_PER_ERT * config.ert)
    pool = Pool(split, rows, config.window_size)
    lengths, above = run_lengths(pool, size, streams=args.streams, cap=cap, repeats=repeats)
    counts = [len(x) for _, x in data.shifts]
    offsets = np.cumsum([size, *counts[:-1]])
    delays = [
        delay(pool, size, (int(offset), count), repeats=repeats) for offset, count in zip(offsets, counts, strict=True)
    ]
    mean, median = censored_mean(lengths, cap), float(np.median(np.minimum(lengths, cap)))
    summary.setdefault(label, []).append((mean, median))
    copies = int(np.sum(_copies_in(split, rows, repeats)))
    return (
        f"{label:10s} kept {len(split.ref_inds):4d} ({copies} copies)  threshold {split.thresholds[-1]:.5f}  "
        f"mean run {mean:5.0f}  median run {median:5.0f}  within {early}: {np.mean(lengths <= early):4.0%}  "
        f"capped {np.mean(lengths > cap):4.0%}  events above {above:6.2%}  "
        + "  ".join(f"delay {name} {d:4.0f}" for (name, _), d in zip(data.shifts, delays, strict=True))
    )


def _copies_in(split: Split, rows: NDArray[np.float32], repeats: Repeats) -> NDArray[np.bool_]:
    """Which kept reference rows are copies of a repeated input (none without repeats)."""
    kept = split.reference[split.ref_inds]
    if repeats.share <= 0:
        return np.zeros(len(kept), dtype=bool)
    repeated = rows[repeats.offset : repeats.offset + repeats.count]
    # Projected in other batches than the stored rows: equal up to rounding.
    found: NDArray[np.bool_] = (np.abs(kept[:, None, :] - repeated[None, :, :]).max(2) < 1e-4).any(1)
    return found


def summarise(summary: Summary, ert: int) -> None:
    geometric_median = np.log(2) * ert  # of a geometric run length of mean ``ert``
    for label, runs in summary.items():
        means, medians = np.array(runs).T
        print(
            f"{label}: mean run {means.min():.0f}-{means.max():.0f} ({means.max() / means.min():.2f}x), "
            f"{np.sum(np.abs(means - ert) <= ert / 4)}/{len(runs)} within ERT +-25%; median run "
            f"{medians.min():.0f}-{medians.max():.0f}, {np.sum(np.abs(medians - ert) <= ert / 4)} within ERT +-25%, "
            f"{np.sum(np.abs(medians - geometric_median) <= geometric_median / 4)} within +-25% of "
            f"{geometric_median:.0f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", choices=("digits", "sentences"), default="digits")
    parser.add_argument(
        "--corpus",
        choices=sentence_embeddings.CORPORA,
        default="small",
        help="sentences: the clean text (default: small)",
    )
    parser.add_argument("--reference", type=int, default=2000, help="sentences: reference rows given to the monitor")
    parser.add_argument("--max-reference", type=int, help="DriftConfig.max_reference (default: its default)")
    parser.add_argument("--pca-share", type=float, help="DriftConfig.pca_share (default: its default)")
    parser.add_argument(
        "--pca-components",
        type=lambda text: None if text == "none" else int(text),
        default=0,
        help="DriftConfig.pca_components, or none: no PCA (default: its default)",
    )
    parser.add_argument(
        "--steady-steps-per-ert",
        type=int,
        help="DriftConfig.steady_steps_per_ert (default: automatic, as deployed: 1000 from a reference of 5,000 "
        "rows, else 0)",
    )
    parser.add_argument(
        "--cache-dir",
        type=Path,
        help="where the digits CNN is trained once (default: a temp dir) or the sentence embeddings are cached "
        f"(default: {sentence_embeddings.DEFAULT_CACHE})",
    )
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--streams", type=int, default=200, help="clean streams per seed")
    parser.add_argument("--before", action="store_true", help="also calibrate as alibi-detect does (re-split)")
    parser.add_argument("--sequential", action="store_true", help="also with steady_steps_per_ert=0")
    parser.add_argument("--ert", type=int, default=1000, help="DriftConfig.ert (default 1000)")
    parser.add_argument(
        "--repeat-share",
        type=float,
        default=0.0,
        help="share of the reference's rows and of every stream's events that are copies of repeated inputs",
    )
    parser.add_argument("--repeat-inputs", type=int, default=1, help="how many inputs repeat (default 1)")
    parser.add_argument(
        "--distinct-reference",
        action="store_true",
        help="calibrate on one row per distinct embedding of the reference (the online detector before it kept copies)",
    )
    parser.add_argument(
        "--random-split",
        action="store_true",
        help="digits: split the unseen images into reference and traffic at random, anew per seed (the demo's "
        "split is stratified by label)",
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", message=r"`torch\.jit\.\w+` is deprecated", category=DeprecationWarning)
    if not 0 <= args.repeat_share < 1:
        raise SystemExit("--repeat-share must be in [0, 1)")
    data_of = _data_source(args)
    first = data_of(0)
    cap = CAP_PER_ERT * args.ert
    print(
        f"ERT {args.ert}, window {DriftConfig().window_size}; {args.streams} clean streams per seed of "
        f"{first.described}, capped at {cap}"
        + (
            f"; {args.repeat_share:.0%} of reference rows and events copies of {args.repeat_inputs} input(s)"
            + (", the reference deduplicated" if args.distinct_reference else "")
            if args.repeat_share
            else ""
        )
    )
    settings = {
        "max_reference": args.max_reference,
        "pca_share": args.pca_share,
        "steady_steps_per_ert": args.steady_steps_per_ert,
    }
    overrides = {name: value for name, value in settings.items() if value is not None}
    if args.pca_components != 0:
        overrides["pca_components"] = args.pca_components
    summary: Summary = {}
    for seed in range(args.seeds):
        config = DriftConfig(seed=seed, window_tests=False, ert=args.ert, **overrides)
        data = first if seed == 0 else data_of(seed)
        repeated = repeated_inputs(data, args.repeat_inputs)
        data = replace(data, reference=with_copies(data.reference, repeated, args.repeat_share))
        pca, after, took, steady = deployed(data, config, distinct=args.distinct_reference)
        rows = np.concatenate([data.traffic, *(x for _, x in data.shifts), repeated])
        rows = rows if pca is None else pca.transform(rows)
        repeats = Repeats(offset=len(rows) - len(repeated), count=len(repeated), share=args.repeat_share)
        if seed == 0:
            check(after, rows[repeats.into(np.random.default_rng(2), np.arange(300))])
        print(
            f"seed {seed}: calibration {took:.1f} s, steady_steps_per_ert {steady}, reference "
            f"{len(data.reference)} rows ({len(data.reference.distinct_rows())} distinct)",
            flush=True,
        )
        print("  " + report("deployed", after, rows, data, args, summary, repeats), flush=True)
        if args.sequential:
            _, sequential, took, _ = deployed(
                data, config.model_copy(update={"steady_steps_per_ert": 0}), distinct=args.distinct_reference
            )
            if not np.array_equal(sequential.ref_inds, after.ref_inds):
                raise SystemExit("the sequential calibration kept other rows than the deployed one")
            line = report("sequential", sequential, rows, data, args, summary, repeats)
            print(f"  {line}  ({took:.1f} s)", flush=True)
        if args.before:
            before, took = alibi_style(after, DriftConfig(ert=args.ert), seed)
            print(f"  {report('before', before, rows, data, args, summary, repeats)}  ({took:.1f} s)", flush=True)
    summarise(summary, args.ert)


def _data_source(args: argparse.Namespace) -> Callable[[int], Data]:
    """The data of each seed: one for every seed, except the digits' random split, drawn per seed."""
    if args.data == "sentences":
        if args.random_split:
            raise SystemExit("--random-split splits the digits' unseen images; sentences have their own pool")
        sentences = sentence_data(args.cache_dir, args.reference, args.corpus)
        return lambda seed: sentences
    if not args.random_split:
        fixed = digits_data(args.cache_dir)
        return lambda seed: fixed
    with model_dir(args.cache_dir) as directory:
        digits = Digits(directory, held_out=True)
    return lambda seed: digits_random_split(digits, seed)


def check(split: Split, rows: NDArray[np.float32]) -> None:
    """The pool statistic equals the detector's own, event by event."""
    ours = Pool(split, rows, len(split.init_test_inds)).scores(np.arange(len(rows)))
    theirs, _ = OnlineDriftDetector.from_state(state_of(split)).scores(rows)
    print(f"pool statistic vs OnlineDriftDetector.scores: max abs difference {np.abs(ours - theirs).max():.1e}")


def state_of(split: Split) -> OnlineState:
    return OnlineState(
        method="mmd",
        ert=1000,  # scoring does not read it
        window_size=len(split.init_test_inds),
        n_bootstraps=10000,
        reference=EncodedArray.of(split.reference),
        sigma=split.sigma,
        thresholds=split.thresholds,
        ref_inds=EncodedArray.of(split.ref_inds),
        init_test_inds=EncodedArray.of(split.init_test_inds),
    )


if __name__ == "__main__":
    main()
