"""The per-model attribution config: settings the methods cannot work with are refused, naming the field."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from attribution_workers.config import AttributionConfig

DIGITS = {"torchscript": "digits.pt", "input_shape": [1, 8, 8], "num_classes": 10}
TABLE = {"torchscript": "table.pt", "input_shape": [30], "num_classes": 2}


def _config(model: dict[str, Any], **settings: Any) -> AttributionConfig:
    return AttributionConfig.model_validate({"model": model, **settings})


@pytest.mark.parametrize(
    ("model", "samples", "needed"),
    [
        pytest.param(DIGITS, 16, 128, id="digits-default-samples"),
        pytest.param(TABLE, 59, 60, id="table-one-short"),
    ],
)
def test_kernel_shap_needs_twice_as_many_coalitions_as_input_elements(
    model: dict[str, Any], samples: int, needed: int
) -> None:
    """At 16 coalitions two Kernel SHAP runs on the 30 breast-cancer features agreed with rho 0.29."""
    with pytest.raises(ValidationError, match=rf"shap_samples .*at least {needed}.*got {samples}"):
        _config(model, methods=["kernel_shap", "saliency"], shap_samples=samples)

    assert _config(model, methods=["kernel_shap"], shap_samples=needed).shap_samples == needed
    assert _config(model, methods=["gradient_shap"], shap_samples=samples).shap_samples == samples


def test_the_gradient_shap_noise_can_be_set_and_not_below_zero() -> None:
    assert _config(TABLE, shap_stdev=0.0).shap_stdev == 0.0
    assert _config(DIGITS).shap_stdev == pytest.approx(0.1)
    with pytest.raises(ValidationError, match="shap_stdev"):
        _config(TABLE, shap_stdev=-0.5)
