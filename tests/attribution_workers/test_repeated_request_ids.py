"""Two stream entries of one request id in one batch: each is settled in the batch that handled it."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import redis
from prometheus_client import CollectorRegistry
from small_models import sampled_digit

from attribution_workers.config import AttributionConfig
from attribution_workers.loader import ModelSpec
from attribution_workers.metrics import WorkerMetrics
from attribution_workers.runtime import ModelRuntime
from attribution_workers.worker import AttributionWorker
from common import keys
from common.redis import connect
from demo.models import digits
from demo.models.training import DatasetSplit
from helpers import hash_field
from sampler.explanations import ExplanationStore

STREAM = keys.sample_stream("digits")


@pytest.mark.parametrize("max_deliveries", [pytest.param(1, id="one-delivery"), pytest.param(3, id="three")])
def test_an_entry_sent_twice_is_acknowledged_twice_in_its_batch_the_second_a_duplicate(
    max_deliveries: int, redis_url: str, redis_client: redis.Redis, digits_path: Path, digits_split: DatasetSplit
) -> None:
    """A writer that gives up on a batch Redis already took sends it again. The outcomes were matched to entries by
    request id, the last entry taking both: the first stayed pending until ``retry_after_ms``, to be explained
    again (or dead-lettered, with ``max_deliveries`` 1)."""
    spec = ModelSpec(torchscript=digits_path, input_shape=digits.INPUT_SHAPE, num_classes=digits.NUM_CLASSES)
    runtime = ModelRuntime("digits", AttributionConfig(model=spec, methods=("saliency",)), device="cpu")
    registry = CollectorRegistry()
    sent = ["again", "other", "again"]

    async def scenario() -> tuple[int, int]:
        client = connect(redis_url, timeout_s=5)
        worker = AttributionWorker(
            client,
            ExplanationStore(client, ttl_s=3600),
            {"digits": runtime},
            WorkerMetrics(registry),
            consumer="w",
            block_ms=10,
            max_deliveries=max_deliveries,
            retry_after_ms=60_000,  # nothing comes back within the test: one step settles the batch or not
        )
        try:
            await worker.ensure_groups()
            for index, request_id in enumerate(sent):
                image, label = digits_split.test.features[index], int(digits_split.test.labels[index])
                redis_client.xadd(STREAM, sampled_digit(request_id, image, predicted=label).encode())  # type: ignore[arg-type]  # redis-py types fields as a dict (invariant) of unions
            return await worker.step(), worker.processed
        finally:
            await worker.aclose()

    handled, processed = asyncio.run(asyncio.wait_for(scenario(), timeout=60))

    assert handled == processed == len(sent)
    assert redis_client.xlen(STREAM) == 0 and redis_client.xpending(STREAM, keys.CONSUMER_GROUP)["pending"] == 0

    def counted(status: str, method: str = "saliency") -> float:
        labels = {"model": "digits", "method": method, "status": status}
        return registry.get_sample_value("vai_explanations_total", labels) or 0.0

    assert (counted("ok"), counted("duplicate"), counted("failed", "-"), counted("dead", "-")) == (2, 1, 0, 0)
    assert hash_field(redis_client, keys.explanation("digits", "again"), "status") == b"done"
    assert redis_client.xlen(keys.dead_letter_stream("digits")) == 0
