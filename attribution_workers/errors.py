"""The one error type of the attribution workers."""

from __future__ import annotations


class AttributionError(Exception):
    """Something the attribution workers cannot do; the message says what and, where there is one, the fix."""
