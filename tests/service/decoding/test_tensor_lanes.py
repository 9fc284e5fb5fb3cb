"""The short lanes for well-formed tensor bodies: they answer for the bodies serving stacks send, and
whatever they answer is exactly what the general readers answer; anything else they leave to them."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any

import msgspec
import numpy as np
import numpy.typing as npt
import pytest
import redis
from prometheus_client import CollectorRegistry
from redis.asyncio import Redis

from common.errors import InvalidInput
from common.redis import connect
from helpers import binary_body, binary_tensor, event, stream_entries, summarise_rows
from sampler.explanations import ExplanationStore
from sampler.metrics import SamplerMetrics
from sampler.policy import SamplingPolicy
from sampler.queue import QueueWriter
from sampler.sampler import Sampler
from service.decoding.binary_body import decode_binary
from service.decoding.parsing import Decoded, decode_body, read_tensors
from service.decoding.tensor_lanes import Lane, decode_binary_fast, decode_compact
from service.events.schemas import EventIn
from service.feed.writer import FeedWriter
from service.ingest.handler import IngestHandler
from service.metrics import FeedMetrics, IngestMetrics
from service.settings import SidecarSettings

RNG = np.random.default_rng(11)
FIELDS = EventIn.__struct_fields__


def _compact(array: npt.NDArray[Any]) -> dict[str, Any]:
    raw = array.astype(array.dtype.newbyteorder("<")).tobytes()
    return {"shape": list(array.shape), "dtype": array.dtype.name, "data": base64.b64encode(raw).decode()}


def _events(count: int, dtype: str = "float32", *, classes: int = 10, dims: int = 8) -> list[dict[str, Any]]:
    return [
        event(
            f"r{index}",
            model="lanes",
            logits=RNG.normal(size=classes).astype(dtype),
            embedding=RNG.normal(size=dims).astype(dtype),
            cohort={"region": "eu"},
        )
        for index in range(count)
    ]


def _compact_body(events: list[dict[str, Any]]) -> bytes:
    encoded = [
        {key: _compact(value) if isinstance(value, np.ndarray) else value for key, value in item.items()}
        for item in events
    ]
    return json.dumps(encoded[0] if len(encoded) == 1 else {"events": encoded}).encode()


def _binary(events: list[dict[str, Any]], datatype: str = "FP32") -> tuple[bytes, str]:
    sections, documents = [], []
    for item in events:
        document = {}
        for key, value in item.items():
            if isinstance(value, np.ndarray):
                document[key], raw = binary_tensor(value, "FP64" if value.dtype == np.float64 else datatype)
                sections.append(raw)
            else:
                document[key] = value
        documents.append(document)
    body, headers = binary_body({"events": documents}, sections)
    return body, headers["inference-header-content-length"]


def _read(lane: Lane) -> list[Decoded]:
    """The lane's events with their rows of its matrices put in, as the general reader gives them."""
    return [
        msgspec.structs.replace(event, **{field: matrix[index] for field, matrix in lane.vectors.items()})
        for index, event in enumerate(lane.events)
    ]


def _same(lane: Lane, general: list[Decoded]) -> None:
    assert len(lane.events) == len(general)
    for found, expected in zip(_read(lane), general, strict=True):
        assert isinstance(found, EventIn) and isinstance(expected, EventIn), (found, expected)
        for name in FIELDS:
            mine, theirs = getattr(found, name), getattr(expected, name)
            if isinstance(theirs, np.ndarray):
                assert isinstance(mine, np.ndarray) and mine.dtype == theirs.dtype, name
                np.testing.assert_array_equal(mine, theirs)
            else:
                assert mine == theirs, name


@pytest.mark.parametrize("dtype", ["float32", "float64", "float16", "int16", "uint8"])
def test_a_compact_batch_takes_the_lane_and_reads_as_the_general_reader_does(dtype: str) -> None:
    body = _compact_body(_events(7, dtype))
    lane = decode_compact(body, max_batch=50)
    assert lane is not None
    _same(lane, read_tensors(decode_body(body, max_batch=50)))
    assert lane.vectors["logits"].dtype == (np.float32 if dtype == "float32" else np.float64)


def test_a_single_compact_event_takes_the_lane() -> None:
    body = _compact_body(_events(1))
    lane = decode_compact(body, max_batch=50)
    assert lane is not None
    _same(lane, read_tensors(decode_body(body, max_batch=50)))


@pytest.mark.parametrize("datatype", ["FP32", "FP64", "FP16", "INT8", "INT64"])
def test_a_binary_batch_takes_the_lane_and_reads_as_the_general_reader_does(datatype: str) -> None:
    dtype = {"FP32": "float32", "FP64": "float64", "FP16": "float16", "INT8": "int8", "INT64": "int64"}[datatype]
    body, length = _binary(_events(9, dtype), datatype)
    lane = decode_binary_fast(body, length, max_batch=50)
    assert lane is not None
    _same(lane, read_tensors(decode_binary(body, length, max_batch=50)))


def _compact_variants() -> dict[str, bytes]:
    """Bodies the compact lane must leave to the general reader (each is odd in one way)."""
    events = _events(4)
    nan = RNG.normal(size=10).astype(np.float32)
    nan[3] = np.nan
    good = _compact_body(events)
    escaped = good.replace(b"/", b"\\/", 1)  # valid JSON, the same string, but not plain base64 in the body
    assert escaped != good
    document = json.loads(_compact_body(events))
    number_data = json.loads(json.dumps(document))
    number_data["events"][1]["logits"]["data"] = 1234567890
    wrong_length = json.loads(json.dumps(document))
    wrong_length["events"][2]["embedding"]["shape"] = [9]
    bad_base64 = json.loads(json.dumps(document))
    bad_base64["events"][0]["logits"]["data"] = "not base64!"
    return {
        "nan": _compact_body([*events[:2], {**events[2], "logits": nan}, events[3]]),
        "mixed dtypes": _compact_body([*events[:3], {**events[3], "logits": events[3]["logits"].astype(np.float64)}]),
        "a missing embedding": _compact_body([*events[:3], {k: v for k, v in events[3].items() if k != "embedding"}]),
        "a list of numbers": _compact_body([*events[:3], {**events[3], "logits": [4.0, 1.0, 0.5]}]),
        "shape [1, n] beside [n]": _compact_body([*events[:3], {**events[3], "logits": events[3]["logits"][None]}]),
        "escaped base64": escaped,
        "data a number": json.dumps(number_data).encode(),
        "wrong length": json.dumps(wrong_length).encode(),
        "bad base64": json.dumps(bad_base64).encode(),
        "a bad model name": _compact_body([*events[:3], {**events[3], "model": "no spaces"}]),
        "a model name ending in a newline": _compact_body([*events[:3], {**events[3], "model": "nl\n"}]),
        "a bad version": _compact_body([*events[:3], {**events[3], "model_version": "v 1"}]),
        "a version not a string": _compact_body([*events[:3], {**events[3], "model_version": 2}]),
        "an unknown key": _compact_body([*events[:3], {**events[3], "extra": 1}]),
        "too many events": _compact_body(_events(51)),
    }


@pytest.mark.parametrize("case", list(_compact_variants()))
def test_the_compact_lane_leaves_every_odd_body_to_the_general_reader(case: str) -> None:
    assert decode_compact(_compact_variants()[case], max_batch=50) is None


def _binary_variants() -> dict[str, tuple[bytes, str]]:
    events = _events(4)
    body, length = _binary(events)
    reordered = [*events[:3], {key: events[3][key] for key in ("model", "request_id", "embedding", "logits")}]
    model_input = {**events[3], "input": RNG.normal(size=(2, 2)).astype(np.float32)}
    nan = RNG.normal(size=10).astype(np.float32)
    nan[0] = np.inf
    return {
        "another field order": _binary(reordered),
        "an input section": _binary([*events[:3], model_input]),
        "inf": _binary([{**events[0], "logits": nan}, *events[1:]]),
        "mixed dtypes": _binary([*events[:3], {**events[3], "logits": events[3]["logits"].astype(np.float64)}]),
        "a trailing byte": (body + b"\0", length),
        "a missing byte": (body[:-1], length),
        "a header length past the body": (body, str(len(body) + 1)),
        "a header length that is not a number": (body, "12a"),
        "a bad model name": _binary([*events[:3], {**events[3], "model": "no spaces"}]),
        "a model name ending in a newline": _binary([*events[:3], {**events[3], "model": "nl\n"}]),
        "a bad version": _binary([*events[:3], {**events[3], "model_version": "v 1"}]),
        "a list as datatype": _edited_header(body, length, 0, "datatype", ["FP32"]),
        "a float size in a later event": _edited_header(body, length, 2, "parameters", {"binary_data_size": 40.0}),
        "a float in a later event's shape": _edited_header(body, length, 2, "shape", [10.0]),
        "true for 1 in a later event's shape": _edited_header(body, length, 2, "shape", [True, 10]),
    }


def _edited_header(body: bytes, length: str, index: int, key: str, value: Any) -> tuple[bytes, str]:
    """``body`` with one key of event ``index``'s logits tensor replaced (``==`` may call the new value equal)."""
    document = json.loads(body[: int(length)])
    document["events"][index]["logits"][key] = value
    header = json.dumps(document).encode()
    return header + body[int(length) :], str(len(header))


@pytest.mark.parametrize("case", list(_binary_variants()))
def test_the_binary_lane_leaves_every_odd_body_to_the_general_reader(case: str) -> None:
    body, length = _binary_variants()[case]
    assert decode_binary_fast(body, length, max_batch=50) is None


def test_duplicate_keys_read_alike_in_the_lane_and_the_general_reader() -> None:
    events = _events(2)
    other = _compact(RNG.normal(size=10).astype(np.float32))
    body = _compact_body(events).replace(b'"logits": ', b'"logits": ' + json.dumps(other).encode() + b', "logits": ', 1)
    lane = decode_compact(body, max_batch=50)
    assert lane is not None
    _same(lane, read_tensors(decode_body(body, max_batch=50)))
    np.testing.assert_array_equal(lane.vectors["logits"][0], events[0]["logits"])  # the last wins


def test_the_lane_s_events_are_events() -> None:
    """The rest of ingest takes the lane's events as it takes the general reader's."""
    lane = decode_compact(_compact_body(_events(1)), max_batch=5)
    assert lane is not None and isinstance(lane.events[0], EventIn)
    assert msgspec.structs.asdict(lane.events[0]).keys() == set(FIELDS)


def _mutations(body: bytes, count: int, rng: np.random.Generator) -> list[bytes]:
    """``body`` with one byte replaced, at random places, by bytes JSON and base64 care about."""
    alphabet = b'AZaz09+/=\\"{}[],:. -1e'
    found = []
    for _ in range(count):
        mutated = bytearray(body)
        mutated[int(rng.integers(len(body)))] = alphabet[int(rng.integers(len(alphabet)))]
        found.append(bytes(mutated))
    return found


def test_whatever_the_compact_lane_answers_is_what_the_general_reader_answers() -> None:
    rng = np.random.default_rng(5)
    answered = 0
    for body in _mutations(_compact_body(_events(3, classes=4, dims=3)), 400, rng):
        lane = decode_compact(body, max_batch=50)
        if lane is not None:
            answered += 1
            _same(lane, read_tensors(decode_body(body, max_batch=50)))
    assert answered > 50  # most mutations change a value or a name, and the lane still reads the body


def test_whatever_the_binary_lane_answers_is_what_the_general_reader_answers() -> None:
    rng = np.random.default_rng(6)
    body, length = _binary(_events(3, classes=4, dims=3))
    answered = 0
    for mutated in _mutations(body, 400, rng):
        lane = decode_binary_fast(mutated, length, max_batch=50)
        if lane is not None:
            answered += 1
            _same(lane, read_tensors(decode_binary(mutated, length, max_batch=50)))
    assert answered > 50


@dataclass
class _Side:
    """An ingest handler with its real queue and monitoring writers (flushed to Redis by :func:`_written`)."""

    handler: IngestHandler
    registry: CollectorRegistry
    writer: QueueWriter
    feed: FeedWriter
    redis: Redis


def _side(redis_url: str) -> _Side:
    settings = SidecarSettings(
        redis_url=redis_url,
        max_models=3,
        max_versions_per_model=2,
        cohort_keys=("region",),
        max_cohort_values=1,
        sampling=SamplingPolicy(
            every_n=4, confidence_below=0.6, margin_below=0.3, flagged_cohorts=[{"region": "apac"}], max_per_second=5
        ),
    )
    registry, client = CollectorRegistry(), connect(redis_url, timeout_s=5.0)
    sampler_metrics = SamplerMetrics(registry)
    writer = QueueWriter(  # a small queue: some samples are refused (queue_full)
        client,
        sampler_metrics,
        ExplanationStore(client, ttl_s=3600),
        max_events=100,
        max_bytes=1 << 24,
        batch_size=1000,
        stream_maxlen=1000,
        queue_max_length=4,
        retry_s=0.1,
    )
    # No budget (its draws are random); every event also keeps a record for a delayed label.
    feed = FeedWriter(
        client,
        FeedMetrics(registry),
        max_per_second=0,
        max_records=10_000,
        stream_maxlen=10_000,
        prediction_ttl_s=3600,
        brier_max_classes=10,
        label_records="all",
    )
    handler = IngestHandler(
        settings,
        sampler=Sampler(settings.model_policy, clock=lambda: 0.0),
        writer=writer,
        metrics=IngestMetrics(registry),
        sampler_metrics=sampler_metrics,
        feed=feed,
        clock=lambda: 1.7e9,
    )
    return _Side(handler, registry, writer, feed, client)


async def _written(side: _Side, redis_client: redis.Redis) -> dict[bytes, Any]:
    """Everything both writers of ``side`` wrote to Redis (entry ids left out), then an empty Redis again."""
    while side.writer.buffered:
        assert await side.writer.flush_once()
    while await side.feed.flush():
        pass
    await side.redis.aclose()
    found: dict[bytes, Any] = {}
    for key in sorted(redis_client.scan_iter("vai:*")):
        kind = redis_client.type(key)
        if kind == b"stream":
            found[key] = [fields for _, fields in stream_entries(redis_client, key.decode())]
        elif kind == b"string":
            found[key] = redis_client.get(key)
        elif kind == b"hash":
            found[key] = redis_client.hgetall(key)
        elif kind == b"set":
            found[key] = sorted(redis_client.smembers(key))
        else:
            found[key] = kind
    redis_client.flushdb()
    return found


def _requests(rng: np.random.Generator) -> list[list[dict[str, Any]]]:
    """Requests whose events pass and fail every check of ingest, alone and by what came before."""
    extras: list[dict[str, Any]] = [
        {"model_version": "v2"},
        {"model_version": "v3", "label": 2},
        {"label": 10},  # out of range
        {"timestamp": "yesterday"},
        {"timestamp": "2026-11-29T10:00:00Z", "cohort": {"region": "apac"}},
        {"timestamp": 1.6e9, "model_version": "v4"},
        {"duplicate": True},  # of r0, within the request
        {"cohort": {"region": "us"}, "label": 1},
    ]
    first = [event(f"r{i}", model="lanes", **extras[i % len(extras)]) for i in range(17)]
    for index, item in enumerate(first):
        if item.pop("duplicate", False):
            item["request_id"] = "r0"
        logits = rng.normal(size=10).astype(np.float32)
        logits[index % 10] += rng.choice([0.1, 4.0])  # some confident, some not
        item.update(logits=logits, embedding=rng.normal(size=4).astype(np.float32))
    others = [
        event(f"s{i}", model=("lanes", "m2", "m3", "m4", "m5")[i % 5], logits=rng.normal(size=10).astype(np.float32))
        for i in range(9)
    ] + [event("r1", model="lanes", logits=rng.normal(size=10).astype(np.float32))]  # a recent duplicate
    wider = [event(f"w{i}", model="lanes", logits=first[i]["logits"], embedding=np.ones(6, "f4")) for i in range(3)]
    no_scores = [event(f"n{i}", model="lanes", embedding=np.ones(4, "f4")) for i in range(3)]
    for item in no_scores:
        del item["logits"]
    short = [event(f"t{i}", model="lanes", logits=np.ones(1, "f4")) for i in range(3)]
    probabilities = []
    for i in range(6):
        values = rng.dirichlet(np.ones(10)).astype(np.float32)
        values[0] += 0.1 if i == 2 else 0.0  # sums to 1.1
        probabilities.append(event(f"p{i}", model="m2", probabilities=values))
        del probabilities[-1]["logits"]
    # float64 embeddings: a finite value beyond float32's range is refused (it is published as float32), in
    # its turn among the checks (the timestamp's first).
    beyond = [event(f"b{i}", model="m3", logits=rng.normal(size=10), embedding=rng.normal(size=4)) for i in range(4)]
    beyond[1]["embedding"][2] = 1e39
    beyond[2]["embedding"][0] = -1e39
    beyond[2]["timestamp"] = "yesterday"
    # What serving stacks send: one model, no label, timestamp or input; then the same with a recent id, an id
    # repeated within the request, and a control character in an id.
    plain = [
        event(f"c{i}", model="lanes", logits=rng.normal(size=10).astype(np.float32), embedding=np.ones(4, "f4"))
        for i in range(12)
    ]
    recent = [*plain[4:6], {**plain[6], "request_id": "c0"}]
    repeated = [*plain[6:8], {**plain[8], "request_id": "c6"}]
    control = [*plain[9:11], {**plain[11], "request_id": "c\x07"}]
    return [first, others, wider, no_scores, short, probabilities, beyond, plain[:4], recent, repeated, control]


_DATATYPES = {"float32": "FP32", "float64": "FP64"}


def _outcome(handler: IngestHandler, body: bytes, header_length: str | None) -> Any:
    try:
        return handler.ingest(body, header_length=header_length).to_json()
    except InvalidInput as error:
        return error.message, error.field, error.detail


def _samples(registry: CollectorRegistry) -> list[tuple[str, list[tuple[str, str]], float]]:
    return sorted(
        (sample.name, sorted(sample.labels.items()), sample.value)
        for family in registry.collect()
        for sample in family.samples
        if not sample.name.endswith("_created")
    )


@pytest.mark.parametrize("form", ["compact", "binary"])
@pytest.mark.anyio
async def test_ingest_of_a_lane_s_events_is_ingest_of_the_general_reader_s(
    form: str, redis_url: str, redis_client: redis.Redis
) -> None:
    """The same events through the lane and, made to miss it, through the general reader: the same results,
    rejections and their wording, metrics, sampling decisions, queued messages and monitoring records."""
    lane_side, general_side = _side(redis_url), _side(redis_url)
    for events in _requests(np.random.default_rng(8)):
        if form == "compact":
            body, length = _compact_body(events), None
            other_length = None
            # The same values, one header in another shape: the lane takes only bodies of one shape per field.
            detour = [{**events[0], **{k: v.reshape(1, -1) for k, v in events[0].items() if isinstance(v, np.ndarray)}}]
            other = _compact_body(detour + events[1:])
            assert decode_compact(body, max_batch=50) is not None and decode_compact(other, max_batch=50) is None
        else:
            body, length = _binary(events)
            # The same values, one tensor as JSON numbers: the lane takes only bodies of binary sections.
            field = next(key for key, value in events[0].items() if isinstance(value, np.ndarray))
            as_json = {"shape": list(events[0][field].shape), "datatype": _DATATYPES[events[0][field].dtype.name]}
            detour = [{**events[0], field: {**as_json, "data": events[0][field].tolist()}}]
            other, other_length = _binary(detour + events[1:])
            assert decode_binary_fast(body, length, max_batch=50) is not None
            assert decode_binary_fast(other, other_length, max_batch=50) is None
        lane_found = _outcome(lane_side.handler, body, length)
        assert lane_found == _outcome(general_side.handler, other, other_length)
    lane, general = lane_side.handler, general_side.handler
    assert lane.counts["lanes"] > 0
    assert _samples(lane_side.registry) == _samples(general_side.registry)
    queue_full = {"model": "lanes", "reason": "queue_full"}
    assert lane_side.registry.get_sample_value("vai_sample_dropped_total", queue_full)
    assert lane.embedding_dims == general.embedding_dims and lane.models == general.models
    written = await _written(lane_side, redis_client)
    assert any(key.startswith(b"vai:stream:") for key in written) and any(b":pred:" in key for key in written)
    assert written == await _written(general_side, redis_client)


def test_versions_past_the_cap_share_a_label_whose_sum_adds_in_arrival_order() -> None:
    """A request's versions are labelled once each, and the versions past the cap (two here) counted together,
    their confidences added in the order the events came, as when each event was observed on its own."""
    side = _side("redis://127.0.0.1:1/0")  # its writers are never flushed
    handler, registry = side.handler, side.registry
    versions = ["v1", "v2", "v3", "v4", "v3", "v1", "v5", "v4", "v2", "v3", "v5", "v4"]
    rng = np.random.default_rng(0)
    events = [
        event(f"o{i}", model="lanes", model_version=version, logits=rng.normal(scale=3.0, size=10).astype(np.float32))
        for i, version in enumerate(versions)
    ]
    handler.ingest(_compact_body(events))
    summaries = summarise_rows([item["logits"] for item in events], from_logits=True)
    pairs = list(zip(summaries, versions, strict=True))
    by_version = [summary[1] for name in ("v3", "v4", "v5") for summary, version in pairs if version == name]
    arrival = [
        summary[1] for summary, version in zip(summaries, versions, strict=True) if version in {"v3", "v4", "v5"}
    ]
    assert sum(by_version, 0.0) != sum(arrival, 0.0)  # these values tell the two orders apart
    for label, kept in (("v1", {"v1"}), ("v2", {"v2"}), ("__other__", {"v3", "v4", "v5"})):
        confidences = [summary[1] for summary, version in zip(summaries, versions, strict=True) if version in kept]
        labels = {"model": "lanes", "version": label}
        assert registry.get_sample_value("vai_events_total", labels) == len(confidences)
        assert registry.get_sample_value("vai_prediction_confidence_sum", labels) == sum(confidences, 0.0)
        assert registry.get_sample_value("vai_prediction_confidence_count", labels) == len(confidences)
