"""Which attribution methods the demo can trust: verdicts of the real worker runtime on the digits CNN, demo settings.

    python -m benchmarks.method_trust              # the demo's methods
    python -m benchmarks.method_trust --methods gradcam,integrated_gradients,occlusion,saliency,gradient_shap,lime

Two phases as in the demo, clean test digits then corrupted ones (noise, blur, occlusion):
``--batches`` batches of 16 random images each go through ``ModelRuntime.explain`` with the
demo's ``ATTRIBUTION`` settings, and the randomisation sanity check runs on the 16 most recent
inputs after the first batch and half-way (the demo runs it every 60 s). Before the first check
the sanity part is not measured and no map is judged. Prints each check's similarities (the
flagged figure, then the |map| and signed Spearman over the input's support) and, per method,
the share of trusted verdicts and of each part, with the mean deletion gain and agreement.
Request ids, and so the random deletion orders, are fixed: a rerun prints the same figures
(Gradient SHAP's unseeded noise aside). The model is the
demo's (trained without the held-out reference) and is trained into ``--cache-dir`` on first use.
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from numpy.typing import NDArray

from attribution_workers.config import AttributionConfig
from attribution_workers.runtime import ModelRuntime
from benchmarks.options import add_cache_dir
from demo.corruptions import corrupt
from demo.models import digits
from demo.settings import ATTRIBUTION, METHODS
from sampler.contract import InputTensor, SampledEvent
from sampler.explanation_records import SanityFigure

PARTS = ("trusted", "passes_sanity", "beats_random", "agrees", "converges")
BATCH = 16


def main(argv: Sequence[str] | None = None) -> None:
    args = _parse(argv)
    torch.set_num_threads(args.threads)
    runtime = demo_runtime(args.methods.split(","), args.cache_dir)
    split = digits.load_digits_split(hold_out_reference=True)
    rng = np.random.default_rng(0)
    for phase in ("clean", "drift"):
        images = split.test.features if phase == "clean" else corrupt(split.test.features, seed=3)[0]
        chosen = images[rng.permutation(len(images))[: args.batches * BATCH]]
        figures = _phase(runtime, phase, chosen, args.batches)
        print(f"{phase}: {len(chosen)} events")
        for method in runtime.methods:
            print(f"  {method:22} " + "  ".join(f"{key} {value}" for key, value in figures[method].items()))


def demo_runtime(methods: Sequence[str], cache_dir: Path, *, sanity_samples: int = BATCH) -> ModelRuntime:
    """The worker's runtime of the demo's digits CNN with the demo's attribution settings, layers not inspected;
    ``sanity_samples`` 16 (one batch) here, as the figures in benchmarks/README.md were taken (the demo uses 32)."""
    section = {k: v for k, v in ATTRIBUTION.items() if not k.startswith(("inspect", "feature_map"))}
    model = digits.ensure_digits_model(cache_dir, hold_out_reference=True)
    spec = {"torchscript": str(model), "input_shape": list(digits.INPUT_SHAPE), "num_classes": digits.NUM_CLASSES}
    config = AttributionConfig.model_validate(
        {**section, "methods": list(methods), "inspect_layers": [], "model": spec, "sanity_samples": sanity_samples}
    )
    return ModelRuntime("digits", config, device="cpu")


def _phase(runtime: ModelRuntime, phase: str, images: NDArray[np.float32], batches: int) -> dict[str, dict[str, str]]:
    sanity: dict[str, SanityFigure] = {}
    seen: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for number in range(batches):
        batch = images[number * BATCH : (number + 1) * BATCH]
        result = runtime.explain(demo_events(runtime, batch, prefix=f"{phase}-{number}"), sanity)
        for outcome in result.outcomes:
            for method, trust in outcome.record.summary.trust.items():
                for part in PARTS:
                    value = getattr(trust.verdict, part)
                    if value is not None:
                        seen[method][part].append(float(value))
                for name, figure in (("gain", trust.fidelity_gain), ("agreement", trust.agreement)):
                    if figure is not None:
                        seen[method][name].append(figure)
        if number in (0, batches // 2):
            checks = runtime.sanity_check()
            sanity = {
                c.method: SanityFigure(
                    similarity=c.similarity,
                    flagged=c.flagged,
                    samples=c.measured,
                    checked_at=time.time(),
                    model_digest=runtime.model.digest,
                )
                for c in checks
                if c.similarity is not None
            }
            shown = ", ".join(
                f"{c.method} {_figure(c.similarity)} (|map| {_figure(c.absolute)}, signed {_figure(c.signed)})"
                f"{' FLAGGED' if c.flagged else ''}"
                for c in checks
            )
            print(f"  {phase} sanity check after batch {number + 1}: {shown}")
    return {method: _summary(values) for method, values in seen.items()}


def _figure(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.2f}"


def _summary(values: dict[str, list[float]]) -> dict[str, str]:
    shares = {part: f"{np.mean(values[part]):.2f} (n={len(values[part])})" for part in PARTS if values[part]}
    means = {f"mean {name}": f"{np.mean(values[name]):+.3f}" for name in ("gain", "agreement") if values[name]}
    return shares | means


def demo_events(runtime: ModelRuntime, images: NDArray[np.float32], *, prefix: str) -> list[SampledEvent]:
    """``images`` as the sampled events of the demo's traffic, each with the model's own prediction."""
    with torch.no_grad():
        confidence, predicted = runtime.model.module(torch.from_numpy(images)).softmax(dim=1).max(dim=1)
    now = time.time()
    return [
        SampledEvent(
            model="digits",
            model_version="v1",
            request_id=f"{prefix}-{row}",
            timestamp=now,
            received_at=now,
            reasons=("every_n",),
            predicted=int(predicted[row]),
            confidence=float(confidence[row]),
            margin=0.0,
            num_classes=digits.NUM_CLASSES,
            input=InputTensor.of(images[row]),
        )
        for row in range(len(images))
    ]


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated (default: the demo's)")
    parser.add_argument("--batches", type=int, default=10, help="batches of 16 per phase (default: 10)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default: 1)")
    add_cache_dir(parser)
    return parser.parse_args(argv)


if __name__ == "__main__":
    main()
