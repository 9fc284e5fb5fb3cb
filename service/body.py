"""Reading a request body within a size limit, for FastAPI routes and the bare ingest route alike,
and parsing a small JSON body into a pydantic model."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import TypeVar

from pydantic import BaseModel, ValidationError

from common.errors import BadRequest, InvalidInput, PayloadTooLarge, UnsupportedMediaType
from common.numbers import ascii_decimal

M = TypeVar("M", bound=BaseModel)


async def collect_body(
    chunks: AsyncIterator[bytes],
    *,
    content_length: str | None,
    content_encoding: str | None,
    limit_bytes: int,
    limit_setting: str | None = "VAI_MAX_BODY_BYTES",
    on_chunk: Callable[[bytes], None] | None = None,
) -> bytes:
    """The raw body, refusing with 413 as soon as it is known to exceed ``limit_bytes``.

    ``limit_setting`` names the setting behind the limit in the error (``None``: a fixed limit).
    ``on_chunk`` sees every chunk as it arrives, while it is still in the CPU cache.
    """
    declared = None if content_length is None else ascii_decimal(content_length, max_digits=30)
    if content_length is not None and (declared is None or declared > limit_bytes):
        raise (
            _too_large(limit_bytes, limit_setting)
            if declared is not None
            else BadRequest("content-length: not a number", field="content-length")
        )
    encoding = (content_encoding or "identity").lower()
    if encoding != "identity":
        raise UnsupportedMediaType(
            f"content-encoding: {encoding!r} is not supported; send plain JSON", field="content-encoding"
        )
    parts: list[bytes] = []
    size = 0
    async for chunk in chunks:
        size += len(chunk)
        if size > limit_bytes:
            raise _too_large(limit_bytes, limit_setting)
        parts.append(chunk)
        if on_chunk is not None:
            on_chunk(chunk)
    return b"".join(parts)


def _too_large(limit_bytes: int, limit_setting: str | None) -> PayloadTooLarge:
    where = f" ({limit_setting})" if limit_setting else ""
    return PayloadTooLarge(f"body: larger than {limit_bytes} bytes{where}", field="body")


def parse_json(body: bytes, model: type[M]) -> M:
    """``body`` as ``model``; 422 naming the field at fault.

    The standard library's reader accepts ``NaN`` and ``Infinity`` tokens and reads ``1e400`` as
    infinity, so a non-finite number is refused by the model against its own field, not as "not JSON".
    """
    try:
        document = json.loads(body)
    except (ValueError, RecursionError) as error:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise InvalidInput(f"body: not valid JSON ({error})", field="body") from None
    try:
        return model.model_validate(document)
    except ValidationError as error:
        first = error.errors()[0]
        field = ".".join(str(part) for part in first["loc"]) or "body"
        raise InvalidInput(f"{field}: {first['msg']}", field=field) from None
