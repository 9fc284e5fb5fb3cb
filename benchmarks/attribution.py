"""Attribution throughput on the digits CNN: explanations/s per method, and cost in forward passes of the same batch.

    python benchmarks/attribution.py                  # CPU
    python benchmarks/attribution.py --device cuda    # GPU

The model is trained into ``--cache-dir`` on first use (a few seconds, nothing is
downloaded). Each figure is the median of ``--repeats`` timed runs after two warm-up
runs (TorchScript optimises a function on its first calls). "x forward" divides a
method's time by one no-grad forward pass of the same batch, measured in the same run.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Sequence

import torch

from attribution_workers.explainer import Explainer, stack_maps
from attribution_workers.loader import LoadedModel, ModelSpec, load_model
from attribution_workers.methods import METHOD_NAMES, MethodName
from attribution_workers.trust import deletion_fidelity
from benchmarks.options import add_cache_dir
from demo.models import digits

KERNEL_SHAP_SAMPLES = 128
"""Kernel SHAP coalitions per image: twice the 64 pixels."""
WARM_UP_RUNS = 2


def main(argv: Sequence[str] | None = None) -> None:
    args = _parse(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_model(
        ModelSpec(
            torchscript=digits.ensure_digits_model(args.cache_dir),
            input_shape=digits.INPUT_SHAPE,
            num_classes=digits.NUM_CLASSES,
        ),
        device=args.device,
    )
    images = torch.from_numpy(digits.load_digits_split().test.features[: args.batch_size]).to(model.device)
    with torch.no_grad():
        targets = model.module(images).argmax(dim=1)
    forward_s = _median_s(lambda: _forward(model, images), args.repeats, model.device)
    print(f"digits CNN, batch {len(images)}, device {model.device}, torch threads {torch.get_num_threads()}")
    print(f"forward pass: {forward_s * 1e3:.3f} ms per batch\n")
    print(f"{'method':<34} {'ms/batch':>10} {'explanations/s':>15} {'x forward':>10}")
    for label, run in _workloads(model, images, targets):
        seconds = _median_s(run, args.repeats, model.device)
        print(f"{label:<34} {seconds * 1e3:>10.1f} {len(images) / seconds:>15.1f} {seconds / forward_s:>10.0f}")


def _workloads(
    model: LoadedModel, images: torch.Tensor, targets: torch.Tensor
) -> list[tuple[str, Callable[[], object]]]:
    def explain(method: MethodName) -> Callable[[], object]:
        samples = KERNEL_SHAP_SAMPLES if method == "kernel_shap" else 16  # 16: the Explainer's default
        explainer = Explainer(model, methods=[method], shap_samples=samples)
        return lambda: explainer.explain(images, targets)

    saliency = stack_maps(Explainer(model, methods=["saliency"]).explain(images, targets), "saliency")
    workloads = [(_label(method), explain(method)) for method in METHOD_NAMES]
    workloads.append(
        ("deletion fidelity (16 steps, 3 rand)", lambda: deletion_fidelity(model, images, targets, saliency))
    )
    return workloads


def _label(method: MethodName) -> str:
    settings = {
        "integrated_gradients": "32 steps",
        "occlusion": "2x2 window, stride 1",
        "gradient_shap": "16 samples",
        "kernel_shap": f"{KERNEL_SHAP_SAMPLES} samples",
    }
    return f"{method} ({settings[method]})" if method in settings else method


def _forward(model: LoadedModel, images: torch.Tensor) -> None:
    with torch.no_grad():
        model.module(images)


def _median_s(run: Callable[[], object], repeats: int, device: torch.device) -> float:
    def timed() -> float:
        start = time.perf_counter()
        run()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start

    for _ in range(WARM_UP_RUNS):
        timed()
    return statistics.median(timed() for _ in range(repeats))


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default: cpu)")
    parser.add_argument("--batch-size", type=int, default=64, help="test images per batch (default: 64)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per figure (default: 3)")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (default: torch's choice)")
    add_cache_dir(parser)
    return parser.parse_args(argv)


if __name__ == "__main__":
    main()
