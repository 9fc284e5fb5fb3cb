"""Per-model sampling decisions: the reasons an event is worth explaining, and the budget."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from pydantic import ValidationError

from sampler.bucket import TokenBucket
from sampler.policy import Reason, SamplingPolicy

log = logging.getLogger(__name__)


class Sampler:
    """Holds every model's effective policy, its event counter and its token bucket.

    ``base`` gives a model's policy before run-time overrides (defaults plus the
    config file). Overrides come from ``PUT /v1/models/{model}/sampling`` and
    from the periodic refresh that reads what other replicas stored.

    Only models with events (``reasons_many``/``admit``, which the ingest path calls for
    admitted models) or with overrides hold state here: reading the policy of any
    other name (``policy``, answered to read tokens) computes it and keeps nothing.
    """

    def __init__(
        self,
        base: Callable[[str], SamplingPolicy],
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._base = base
        self._clock = clock
        self._overrides: dict[str, dict[str, Any]] = {}
        self._policies: dict[str, SamplingPolicy] = {}
        self._seen: dict[str, int] = {}
        self._buckets: dict[str, TokenBucket] = {}

    def policy(self, model: str) -> SamplingPolicy:
        """The model's effective policy; a model with no state here gets one computed, not stored."""
        policy = self._policies.get(model)
        if policy is None:
            policy = self._base(model).merged(self._overrides.get(model, {}))
        return policy

    def preview(self, model: str, changes: Mapping[str, Any]) -> tuple[SamplingPolicy, dict[str, Any]]:
        """The policy and override set that ``changes`` would give; raises ``ValidationError``."""
        overrides = {**self._overrides.get(model, {}), **changes}
        return self._base(model).merged(overrides), overrides

    def set_overrides(self, model: str, overrides: Mapping[str, Any]) -> SamplingPolicy:
        """Replace a model's run-time overrides; raises ``ValidationError`` if they are invalid.

        No overrides for a model without events drops everything held about it.
        """
        policy = self._base(model).merged(dict(overrides))
        if overrides:
            self._overrides[model] = dict(overrides)
        else:
            self._overrides.pop(model, None)
        if overrides or model in self._seen:
            self._install(model, policy)
        else:
            self._policies.pop(model, None)
            self._buckets.pop(model, None)
        return policy

    def sync_overrides(self, stored: Mapping[str, Mapping[str, Any]]) -> None:
        """Adopt the full set of overrides read from Redis (other replicas' changes)."""
        for model in set(self._overrides) | set(stored):
            wanted = dict(stored.get(model, {}))
            if self._overrides.get(model, {}) == wanted:
                continue
            try:
                self.set_overrides(model, wanted)
            except ValidationError as error:
                log.error("ignoring invalid stored sampling policy for %r: %s", model, error)

    def reasons_many(
        self,
        model: str,
        confidences: Sequence[float],
        margins: Sequence[float],
        cohorts: Sequence[Mapping[str, str]],
        has_input: Sequence[bool],
    ) -> list[tuple[int, tuple[Reason, ...]]]:
        """The events of ``model``, in arrival order, that should be sampled: (position, reasons) each.

        One call per request and model: most events are not sampled, and a pass per reason over the
        request's figures costs a fraction of asking event by event. Counts them all for ``every_n``.
        """
        policy = self._active(model)
        first = self._seen.get(model, 0)
        count = self._seen[model] = first + len(confidences)
        chosen: dict[int, list[Reason]] = {}
        if policy.every_n is not None:  # the events whose count (first + i + 1) is a multiple of every_n
            for i in range(-(first + 1) % policy.every_n, count - first, policy.every_n):
                chosen[i] = ["every_n"]
        if (threshold := policy.confidence_below) is not None:
            for i in [i for i, confidence in enumerate(confidences) if confidence < threshold]:
                chosen.setdefault(i, []).append("low_confidence")
        if (threshold := policy.margin_below) is not None:
            for i in [i for i, margin in enumerate(margins) if margin < threshold]:
                chosen.setdefault(i, []).append("low_margin")
        if policy.flagged_cohorts:
            for i, cohort in enumerate(cohorts):
                if cohort and any(_matches(matcher, cohort) for matcher in policy.flagged_cohorts):
                    chosen.setdefault(i, []).append("flagged_cohort")
        return [(i, tuple(chosen[i])) for i in sorted(chosen) if has_input[i] or not policy.require_input]

    def admit(self, model: str) -> bool:
        """Spend one unit of the model's sampling budget, if any is left."""
        self._active(model)
        return self._buckets[model].take()

    def _active(self, model: str) -> SamplingPolicy:
        """The policy of a model with events, its bucket installed on first use."""
        policy = self._policies.get(model)
        if policy is None:
            policy = self.policy(model)
            self._install(model, policy)
        return policy

    def _install(self, model: str, policy: SamplingPolicy) -> None:
        self._policies[model] = policy
        bucket = self._buckets.get(model)
        if bucket is None:
            self._buckets[model] = TokenBucket(policy.max_per_second, clock=self._clock)
        else:
            bucket.set_rate(policy.max_per_second)


def _matches(matcher: Mapping[str, str], cohort: Mapping[str, str]) -> bool:
    return all(cohort.get(key) == value for key, value in matcher.items())
