"""One model ready to explain sampled events: blocking torch work, called from a worker thread.

Calls are serialised by a lock. A call that overruns the worker's deadline keeps the lock until it
returns, which may be never, so the worker ends its process rather than wait for it
(see :mod:`attribution_workers.worker`).
"""

from __future__ import annotations

import math
import random
import threading
import time
import zlib
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from attribution_workers.batch_result import BatchResult, RowFigures, merged, summarised
from attribution_workers.config import AttributionConfig
from attribution_workers.errors import AttributionError
from attribution_workers.explainer import Explainer, Explanation
from attribution_workers.inspection import BatchInspection, LayerInspector
from attribution_workers.inspection_health import HealthSnapshot, LayerHealthTracker
from attribution_workers.loader import LoadedModel, load_model
from attribution_workers.methods import MethodName
from attribution_workers.outcomes import LABEL_SUFFIX, Outcome, failed, method_settings, record_of
from attribution_workers.prediction import worker_predictions
from attribution_workers.trust import RandomisationCheck, agreement, deletion_fidelity, randomisation_check
from sampler.contract import MessageError, SampledEvent
from sampler.explanation_records import SanityFigure, WorkerPrediction
from sampler.layers import LayerBaselineRecord

MAX_LOGIT = math.sqrt(torch.finfo(torch.float32).max)
"""Largest |logit| the runtime attributes (about 1.8e19): the methods square and sum model outputs in float32
(LIME's and Kernel SHAP's regressions), which overflows beyond the square root of float32's largest value. Real
logits are a few tens; digits scaled by 1e37 give about 1e37, on which LIME's fit failed on infinities."""


SEED_STARTS = 2**31
"""Sanity seeds start at a random number below this: far below the ``2**64`` a ``torch.Generator`` takes, so the
sequence of a process never runs out."""


class PermanentError(AttributionError):
    """This event can never be explained (no input, wrong shape, non-finite inputs or model outputs): dead-letter
    it without retrying."""


@dataclass(frozen=True)
class _Rows:
    """A batch's model inputs: one row per usable event towards its reported class, then one per event labelled
    with another class, towards its label."""

    inputs: torch.Tensor
    targets: torch.Tensor
    count: int
    """The number of usable events, whose rows come first."""
    labelled: list[int]
    """Positions of the labelled events, in the order of their label rows."""


class ModelRuntime:
    """Loads a model once and explains batches of its sampled events with every configured method."""

    def __init__(
        self, name: str, config: AttributionConfig, *, device: str | None = None, sanity_seed_start: int | None = None
    ) -> None:
        """``sanity_seed_start``: the first seed of the randomisation checks (default: drawn at random, see
        :meth:`sanity_check`; tests pass one to be reproducible)."""
        self.name = name
        self.config = config
        self.model: LoadedModel = load_model(config.model, device=device)
        combined = self._explainer(config.methods)
        self.methods = combined.methods
        self._combined = combined
        self._explainers = {method: self._explainer([method]) for method in self.methods}
        self._recent: deque[tuple[torch.Tensor, int]] = deque(maxlen=config.sanity_samples)
        self.inspector = LayerInspector(self.model, config, name=name)
        self._health = LayerHealthTracker(window=config.inspect_window)
        self._last_sanity: float | None = None
        self._sanity_runs = 0
        self._seed_start = (
            random.SystemRandom().randrange(SEED_STARTS) if sanity_seed_start is None else sanity_seed_start
        )
        self._lock = threading.Lock()
        self._rule = config.verdict_rule()
        self.settings = method_settings(config, self.model, self.methods)
        """What each record keeps of how its maps were made."""

    def _explainer(self, methods: Sequence[MethodName] | None) -> Explainer:
        config = self.config
        return Explainer(
            self.model,
            methods=methods,
            ig_steps=config.ig_steps,
            occlusion_window=config.occlusion_window,
            shap_samples=config.shap_samples,
            shap_stdev=config.shap_stdev,
            lime=config.lime_settings(),
        )

    def explain(
        self,
        events: Sequence[SampledEvent],
        sanity: Mapping[str, SanityFigure] | None = None,
        baselines: Mapping[str, LayerBaselineRecord] | None = None,
    ) -> BatchResult:
        """Explain the whole batch at once; if that fails, each event alone, so one poison event
        cannot hold back the others. ``sanity``: the model's latest sanity figure per method, for the verdicts;
        ``baselines``: the stored activation-shift baseline per version, adopted before the batch's rows are added.
        Only figures and baselines of this very model count (after new weights, the old model's judge nothing)."""
        sanity = {m: f for m, f in (sanity or {}).items() if f.model_digest == self.model.digest}
        with self._lock:
            for version, record in (baselines or {}).items():
                if record.model_digest == self.model.digest:
                    self._health.adopt(version, record)
            usable, outcomes = self._usable(events)
            if not usable:
                return BatchResult(outcomes)
            try:
                result = self._explain_batch(usable, sanity)
            except Exception:  # isolate the culprit: one event at a time
                parts: list[BatchResult] = []
                for event, tensor in usable:
                    try:
                        parts.append(self._explain_batch([(event, tensor)], sanity))
                    except PermanentError as error:
                        parts.append(BatchResult([failed(event, str(error), retry=False)]))
                    except Exception as error:
                        parts.append(BatchResult([failed(event, f"{type(error).__name__}: {error}", retry=True)]))
                result = merged(parts)
            result.outcomes = outcomes + result.outcomes
            return result

    def sanity_due(self) -> bool:
        """True once ``sanity_samples`` inputs have been explained (the first check runs then, not
        ``sanity_every_s`` after start: until it has, no map is judged), then every ``sanity_every_s``.
        The window never shrinks, so every check runs on ``sanity_samples`` inputs."""
        if len(self._recent) < self.config.sanity_samples:
            return False
        return self._last_sanity is None or time.monotonic() - self._last_sanity >= self.config.sanity_every_s

    def sanity_check(self, *, seeds: Sequence[int] | None = None) -> list[RandomisationCheck]:
        """Randomisation check of every method on the recent inputs, averaged over ``sanity_seeds`` randomised
        copies of the model. ``seeds`` default: this runtime's k-th check draws ``start + k * sanity_seeds`` onwards,
        so successive checks re-draw the random weights instead of repeating one draw for ever; ``start`` is drawn
        per process, so a restarted worker, or another replica, does not begin again with the same draws (from 0,
        each restart and every replica re-drew the first check's weights)."""
        with self._lock:
            self._last_sanity = time.monotonic()
            count = self.config.sanity_seeds
            if seeds is None:
                first = self._seed_start + self._sanity_runs * count
                seeds = range(first, first + count)
            self._sanity_runs += 1
            inputs = torch.stack([tensor for tensor, _ in self._recent]).to(self.model.device)
            targets = torch.tensor([target for _, target in self._recent], device=self.model.device)
            return randomisation_check(
                self._combined, inputs, targets, seeds=seeds, max_similarity=self.config.sanity_max_similarity
            )

    def _usable(self, events: Sequence[SampledEvent]) -> tuple[list[tuple[SampledEvent, torch.Tensor]], list[Outcome]]:
        usable, refused = [], []
        for event in events:
            try:
                usable.append((event, self._tensor(event)))
            except PermanentError as error:
                refused.append(failed(event, str(error), retry=False))
        return usable, refused

    def _check_outputs(self, inputs: torch.Tensor, outputs: torch.Tensor | None) -> torch.Tensor:
        """Finite inputs can give logits that are not finite, or too large (:data:`MAX_LOGIT`) for the methods'
        arithmetic; their maps and trust figures would mean nothing. Raises :class:`PermanentError` (the batch is
        then explained one event at a time, isolating the culprit). ``outputs``: the inspection pass's, when it
        ran (else one forward pass here). Returns the logits ``[B, classes]``."""
        if outputs is None:
            with torch.no_grad():
                outputs = self.model.module(inputs)
        logits = outputs.reshape(len(inputs), -1)
        bad = (~torch.isfinite(logits) | (logits.abs() > MAX_LOGIT)).sum(dim=1)
        if bool(bad.any()):
            raise PermanentError(
                f"the model's outputs on this input cannot be attributed: {int(bad.max())} of {logits.shape[1]} "
                f"logits are NaN, infinite or beyond ±{MAX_LOGIT:.1e}"
            )
        return logits

    def _tensor(self, event: SampledEvent) -> torch.Tensor:
        if event.input is None:
            raise PermanentError("event has no input to attribute (set require_input in the sampling policy)")
        try:
            array = event.input.decode()
        except MessageError as error:
            raise PermanentError(str(error)) from None
        shape = self.config.model.input_shape
        if not fits(tuple(array.shape), tuple(shape)):
            raise PermanentError(
                f"input of shape {list(array.shape)} does not fit the model's {list(shape)} (send that shape, or it "
                "flat in C order)"
            )
        if event.num_classes != self.config.model.num_classes:
            raise PermanentError(
                f"the sidecar summarised {event.num_classes} scores, but the model has {self.config.model.num_classes}"
                " classes: another model's events?"
            )
        if not np.isfinite(array).all():
            bad = int(array.size - np.count_nonzero(np.isfinite(array)))
            raise PermanentError(f"input has {bad} non-finite values (NaN or infinity) of {array.size}")
        if not 0 <= event.predicted < self.config.model.num_classes:
            raise PermanentError(
                f"predicted class {event.predicted} out of range for {self.config.model.num_classes} classes"
            )
        return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32).reshape(shape))

    def _explain_batch(
        self, usable: list[tuple[SampledEvent, torch.Tensor]], sanity: Mapping[str, SanityFigure]
    ) -> BatchResult:
        """Explain usable events at once: inspect their layers, check the worker's own predictions, run every method
        on every row, judge each event's maps, record them and keep the inputs for the sanity checks."""
        rows = self._rows(usable)
        started = time.perf_counter()
        inspection = self.inspector.inspect(rows.inputs[: rows.count]) if self.inspector.layers else None
        inspection_seconds = time.perf_counter() - started
        predictions = self._predictions(usable, rows.inputs[: rows.count], inspection)
        explanations, seconds = self._run_methods(rows.inputs, rows.targets)
        labels = {i: explanations[rows.count + k] for k, i in enumerate(rows.labelled)}
        figures = self._figures(usable, rows, explanations, labels, predictions, sanity)
        outcomes = self._outcomes(usable, explanations, labels, figures, predictions, seconds)
        self._remember(usable, predictions)
        return summarised(
            outcomes,
            predictions,
            figures,
            seconds=seconds,
            layer_health=self._inspected(usable, outcomes, inspection),
            inspection_seconds=inspection_seconds,
            inspection_failed=() if inspection is None else inspection.failed,
            new_baselines=self._health.drafts(),
        )

    def _rows(self, usable: list[tuple[SampledEvent, torch.Tensor]]) -> _Rows:
        classes = self.config.model.num_classes
        labelled = [  # by position: two events of a batch may share a request id (duplicates are per replica)
            (i, event.label)
            for i, (event, _) in enumerate(usable)
            if event.label is not None and event.label != event.predicted and 0 <= event.label < classes
        ]
        rows = [(tensor, event.predicted) for event, tensor in usable]
        rows += [(usable[i][1], label) for i, label in labelled]
        inputs = torch.stack([tensor for tensor, _ in rows]).to(self.model.device)
        targets = torch.tensor([target for _, target in rows], device=self.model.device)
        return _Rows(inputs, targets, len(usable), [i for i, _ in labelled])

    def _predictions(
        self, usable: list[tuple[SampledEvent, torch.Tensor]], inputs: torch.Tensor, inspection: BatchInspection | None
    ) -> list[WorkerPrediction]:
        """The worker's own prediction on each usable event, beside the server's (``inputs``: their rows)."""
        logits = self._check_outputs(inputs, None if inspection is None else inspection.outputs)
        return worker_predictions(
            logits,
            [event.predicted for event, _ in usable],
            [event.confidence for event, _ in usable],
            tolerance=self.config.prediction_tie_tolerance,
            confidence_tolerance=self.config.prediction_confidence_tolerance,
        )

    def _figures(
        self,
        usable: list[tuple[SampledEvent, torch.Tensor]],
        rows: _Rows,
        explanations: list[Explanation],
        labels: Mapping[int, Explanation],
        predictions: list[WorkerPrediction],
        sanity: Mapping[str, SanityFigure],
    ) -> RowFigures:
        count = rows.count
        seeds = [_seed(event.request_id) for event, _ in usable]
        fidelities = {
            method: deletion_fidelity(
                self.model,
                rows.inputs[:count],
                rows.targets[:count],
                np.stack([e[method].values for e in explanations[:count]]),
                steps=self.config.fidelity_steps,
                random_orders=self.config.fidelity_random_orders,
                seeds=seeds,
            )
            for method in self.methods
        }
        matrices = [agreement([e]) if len(self.methods) >= 2 else None for e in explanations[:count]]
        trusts = [
            self._rule.row(
                self.methods,
                fidelity={m: fidelities[m][i] for m in self.methods},
                agreement=matrices[i],
                sanity=sanity,
                convergence=_relative_deltas(explanations[i]),
                label_suffix=LABEL_SUFFIX,
                label_convergence=_relative_deltas(labels.get(i)),
                prediction=predictions[i],
            )
            for i in range(count)
        ]
        return RowFigures(fidelities, [None if matrix is None else matrix.mean for matrix in matrices], trusts)

    def _outcomes(
        self,
        usable: list[tuple[SampledEvent, torch.Tensor]],
        explanations: list[Explanation],
        labels: Mapping[int, Explanation],
        figures: RowFigures,
        predictions: list[WorkerPrediction],
        seconds: dict[str, float],
    ) -> list[Outcome]:
        now = time.time()
        return [
            Outcome(
                record_of(
                    self.methods,
                    self.config,
                    event,
                    explanations[i],
                    labels.get(i),
                    {m: figures.fidelities[m][i] for m in self.methods},
                    figures.agreements[i],
                    seconds,
                    now,
                    figures.trusts[i],
                    predictions[i],
                    settings=self.settings,
                )
            )
            for i, (event, _) in enumerate(usable)
        ]

    def _remember(self, usable: list[tuple[SampledEvent, torch.Tensor]], predictions: list[WorkerPrediction]) -> None:
        """Keep each input for the sanity checks, towards the class the worker's model predicts where it predicts
        another class than the server."""
        for (event, tensor), prediction in zip(usable, predictions, strict=True):
            self._recent.append((tensor, prediction.predicted if prediction.mismatch == "class" else event.predicted))

    def _inspected(
        self, usable: list[tuple[SampledEvent, torch.Tensor]], outcomes: list[Outcome], found: BatchInspection | None
    ) -> list[HealthSnapshot]:
        """Layer statistics and feature maps onto each record; the rows into the health windows."""
        if found is None:
            return []
        for row, ((event, _), outcome) in enumerate(zip(usable, outcomes, strict=True)):
            outcome.record.detail.layers = found.stats(row)
            outcome.record.detail.feature_maps = found.feature_maps(row)
            self._health.add(event.model_version, found, row)
        versions = dict.fromkeys(event.model_version for event, _ in usable)
        return [snapshot for version in versions if (snapshot := self._health.snapshot(version)) is not None]

    @property
    def inspected_versions(self) -> list[str]:
        """The model versions whose layer health this runtime still keeps (older ones are forgotten)."""
        return self._health.versions

    def baselines_wanted(self, versions: Sequence[str]) -> list[str]:
        """Those of ``versions`` without a stored baseline adopted yet (to fetch before a batch of them). Called
        between batches, from the event loop: a lookup, not worth blocking the loop on the lock for."""
        return self._health.without_stored(versions)

    def _run_methods(self, inputs: torch.Tensor, targets: torch.Tensor) -> tuple[list[Explanation], dict[str, float]]:
        per_method: dict[str, list[Explanation]] = {}
        seconds: dict[str, float] = {}
        for method, explainer in self._explainers.items():
            started = time.perf_counter()
            per_method[method] = explainer.explain(inputs, targets)
            if inputs.device.type == "cuda":
                torch.cuda.synchronize(inputs.device)
            seconds[method] = time.perf_counter() - started
        combined = [
            Explanation(
                target=per_method[self.methods[0]][row].target,
                attributions=tuple(per_method[m][row].attributions[0] for m in self.methods),
            )
            for row in range(len(inputs))
        ]
        return combined, seconds


def _relative_deltas(explanation: Explanation | None) -> dict[str, float | None]:
    """Integrated Gradients' relative convergence delta of an explanation's maps, by method (``None`` elsewhere)."""
    return {} if explanation is None else {a.method: a.relative_delta for a in explanation.attributions}


def _seed(request_id: str) -> int:
    """A stable seed per input (``hash`` is salted per process): its random deletion orders differ from every other
    input's, and are the same on every delivery and every worker."""
    return zlib.crc32(request_id.encode())


def fits(sent: tuple[int, ...], wanted: tuple[int, ...]) -> bool:
    """Whether an input of shape ``sent`` is one of shape ``wanted``: the same shape up to dimensions of size 1
    (``[8, 8]`` for ``[1, 8, 8]``), or flat in C order. Only the number of elements is not enough: a channels-last
    image of a channels-first model, reshaped, would be explained scrambled."""
    if math.prod(sent) != math.prod(wanted):
        return False
    squeezed = tuple(size for size in sent if size != 1)
    return len(sent) == 1 or squeezed == tuple(size for size in wanted if size != 1)
