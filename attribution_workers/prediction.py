"""Is the worker's copy of the model the model that served the prediction? Two checks on every explained input.

The maps explain the class the server reported (``SampledEvent.predicted``), on the model the worker loaded. When
the two models differ (version skew between server and worker, other weights), the maps and their deletion
figures describe another model. On the worker's softmax probabilities ``p``, with ``c`` the server's class,
``t`` the worker's top class and ``r`` the server's reported probability of ``c`` (the event's ``confidence``):

- **class**: the worker's model predicts another class when ``p[t] - p[c] > prediction_tie_tolerance`` (0.05
  by default). A near tie, two classes within float error or half-precision rounding of each other, is therefore
  not a disagreement even when the argmaxes differ: on near-tied digits, a server running the same model in
  bfloat16 (common on GPUs) reported another class than the worker's float32 top with gaps up to 0.030, logits
  rounded to one decimal up to 0.046, where the version skew this check is for gave gaps near 1.
- **confidence**: the worker's model predicts the same class at another confidence when
  ``|p[c] - r| > prediction_confidence_tolerance`` (0.05 by default): other weights that happen to agree on the
  class (the server says 0.55, the worker's model 0.99) explain a different function. Measured on the digits CNN
  as the tests train it (``python -m benchmarks.confidence_gap --train-on all``: 450 test digits and 10,800
  corrupted ones, as in the demo's drift phase), the same weights served in bfloat16 gave gaps up to 0.027
  (0.009 on the clean digits), in float16 up to 0.003, logits rounded to one decimal up to 0.023 and float32
  probabilities rounded to bfloat16 up to 0.002; a worker whose weights came from another training seed (four
  seeds) gave gaps above 0.05 on 6-9% of the clean digits and 41-52% of the corrupted ones the class check
  passed. The demo's model (trained on fewer digits) gives 0.020 and 14-17% / 47-56%. The check cannot see
  skew where both models are sure (most clean digits: the median gap was at most 0.002), only where they are
  not.

``r`` comes with every version-1 message: the sidecar computes it at ingest from the probabilities the server
sent, or the softmax of its logits (``service.events.scores``). A reported probability outside [0, 1] is not a
probability: the confidence check is then skipped, and the record says so (``confidence_check`` ``"skipped"``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from sampler.explanation_records import ConfidenceCheck, Mismatch, WorkerPrediction


def worker_predictions(
    logits: torch.Tensor,
    reported: Sequence[int],
    confidences: Sequence[float | None],
    *,
    tolerance: float,
    confidence_tolerance: float,
) -> list[WorkerPrediction]:
    """The worker's model's prediction on each row of ``logits`` ``[B, classes]`` (finite), beside the class the
    server reported for it and the server's probability of that class (``None``: none reported)."""
    probabilities = logits.detach().to(dtype=torch.float64).softmax(dim=1).cpu()
    top_probabilities, tops = probabilities.max(dim=1)
    found = []
    for row, (reported_class, confidence) in enumerate(zip(reported, confidences, strict=True)):
        probability = float(probabilities[row, reported_class])
        top = float(top_probabilities[row])
        server = confidence if confidence is not None and 0.0 <= confidence <= 1.0 else None
        check: ConfidenceCheck = (
            "skipped" if server is None else "passed" if abs(probability - server) <= confidence_tolerance else "failed"
        )
        mismatch: Mismatch | None = (
            "class" if top - probability > tolerance else "confidence" if check == "failed" else None
        )
        found.append(
            WorkerPrediction(
                predicted=int(tops[row]),
                probability=probability,
                top_probability=top,
                matches=mismatch is None,
                reported_probability=server,
                confidence_check=check,
                mismatch=mismatch,
            )
        )
    return found
