"""The floor the ingest benchmark compares against: a bare FastAPI endpoint that reads
the raw body and parses it with orjson, nothing else."""

from __future__ import annotations

import orjson
from fastapi import FastAPI, Request, Response

app = FastAPI()


@app.post("/v1/events")
async def events(request: Request) -> Response:
    orjson.loads(await request.body())
    return Response(b'{"ok":true}', status_code=202, media_type="application/json")
