"""``DriftConfig``: the automatic ``steady_steps_per_ert`` and how it resolves on a reference."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from monitors.drift.config import (
    AUTO_STEADY_MIN_REFERENCE,
    AUTO_STEADY_STEPS_PER_ERT,
    MAX_STEADY_STEPS,
    DriftConfig,
)
from monitors.fleet.settings import MonitorSettings


@pytest.mark.parametrize(
    ("setting", "rows", "steps"),
    [
        pytest.param(None, 2000, 0, id="auto-former-default-reference"),
        pytest.param(None, 4999, 0, id="auto-just-below"),
        pytest.param(None, 5000, 1000, id="auto-at-5000"),
        pytest.param(None, 20_549, 1000, id="auto-above"),
        pytest.param(0, 10_000, 0, id="explicit-0-never"),
        pytest.param(200, 449, 200, id="explicit-n-always"),
        pytest.param(1000, 5000, 1000, id="explicit-1000"),
    ],
)
def test_steady_steps_resolve_on_the_reference_rows(setting: int | None, rows: int, steps: int) -> None:
    config = DriftConfig(steady_steps_per_ert=setting)
    resolved = config.resolved(rows)
    assert config.steady_steps_for(rows) == steps
    assert resolved.steady_steps_per_ert == steps and resolved.steady_steps == steps * config.ert
    assert resolved.model_copy(update={"steady_steps_per_ert": setting}) == config, "nothing else changes"


def test_the_automatic_rule_s_constants() -> None:
    assert (AUTO_STEADY_MIN_REFERENCE, AUTO_STEADY_STEPS_PER_ERT) == (5000, 1000)
    assert DriftConfig().steady_steps_per_ert is None, "automatic by default"


def test_a_default_warm_up_is_large_enough_for_the_steady_threshold() -> None:
    """A monitor that warms up on traffic at the defaults gets the calibration measured to hold per seed."""
    config = DriftConfig()
    assert config.reference_events == AUTO_STEADY_MIN_REFERENCE
    assert config.resolved(config.reference_events).steady_steps == AUTO_STEADY_STEPS_PER_ERT * config.ert
    assert config.reference_events - config.pca_rows(config.reference_events) > config.max_reference, "spare rows"


@pytest.mark.parametrize(
    ("ert", "steps"),
    [
        pytest.param(20_000, 1000, id="largest-ert-at-1000"),
        pytest.param(40_000, 500, id="capped-to-the-longest-stream"),
        pytest.param(MAX_STEADY_STEPS + 1, 0, id="no-stream-fits"),
    ],
)
def test_the_automatic_stream_keeps_to_the_longest_allowed(ert: int, steps: int) -> None:
    """Above ert 20,000 a stream of 1,000 x ert would be refused: the automatic value is the most that fits."""
    resolved = DriftConfig(ert=ert).resolved(AUTO_STEADY_MIN_REFERENCE)
    assert resolved.steady_steps_per_ert == steps
    assert DriftConfig.model_validate(resolved.model_dump()) == resolved, "the resolved config passes the check"
    with pytest.raises(ValidationError, match="lower it"):
        DriftConfig(ert=ert, steady_steps_per_ert=steps + 1)


def test_an_unresolved_config_says_to_resolve_it_before_building() -> None:
    with pytest.raises(ValueError, match="resolve the config"):
        _ = DriftConfig().steady_steps


@pytest.mark.parametrize(
    ("value", "expected"),
    [pytest.param("1000", 1000, id="always"), pytest.param("0", 0, id="never"), pytest.param(None, None, id="auto")],
)
def test_the_environment_sets_an_integer_or_leaves_it_automatic(
    value: str | None, expected: int | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("VAI_CONFIG_FILE", raising=False)
    if value is None:
        monkeypatch.delenv("VAI_DRIFT__STEADY_STEPS_PER_ERT", raising=False)
    else:
        monkeypatch.setenv("VAI_DRIFT__STEADY_STEPS_PER_ERT", value)
    assert MonitorSettings().drift.steady_steps_per_ert == expected


@pytest.mark.parametrize(
    "setting",
    [
        pytest.param({"VAI_DRIFT__REFERENCE_EVENTS": "400"}, id="400-events"),
        pytest.param(
            {"VAI_DRIFT__REFERENCE_EVENTS": "201", "VAI_DRIFT__PCA_SHARE": "0.9"}, id="201-events-pca-share-0.9"
        ),
    ],
)
def test_start_up_asks_only_what_every_embedding_width_needs(
    setting: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whether PCA takes its share depends on the embeddings' width, unknown at start-up: a warm-up that holds
    enough rows without PCA starts (16-d embeddings need 201), and the width's bound waits for the width."""
    monkeypatch.delenv("VAI_CONFIG_FILE", raising=False)
    for name, value in setting.items():
        monkeypatch.setenv(name, value)
    config = MonitorSettings().drift
    assert config.least_rows(16) == config.least_reference == 201 <= config.reference_events
    assert config.least_rows(64) > config.reference_events, "64-d embeddings would need more: checked at calibration"


@pytest.mark.parametrize(
    "kwargs",
    [
        pytest.param({"reference_events": 200}, id="reference-events"),
        pytest.param({"max_reference": 200}, id="max-reference"),
        pytest.param({"reference_events": 200, "pca_components": None}, id="reference-events-without-pca"),
    ],
)
def test_start_up_refuses_what_no_width_can_calibrate(kwargs: dict[str, int | None]) -> None:
    with pytest.raises(ValidationError, match="at least 201 rows for window_size=50: raise them or shrink window_size"):
        DriftConfig.model_validate(kwargs)
    assert DriftConfig.model_validate({**kwargs, "online_detector": "none"}).least_rows(64) == 2, "nothing to calibrate"
