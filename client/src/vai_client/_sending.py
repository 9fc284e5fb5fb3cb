"""Posting batches from a thread that may block: the threaded client's sender, and the exit hooks of both clients."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from vai_client._core import Core
from vai_client._delivery import BatchDelivery
from vai_client._transport import TRANSIENT_ERRORS, Transport


def send_blocking(
    core: Core,
    kind: str,
    items: list[Any],
    transport: Transport,
    *,
    remaining_s: Callable[[], float | None],
    pause: Callable[[float], None],
) -> None:
    """Encode and post one batch taken from ``core``; an unexpected error costs this batch, never the sender."""
    try:
        delivery = core.delivery(kind, items)
    except Exception as error:
        core.crashed(kind, len(items), error)
        return
    resume_blocking(core, delivery, transport, remaining_s=remaining_s, pause=pause)


def resume_blocking(
    core: Core,
    delivery: BatchDelivery,
    transport: Transport,
    *,
    remaining_s: Callable[[], float | None],
    pause: Callable[[float], None],
) -> None:
    """Post one encoded batch (parked or new) until it is settled; an unexpected error costs it, never the sender."""
    try:
        deliver_blocking(delivery, transport, remaining_s=remaining_s, pause=pause)
    except Exception as error:
        core.crashed(delivery.kind, delivery.left, error)


def deliver_blocking(
    delivery: BatchDelivery,
    transport: Transport,
    *,
    remaining_s: Callable[[], float | None],
    pause: Callable[[float], None],
) -> None:
    """Post one batch until it is settled, or abandon it when ``remaining_s()`` reaches 0 (closing)."""
    while not delivery.done:
        remaining = remaining_s()
        if remaining is not None and remaining <= 0:
            delivery.abandon()
            return
        try:
            response = transport.post(
                delivery.path, delivery.next_body(), timeout_s=transport.attempt_timeout_s(remaining)
            )
        except TRANSIENT_ERRORS as error:
            delay_s = delivery.record_error(error)
        else:
            delay_s = delivery.record_response(response)
        if delay_s > 0 and not delivery.done:
            pause(delay_s)
