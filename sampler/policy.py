"""Sampling policy: which predictions are worth an explanation, and how many per second."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Reason = Literal["every_n", "low_confidence", "low_margin", "flagged_cohort"]
MAX_EVERY_N = 1_000_000_000
MAX_MARGIN_BELOW = 1e6
"""The largest margin ingest reports (it caps margins there): a threshold above it samples every event."""
Matcher = Annotated[dict[str, str], Field(min_length=1, max_length=20)]
"""A cohort matcher: at least one key (an empty one would match nothing, silently)."""


class SamplingPolicy(BaseModel):
    """The effective policy of one model."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    every_n: int | None = Field(default=100, ge=1, le=MAX_EVERY_N)
    """Sample the n-th, 2n-th, ... event of the model seen by this replica; null disables."""
    confidence_below: float | None = Field(default=0.5, ge=0.0, le=1.0, allow_inf_nan=False)
    """Sample when the top-1 probability is below this; null disables."""
    margin_below: float | None = Field(default=None, ge=0.0, le=MAX_MARGIN_BELOW, allow_inf_nan=False)
    """Sample when top-1 minus top-2 logit is below this; null disables."""
    flagged_cohorts: list[Matcher] = Field(default_factory=list, max_length=100)
    """Sample when every key/value of one matcher is present in the event's cohort."""
    max_per_second: float = Field(default=50.0, ge=0.0, le=100_000.0, allow_inf_nan=False)
    """Token-bucket budget of sampled events per second per replica (burst: one second's worth)."""
    require_input: bool = False
    """Only sample events that carry a model input (attribution needs it)."""

    def merged(self, overrides: dict[str, Any]) -> SamplingPolicy:
        """A new policy with ``overrides`` applied, validated as a whole."""
        return SamplingPolicy.model_validate({**self.model_dump(), **overrides})


class SamplingPolicyPatch(BaseModel):
    """A partial policy: only the fields sent are changed (``null`` disables a threshold)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    every_n: int | None = Field(default=None, ge=1, le=MAX_EVERY_N)
    confidence_below: float | None = Field(default=None, ge=0.0, le=1.0, allow_inf_nan=False)
    margin_below: float | None = Field(default=None, ge=0.0, le=MAX_MARGIN_BELOW, allow_inf_nan=False)
    flagged_cohorts: list[Matcher] | None = Field(default=None, max_length=100)
    max_per_second: float | None = Field(default=None, ge=0.0, le=100_000.0, allow_inf_nan=False)
    require_input: bool | None = None

    def changes(self) -> dict[str, Any]:
        """The fields the client actually sent, with their values."""
        return {name: getattr(self, name) for name in self.model_fields_set}
