"""A small keep-alive HTTP/1.1 load generator over loopback, light enough to share 2 cores.

Each request body is a template whose request ids are rewritten in place, so
the sidecar sees unique events without the client re-encoding JSON.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np


@dataclass
class Template:
    """A body with fixed-width request-id slots at known offsets."""

    body: bytearray
    slots: list[int]
    width: int

    def fill(self, counter: int) -> bytes:
        for offset in self.slots:
            self.body[offset : offset + self.width] = b"%0*d" % (self.width, counter)
            counter += 1
        return bytes(self.body)


@dataclass
class Result:
    seconds: float
    requests: int = 0
    errors: int = 0
    latencies_s: list[float] = field(default_factory=list)

    @property
    def req_per_s(self) -> float:
        return self.requests / self.seconds

    def percentile_ms(self, q: float) -> float:
        return float(np.percentile(self.latencies_s, q) * 1000) if self.latencies_s else float("nan")


async def _worker(
    port: int,
    template: Template,
    start_id: int,
    stride: int,
    deadline: float,
    result: Result,
    headers: Sequence[tuple[bytes, bytes]],
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    extra = b"".join(name + b": " + value + b"\r\n" for name, value in headers)
    head = (
        b"POST /v1/events HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n%s\r\n" % (len(template.body), extra)
    )
    counter = start_id
    try:
        while time.perf_counter() < deadline:
            body = template.fill(counter)
            counter += stride
            started = time.perf_counter()
            writer.write(head + body)
            status = await _read_response(reader)
            result.latencies_s.append(time.perf_counter() - started)
            result.requests += 1
            result.errors += status >= 300
    finally:
        writer.close()


async def _read_response(reader: asyncio.StreamReader) -> int:
    header = await reader.readuntil(b"\r\n\r\n")
    lines = header.split(b"\r\n")
    status = int(lines[0].split()[1])
    length = next(int(line.split(b":")[1]) for line in lines if line.lower().startswith(b"content-length"))
    await reader.readexactly(length)
    return status


def run(
    port: int,
    template: Template,
    *,
    connections: int,
    seconds: float,
    first_id: int,
    headers: Sequence[tuple[bytes, bytes]] = (),
) -> Result:
    """Drive ``port`` for ``seconds`` with ``connections`` keep-alive connections, each request carrying
    ``headers`` besides its content type and length."""
    per_request = len(template.slots)
    stride = per_request * connections
    result = Result(seconds=seconds)

    async def main() -> None:
        deadline = time.perf_counter() + seconds
        await asyncio.gather(
            *(
                _worker(port, template_copy, first_id + index * per_request, stride, deadline, result, headers)
                for index, template_copy in enumerate(
                    Template(bytearray(template.body), template.slots, template.width) for _ in range(connections)
                )
            )
        )

    asyncio.run(main())
    return result
