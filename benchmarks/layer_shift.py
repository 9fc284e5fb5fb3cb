"""The activation shift the workers report, on the digits CNN's held-out images: clean against corrupted.

    .venv/bin/python -m benchmarks.layer_shift [--draws 10] [--window 64]

Each draw takes a random ``window`` (K) held-out digits as a layer-health baseline and another K as the
recent inputs, once clean and once with the demo's corruptions (noise, blur, occlusion), through the real
``LayerInspector`` and ``LayerHealthTracker``. Printed per layer: its units, how many the shift averages
over (units constant through the baseline and still so, e.g. dead ones, are left out), and the range of
the shift over the draws, clean and corrupted. A standardised mean difference of two samples of K reads
about sqrt(4 / (pi K)) (0.14 at K = 64) when nothing changed.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch

from attribution_workers.config import AttributionConfig
from attribution_workers.inspection import LayerInspector
from attribution_workers.inspection_health import LayerHealthTracker
from attribution_workers.loader import ModelSpec, load_model
from demo.corruptions import corrupt
from demo.models import digits

Images = npt.NDArray[np.float32]


def _inspector(directory: Path) -> LayerInspector:
    path = digits.ensure_digits_model(directory)
    spec = ModelSpec(
        factory=digits.FACTORY,
        weights=digits.ensure_digits_weights(path),
        input_shape=digits.INPUT_SHAPE,
        num_classes=digits.NUM_CLASSES,
    )
    return LayerInspector(load_model(spec, device="cpu"), AttributionConfig(model=spec, methods=("saliency",)))


def _shifts(inspector: LayerInspector, baseline: Images, recent: Images) -> dict[str, tuple[float, int, int]]:
    """Per layer: (shift, units counted, units) after ``baseline`` then ``recent``."""
    tracker = LayerHealthTracker(window=len(baseline))
    for batch in (baseline, recent):
        inspection = inspector.inspect(torch.as_tensor(batch))
        for row in range(len(batch)):
            tracker.add("v1", inspection, row)
    snapshot = tracker.snapshot("v1")
    if snapshot is None:
        raise RuntimeError("the tracker kept no figures of the inputs it was given")
    return {
        layer.name: (layer.activation_shift, layer.shift_units, layer.units)
        for layer in snapshot.layers
        if layer.activation_shift is not None and layer.shift_units is not None
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--draws", type=int, default=10)
    parser.add_argument("--window", type=int, default=64)
    args = parser.parse_args()
    images = digits.load_digits_split().test.features
    k = args.window
    with tempfile.TemporaryDirectory() as directory:
        inspector = _inspector(Path(directory))
        clean, corrupted = [], []
        for draw in range(args.draws):
            order = np.random.default_rng(draw).permutation(len(images))
            baseline, recent = images[order[:k]], images[order[k : 2 * k]]
            clean.append(_shifts(inspector, baseline, recent))
            corrupted.append(_shifts(inspector, baseline, corrupt(recent, seed=draw)[0]))
    print(f"{len(images)} held-out digits, K = {k}, {args.draws} draws; expected clean ~{np.sqrt(4 / (np.pi * k)):.2f}")
    print(f"{'layer':12s} {'units':>5s} {'counted':>7s}   {'clean':>11s}   {'corrupted':>11s}")
    for name, (_, counted, units) in clean[0].items():
        quiet = [draw[name][0] for draw in clean]
        moved = [draw[name][0] for draw in corrupted]
        ranges = f"{min(quiet):.2f} – {max(quiet):.2f}   {min(moved):.2f} – {max(moved):.2f}"
        print(f"{name:12s} {units:5d} {counted:7d}   {ranges}")


if __name__ == "__main__":
    main()
