"""Command-line options several benchmarks share."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

MODEL_CACHE = Path(tempfile.gettempdir()) / "vai-sidecar-models"
"""Where the digits CNN is trained once and kept between runs."""


def add_cache_dir(parser: argparse.ArgumentParser) -> None:
    """``--cache-dir``: where the trained digits CNN is kept (default :data:`MODEL_CACHE`)."""
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=MODEL_CACHE,
        help="where the trained model is kept (default: the temp dir)",
    )
