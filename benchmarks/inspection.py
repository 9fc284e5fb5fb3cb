"""Worker cost of layer inspection as a share of the attribution cost per batch, side by side in one run.

    .venv/bin/python -m benchmarks.inspection                  # CPU, one torch thread (the worker's default)
    .venv/bin/python -m benchmarks.inspection --device cuda    # GPU

Two runtimes of the eager digits CNN with the demo's attribution settings (five methods, fidelity,
agreement), one inspecting the demo's seven layers (feature maps of the two convolutions) and one
with ``inspect_layers = []``, explain the same batches of sampled events, alternately, after warm-up
runs. Figures are medians over ``--repeats`` batches:

- *attribution*: ``ModelRuntime.explain`` without inspection (what a batch costs today);
- *inspection, direct*: the inspection work alone, timed inside the same kind of batch: the hooked
  forward pass, per-row statistics and float16 feature maps, and the health windows;
- *with inspection*: ``explain`` with inspection; the difference to *attribution* is noisier than
  the direct figure (two medians of a noisy sum), both are printed.

The target is inspection <= 10% of attribution.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from numpy.typing import NDArray

from attribution_workers.config import AttributionConfig
from attribution_workers.inspection_health import LayerHealthTracker
from attribution_workers.runtime import ModelRuntime
from common.codec import EncodedArray
from demo.models import digits
from demo.settings import ATTRIBUTION
from sampler.contract import InputTensor, SampledEvent

WARM_UP_RUNS = 2


def main(argv: Sequence[str] | None = None) -> None:
    args = _parse(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    weights = digits.ensure_digits_weights(digits.ensure_digits_model(args.cache_dir))
    model = {"factory": digits.FACTORY, "weights": weights, "input_shape": digits.INPUT_SHAPE, "num_classes": 10}
    inspecting = ModelRuntime(
        "digits", AttributionConfig.model_validate({**ATTRIBUTION, "model": model}), device=args.device
    )
    plain = ModelRuntime(
        "digits",
        AttributionConfig.model_validate({**ATTRIBUTION, "model": model, "inspect_layers": []}),
        device=args.device,
    )
    images = digits.load_digits_split().test.features
    batches = [
        _events(images, start * args.batch_size, args.batch_size) for start in range(len(images) // args.batch_size)
    ]
    timings: dict[str, list[float]] = {"attribution": [], "with inspection": [], "inspection, direct": []}
    for run in range(WARM_UP_RUNS + args.repeats):
        batch = batches[run % len(batches)]
        if run % 2:  # alternate the order, so neither side always runs on a warmer cache
            with_inspection, without = _timed(inspecting, batch), _timed(plain, batch)
        else:
            without, with_inspection = _timed(plain, batch), _timed(inspecting, batch)
        direct = _inspection_only(inspecting, batch)
        if run >= WARM_UP_RUNS:
            timings["attribution"].append(without)
            timings["with inspection"].append(with_inspection)
            timings["inspection, direct"].append(direct)
    _report(inspecting, timings, args, _stored_bytes(inspecting, batches[0]))


def _events(images: NDArray[np.float32], start: int, count: int) -> list[SampledEvent]:
    return [
        SampledEvent(
            model="digits",
            model_version="v1",
            request_id=f"b{start + row}",
            timestamp=float(start + row),
            received_at=float(start + row),
            reasons=("every_n",),
            predicted=0,
            confidence=0.5,
            margin=0.1,
            num_classes=10,
            input=InputTensor.model_validate(EncodedArray.of(images[start + row]).model_dump()),
        )
        for row in range(count)
    ]


def _timed(runtime: ModelRuntime, batch: list[SampledEvent]) -> float:
    started = time.perf_counter()
    result = runtime.explain(batch)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - started
    if not all(outcome.ok for outcome in result.outcomes):
        raise RuntimeError("a benchmark batch failed; the figures would mean nothing")
    return elapsed


def _inspection_only(runtime: ModelRuntime, batch: list[SampledEvent]) -> float:
    """What inspection adds to one batch: the hooked pass, per-row records, the health windows."""
    inputs = torch.stack([torch.from_numpy(event.input.decode()) for event in batch if event.input is not None])
    tracker = LayerHealthTracker(window=runtime.config.inspect_window)
    started = time.perf_counter()
    found = runtime.inspector.inspect(inputs.to(runtime.model.device))
    for row, event in enumerate(batch):
        found.stats(row)
        found.feature_maps(row)
        tracker.add(event.model_version, found, row)
    tracker.snapshot("v1")
    return time.perf_counter() - started


def _stored_bytes(runtime: ModelRuntime, batch: list[SampledEvent]) -> tuple[int, int]:
    """Mean JSON bytes per explanation of the layer statistics, and of the feature maps."""
    details = [outcome.record.detail for outcome in runtime.explain(batch).outcomes]
    stats = [sum(len(layer.model_dump_json()) for layer in detail.layers) for detail in details]
    maps = [sum(len(m.model_dump_json()) for m in detail.feature_maps.values()) for detail in details]
    return round(statistics.mean(stats)), round(statistics.mean(maps))


def _report(
    runtime: ModelRuntime, timings: dict[str, list[float]], args: argparse.Namespace, stored: tuple[int, int]
) -> None:
    medians = {name: statistics.median(values) for name, values in timings.items()}
    base = medians["attribution"]
    layers = ", ".join(layer.name for layer in runtime.inspector.layers)
    device, threads = runtime.model.device, torch.get_num_threads()
    print(f"digits CNN (eager), batch {args.batch_size}, device {device}, torch threads {threads}")
    print(f"methods {', '.join(runtime.methods)}; inspected layers {layers}")
    print(f"median of {args.repeats} batches after {WARM_UP_RUNS} warm-up runs\n")
    print(f"{'':<22} {'ms/batch':>10} {'share of attribution':>22}")
    for name, seconds in medians.items():
        print(f"{name:<22} {seconds * 1e3:>10.2f} {seconds / base:>21.1%}")
    difference = medians["with inspection"] - base
    print(f"{'difference':<22} {difference * 1e3:>10.2f} {difference / base:>21.1%}")
    print(f"\nstored per explanation: layer statistics {stored[0]} B, feature maps {stored[1]} B of JSON")
    ratio = medians["inspection, direct"] / base
    print(f"inspection / attribution = {ratio:.3f} (target <= 0.10): {'met' if ratio <= 0.10 else 'NOT met'}")


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (0: torch's default)")
    parser.add_argument("--cache-dir", type=Path, default=Path(tempfile.gettempdir()) / "vai-bench-models")
    return parser.parse_args(argv)


if __name__ == "__main__":
    main()
