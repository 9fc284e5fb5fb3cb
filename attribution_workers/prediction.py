"""Does the worker's copy of the model predict what the model server reported? A check on every explained input.

The maps explain the class the server reported (``SampledEvent.predicted``), on the model the worker loaded. When
the two models differ (version skew between server and worker, other weights), the worker's model may give that
class next to no probability: its maps and deletion figures then describe another model. The rule, per input, on
the worker's softmax probabilities ``p``: the server's class ``c`` disagrees with the worker's top class ``t`` when
``p[t] - p[c] > tolerance`` (the worker's ``prediction_tie_tolerance``, 0.05 by default). A near tie, two classes
within float error or half-precision rounding of each other, is therefore not a disagreement even when the
argmaxes differ: on near-tied digits, a server running the same model in bfloat16 (common on GPUs) reported
another class than the worker's float32 top with gaps up to 0.030, logits rounded to one decimal up to 0.046,
where the version skew this check is for gave gaps near 1.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from sampler.explanation_records import WorkerPrediction


def worker_predictions(logits: torch.Tensor, reported: Sequence[int], *, tolerance: float) -> list[WorkerPrediction]:
    """The worker's model's prediction on each row of ``logits`` ``[B, classes]`` (finite), beside the class the
    server reported for it."""
    probabilities = logits.detach().to(dtype=torch.float64).softmax(dim=1).cpu()
    top_probabilities, tops = probabilities.max(dim=1)
    found = []
    for row, reported_class in enumerate(reported):
        probability = float(probabilities[row, reported_class])
        top = float(top_probabilities[row])
        found.append(
            WorkerPrediction(
                predicted=int(tops[row]),
                probability=probability,
                top_probability=top,
                matches=top - probability <= tolerance,
            )
        )
    return found
