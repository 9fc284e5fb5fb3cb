"""Which failures are a Redis outage (wait for Redis) and which are one entry's or batch's own (fail it, go on)."""

from __future__ import annotations

import re

from redis.exceptions import DataError, ResponseError

from common.redis import REDIS_FAILED

_REDIS_STATE = re.compile(
    r"(?<![A-Za-z])(?:BUSY|CLUSTERDOWN|LOADING|MASTERDOWN|MISCONF|NOGROUP|NOREPLICAS|NOSCRIPT|OOM|READONLY)(?![A-Za-z])"
)
"""Error codes of a Redis state (busy, loading, full, a consumer group lost with its data...): an outage, not a
fault of the data sent. Searched anywhere in the message: Redis 6 wraps a script's ``-OOM`` in ``ERR Error running
script``."""


def about_the_data(error: BaseException) -> bool:
    """Whether Redis (or redis-py) refused the arguments of one command, e.g. ``ERR value is not a valid float``
    from a script or ``WRONGTYPE``: sending other data works, so this is no outage."""
    if type(error) is DataError:
        return True
    if type(error) is not ResponseError:  # OutOfMemoryError, ReadOnlyError, BusyLoadingError...: Redis's state
        return False
    message = str(error).rpartition("caused error: ")[2]  # a pipeline prefixes the failed command
    return _REDIS_STATE.search(message) is None


def is_outage(error: BaseException) -> bool:
    """A failed Redis call that is not about the data: the loop waits with backoff, the entries stay pending."""
    return isinstance(error, REDIS_FAILED) and not about_the_data(error)
