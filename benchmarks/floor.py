"""The floors the ingest benchmarks compare against: bare FastAPI endpoints that read the raw body and only
decode it, checking nothing.

* ``app``: parses the body with orjson (``benchmarks.ingest``, JSON number lists);
* ``compact_app``: orjson, then each tensor's base64 (pybase64) into ``np.frombuffer`` (``benchmarks.tensors_http``);
* ``binary_app``: the Open Inference Protocol binary split: orjson on the header of
  ``Inference-Header-Content-Length`` bytes, each section after it into ``np.frombuffer``.
"""

from __future__ import annotations

import numpy as np
import orjson
import pybase64
from fastapi import FastAPI, Request, Response

app = FastAPI()
compact_app = FastAPI()
binary_app = FastAPI()
_TENSORS = ("logits", "embedding")


def _accepted() -> Response:
    return Response(b'{"ok":true}', status_code=202, media_type="application/json")


@app.post("/v1/events")
async def events(request: Request) -> Response:
    orjson.loads(await request.body())
    return _accepted()


@compact_app.post("/v1/events")
async def compact_events(request: Request) -> Response:
    for item in orjson.loads(await request.body())["events"]:
        for field in _TENSORS:
            np.frombuffer(pybase64.b64decode(item[field]["data"], validate=True), dtype="<f4")
    return _accepted()


@binary_app.post("/v1/events")
async def binary_events(request: Request) -> Response:
    body = await request.body()
    size = int(request.headers["inference-header-content-length"])
    tail, offset = memoryview(body)[size:], 0
    for item in orjson.loads(body[:size])["events"]:
        for field in _TENSORS:
            end = offset + item[field]["parameters"]["binary_data_size"]
            np.frombuffer(tail[offset:end], dtype="<f4")
            offset = end
    return _accepted()
