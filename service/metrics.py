"""Ingest metrics, on the registry they are given; label children are cached."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter

from service.histograms import BatchHistogram

CONFIDENCE_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 0.999, 1.0)
MARGIN_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0)


class IngestMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.events = Counter(
            "vai_events", "Valid prediction events accepted.", ["model", "version"], registry=registry
        )
        self.rejected = Counter(
            "vai_events_rejected",
            "Events refused, by reason (a body that could not be read counts once).",
            ["reason"],
            registry=registry,
        )
        self.not_sampled = Counter(
            "vai_events_not_sampled", "Accepted events no sampling rule chose.", ["model"], registry=registry
        )
        self.confidence = BatchHistogram(
            "vai_prediction_confidence",
            "Top-1 probability of accepted events (softmax of the logits when logits are sent).",
            ["model", "version"],
            buckets=CONFIDENCE_BUCKETS,
            registry=registry,
        )
        self.margin = BatchHistogram(
            "vai_logit_margin",
            "Top-1 minus top-2 logit of accepted events (log-probabilities when probabilities are sent).",
            ["model", "version"],
            buckets=MARGIN_BUCKETS,
            registry=registry,
        )
        self.low_confidence = Counter(
            "vai_low_confidence",
            "Accepted events whose top-1 probability is below the model's low_confidence_below (default 0.5).",
            ["model", "version"],
            registry=registry,
        )
        self.cohort_events = Counter(
            "vai_cohort_events",
            "Accepted events per allowlisted cohort key and value (rare values as __other__).",
            ["model", "cohort", "value"],
            registry=registry,
        )
        self.child = CounterChildren()


class FeedMetrics:
    """What the sidecar's monitoring feed writer and label intake count: records written, trimmed unread, dropped
    or refused per feed, and labels by whether they found their prediction."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.labels = Counter(
            "vai_labels", "Labels by whether they found their prediction.", ["model", "matched"], registry=registry
        )
        self.written = Counter(
            "vai_feed_records_written",
            "Monitoring records written to Redis, by feed.",
            ["model", "feed"],
            registry=registry,
        )
        self.trimmed = Counter(
            "vai_feed_records_trimmed",
            "Records trimmed from a feed by MAXLEN before the monitor read them (it was that far behind).",
            ["model", "feed"],
            registry=registry,
        )
        self.dropped = Counter(
            "vai_feed_records_dropped",
            "Monitoring records not written to Redis, by feed and reason.",
            ["model", "feed", "reason"],
            registry=registry,
        )
        self.refused = Counter(
            "vai_feed_records_refused",
            "Labelled records Redis refused for lack of memory, kept to be written again (each counted once; it"
            " then ends in written or dropped).",
            ["model", "feed"],
            registry=registry,
        )


class KServeMetrics:
    """What ``POST /v1/cloudevents`` (KServe's inference logger) counts: every CloudEvent once, and the parts of
    events monitored without them."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.events = Counter(
            "vai_kserve_events",
            "KServe logger CloudEvents by outcome (request_stored, joined, count_mismatch, response_only, "
            "request_dropped, request_expired, duplicate, other_component, invalid, redis_unavailable; pending_full: "
            "a request not stored as its model had the most requests waiting for responses; refused "
            "before being read: unauthorized, forbidden, body_too_large, body_timeout, body_budget, invalid_body, "
            "disconnected).",
            ["model", "outcome"],
            registry=registry,
        )
        self.dropped = Counter(
            "vai_kserve_parts_dropped",
            "Events of KServe responses monitored without a part that was unusable (label: no class of the "
            "prediction; embedding: missing, not numbers, NaN, infinite or past float32, not one row per instance, "
            "or of another width than the model's; input: the request's, for the same reasons or not "
            "kserve.input_shape; cohort: a ce-metadata value of no allowed length; time: a ce-time that is no time "
            "an event may have).",
            ["model", "part"],
            registry=registry,
        )


class PolicyMetrics:
    """Run-time sampling overrides (``PUT /v1/models/{model}/sampling``), as Redis keeps them for every replica."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.restored = Counter(
            "vai_sampling_overrides_restored",
            "Models whose run-time sampling overrides vanished from Redis (it restarted empty or was flushed) and "
            "this replica wrote back as it last saw them.",
            registry=registry,
        )


class CounterChildren:
    """``counter.labels(*labels)``, cached: the label lookup costs as much as the increment, on the request path."""

    def __init__(self) -> None:
        self._found: dict[tuple[int, tuple[str, ...]], Counter] = {}

    def __call__(self, counter: Counter, *labels: str) -> Counter:
        key = (id(counter), labels)
        found = self._found.get(key)
        if found is None:
            found = self._found[key] = counter.labels(*labels)
        return found
