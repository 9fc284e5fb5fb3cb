"""Reading a request body within a size limit, for FastAPI routes and the bare ingest route alike."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

from service.errors import SidecarError


async def collect_body(
    chunks: AsyncIterator[bytes],
    *,
    content_length: str | None,
    content_encoding: str | None,
    limit_bytes: int,
    limit_setting: str = "VAI_MAX_BODY_BYTES",
    on_chunk: Callable[[bytes], None] | None = None,
) -> bytes:
    """The raw body, refusing with 413 as soon as it is known to exceed ``limit_bytes`` (set by ``limit_setting``).

    ``on_chunk`` sees every chunk as it arrives, while it is still in the CPU cache.
    """
    if content_length is not None and (not content_length.isdigit() or int(content_length) > limit_bytes):
        raise (
            _too_large(limit_bytes, limit_setting)
            if content_length.isdigit()
            else SidecarError(400, "content-length: not a number", field="content-length")
        )
    encoding = (content_encoding or "identity").lower()
    if encoding != "identity":
        raise SidecarError(
            415, f"content-encoding: {encoding!r} is not supported; send plain JSON", field="content-encoding"
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


def _too_large(limit_bytes: int, limit_setting: str) -> SidecarError:
    return SidecarError(413, f"body: larger than {limit_bytes} bytes ({limit_setting})", field="body")
