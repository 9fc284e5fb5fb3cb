"""What a model name and a model version may be, wherever one arrives (events, labels, paths, queries).

Each rule has two spellings. ``*_PATTERN`` is for JSON Schema and pydantic, which both
read ``$`` as the end of the text (pydantic compiles patterns with Rust's regex).
Python's ``re`` does not: there ``$`` also matches before a final newline, so
``"nl\\n"`` would pass. Python-side checks (msgspec checks ``pattern`` with
``re.search``) use ``*_RE`` (``\\Z``) instead.
"""

from __future__ import annotations

import os
import re
import socket

MODEL_PATTERN = r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}$"
"""A model name: 1 to 64 letters, digits, ``.``, ``_`` or ``-``, not starting with ``.``: a browser reads a path
segment ``.`` or ``..`` as a step in the path, so such a model's pages and links could never be opened."""
MODEL_RE = re.compile(r"\A[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}\Z")
""":data:`MODEL_PATTERN` for Python's ``re``."""
VERSION_PATTERN = r"^[!-~]{1,64}$"
"""A model version: 1 to 64 visible ASCII characters (no whitespace or control characters)."""
VERSION_RE = re.compile(r"\A[!-~]{1,64}\Z")
""":data:`VERSION_PATTERN` for Python's ``re``."""


def process_id() -> str:
    """This process in Redis when its settings name none: ``{hostname}-{pid}`` (a pod's name, in Kubernetes), so a
    restarted process is a new consumer or owner and the one it replaced can be told apart in the logs."""
    return f"{socket.gethostname()}-{os.getpid()}"
