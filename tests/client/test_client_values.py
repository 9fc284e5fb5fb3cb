"""Values the client cannot send as given: counted as rejected, never truncated, never fatal to the sender."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import numpy as np
import pytest
from client_servers import scripted, timed_logs
from vai_client import AsyncClient, Client

BAD_VALUES = [
    pytest.param("json", {"label": float("inf")}, id="label-inf"),
    pytest.param("compact", {"logits": [10**400, 1.0]}, id="compact-logits-overflow"),
]


@pytest.mark.parametrize(("encoding", "bad"), BAD_VALUES)
def test_a_bad_value_leaves_the_sender_running(encoding: Any, bad: dict[str, Any]) -> None:
    with scripted() as server:
        client = Client(server.url, flush_interval_s=0.01, tensor_encoding=encoding)
        log_bad_then_good(client, bad)
        assert client.flush(10)
        assert (client.stats.sent, client.stats.rejected) == (3, 1)
        assert [e["request_id"] for e in server.items()] == ["m-0", "m-1", "m-2"]
        assert client.close(5)


@pytest.mark.parametrize(("encoding", "bad"), BAD_VALUES)
def test_a_bad_value_leaves_the_async_sender_running(encoding: Any, bad: dict[str, Any]) -> None:
    async def main(url: str) -> AsyncClient:
        async with AsyncClient(url, flush_interval_s=0.01, tensor_encoding=encoding) as client:
            log_bad_then_good(client, bad)
            assert await client.flush(10)
        return client

    with scripted() as server:
        client = asyncio.run(main(server.url))
        assert (client.stats.sent, client.stats.rejected) == (3, 1)
        assert [e["request_id"] for e in server.items()] == ["m-0", "m-1", "m-2"]


def log_bad_then_good(client: Client | AsyncClient, bad: dict[str, Any]) -> None:
    if "label" in bad:
        client.label("m", "earlier", bad["label"])
    else:
        client.log(model="m", request_id="bad", **bad)
    timed_logs(client, 3)


@pytest.mark.parametrize("client_class", [pytest.param(Client, id="thread"), pytest.param(AsyncClient, id="async")])
def test_an_unexpected_error_costs_one_batch_not_the_sender(
    client_class: type[Client | AsyncClient], caplog: pytest.LogCaptureFixture
) -> None:
    """A token read from a file with its newline: http.client refuses the header on every attempt.
    Each batch is counted as rejected, the sender carries on, and the traceback is logged once."""

    async def run(client: AsyncClient) -> bool:
        await client.start()
        timed_logs(client, 12)
        return await client.flush(10) and await client.close(5)

    with scripted() as server, caplog.at_level(logging.ERROR, logger="vai_client"):
        client = client_class(server.url, token="secret\n", batch_size=5, flush_interval_s=0.01)
        if isinstance(client, AsyncClient):
            assert asyncio.run(run(client))
        else:
            timed_logs(client, 12)
            assert client.flush(10) and client.close(5)
        assert (client.stats.sent, client.stats.rejected) == (0, 12)
        assert not server.requests
    (error,) = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert error.exc_info is not None and "batch of events" in error.getMessage()


def test_labels_are_integers_or_rejected() -> None:
    """2.9 is not sent as 2, nor True as 1: a label that is not an integer is refused and counted."""
    with scripted() as server:
        client = Client(server.url, flush_interval_s=0.01)
        bad: list[Any] = [2.9, True, np.bool_(False), float("nan"), "3"]
        good: list[Any] = [3, 4.0, np.int64(5), np.float32(6.0)]
        for i, label in enumerate(bad):
            client.log(model="m", request_id=f"bad-{i}", logits=[1.0, 0.0], label=label)
            client.label("m", f"bad-{i}", label)
        for i, label in enumerate(good):
            client.log(model="m", request_id=f"ok-{i}", logits=[1.0, 0.0], label=label)
            client.label("m", f"ok-{i}", label)
        assert client.flush(10)
        assert (client.stats.sent, client.stats.rejected) == (8, 10)
        assert [e["label"] for e in server.items()] == [3, 4, 5, 6]
        assert [item["label"] for item in server.items("/v1/labels")] == [3, 4, 5, 6]
        assert all(type(e["label"]) is int for e in server.items())
        client.close()


@pytest.mark.parametrize(
    ("cohort", "sent"),
    [
        pytest.param(
            {"region": "eu", "bucket": 3, 7: "x"}, {"region": "eu", "bucket": "3", "7": "x"}, id="int-as-text"
        ),
        pytest.param({1: None}, None, id="none-value"),
        pytest.param({None: "eu"}, None, id="none-key"),
        pytest.param({"ratio": 0.5}, None, id="float"),
        pytest.param({"vip": True}, None, id="bool"),
        pytest.param({"bucket": np.int64(3), np.int32(7): "x"}, {"bucket": "3", "7": "x"}, id="numpy-int-as-text"),
        pytest.param({"vip": np.bool_(True)}, None, id="numpy-bool"),
        pytest.param({"ratio": np.float32(0.5)}, None, id="numpy-float"),
    ],
)
def test_cohorts_are_text(cohort: dict[Any, Any], sent: dict[str, str] | None) -> None:
    """str kept, int written as its decimal text; None, floats, bools (whose text would be a guess) are refused."""
    with scripted() as server:
        client = Client(server.url, flush_interval_s=0.01)
        client.log(model="m", request_id="r", logits=[1.0, 0.0], cohort=cohort)
        assert client.flush(10)
        if sent is None:
            assert (client.stats.sent, client.stats.rejected) == (0, 1)
            assert not server.items()
        else:
            assert [e["cohort"] for e in server.items()] == [sent]
        client.close()


@pytest.mark.parametrize("encoding", ["json", "compact"])
def test_nested_lists_are_copied_to_the_numbers(encoding: Any) -> None:
    """The caller's rows are its buffers, reused at once: a row changed after ``log()`` changes nothing sent."""
    with scripted() as server:
        client = Client(server.url, flush_interval_s=3600, tensor_encoding=encoding)
        row = [0.0, 1.0, 2.0]
        image = [[row, (3.0, 4.0, 5.0)]]
        nested = [row, row] if encoding == "json" else None  # compact tensors are flat
        client.log(model="m", request_id="r", logits=[2.0, 1.0], embedding=nested, input=image)
        row[0] = 99.0
        image[0].append([6.0, 7.0, 8.0])
        assert client.close(5)
        (event,) = server.items()
        assert event["input"] == [[[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]]]
        if encoding == "json":
            assert event["embedding"] == [[0.0, 1.0, 2.0], [0.0, 1.0, 2.0]]
