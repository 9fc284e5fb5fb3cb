"""Drift-reference uploads: a write Redis applies late is not answered as failed, one upload at a time per
process, a width only an upload set can be corrected, and values that are not real numbers are refused."""

from __future__ import annotations

import io
import re
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import pytest
import redis
from fastapi.testclient import TestClient

from common import keys
from helpers import event, sidecar_of, wait_until

PUT = "/v1/models/{}/reference"


async def _no_live_monitors(redis: Any) -> list[Any]:
    return []


@pytest.fixture
def no_monitor_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """The upload's check of the live monitors' settings skipped: it reads with a script, which a write pause
    would hold too; these tests pause Redis for the reference's write alone."""
    monkeypatch.setattr("service.monitoring.handler.live_drift_settings", _no_live_monitors)


@contextmanager
def writes_paused(client: redis.Redis, ms: int) -> Iterator[None]:
    """Redis holds every write (reads still answer) for ``ms`` or until the block ends, as when it is busy."""
    client.client_pause(ms, all=False)
    try:
        yield
    finally:
        client.client_unpause()


def _rows(count: int, width: int, seed: int = 0) -> list[list[float]]:
    return np.random.default_rng(seed).normal(size=(count, width)).round(3).tolist()  # type: ignore[no-any-return]


@pytest.mark.usefixtures("no_monitor_settings")
def test_a_write_redis_applies_after_the_request_timeout_is_202(
    make_client: Callable[..., TestClient], redis_client: redis.Redis
) -> None:
    """The reference is written with a timeout of its own, not the request path's: Redis busy past
    ``redis_timeout_s`` delays the answer instead of a 503 for a write that then takes effect."""
    client = make_client(redis_timeout_s=0.3)
    with writes_paused(redis_client, 1200):
        answer = client.put(PUT.format("digits"), json={"embeddings": _rows(50, 4)})
    assert answer.status_code == 202, answer.text
    assert redis_client.hget(keys.drift_reference("digits"), "rows") == b"50"


@pytest.mark.usefixtures("no_monitor_settings")
def test_a_write_left_unconfirmed_says_so_without_inviting_a_retry(
    make_client: Callable[..., TestClient], redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past even the write's own timeout, the answer says the reference may be stored, under which id and
    where to look, with no Retry-After: a write Redis has read is applied even after its client gave up."""
    monkeypatch.setattr("monitors.fleet.references.WRITE_TIMEOUT_S", 0.2)
    monkeypatch.setattr("monitors.fleet.references.WRITE_BYTES_PER_S", 1e12)
    client = make_client(redis_timeout_s=0.3)
    with writes_paused(redis_client, 1500):
        answer = client.put(PUT.format("digits"), json={"embeddings": _rows(50, 4)})
    assert answer.status_code == 504, answer.text
    assert "retry-after" not in answer.headers
    message = answer.json()["error"]
    assert "may still be stored" in message and "GET /v1/models/digits/drift" in message, message
    assert re.search(r'"reference_source" becomes "upload:[0-9a-f]{32}"', message), message


@pytest.mark.usefixtures("no_monitor_settings")
def test_one_upload_at_a_time_the_next_is_503_before_its_body_is_read(
    make_client: Callable[..., TestClient], redis_client: redis.Redis
) -> None:
    """A process parses and stores one reference at a time, whichever the model: another upload meanwhile is
    refused at once with Retry-After (nothing of it applied), and goes through afterwards."""
    client = make_client()
    answers: list[int] = []
    with writes_paused(redis_client, 5000):
        first = threading.Thread(
            target=lambda: answers.append(client.put(PUT.format("a"), json={"embeddings": _rows(50, 4)}).status_code)
        )
        first.start()
        wait_until(lambda: sidecar_of(client).ingest.embedding_dims.get("a") == 4, what="the first upload parsed")
        busy = client.put(PUT.format("b"), json={"embeddings": _rows(50, 8)})
    first.join()
    assert busy.status_code == 503 and busy.headers["retry-after"] == "5", busy.text
    assert "one at a time" in busy.json()["error"]
    assert answers == [202]
    assert "b" not in sidecar_of(client).ingest.embedding_dims, "the refused upload was not parsed"
    assert client.put(PUT.format("b"), json={"embeddings": _rows(50, 8)}).status_code == 202


def test_a_width_only_an_upload_set_can_be_corrected_by_another(make_client: Callable[..., TestClient]) -> None:
    """A 16-d reference for a model that never sent events, then its 32-d events (refused: the reference is
    16-d) and a corrected 32-d upload: accepted, and the events with it. Once events have a width, an upload
    of another is still refused."""
    client = make_client()
    assert client.put(PUT.format("digits"), json={"embeddings": _rows(50, 16)}).status_code == 202
    refused = client.post("/v1/events", json=event("e1", embedding=[0.5] * 32))
    assert refused.status_code == 422, refused.text
    corrected = client.put(PUT.format("digits"), json={"embeddings": _rows(50, 32, seed=1)})
    assert corrected.status_code == 202, corrected.text
    assert client.post("/v1/events", json=event("e2", embedding=[0.5] * 32)).status_code == 202
    against_events = client.put(PUT.format("digits"), json={"embeddings": _rows(50, 16, seed=2)})
    assert against_events.status_code == 422, against_events.text
    assert against_events.json()["error"] == "embeddings: 16 values per row, but this model's events have 32"


def _npy(array: Any) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("body", "field", "words"),
    [
        pytest.param({"embeddings": [["0.12", "-1.3"], ["0.5", "2"]]}, "embeddings", "text", id="numbers-as-text"),
        pytest.param({"embeddings": [[0.1, "1"], [0.5, 2.0]]}, "embeddings", "text", id="one-number-as-text"),
        pytest.param({"embeddings": [[True, False], [False, True]]}, "embeddings", "booleans", id="booleans"),
        pytest.param({"embeddings": [[0.1, None], [0.5, 2.0]]}, "embeddings", "non-numeric", id="null"),
        pytest.param(
            {"embeddings": [[0.1, 0.2], [0.3, 0.4]], "probabilities": [["1"], ["1"]]},
            "probabilities",
            "text",
            id="probabilities-as-text",
        ),
        pytest.param(
            {"embeddings": [[0.1, 0.2], [0.3, 0.4]], "probabilities": [[1.0], [1.0]]},
            "probabilities",
            "2 columns",
            id="one-class-probabilities",
        ),
    ],
)
def test_json_values_that_are_not_real_numbers_are_422(
    make_client: Callable[..., TestClient], body: Any, field: str, words: str
) -> None:
    answer = make_client().put(PUT.format("digits"), json=body)
    assert answer.status_code == 422 and answer.json()["field"] == field, answer.text
    assert words in answer.json()["error"]


@pytest.mark.parametrize(
    ("array", "words"),
    [
        pytest.param(np.ones((4, 3), dtype=np.complex64), "complex", id="complex64"),
        pytest.param(np.zeros((4, 3), dtype="datetime64[s]"), "dates", id="datetime64"),
        pytest.param(np.full((4, 3), "1.5"), "text", id="unicode"),
    ],
)
def test_npy_of_values_that_are_not_real_numbers_is_422(
    make_client: Callable[..., TestClient], array: Any, words: str
) -> None:
    answer = make_client().put(
        PUT.format("digits"), content=_npy(array), headers={"content-type": "application/octet-stream"}
    )
    assert answer.status_code == 422 and answer.json()["field"] == "embeddings", answer.text
    assert words in answer.json()["error"]


def test_an_unparsable_npy_header_is_a_clean_422(make_client: Callable[..., TestClient]) -> None:
    good = _npy(np.ones((4, 3), dtype=np.float32))
    broken = good.replace(b"'descr'", b"'descr': print(1), 'x'")  # a call where a literal belongs
    answer = make_client().put(PUT.format("digits"), content=broken, headers={"content-type": "application/x-npy"})
    assert answer.status_code == 422 and answer.json()["field"] == "body", answer.text
    message = answer.json()["error"]
    assert message.startswith("body: not a .npy array") and "object at 0x" not in message and "ast." not in message
