"""Metrics of the sampler and its queue writer, on the registry they are given."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge


class SamplerMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.sampled = Counter(
            "vai_sampled_total",
            "Sampling decisions by reason (an event with several reasons counts once per reason).",
            ["model", "reason"],
            registry=registry,
        )
        self.dropped = Counter(
            "vai_sample_dropped_total",
            "Sampled events not queued, by reason: budget, outside_retention (event time further from its receipt "
            "than the explanation retention), input_too_large (an input over VAI_MAX_INPUT_BYTES), queue_full "
            "(the backlog's length at its cap), queue_bytes_full (its approximate bytes at theirs), buffer_full, "
            "redis_unavailable, redis_error, error.",
            ["model", "reason"],
            registry=registry,
        )
        self.queued = Counter(
            "vai_sample_queued_total",
            "Sampled events written to the model's Redis stream.",
            ["model"],
            registry=registry,
        )
        self.queue_length = Gauge(
            "vai_queue_length",
            "Entries in the model's stream waiting for attribution (last poll).",
            ["model"],
            registry=registry,
        )
        self.queue_max_length = Gauge(
            "vai_queue_max_length",
            "Backlog per model stream above which new samples are dropped (queue_full).",
            registry=registry,
        )
        self.redis_up = Gauge("vai_redis_up", "1 if the last Redis call succeeded, else 0.", registry=registry)
        self.buffer_max_events = Gauge(
            "vai_buffer_max_events", "Capacity of the in-memory buffer of sampled events.", registry=registry
        )
        self.buffered = Gauge(
            "vai_buffer_events", "Sampled events waiting in memory to be written to Redis.", registry=registry
        )
        self.buffered_bytes = Gauge(
            "vai_buffer_bytes", "Bytes of sampled events waiting in memory to be written to Redis.", registry=registry
        )
