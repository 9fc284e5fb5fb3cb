"""Metrics of an attribution worker, on the registry it is given."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

SECONDS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
LAG_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)


class WorkerMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.explanations = Counter(
            "vai_explanations",
            "Explanations by outcome: ok, failed (will retry), dead (dead-lettered), trimmed "
            "(stream entry trimmed while pending), duplicate (already stored).",
            ["model", "method", "status"],
            registry=registry,
        )
        self.seconds = Histogram(
            "vai_attribution_seconds",
            "Wall time of one method on one batch.",
            ["model", "method"],
            buckets=SECONDS_BUCKETS,
            registry=registry,
        )
        self.lag = Histogram(
            "vai_explanation_lag_seconds",
            "How long a sampled event waited for its explanation: from its entry entering the model's stream "
            "(the entry id) to its explanation being stored, both on Redis's clock (TIME, read once a batch); "
            "queueing, retries and attribution, not the event's own timestamp.",
            ["model"],
            buckets=LAG_BUCKETS,
            registry=registry,
        )
        self.models = Gauge(
            "vai_worker_models",
            "1 for each model this worker has loaded and explains (VaiModelNotExplained: samples queued for a model "
            "no live worker loads).",
            ["model"],
            registry=registry,
        )
        self.load_failed = Gauge(
            "vai_worker_model_load_failed",
            "1 for each model of this worker's config that it could not load at start (its weights or TorchScript "
            "file unreadable or not fitting the model, a factory that does not import, a method the model does not "
            "support; the reason is in the worker's log): the worker explains its other models and not this one "
            "until it is restarted.",
            ["model"],
            registry=registry,
        )
        self.dead_letters = Counter(
            "vai_dead_letters", "Stream entries moved to the dead-letter stream.", ["model"], registry=registry
        )
        self.dead_letters_trimmed = Counter(
            "vai_dead_letters_trimmed",
            "Oldest dead-letter entries dropped to keep the stream near VAI_WORKER_DEAD_LETTER_MAX_ENTRIES.",
            ["model"],
            registry=registry,
        )
        self.errors = Counter(
            "vai_worker_errors",
            "Entries, batches or steps that failed with an error other than a Redis outage (a bug, a stored "
            "record that no longer parses, data Redis refused); their entries are retried or dead-lettered. "
            "model is '-' for a step failing outside any one model's batch.",
            ["model"],
            registry=registry,
        )
        self.batch_size = Histogram(
            "vai_worker_batch_size",
            "Sampled events explained together in one batch.",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128),
            registry=registry,
        )
        self.fidelity = Gauge(
            "vai_explanation_fidelity",
            "Deletion-curve gain of the last batch: random-order area minus attribution-order area "
            "(above 0 the map beats chance).",
            ["model", "method"],
            registry=registry,
        )
        self.agreement = Gauge(
            "vai_attribution_agreement",
            "Mean pairwise Spearman correlation of the methods' |maps| over the last batch.",
            ["model"],
            registry=registry,
        )
        self.sanity = Gauge(
            "vai_attribution_sanity_similarity",
            "Similarity of maps from the trained and a randomised model (high: method ignores the model).",
            ["model", "method"],
            registry=registry,
        )
        self.prediction_mismatch = Counter(
            "vai_attribution_prediction_mismatch",
            "Explained events on which the worker's model predicted another class than the model server reported "
            "(probability of the reported class below the worker's top by more than prediction_tie_tolerance): "
            "version skew or different weights. Their maps explain the reported class and are not trusted.",
            ["model"],
            registry=registry,
        )
        self.confidence_mismatch = Counter(
            "vai_attribution_confidence_mismatch",
            "Explained events on which the worker's model predicted the reported class (or one within "
            "prediction_tie_tolerance of it), but at another confidence than the model server reported (its "
            "probability of the class and the server's differ by more than "
            "prediction_confidence_tolerance): version skew or different weights that agree on the class. Their "
            "maps are not trusted. Not counted in vai_attribution_prediction_mismatch_total.",
            ["model"],
            registry=registry,
        )
        self.redis_up = Gauge(
            "vai_worker_redis_up",
            "1 while the worker's Redis calls succeed, 0 during an outage (the worker waits it out).",
            registry=registry,
        )
        self.layer_dead = Gauge(
            "vai_layer_dead_units_ratio",
            "Share of a layer's units exactly 0 on every one of the worker's recent sampled inputs.",
            ["model", "version", "layer"],
            registry=registry,
        )
        self.layer_saturated = Gauge(
            "vai_layer_saturated_ratio",
            "Share of a bounded activation's outputs within 1% of a bound, over the recent sampled inputs.",
            ["model", "version", "layer"],
            registry=registry,
        )
        self.inspection_seconds = Histogram(
            "vai_layer_inspection_seconds",
            "Wall time of the layer inspection of one batch (hooked forward pass and per-input statistics).",
            ["model"],
            buckets=SECONDS_BUCKETS,
            registry=registry,
        )
        self.inspection_failures = Counter(
            "vai_layer_inspection_failures",
            "Batches on which a layer's figures could not be taken (an output the inspection cannot summarise): "
            "the layer is left out of that batch's inspection and the attributions go on; logged once per layer.",
            ["model", "layer"],
            registry=registry,
        )
        self.layer_shift = Gauge(
            "vai_layer_activation_shift",
            "Mean over a layer's units of |recent mean - baseline mean| / baseline std; baseline: the first "
            "window of inputs of the model version a worker completed, shared by the workers of its weights.",
            ["model", "version", "layer"],
            registry=registry,
        )

    def start_counting(self, model: str) -> None:
        """Create ``model``'s counters at 0, so that their first increment is an increase Prometheus sees
        (``increase()`` cannot see a series that appears at 1: a first dead letter would never alert), and say that
        this worker explains ``model``."""
        for counter in (
            self.dead_letters,
            self.dead_letters_trimmed,
            self.errors,
            self.prediction_mismatch,
            self.confidence_mismatch,
        ):
            counter.labels(model)
        self.models.labels(model).set(1)
