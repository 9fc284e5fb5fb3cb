"""Events/s of the same events sent three ways, beside floors that only decode the bodies.

    .venv/bin/python -m benchmarks.tensors [--seconds 0.25] [--rounds 24] [--stages]

Events carry 1,000 logits and a 768-d embedding, in batches of 100, posted to
``POST /v1/events`` of the real ASGI app (``service.app.create_app``, monitors
off, an embedded Redis behind it) called in-process, one request at a time,
timing the app's calls only (not the load generator's rewriting of request ids):

* ``json``: number lists (the logits and embedding as JSON numbers);
* ``compact``: our compact form, float32 as base64 of the little-endian bytes;
* ``binary``: the Open Inference Protocol binary extension, FP32 sections after
  a JSON header of ``Inference-Header-Content-Length`` bytes.

Each has a floor: a bare ASGI callable that reads the same body the same way
and only decodes it (orjson; orjson and pybase64's base64 decode and ``np.frombuffer``; the binary
split and ``np.frombuffer``), checking nothing. Every request id is unique (the
sidecar refuses duplicates). Each round gives every form and floor a slice of ``--seconds``, one after
the other, and the median rate over the ``--rounds`` rounds is printed: short slices interleaved over
the whole run meet the host's slow moments alike, where a few long phases, one per form, let one
disturbed phase move a ratio by 20%. The in-process calls never yield to the event loop, so
background tasks (the queue writer's flushes to Redis) do not run during them; ``benchmarks.ingest``
measures ingest over HTTP with them. ``--stages`` then prints the CPU per event of each step of ingest for
the tensor forms. No assertions: the figures go in the README.
"""

from __future__ import annotations

import argparse
import asyncio
import binascii
import os
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson
import pybase64

from benchmarks.loadgen import Template
from common.embedded_redis import EmbeddedRedis
from service.app import create_app
from service.decoding.fast_parsing import BodyDecoder
from service.decoding.parsing import Decoded
from service.decoding.tensor_lanes import Lane
from service.events.scores import summarise_matrix
from service.ingest.validation import check_lane_event, scores_chosen
from service.settings import SidecarSettings

SLOT = b"@" * 12
BATCH = 100
Asgi = Callable[[dict[str, Any], Any, Any], Awaitable[None]]


def _events(seed: int = 0) -> list[tuple[npt.NDArray[Any], npt.NDArray[Any]]]:
    rng = np.random.default_rng(seed)
    found = []
    for index in range(BATCH):
        logits = rng.normal(0.0, 2.0, 1000).astype(np.float32)
        logits[rng.integers(1000)] += 12.0 if index % 10 else 2.0
        found.append((logits, rng.normal(0.0, 1.0, 768).astype(np.float32)))
    return found


def _event(index: int, **tensors: Any) -> dict[str, Any]:
    return {"model": "bench", "model_version": "v1", "request_id": SLOT.decode(), **tensors,
            "cohort": {"region": ("eu", "us", "apac")[index % 3]}}  # fmt: skip


def _template(body: bytes, *, search_end: int | None = None) -> Template:
    slots, start = [], 0
    while (found := body.find(SLOT, start, search_end)) >= 0:
        slots.append(found)
        start = found + len(SLOT)
    if len(slots) != BATCH:
        raise SystemExit(f"found {len(slots)} request-id slots in the body, expected {BATCH}")
    return Template(bytearray(body), slots, len(SLOT))


def bodies() -> dict[str, tuple[Template, list[tuple[bytes, bytes]]]]:
    """Each form's body template and extra headers."""
    events = _events()
    as_json = orjson.dumps(
        {"events": [_event(i, logits=lg.tolist(), embedding=em.tolist()) for i, (lg, em) in enumerate(events)]}
    )

    def compact(array: npt.NDArray[Any]) -> dict[str, Any]:
        data = binascii.b2a_base64(array.tobytes(), newline=False).decode()
        return {"shape": [array.shape[0]], "dtype": "float32", "data": data}

    as_compact = orjson.dumps(
        {"events": [_event(i, logits=compact(lg), embedding=compact(em)) for i, (lg, em) in enumerate(events)]}
    )

    def binary(array: npt.NDArray[Any]) -> dict[str, Any]:
        return {"shape": [array.shape[0]], "datatype": "FP32", "parameters": {"binary_data_size": array.nbytes}}

    header = orjson.dumps(
        {"events": [_event(i, logits=binary(lg), embedding=binary(em)) for i, (lg, em) in enumerate(events)]}
    )
    sections = b"".join(lg.tobytes() + em.tobytes() for lg, em in events)
    length = [(b"inference-header-content-length", str(len(header)).encode())]
    return {
        "json": (_template(as_json), []),
        "compact": (_template(as_compact), []),
        "binary": (_template(header + sections, search_end=len(header)), length),
    }


async def _read(receive: Any) -> bytes:
    parts = []
    while True:
        message = await receive()
        parts.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(parts)


async def _answer(send: Any) -> None:
    await send({"type": "http.response.start", "status": 202, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": b'{"ok":true}'})


async def floor_json(scope: dict[str, Any], receive: Any, send: Any) -> None:
    orjson.loads(await _read(receive))
    await _answer(send)


async def floor_compact(scope: dict[str, Any], receive: Any, send: Any) -> None:
    for item in orjson.loads(await _read(receive))["events"]:
        for field in ("logits", "embedding"):
            np.frombuffer(pybase64.b64decode(item[field]["data"], validate=True), dtype="<f4")
    await _answer(send)


async def floor_binary(scope: dict[str, Any], receive: Any, send: Any) -> None:
    body = await _read(receive)
    size = int(dict(scope["headers"])[b"inference-header-content-length"])
    tail, offset = memoryview(body)[size:], 0
    for item in orjson.loads(body[:size])["events"]:
        for field in ("logits", "embedding"):
            end = offset + item[field]["parameters"]["binary_data_size"]
            np.frombuffer(tail[offset:end], dtype="<f4")
            offset = end
    await _answer(send)


_SCOPE = {
    "type": "http",
    "asgi": {"version": "3.0"},
    "http_version": "1.1",
    "method": "POST",
    "scheme": "http",
    "path": "/v1/events",
    "raw_path": b"/v1/events",
    "query_string": b"",
    "root_path": "",
    "client": ("127.0.0.1", 1),
    "server": ("127.0.0.1", 80),
}


def _receiver(body: bytes) -> Callable[[], Awaitable[dict[str, Any]]]:
    messages = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive() -> dict[str, Any]:
        return messages.pop() if messages else {"type": "http.disconnect"}

    return receive


async def _drive(app: Asgi, template: Template, extra: list[tuple[bytes, bytes]], seconds: float, first: int) -> float:
    """Events/s of posting ``template`` to ``app`` for ``seconds``, one request at a time."""
    statuses: list[int] = []

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    requests, counter, elapsed = 0, first, 0.0
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        body = template.fill(counter)  # the load generator's work (~1 us per event): not timed
        counter += BATCH
        headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body)), *extra]
        scope = {**_SCOPE, "headers": headers}
        started = time.perf_counter()
        await app(scope, _receiver(body), send)
        elapsed += time.perf_counter() - started
        requests += 1
    bad = [status for status in statuses if status != 202]
    if bad:
        raise SystemExit(f"{len(bad)} requests answered {bad[0]}")
    return requests * BATCH / elapsed


async def main(seconds: float, rounds: int, *, stages: bool) -> None:
    with tempfile.TemporaryDirectory() as directory:
        redis_server = EmbeddedRedis(data_dir=Path(directory), append_only=False).start()
        try:
            settings = SidecarSettings(redis_url=redis_server.url, monitors_enabled=False, max_body_bytes=64 << 20)
            app = create_app(settings)
            async with app.router.lifespan_context(app):
                await _measure(app, seconds, rounds)
                if stages:
                    _stages(app.state.sidecar.ingest)
        finally:
            redis_server.stop()


def _stages(handler: Any, repeats: int = 8, requests: int = 20) -> None:
    """CPU µs per event of each step of ingest for the tensor forms (best of ``repeats`` passes).

    Each step runs over the same bodies on its own (so each starts from cold data), then the
    whole of ``IngestHandler.ingest``; the steps need not add up to the whole.
    """
    print("\nCPU per event (us), best of passes:  decode = BodyDecoder.decode (tensors read, the route's lane),")
    print("check = the lane's checks (validation.scores_chosen, check_lane_event), summary = the numpy summary")
    print("(scores.summarise_matrix), ingest = IngestHandler.ingest")
    counter = 10**9
    decoder = BodyDecoder(max_batch=BATCH)
    for form in ("compact", "binary"):
        template, extra = bodies()[form]
        length = dict(extra).get(b"inference-header-content-length")
        header_length = length.decode() if length else None
        found: dict[str, list[float]] = {name: [] for name in ("decode", "check", "summary", "ingest")}
        for _ in range(repeats):
            batch = [bytes(template.fill(counter + i * BATCH)) for i in range(requests)]
            counter += requests * BATCH
            marks = [time.process_time()]
            lanes = [decoder.decode(body, header_length=header_length) for body in batch]
            marks.append(time.process_time())
            scores = [_lane_checked(lane) for lane in lanes]
            marks.append(time.process_time())
            for matrix in scores:
                summarise_matrix(matrix, from_logits=True)
            marks.append(time.process_time())
            for body in batch:
                handler.ingest(body, header_length=header_length)
            marks.append(time.process_time())
            for name, start, end in zip(found, marks, marks[1:], strict=False):
                found[name].append((end - start) / (requests * BATCH) * 1e6)
        print(f"{form:<8} " + "  ".join(f"{name} {min(v):5.1f}" for name, v in found.items()))


def _lane_checked(lane: Lane | list[Decoded]) -> npt.NDArray[Any]:
    """The checks ingest makes of a lane's events before admitting them; the scores matrix."""
    if not isinstance(lane, Lane):
        raise SystemExit("a benchmark body missed the lane")
    scores, _ = scores_chosen(lane.vectors.get("logits"), lane.vectors.get("probabilities"))
    for event in lane.events:
        check_lane_event(event, scores.shape[1], received_at=1.7e9)
    return scores  # type: ignore[no-any-return]


async def _measure(app: Any, seconds: float, rounds: int) -> None:
    forms = bodies()
    floors = {"json": floor_json, "compact": floor_compact, "binary": floor_binary}
    rates: dict[str, list[float]] = {}
    counter = 0
    for round_index in range(rounds + 1):  # round 0 warms up
        for form, (template, extra) in forms.items():
            for name, target in ((form, app), (f"{form} floor", floors[form])):
                rate = await _drive(target, template, extra, seconds if round_index else 0.5, counter)
                counter += 10_000_000
                if round_index:
                    rates.setdefault(name, []).append(rate)
    median = {name: float(np.median(found)) for name, found in rates.items()}
    sizes = {form: len(template.body) for form, (template, _) in forms.items()}
    print(f"batches of {BATCH} events (1,000 logits + 768-d embedding), median of {rounds} interleaved "
          f"{seconds:g} s slices, pid {os.getpid()}, load {os.getloadavg()[0]:.2f}")  # fmt: skip
    print(f"{'form':<8} {'body KiB':>9} {'events/s':>10} {'floor ev/s':>11} {'of floor':>9} {'vs json':>8}")
    for form in forms:
        rate, floor = median[form], median[f"{form} floor"]
        print(f"{form:<8} {sizes[form] / 1024:>9.0f} {rate:>10,.0f} {floor:>11,.0f} {rate / floor:>9.2f} "
              f"{rate / median['json']:>7.1f}x")  # fmt: skip


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=0.25, help="length of each slice")
    parser.add_argument("--rounds", type=int, default=24, help="slices of each form and floor")
    parser.add_argument("--stages", action="store_true", help="also the CPU per event of each step of ingest")
    arguments = parser.parse_args()
    asyncio.run(main(arguments.seconds, arguments.rounds, stages=arguments.stages))
