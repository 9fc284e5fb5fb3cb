"""One verdict per map from its three trust figures: sanity check, deletion fidelity, agreement.

A map is *trusted* when every part that was measured passes and at least one part measured the map itself
(deletion or agreement): the sanity check judges the method, so alone it leaves the map unjudged (``None``);
any part that fails makes it *not trusted*:

- **passes sanity**: the latest randomisation check of the method on this model (the stored
  :class:`~sampler.explanation_records.SanityFigure`, shared by every worker) is not flagged. Not
  measured until a check has run.
- **beats random**: the deletion-curve gain (random-order area minus the map's area) is above
  ``min_fidelity_gain``, 0 by default. Per input this is a weak test: on the demo's digits,
  with its settings (8 steps, 2 random orders), an uninformative random map has a gain of
  +0.00 ± 0.21 (sd), so it passes half the time, and any margin we could afford (0.05 fails
  one Grad-CAM map in ten more) barely changes that. What the test catches is a map that is
  *worse* than chance; the mean over many explanations (``GET .../methods``) is the strong figure.
- **agrees**: the mean Spearman correlation of the map's |values| with each other method's
  is at least ``min_agreement``, 0.2 by default: the one-sided 5% critical value of Spearman's
  rho on 64 elements (the digits), about 1.645 / sqrt(N - 1), so a map unrelated to the others
  passes about one time in twenty. For inputs of N elements set it near that value, and not
  below 0.1. Not measured with one method.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from attribution_workers.methods import MethodName
from attribution_workers.trust import Agreement
from sampler.explanation_records import Fidelity, SanityFigure
from sampler.verdicts import MethodTrust, Verdict


@dataclass(frozen=True, kw_only=True)
class VerdictRule:
    """The thresholds of the verdict (module docstring)."""

    min_fidelity_gain: float = 0.0
    min_agreement: float = 0.2

    def judge(self, *, sanity: SanityFigure | None, fidelity: Fidelity | None, agreement: float | None) -> Verdict:
        """The verdict of one map from whichever figures were measured (``None``: not measured)."""
        passes_sanity = None if sanity is None else not sanity.flagged
        beats_random = None if fidelity is None else fidelity.gain > self.min_fidelity_gain
        agrees = None if agreement is None else agreement >= self.min_agreement
        measured = [part for part in (passes_sanity, beats_random, agrees) if part is not None]
        of_the_map = beats_random is not None or agrees is not None
        trusted = False if not all(measured) else True if of_the_map else None
        return Verdict(
            trusted=trusted,
            passes_sanity=passes_sanity,
            beats_random=beats_random,
            agrees=agrees,
            summary=self._summary(trusted, sanity, fidelity, agreement),
            min_agreement=self.min_agreement,
        )

    def row(
        self,
        methods: Sequence[MethodName],
        *,
        fidelity: Mapping[str, Fidelity | None],
        agreement: Agreement | None,
        sanity: Mapping[str, SanityFigure],
        label_suffix: str | None = None,
    ) -> dict[str, MethodTrust]:
        """Every method's verdict and figures on one input (``agreement``: None with one method), by method.

        With ``label_suffix``, also the verdicts of the maps towards the true label (``method + label_suffix``),
        which are not tested for deletion or agreement, so only the sanity check counts there.
        """
        found: dict[str, MethodTrust] = {}
        for method in methods:
            value = agreement.of(method) if agreement is not None else None
            value = value if value is not None and math.isfinite(value) else None
            figure = fidelity.get(method)
            found[method] = MethodTrust(
                verdict=self.judge(sanity=sanity.get(method), fidelity=figure, agreement=value),
                fidelity_gain=figure.gain if figure is not None else None,
                agreement=value,
            )
            if label_suffix is not None:
                unmeasured = self.judge(sanity=sanity.get(method), fidelity=None, agreement=None)
                found[method + label_suffix] = MethodTrust(verdict=unmeasured)
        return found

    def _summary(
        self, trusted: bool | None, sanity: SanityFigure | None, fidelity: Fidelity | None, agreement: float | None
    ) -> str:
        failed: list[str] = []
        passed: list[str] = []
        missing: list[str] = []
        if sanity is None:
            missing.append("no sanity check has run yet")
        else:
            word = "fails" if sanity.flagged else "passes"
            (failed if sanity.flagged else passed).append(
                f"{word} the sanity check (similarity {sanity.similarity:.2f} to a randomised model's maps)"
            )
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
        head = {True: "Trusted", False: "Not trusted", None: "Not judged"}[trusted]
        if trusted is None and sanity is not None:
            missing.append("nothing about this map itself was measured")
        parts = failed + passed
        text = f"{head}: {'; '.join(parts)}" if parts else head
        return f"{text}{' (' + '; '.join(missing) + ')' if missing else ''}."
