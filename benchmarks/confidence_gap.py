"""How far an honest server's reported confidence is from the worker's: the figures behind the confidence check.

    .venv/bin/python -m benchmarks.confidence_gap [--seeds 1 2 3 4] [--draws 8] [--train-on demo]

The attribution worker takes its float32 model's probability p(c) of the class c the server reported and
compares it with the server's reported p(c) (the event's ``confidence``); beyond
``prediction_confidence_tolerance`` (0.05) the server's model is taken for another one and every map is not
trusted. On the digits CNN trained as the demo trains it (``--train-on all``: on the whole training side, the
tests' model), each server below answers the 450 test digits and ``--draws`` x 3 corrupted copies of them
(the demo's drift corruptions, noise, blur and occlusion, at severities 0.5, 1 (the demo's) and 2). The
server's class and confidence are what the sidecar takes from its answer (``summarise_matrix``: the top class
of the posted probabilities, or of the logits with their softmax) and the worker's verdict is the real
``worker_predictions`` with the default tolerances: the gap |p(c) - reported| is counted only on inputs that
pass the class check, as the worker judges confidence only there ("checked"; "class-fail": inputs that fail
it).

Servers: the same weights in bfloat16 and float16, softmax in that dtype (and those servers' logits with the
sidecar's softmax); the float32 logits rounded to 1 decimal; the float32 probabilities rounded to bfloat16;
weights of other training seeds (float32). All but the seeds serve the worker's very model: their gaps are
what the tolerance must let through. Another seed is another model: its share above 0.05 is what the check
sees. Last, how far from 1 the bfloat16 and float16 probability vectors sum (the sidecar refuses beyond 1e-2).
Training is deterministic: a rerun prints the same figures. The default run takes ~30 s on one core.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
from collections.abc import Callable, Sequence

import numpy as np
import torch
from numpy.typing import NDArray

from attribution_workers.config import AttributionConfig
from attribution_workers.prediction import worker_predictions
from demo.corruptions import corrupt
from demo.models import digits
from service.events.scores import summarise_matrix

Images = NDArray[np.float32]
Served = tuple[NDArray[np.float32], bool]
"""What a server posts for a batch: scores ``[N, classes]`` and whether they are logits."""
Server = Callable[[Images], Served]

THRESHOLDS = (0.03, 0.05, 0.1)
SUM_THRESHOLDS = (1e-3, 5e-3, 1e-2)
SEVERITIES = (0.5, 1.0, 2.0)
TIE_TOLERANCE = AttributionConfig.model_fields["prediction_tie_tolerance"].default
CONFIDENCE_TOLERANCE = AttributionConfig.model_fields["prediction_confidence_tolerance"].default


def main(argv: Sequence[str] | None = None) -> None:
    args = _parse(argv)
    torch.set_num_threads(args.threads)
    split = digits.load_digits_split(hold_out_reference=args.train_on == "demo")
    clean = split.test.features
    corrupted = np.concatenate(
        [corrupt(clean, seed=100 + draw, severity=severity)[0] for draw in range(args.draws) for severity in SEVERITIES]
    )
    inputs = {"clean": clean, "corrupted": corrupted}
    model = digits.train_digits_cnn(split).eval()
    servers = _same_model_servers(model)
    for seed in args.seeds:
        other = digits.train_digits_cnn(split, plan=dataclasses.replace(digits.PLAN, seed=seed)).eval()
        servers[f"weights of training seed {seed}"] = _float32(other)

    print(
        f"digits CNN trained on {len(split.train.labels)} digits (seed {digits.PLAN.seed}); {len(clean)} test digits,"
        f" {len(corrupted)} corrupted; tolerances: class {TIE_TOLERANCE}, confidence {CONFIDENCE_TOLERANCE}"
    )
    header = f"{'server':47s} {'inputs':9s} {'checked':>7s} {'class-fail':>10s} {'median':>7s} {'p99':>7s} {'max':>7s}"
    print(header + "".join(f" {'>' + str(t):>6s}" for t in THRESHOLDS))
    figures: dict[tuple[str, str], NDArray[np.float64]] = {}
    for name, server in servers.items():
        for where, images in inputs.items():
            gaps, class_failures = _gaps(model, server, images)
            figures[name, where] = gaps
            print(f"{name:47s} {where:9s} {_row(gaps, class_failures)}")
    _print_sums(model, inputs)
    _print_figures(figures, [f"weights of training seed {seed}" for seed in args.seeds])


def _same_model_servers(model: torch.nn.Module) -> dict[str, Server]:
    servers: dict[str, Server] = {}
    for dtype in (torch.bfloat16, torch.float16):
        name = str(dtype).removeprefix("torch.")
        servers[f"{name} weights, {name} softmax"] = _half(model, dtype, probabilities=True)
        servers[f"{name} weights, logits, the sidecar's softmax"] = _half(model, dtype, probabilities=False)
    servers["float32 logits rounded to 1 decimal"] = lambda images: (np.round(_logits(model, images), 1), True)
    servers["float32 probabilities rounded to bfloat16"] = lambda images: (
        torch.from_numpy(_logits(model, images)).double().softmax(dim=1).bfloat16().float().numpy(),
        False,
    )
    return servers


def _logits(model: torch.nn.Module, images: Images) -> NDArray[np.float32]:
    with torch.no_grad():
        found: NDArray[np.float32] = model(torch.from_numpy(images)).float().numpy()
    return found


def _float32(model: torch.nn.Module) -> Server:
    return lambda images: (_logits(model, images), True)


def _half(model: torch.nn.Module, dtype: torch.dtype, *, probabilities: bool) -> Server:
    served = copy.deepcopy(model).to(dtype)

    def answer(images: Images) -> Served:
        with torch.no_grad():
            logits = served(torch.from_numpy(images).to(dtype))
            scores = torch.softmax(logits, dim=1) if probabilities else logits
        return scores.float().numpy(), not probabilities

    return answer


def _gaps(model: torch.nn.Module, server: Server, images: Images) -> tuple[NDArray[np.float64], int]:
    """The worker's confidence gaps on the inputs that pass its class check, and how many fail that check."""
    scores, from_logits = server(images)
    predicted, confidences, _ = summarise_matrix(scores, from_logits=from_logits)
    with torch.no_grad():
        logits = model(torch.from_numpy(images))
    found = worker_predictions(
        logits, predicted, confidences, tolerance=TIE_TOLERANCE, confidence_tolerance=CONFIDENCE_TOLERANCE
    )
    gaps = [p.confidence_gap for p in found if p.mismatch != "class"]
    if any(gap is None for gap in gaps):
        raise RuntimeError("the sidecar took a confidence outside [0, 1]: the worker skipped its check")
    return np.array(gaps, dtype=np.float64), sum(p.mismatch == "class" for p in found)


def _row(gaps: NDArray[np.float64], class_failures: int) -> str:
    median, p99 = np.quantile(gaps, [0.5, 0.99])
    shares = "".join(f" {float((gaps > t).mean()):6.1%}" for t in THRESHOLDS)
    return f"{len(gaps):7d} {class_failures:10d} {median:7.4f} {p99:7.4f} {gaps.max():7.4f}{shares}"


def _print_sums(model: torch.nn.Module, inputs: dict[str, Images]) -> None:
    print("\nprobability vectors of the same weights, softmax in the serving dtype: |sum - 1|")
    print(
        f"{'dtype':9s} {'inputs':9s} {'vectors':>7s}"
        + "".join(f" {'>' + str(t):>7s}" for t in SUM_THRESHOLDS)
        + "     max"
    )
    for dtype in (torch.bfloat16, torch.float16):
        server = _half(model, dtype, probabilities=True)
        for where, images in inputs.items():
            off = np.abs(server(images)[0].astype(np.float64).sum(axis=1) - 1.0)
            shares = "".join(f" {float((off > t).mean()):7.1%}" for t in SUM_THRESHOLDS)
            print(f"{str(dtype).removeprefix('torch.'):9s} {where:9s} {len(off):7d}{shares} {off.max():7.4f}")


def _print_figures(figures: dict[tuple[str, str], NDArray[np.float64]], seeds: list[str]) -> None:
    same = {key: gaps for key, gaps in figures.items() if key[0] not in seeds}
    (name, where), widest = max(same.items(), key=lambda item: item[1].max())
    print(f"\nthe same model served otherwise: largest gap {widest.max():.4f} ({name}, {where})")
    for where in ("clean", "corrupted"):
        above = [float((figures[seed, where] > CONFIDENCE_TOLERANCE).mean()) for seed in seeds]
        far = [float((figures[seed, where] > 0.1).mean()) for seed in seeds]
        if above:
            print(
                f"other training seeds, {where}: above {CONFIDENCE_TOLERANCE} on {min(above):.1%}-{max(above):.1%}"
                f" of the inputs that pass the class check (above 0.1: {min(far):.1%}-{max(far):.1%})"
            )


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seeds", type=int, nargs="*", default=[1, 2, 3, 4], help="other training seeds (1 2 3 4)")
    parser.add_argument("--draws", type=int, default=8, help="corrupted copies of the test digits per severity (8)")
    parser.add_argument(
        "--train-on",
        choices=("demo", "all"),
        default="demo",
        help="demo: without the held-out reference, as the demo trains it; all: the whole training side (the tests')",
    )
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default: 1)")
    args = parser.parse_args(argv)
    if args.draws < 1:
        parser.error("--draws must be at least 1")
    if digits.PLAN.seed in args.seeds:
        parser.error(f"--seeds: {digits.PLAN.seed} is the worker's own training seed")
    return args


if __name__ == "__main__":
    main()
