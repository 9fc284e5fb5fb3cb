"""One verdict per map from its trust figures: sanity check, deletion fidelity, agreement, IG convergence.

A map is *trusted* when its method has passed the sanity check, every other part that was measured passes and
at least one part measured the map itself (deletion or agreement). Any part that fails makes it *not trusted*.
Otherwise it is *not judged* (``None``): the sanity check alone judges the method, not the map, and the map
parts alone cannot tell a method that ignores the model (an input-echo map passes both), so a map explained
before its method's first sanity check is not judged, however well it deletes and agrees:

- **passes sanity**: the latest randomisation check of the method on this model (the stored
  :class:`~sampler.explanation_records.SanityFigure`, shared by every worker) is not flagged. Not
  measured until a check has run (the worker runs the first one as soon as it has explained
  ``sanity_samples`` inputs), nor by a figure on fewer than ``min_sanity_pairs`` measured pairs of
  maps (not enough evidence: Grad-CAM's figure on 16 digits ranged from -0.12 to 0.30 over four
  seeds on 11-13 pairs).
- **beats random**: the deletion-curve gain (random-order area minus the map's area) is above
  ``min_fidelity_gain``, 0 by default. The random orders delete the input's *support* (the
  elements that differ from the baseline) first, so the test asks whether the map knows more
  than where the input is. On 128 test digits with the demo's model and settings (8 steps,
  2 random orders): uniform noise on the ink gains +0.01 ± 0.11 (sd) and passes 59% of the
  time, Grad-CAM's maps -0.01 ± 0.23, and Integrated Gradients, occlusion and LIME +0.22 to
  +0.23, above 0 on every input. Per input this is a weak test: what it catches is a map
  *worse* than chance; the mean over many explanations (``GET .../methods``) is the strong
  figure.
- **agrees**: the mean Spearman correlation of the map's |values| with each other method's
  is at least ``min_agreement``, 0.2 by default. This is a convention, not a calibrated test:
  1.645 / sqrt(N - 1) (0.2 on the 64 digits pixels) would be the one-sided 5% critical value
  for N independent, untied elements, but attribution maps are neither. Grad-CAM maps are
  upsampled blocks, LIME's are patches, and most maps share the input's background of ties,
  so on the digits two unrelated maps of that kind reach 0.2 about one time in four, and a
  real map of a *different* input "agrees" for 36-75% of inputs. Read a pass as weak evidence;
  a fail (a map unlike every other method's) is the informative outcome. Not measured with
  one method.
- **converges** (Integrated Gradients only): the convergence delta (the map's sum minus the
  logit change it explains, ``f(x) - f(baseline)``) is at most ``max_convergence_delta`` of
  that change, 0.1 by default. On the demo's digits the worst input reaches 0.026 at 32 steps
  and 0.097 (a corrupted digit) at the demo's 16; at 4 steps one corrupted digit in eight
  exceeds 0.1. A larger delta means the integral is too coarse for this input, and its map
  does not add up to the prediction. Only a failure counts: passing it says nothing about
  the map's ranking, so it judges no map by itself. Maps towards the true label (``method@label``)
  are judged on it too; they have no deletion or agreement figure.

Before any of that, the event's :class:`~sampler.explanation_records.WorkerPrediction`: when the
worker's own model disagrees with the class the server reported (version skew, other weights),
every map of the event is *not trusted*, whatever its figures. The maps still explain the reported
class, the one asked about, but on a model that does not predict it: the rotated-logits case gave
the reported class a probability of 6.5e-10, so its deletion curve started near 0 and "beats
random" meant nothing. The same holds when the worker's model predicts the reported class at
another confidence than the server reported (``mismatch`` ``"confidence"``): the maps explain
another function (:mod:`attribution_workers.prediction`). When the server reported no usable
probability, the summary says the confidence was not compared; that alone judges nothing.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from attribution_workers.methods import MethodName
from attribution_workers.trust import Agreement
from sampler.explanation_records import Fidelity, SanityFigure, WorkerPrediction
from sampler.verdicts import MethodTrust, Verdict


@dataclass(frozen=True, kw_only=True)
class VerdictRule:
    """The thresholds of the verdict (module docstring)."""

    min_fidelity_gain: float = 0.0
    min_agreement: float = 0.2
    max_convergence_delta: float = 0.1
    min_sanity_pairs: int = 8
    """Measured pairs a sanity figure needs to judge maps (the worker's ``sanity_min_pairs``)."""

    def judge(
        self,
        *,
        sanity: SanityFigure | None,
        fidelity: Fidelity | None,
        agreement: float | None,
        convergence: float | None = None,
        prediction: WorkerPrediction | None = None,
    ) -> Verdict:
        """The verdict of one map from whichever figures were measured (``None``: not measured); ``convergence``:
        Integrated Gradients' relative delta (:attr:`~attribution_workers.explainer.Attribution.relative_delta`);
        ``prediction``: the worker's model's own prediction on the input (a disagreement fails the map)."""
        passes_sanity = None if sanity is None or not self.conclusive(sanity) else not sanity.flagged
        beats_random = None if fidelity is None else fidelity.gain > self.min_fidelity_gain
        agrees = None if agreement is None else agreement >= self.min_agreement
        converges = None if convergence is None else convergence <= self.max_convergence_delta
        matches = None if prediction is None else prediction.matches
        measured = [part for part in (passes_sanity, beats_random, agrees, converges, matches) if part is not None]
        of_the_map = beats_random is not None or agrees is not None
        trusted = False if not all(measured) else True if of_the_map and passes_sanity else None
        parts = self._parts(sanity, fidelity, agreement, convergence, prediction)
        return Verdict(
            trusted=trusted,
            passes_sanity=passes_sanity,
            beats_random=beats_random,
            agrees=agrees,
            converges=converges,
            summary=self._summary(trusted, parts, sanity_judges=passes_sanity is not None, ranked=of_the_map),
            min_agreement=self.min_agreement,
        )

    def conclusive(self, sanity: SanityFigure) -> bool:
        """Whether a sanity figure rests on enough pairs of maps to judge maps (stored so, and on enough by this
        rule's own count: a figure of an older worker carries no ``conclusive`` of its own)."""
        return sanity.conclusive and sanity.samples >= self.min_sanity_pairs

    def row(
        self,
        methods: Sequence[MethodName],
        *,
        fidelity: Mapping[str, Fidelity | None],
        agreement: Agreement | None,
        sanity: Mapping[str, SanityFigure],
        convergence: Mapping[str, float | None] | None = None,
        label_suffix: str | None = None,
        label_convergence: Mapping[str, float | None] | None = None,
        prediction: WorkerPrediction | None = None,
    ) -> dict[str, MethodTrust]:
        """Every method's verdict and figures on one input (``agreement``: None with one method), by method.

        With ``label_suffix``, also the verdicts of the maps towards the true label (``method + label_suffix``),
        which are not tested for deletion or agreement: the sanity check and Integrated Gradients' convergence
        (``label_convergence``, the label maps' relative deltas) count there. ``prediction`` (the worker's model's
        own prediction on the input) counts for every map of the input.
        """
        found: dict[str, MethodTrust] = {}
        for method in methods:
            value = agreement.of(method) if agreement is not None else None
            value = value if value is not None and math.isfinite(value) else None
            figure = fidelity.get(method)
            found[method] = MethodTrust(
                verdict=self.judge(
                    sanity=sanity.get(method),
                    fidelity=figure,
                    agreement=value,
                    convergence=(convergence or {}).get(method),
                    prediction=prediction,
                ),
                fidelity_gain=figure.gain if figure is not None else None,
                agreement=value,
            )
            if label_suffix is not None:
                towards_label = self.judge(
                    sanity=sanity.get(method),
                    fidelity=None,
                    agreement=None,
                    convergence=(label_convergence or {}).get(method),
                    prediction=prediction,
                )
                found[method + label_suffix] = MethodTrust(verdict=towards_label)
        return found

    def _parts(
        self,
        sanity: SanityFigure | None,
        fidelity: Fidelity | None,
        agreement: float | None,
        convergence: float | None,
        prediction: WorkerPrediction | None,
    ) -> tuple[list[str], list[str], list[str]]:
        """The summary's failed, passed and missing parts, each with its figure."""
        failed: list[str] = []
        passed: list[str] = []
        missing: list[str] = []
        if prediction is not None:
            self._prediction(prediction, failed, missing)
        self._sanity(sanity, passed, failed, missing)
        if fidelity is None:
            missing.append("deletion not tested")
        elif fidelity.gain > self.min_fidelity_gain:
            passed.append(f"beats random deletion (gain {fidelity.gain:+.2f})")
        else:
            failed.append(f"does not beat random deletion (gain {fidelity.gain:+.2f})")
        if agreement is None:
            missing.append("agreement not measured")
        elif agreement >= self.min_agreement:
            passed.append(f"agrees with the other methods (mean rho {agreement:+.2f})")
        else:
            failed.append(f"disagrees with the other methods (mean rho {agreement:+.2f} < {self.min_agreement:.2f})")
        if convergence is not None:
            self._convergence(convergence, passed, failed)
        return failed, passed, missing

    @staticmethod
    def _prediction(prediction: WorkerPrediction, failed: list[str], missing: list[str]) -> None:
        if prediction.mismatch == "class":
            failed.append(
                f"the worker's model disagrees with the server's prediction (it predicts class {prediction.predicted} "
                f"at {prediction.top_probability:.2g} and the reported class at {prediction.probability:.2g}: "
                "probably version skew or different weights)"
            )
        elif prediction.mismatch == "confidence":
            failed.append(
                "the worker's model predicts the reported class at another confidence than the server "
                f"({prediction.probability:.2g} where the server reported {prediction.reported_probability:.2g}: "
                "probably version skew or different weights)"
            )
        if prediction.confidence_check == "skipped":
            missing.append("the server reported no probability to compare the worker's model's confidence with")

    def _sanity(self, sanity: SanityFigure | None, passed: list[str], failed: list[str], missing: list[str]) -> None:
        if sanity is None:
            missing.append("no sanity check has run yet")  # why a map that passes the rest is "Not judged"
        elif not self.conclusive(sanity):
            missing.append(
                f"the sanity check measured only {sanity.samples} pairs of maps, fewer than {self.min_sanity_pairs}: "
                "not enough evidence"
            )
        else:
            word = "fails" if sanity.flagged else "passes"
            (failed if sanity.flagged else passed).append(
                f"{word} the sanity check (similarity {sanity.similarity:.2f} to a randomised model's maps)"
            )

    @staticmethod
    def _summary(
        trusted: bool | None, parts: tuple[list[str], list[str], list[str]], *, sanity_judges: bool, ranked: bool
    ) -> str:
        failed, passed, missing = parts
        head = {True: "Trusted", False: "Not trusted", None: "Not judged"}[trusted]
        if trusted is None and sanity_judges and not ranked:
            missing.append("nothing about this map's ranking was measured")
        shown = failed + passed
        text = f"{head}: {'; '.join(shown)}" if shown else head
        return f"{text}{' (' + '; '.join(missing) + ')' if missing else ''}."

    def _convergence(self, convergence: float, passed: list[str], failed: list[str]) -> None:
        if convergence <= self.max_convergence_delta:
            passed.append(f"the integral converged (delta {convergence:.1%} of the logit change)")
        else:
            failed.append(
                f"the integral did not converge (delta {convergence:.1%} of the logit change > "
                f"{self.max_convergence_delta:.0%}; raise ig_steps)"
            )
