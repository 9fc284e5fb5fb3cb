"""How often a randomisation sanity check is conclusive, by the number of inputs it runs on (``sanity_samples``).

    python -m benchmarks.sanity_pairs [--sizes 16,32] [--draws 12]

A pair of maps (trained and randomised model, one input) in which either map ranks nothing on the input's
support (Grad-CAM's all-zero maps) is not measured, and a check with fewer than ``sanity_min_pairs`` (8)
measured pairs is inconclusive: it judges no map. On the demo's digits CNN and methods, for each size,
``--draws`` checks on random held-out test digits (clean, then corrupted as in the demo's drift phase), each
averaging three randomised copies as the worker does; prints per method the fewest and the median measured
pairs and the share of inconclusive checks, with the median similarity.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import numpy as np
import torch

from attribution_workers.config import AttributionConfig
from benchmarks.method_trust import demo_events, demo_runtime
from benchmarks.options import add_cache_dir
from demo.corruptions import corrupt
from demo.models import digits
from demo.settings import METHODS


def main(argv: Sequence[str] | None = None) -> None:
    args = _parse(argv)
    torch.set_num_threads(1)
    min_pairs = AttributionConfig.model_fields["sanity_min_pairs"].default
    test = digits.load_digits_split(hold_out_reference=True).test.features
    rng = np.random.default_rng(0)
    for phase, images in (("clean", test), ("corrupted", corrupt(test, seed=3)[0])):
        for size in args.sizes:
            runtime = demo_runtime(METHODS, args.cache_dir, sanity_samples=size)
            measured: dict[str, list[int]] = {method: [] for method in runtime.methods}
            similarity: dict[str, list[float]] = {method: [] for method in runtime.methods}
            for draw in range(args.draws):
                chosen = images[rng.permutation(len(images))[:size]]
                runtime.explain(demo_events(runtime, chosen, prefix=f"{phase}-{size}-{draw}"), {})
                for check in runtime.sanity_check(seeds=range(100 + 3 * draw, 103 + 3 * draw)):
                    measured[check.method].append(check.measured)
                    if check.similarity is not None:
                        similarity[check.method].append(check.similarity)
            for method in runtime.methods:
                pairs = np.array(measured[method])
                print(
                    f"{phase:9} {size:3} inputs  {method:9} measured pairs min {pairs.min():2} median "
                    f"{np.median(pairs):4.1f}  inconclusive (< {min_pairs}) {np.mean(pairs < min_pairs):4.0%}  "
                    f"median similarity {np.median(similarity[method]):+.2f}"
                )


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--sizes", type=lambda text: [int(v) for v in text.split(",")], default=[16, 32])
    parser.add_argument("--draws", type=int, default=12, help="checks per phase and size (default: 12)")
    add_cache_dir(parser)
    return parser.parse_args(argv)


if __name__ == "__main__":
    main()
