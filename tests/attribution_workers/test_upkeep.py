"""After a batch: the randomisation sanity check runs when due and its figures land in a real Redis."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest
import torch
from prometheus_client import CollectorRegistry
from small_models import eager_digits, sampled_digit

from attribution_workers.config import AttributionConfig
from attribution_workers.explainer import Explainer, stack_maps
from attribution_workers.inspection_health import MAX_VERSIONS
from attribution_workers.metrics import WorkerMetrics
from attribution_workers.runtime import ModelRuntime
from attribution_workers.upkeep import BatchUpkeep
from common.redis import connect
from demo.models.training import DatasetSplit
from sampler.contract import SampledEvent
from sampler.explanation_records import SanityFigure
from sampler.explanations import ExplanationStore
from sampler.layers import LayerBaselineStore, LayerHealthStore

SAMPLES = 16


def _events(split: DatasetSplit, versions: tuple[str, ...] = ("v1",), rows: int = SAMPLES) -> list[SampledEvent]:
    return [
        sampled_digit(
            f"r{row}",
            split.test.features[row],
            predicted=int(split.test.labels[row]),
            version=versions[row % len(versions)],
        )
        for row in range(rows)
    ]


def _ranking_pairs(runtime: ModelRuntime, events: list[SampledEvent], seeds: range) -> int:
    """Inputs whose Grad-CAM maps rank something on the input's support (the pixels off the baseline) on the trained
    and on the randomised model, the fewest over the randomised copies of ``seeds``."""
    inputs = torch.stack([torch.from_numpy(e.input.decode()) for e in events if e.input is not None])
    targets = torch.tensor([e.predicted for e in events])
    support = (inputs != runtime.model.baseline).reshape(len(inputs), -1).numpy()
    explainer = Explainer(runtime.model, methods=["gradcam"])

    def ranking(each: Explainer) -> list[bool]:
        found = stack_maps(each.explain(inputs, targets), "gradcam").reshape(len(inputs), -1)
        return [bool(np.ptp(row[ink]) > 0) for row, ink in zip(found, support, strict=True)]

    trained = ranking(explainer)
    randomised = [ranking(explainer.with_model(runtime.model.randomised(seed=seed))) for seed in seeds]
    return min(sum(a and b for a, b in zip(trained, other, strict=True)) for other in randomised)


def test_the_stored_sanity_figure_counts_the_inputs_it_was_measured_on(
    redis_url: str, digits_path: Path, digits_split: DatasetSplit
) -> None:
    """It stored ``sanity_samples`` whatever the check used; a Grad-CAM map of zeros ranks nothing, so its pair is
    not part of the similarity, and the figure's ``samples`` says how many pairs are (the fewest of any draw).

    It also stored any figure that measured one pair as deciding "passes sanity" for every map of the method, from
    one draw of random weights: a figure on fewer than ``sanity_min_pairs`` is stored as inconclusive and leaves the
    gauge (and the alert on it) alone, and each figure keeps its draws' seeds and similarities."""
    config = AttributionConfig.model_validate(
        {
            "model": {"torchscript": str(digits_path), "input_shape": [1, 8, 8], "num_classes": 10},
            "methods": ["gradcam", "saliency"],
            "fidelity_steps": 4,
            "fidelity_random_orders": 1,
            "inspect_layers": [],
            "sanity_samples": SAMPLES,
            "sanity_every_s": 0.001,
            "sanity_seeds": 2,
            "sanity_min_pairs": SAMPLES,
        }
    )
    runtime = ModelRuntime("digits", config, device="cpu", sanity_seed_start=0)
    events = _events(digits_split)
    expected = _ranking_pairs(runtime, events, seeds=range(2))
    assert 0 < expected < SAMPLES, "the first test digits include blank Grad-CAM maps"
    registry = CollectorRegistry()

    async def scenario() -> dict[str, SanityFigure]:
        client = connect(redis_url, timeout_s=5)
        store = ExplanationStore(client, ttl_s=3600)
        upkeep = BatchUpkeep(
            store,
            LayerHealthStore(client),
            WorkerMetrics(registry),
            baselines=LayerBaselineStore(client),
            worker="w",
            job_timeout_s=60,
        )
        try:
            result = runtime.explain(events, {})
            assert runtime.sanity_due()  # the first check: as soon as sanity_samples inputs are explained
            await upkeep.after_batch("digits", runtime, result)
            return await store.sanity("digits")
        finally:
            await client.aclose()

    figures = asyncio.run(asyncio.wait_for(scenario(), timeout=60))

    saliency, gradcam = figures["saliency"], figures["gradcam"]
    assert saliency.samples == SAMPLES and saliency.conclusive
    assert gradcam.samples == expected and not gradcam.conclusive
    for figure in (saliency, gradcam):
        draws = [draw for draw in figure.seed_similarities if draw is not None]
        assert figure.seeds == (0, 1) and len(draws) == 2
        assert figure.similarity_spread == pytest.approx(max(draws) - min(draws))

    def gauge(method: str) -> float | None:
        return registry.get_sample_value("vai_attribution_sanity_similarity", {"model": "digits", "method": method})

    assert gauge("saliency") == pytest.approx(saliency.similarity) and gauge("gradcam") is None


def test_every_version_of_a_mixed_batch_publishes_its_layer_health(
    redis_url: str, digits_path: Path, digits_split: DatasetSplit
) -> None:
    """During a rollout a batch mixes versions, each with its own windows. Only the batch's last event's version
    was published (one report per worker, gauges without a version), so a version whose events never came last
    never reached Redis or the gauges. Each version's report and gauges are kept; a version the runtime forgets
    takes its gauges with it."""
    config = AttributionConfig.model_validate(
        {
            "model": eager_digits(digits_path),
            "methods": ["saliency"],
            "fidelity_steps": 4,
            "fidelity_random_orders": 1,
            "inspect_window": 4,
        }
    )
    runtime = ModelRuntime("digits", config, device="cpu")
    registry = CollectorRegistry()

    async def scenario() -> tuple[list[tuple[str, int]], list[float | None]]:
        client = connect(redis_url, timeout_s=5)
        layers = LayerHealthStore(client)
        upkeep = BatchUpkeep(
            ExplanationStore(client, ttl_s=3600),
            layers,
            WorkerMetrics(registry),
            baselines=LayerBaselineStore(client),
            worker="w",
            job_timeout_s=60,
        )
        try:
            mixed = _events(digits_split, versions=("v1", "v1", "v1", "v2"))  # v2 comes last in every four
            for start in range(0, SAMPLES, 4):
                await upkeep.after_batch("digits", runtime, runtime.explain(mixed[start : start + 4], {}))
            reports = [(report.version, report.samples) for report in await layers.reports("digits")]
            both = [gauged(registry, "v1"), gauged(registry, "v2")]
            for version in ("v3", "v4", "v5"):  # the runtime keeps MAX_VERSIONS versions: v1 is forgotten
                batch = _events(digits_split, versions=(version,), rows=4)
                await upkeep.after_batch("digits", runtime, runtime.explain(batch, {}))
            return reports, both
        finally:
            await client.aclose()

    reports, both = asyncio.run(asyncio.wait_for(scenario(), timeout=60))

    assert sorted(reports) == [("v1", 12), ("v2", 4)]
    assert None not in both
    assert MAX_VERSIONS == 4 and runtime.inspected_versions == ["v2", "v3", "v4", "v5"]
    assert gauged(registry, "v1") is None and gauged(registry, "v5") is not None


def gauged(registry: CollectorRegistry, version: str) -> float | None:
    labels = {"model": "digits", "version": version, "layer": "dense.2"}
    return registry.get_sample_value("vai_layer_dead_units_ratio", labels)
