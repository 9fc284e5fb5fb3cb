"""Which failures are a Redis outage (wait for Redis) and which are one entry's or batch's own (fail it, go on)."""

from __future__ import annotations

import re

from redis.exceptions import DataError, ResponseError

from common.errors import RedisUnavailable
from common.redis import REDIS_FAILED

_ABOUT_THE_DATA = re.compile(
    r"WRONGTYPE|not a valid float|is not an integer|out of range|value is not|invalid (?:expire|stream ID)",
    re.IGNORECASE,
)
"""Refusals of the values one command sent (a score that is no float, a key of another type...): sending other
data works. Searched anywhere in the message: a script wraps them in ``ERR Error running script``."""


def about_the_data(error: BaseException) -> bool:
    """Whether Redis (or redis-py) refused the arguments of one command, e.g. ``ERR value is not a valid float``
    from a script or ``WRONGTYPE``. Anything else Redis answers (an unknown command on an old Redis, a cluster's
    ``MOVED`` or ``CROSSSLOT``, ``OOM``, ``LOADING``...) is about Redis or its setup, so the entries wait for it
    rather than being dead-lettered one after another."""
    if type(error) is DataError:
        return True
    if type(error) is not ResponseError:  # OutOfMemoryError, ReadOnlyError, BusyLoadingError...: Redis's state
        return False
    return _ABOUT_THE_DATA.search(str(error)) is not None


def is_outage(error: BaseException) -> bool:
    """A failed Redis call that is not about the data (or a store's ``RedisUnavailable``): the loop waits with
    backoff, the entries stay pending."""
    return isinstance(error, RedisUnavailable) or (isinstance(error, REDIS_FAILED) and not about_the_data(error))
