"""numba's compiled code is kept on disk for the packages named, so the next process reads it back."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from monitors.fleet.jit_cache import keep_compiled

_PROBE = """
import numba

@numba.njit
def add_one(x):
    return x + 1

HELPER = 3
"""
_RUN = """
import sys
import {package}.probe as probe
from monitors.fleet.jit_cache import keep_compiled
print(keep_compiled(({named!r},)), probe.add_one(41), sum(probe.add_one.stats.cache_hits.values()))
"""


def _package(root: Path, name: str) -> None:
    (root / name).mkdir()
    (root / name / "__init__.py").write_text("")
    (root / name / "probe.py").write_text(_PROBE)


def _run(root: Path, package: str, named: str) -> list[int]:
    """A fresh process: import the probe, turn the cache on for ``named``, call the function."""
    from helpers import REPO

    done = subprocess.run(
        [sys.executable, "-c", _RUN.format(package=package, named=named)],
        cwd=root,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(root), str(REPO)]), "NUMBA_CACHE_DIR": str(root / "c")},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return [int(word) for word in done.stdout.split()]


@pytest.mark.slow
def test_a_second_process_reads_back_what_the_first_compiled(tmp_path: Path) -> None:
    _package(tmp_path, "jitprobe")
    count, answer, hits = _run(tmp_path, "jitprobe", "jitprobe")
    assert (count, answer, hits) == (1, 42, 0)  # compiled here, and written
    assert list((tmp_path / "c").rglob("*.nbi"))
    assert _run(tmp_path, "jitprobe", "jitprobe") == [1, 42, 1]  # read back, not compiled again


def test_packages_not_named_are_left_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _package(tmp_path, "jitother")
    monkeypatch.syspath_prepend(str(tmp_path))
    probe = importlib.import_module("jitother.probe")
    assert keep_compiled(("vai_no_such_package",)) == 0
    assert probe.add_one(1) == 2
    assert list(tmp_path.rglob("*.nbi")) == []  # wherever numba would have put it
