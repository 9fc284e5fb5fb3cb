"""The demo's command line: when the drift phase starts, and what it refuses."""

from __future__ import annotations

import pytest

from demo.main import DEFAULT_DRIFT_AFTER_S, banner, drift_after_s, main


@pytest.mark.parametrize(
    ("duration_s", "drift_after", "expected"),
    [
        pytest.param(None, None, DEFAULT_DRIFT_AFTER_S, id="until-ctrl-c"),
        pytest.param(90.0, None, 30.0, id="a-third-of-the-run"),
        pytest.param(None, 20.0, 20.0, id="given"),
        pytest.param(90.0, 0.0, 0.0, id="given-beats-the-duration"),
    ],
)
def test_the_drift_phase_starts_when_asked_or_by_default(
    duration_s: float | None, drift_after: float | None, expected: float
) -> None:
    assert drift_after_s(duration_s, drift_after) == expected


def test_the_banner_gives_the_drift_phase_s_start() -> None:
    text = banner("http://127.0.0.1:8000", {}, None, 20.0)
    assert "phases: 0-20 s clean" in text and "from 20 s drift" in text and "until Ctrl-C" in text


@pytest.mark.parametrize("value", ["-1", "nan", "inf", "soon"])
def test_a_drift_start_that_is_no_time_is_refused_before_anything_starts(
    value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--drift-after", value])
    assert exited.value.code == 2
    assert "--drift-after" in capsys.readouterr().err
