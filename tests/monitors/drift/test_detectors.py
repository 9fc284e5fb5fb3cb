"""Which detectors a monitor process loads before it freezes its start-up objects."""

from __future__ import annotations

import subprocess
import sys

import pytest

from monitors.drift.config import DriftConfig

_CHECK = """
import sys
from monitors.drift.config import DriftConfig
from monitors.drift.detectors import preload
config = DriftConfig.model_validate_json(sys.argv[1])
print(preload(config), "alibi_detect" in sys.modules)
"""


@pytest.mark.parametrize(
    ("config", "loaded"),
    [
        pytest.param(DriftConfig(), True, id="default-online-and-window-tests"),
        pytest.param(DriftConfig(online_detector="none", window_tests=False), False, id="no-alibi-detector"),
    ],
)
def test_preload_loads_alibi_detect_only_for_the_detectors_a_config_builds(config: DriftConfig, loaded: bool) -> None:
    """In a fresh process: the monitor preloads what its first calibration or adoption would import (on the
    event loop, for an adoption), and nothing for a config without alibi-detect detectors."""
    out = subprocess.run(
        [sys.executable, "-c", _CHECK, config.model_dump_json()], check=True, capture_output=True, text=True
    ).stdout.split()
    assert out == [str(loaded), str(loaded)]
