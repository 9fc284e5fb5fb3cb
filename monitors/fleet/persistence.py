"""Whether Redis keeps its data across a restart, as far as it says so.

The fleet's drift baselines (uploaded references, calibrated states, warm-ups) and labelled windows live in Redis.
Each monitor keeps those of its models in memory and stores them back after Redis lost them, so a Redis without
persistence loses them for good only when it restarts together with every monitor; a monitor says so at start-up,
once, rather than leaving it to be found out after an outage.
"""

from __future__ import annotations

import logging

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from common.redis import execute, text

log = logging.getLogger(__name__)


async def unpersisted(redis: Redis) -> str | None:
    """Why Redis would come back empty from a restart (no append-only file and no snapshot points), or ``None``
    when it persists its data or does not say (``CONFIG`` is refused by many managed services, which persist)."""
    pipe = redis.pipeline(transaction=False)
    pipe.config_get("appendonly")
    pipe.config_get("save")
    try:
        append_only, save = await execute(pipe)
    except ResponseError:  # CONFIG renamed, disabled or not allowed to this user
        return None
    if text(append_only.get("appendonly", "")) == "yes" or text(save.get("save", "")).strip():
        return None
    return "appendonly no, and no save points"


async def warn_if_unpersisted(redis: Redis) -> bool:
    """Log a warning when Redis keeps nothing across a restart; whether it did."""
    why = await unpersisted(redis)
    if why is None:
        return False
    log.warning(
        "Redis keeps nothing across a restart (%s): should it restart while no monitor runs, the drift baselines "
        "(uploaded references, calibrations, warm-ups) and labelled windows are lost for good; run it with "
        "appendonly yes (README: Known limits)",
        why,
    )
    return True
