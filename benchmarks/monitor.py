"""The fleet monitor (``vai-sidecar monitor``): throughput of one process, and detection delay through the fleet.

    .venv/bin/python -m benchmarks.monitor [--events 20000] [--runs 3] [--rate 200] [--skip-throughput]

A few minutes on two cores. Every process it starts is stopped on the way out.

**(a) Throughput.** One monitor process pinned to CPU 1 (``taskset -c 1``; this script and Redis
run on CPU 0), one model with 768-d embeddings and 1000 classes, default detectors (PCA to
``--pca`` components, online MMD at ERT 1000, window 50), two rows: windowed tests off and on
(``VAI_DRIFT__WINDOW_TESTS``). Records are published straight into Redis in the sidecars' format
(``MonitoringRecord.blob`` as the entry's one field, ``XADD`` to ``keys.prediction_feed``, ``SADD
keys.MONITORED_MODELS``) and the reference (2,000 synthetic rows) through ``ReferenceStore``.
Once the drift status says ``monitoring`` (the time to get there, calibration included, is
printed), ``--events`` clean records are pushed at once and ``examined`` is read from the
drift status in Redis (published every 0.5 s): events/s is the growth of ``examined`` between
the first sample that moved and the last sample that still had a backlog, i.e. while the
monitor was saturated. Redis is flushed between rows (a stored calibrated state would be
adopted, config and all). ``vai_monitor_records_examined_total`` and
``vai_drift_events_skipped_total`` from the monitor's ``/metrics`` are printed as a check.

**(b) Detection delay.** 1, then 3 ``vai-sidecar serve`` replicas (``VAI_MONITOR=external``)
and one monitor (not pinned) on one Redis. The digits CNN (trained once into ``--cache-dir``,
as the demo trains it: without its held-out third) gives real 64-d embeddings and logits; the
held-out third is uploaded as the reference (``PUT /v1/models/digits/reference``). Clean
traffic is the test split replayed in shuffled passes, posted round-robin to the replicas in
batches of 10 at ``--rate`` events/s; a run switches to the test images corrupted by
:func:`demo.corruptions.corrupt` (noise, blur, occlusion mixed; a fresh seed per run) and polls
``GET /v1/models/digits/drift`` every 50 ms on the replicas in turn until ``mmd_online`` says
drift. Per run:

* events reported: shifted events posted with an event timestamp up to the detector's ``since``
  (the latest event time of the batch that first alarmed). The monitor scores the events one by
  one but reports once per batch it reads, so this is an upper bound, coarse by up to one batch
  (about ``rate x 0.2 s``);
* events exact: at the end, every event accepted is replayed in the order posted through the
  calibrated state the monitor stored (``keys.drift_state``), one by one: shifted events up to the
  first whose statistic exceeds its threshold (the monitor deletes examined feed entries, so the
  order posted stands in for the feed's order);
* seconds: from just before the first shifted ``POST`` until a replica's answer shows the drift.

Between runs clean traffic flows until ``mmd_online`` is back to no drift with at least
``--clean-events`` clean events examined; a drift seen on clean traffic after that counts as a
false alarm (printed).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import itertools
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if not __package__:
    sys.exit("run it as a module from the repository root: .venv/bin/python -m benchmarks.monitor")

import numpy as np
import orjson
import redis
from numpy.typing import NDArray
from redis.asyncio import Redis as AsyncRedis

from common import keys
from common.embedded_redis import EmbeddedRedis, free_port
from monitors.drift.reference import Reference
from monitors.feed import ENTRY_FIELD, MonitoringRecord
from monitors.fleet.references import ReferenceStore

ROOT = Path(__file__).resolve().parent.parent
ONLINE = "mmd_online"
DIGITS = "digits"
START_TIMEOUT_S = 60.0


# --- processes ---------------------------------------------------------------------------------


def host_load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load {one:.2f} {five:.2f} {fifteen:.2f}"


def pin_self(cpu: int) -> None:
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) >= 2:
        os.sched_setaffinity(0, {cpus[cpu]})


def unpinned() -> None:
    os.sched_setaffinity(0, range(os.cpu_count() or 1))


@contextmanager
def process(command: list[str], env: dict[str, str], *, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("ab") as out:
        child = subprocess.Popen(
            command, cwd=ROOT, env={**os.environ, **env}, stdout=out, stderr=out, preexec_fn=unpinned
        )
    try:
        yield child
    finally:
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
            try:
                child.wait(15)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()


def log_tail(log: Path) -> str:
    return log.read_text(errors="replace")[-1500:] if log.exists() else ""


def monitor_command(*, pinned: bool) -> list[str]:
    command = [sys.executable, "-m", "common.cli", "monitor"]
    if pinned and shutil.which("taskset") and (os.cpu_count() or 1) >= 2:
        command = ["taskset", "-c", "1", *command]
    return command


def monitor_env(redis_url: str, metrics_port: int, **drift: str) -> dict[str, str]:
    env = {
        "VAI_REDIS_URL": redis_url,
        "VAI_MONITOR_METRICS_PORT": str(metrics_port),
        "VAI_LOG_LEVEL": "warning",
    }
    env.update({f"VAI_DRIFT__{name.upper()}": value for name, value in drift.items()})
    return env


def metric(port: int, name: str, model: str) -> float | None:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2.0)
    try:
        connection.request("GET", "/metrics")
        text = connection.getresponse().read().decode()
    except OSError:
        return None
    finally:
        connection.close()
    match = re.search(rf'^{name}\{{model="{re.escape(model)}"\}} (\S+)$', text, re.MULTILINE)
    return float(match.group(1)) if match else None


def status_in_redis(client: redis.Redis, model: str) -> dict[str, Any] | None:
    body = client.get(keys.drift_status(model))
    return None if body is None else orjson.loads(body)


def online_verdict(status: dict[str, Any] | None) -> dict[str, Any] | None:
    if not status:
        return None
    return next((d for d in status.get("detectors", []) if d["name"] == ONLINE), None)


# --- (a) throughput ----------------------------------------------------------------------------


class Synthetic:
    """768-d embeddings: a 16-d gaussian latent mapped linearly, plus noise; 1000 classes."""

    def __init__(self, dim: int, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.mixing = rng.normal(size=(16, dim)) / 4.0
        self.offset = rng.normal(size=dim)
        self.dim = dim

    def embeddings(self, rng: np.random.Generator, rows: int) -> NDArray[np.float32]:
        latent = rng.normal(size=(rows, 16))
        noise = rng.normal(scale=0.3, size=(rows, self.dim))
        embeddings: NDArray[np.float32] = (latent @ self.mixing + noise + self.offset).astype(np.float32)
        return embeddings

    def reference(self, rows: int, seed: int) -> Reference:
        rng = np.random.default_rng(seed)
        return Reference(
            predicted=rng.integers(0, 1000, rows).astype(np.int64),
            confidence=rng.beta(8, 2, rows),
            embeddings=self.embeddings(rng, rows),
        )

    def records(self, model: str, count: int, seed: int) -> list[dict[bytes, bytes]]:
        rng = np.random.default_rng(seed)
        embeddings = self.embeddings(rng, count)
        predicted = rng.integers(0, 1000, count)
        confidence = rng.beta(8, 2, count)
        now = time.time()
        return [
            {
                ENTRY_FIELD: MonitoringRecord(
                    model=model,
                    request_id=f"r{seed}-{i}",
                    version="v1",
                    time_s=now,
                    predicted=int(predicted[i]),
                    confidence=float(confidence[i]),
                    margin=1.0,
                    num_classes=1000,
                    embedding=embeddings[i],
                ).blob()
            }
            for i in range(count)
        ]


async def put_reference(redis_url: str, model: str, reference: Reference) -> None:
    client = AsyncRedis.from_url(redis_url)
    try:
        await ReferenceStore(client).put(model, reference)
    finally:
        await client.aclose()


def publish(client: redis.Redis, model: str, records: list[dict[bytes, bytes]], *, chunk: int = 500) -> None:
    client.sadd(keys.MONITORED_MODELS, model)
    feed = keys.prediction_feed(model)
    for start in range(0, len(records), chunk):
        pipe = client.pipeline(transaction=False)
        for fields in records[start : start + chunk]:
            pipe.xadd(feed, fields, maxlen=200_000, approximate=True)  # type: ignore[arg-type]
        pipe.execute()


def wait_monitoring(client: redis.Redis, model: str, child: subprocess.Popen[bytes], timeout_s: float) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        status = status_in_redis(client, model)
        if status and status["state"] == "monitoring":
            return time.monotonic() - started
        if status and status.get("calibration_error"):
            raise RuntimeError(f"calibration failed: {status['calibration_error']}")
        if child.poll() is not None:
            raise RuntimeError(f"the monitor exited with {child.returncode}")
        time.sleep(0.2)
    raise RuntimeError(f"{model}: not monitoring after {timeout_s:.0f} s")


@dataclass
class ThroughputRow:
    name: str
    ready_s: float
    events: int
    examined: int
    events_per_s: float
    seconds: float
    max_oldest_waiting_s: float
    metric_examined: float | None
    metric_skipped: float | None
    load: str


def throughput_row(
    redis_url: str, data: Synthetic, *, window_tests: bool, events: int, pca: int, cap_s: float, logs: Path
) -> ThroughputRow:
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    name = "window tests on" if window_tests else "window tests off"
    model = "bench768-" + ("wt" if window_tests else "nowt")
    asyncio.run(put_reference(redis_url, model, data.reference(2000, seed=1)))
    port = free_port()
    env = monitor_env(redis_url, port, window_tests=str(window_tests).lower(), pca_components=str(pca))
    with process(monitor_command(pinned=True), env, log=logs / f"monitor-{model}.log") as child:
        try:
            ready_s = wait_monitoring(client, model, child, timeout_s=300)
        except RuntimeError as error:
            raise RuntimeError(f"{error}\n{log_tail(logs / f'monitor-{model}.log')}") from None
        base = int((status_in_redis(client, model) or {}).get("examined", 0))
        records = data.records(model, events, seed=2)  # event times now: oldest_waiting_s means something
        pushed = time.monotonic()
        publish(client, model, records)
        samples: list[tuple[float, int, int, float]] = []  # updated_at, examined, backlog, oldest_waiting_s
        while time.monotonic() - pushed < cap_s:
            status = status_in_redis(client, model) or {}
            sample = (status["updated_at"], status["examined"] - base, status["backlog"], status["oldest_waiting_s"])
            if not samples or sample[0] != samples[-1][0]:
                samples.append(sample)
            if sample[1] >= events:
                break
            time.sleep(0.1)
        metric_examined = metric(port, "vai_monitor_records_examined_total", model)
        metric_skipped = metric(port, "vai_drift_events_skipped_total", model)
    moving = [s for s in samples if s[1] > 0]
    busy = [s for s in moving if s[2] > 0] or moving
    first, last = (busy[0], busy[-1]) if len(busy) >= 2 else (moving[0], moving[-1])
    seconds = last[0] - first[0]
    rate = (last[1] - first[1]) / seconds if seconds > 0 else float("nan")
    return ThroughputRow(
        name=name,
        ready_s=ready_s,
        events=events,
        examined=samples[-1][1] if samples else 0,
        events_per_s=rate,
        seconds=seconds,
        max_oldest_waiting_s=max((s[3] for s in samples), default=0.0),
        metric_examined=metric_examined,
        metric_skipped=metric_skipped,
        load=host_load(),
    )


def throughput(redis_url: str, args: argparse.Namespace, logs: Path) -> list[ThroughputRow]:
    data = Synthetic(768)
    rows = []
    for window_tests in (False, True):
        events = args.events_window_tests if window_tests else args.events
        row = throughput_row(
            redis_url, data, window_tests=window_tests, events=events, pca=args.pca, cap_s=args.cap_s, logs=logs
        )
        print(
            f"  {row.name:17} {row.events_per_s:8.0f} events/s over {row.seconds:5.1f} s saturated; "
            f"{row.examined}/{row.events} examined; monitoring {row.ready_s:5.1f} s after start; "
            f"max oldest_waiting {row.max_oldest_waiting_s:5.1f} s; /metrics examined {row.metric_examined}, "
            f"skipped {row.metric_skipped}   ({row.load})",
            flush=True,
        )
        rows.append(row)
    return rows


# --- (b) detection delay -----------------------------------------------------------------------


@dataclass(frozen=True)
class Traffic:
    logits: NDArray[np.float32]
    embeddings: NDArray[np.float32]


class DigitsData:
    def __init__(self, cache_dir: Path, *, shifted_passes: int) -> None:
        import torch

        from demo.corruptions import corrupt
        from demo.models import digits

        torch.set_num_threads(1)
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.\w+` is deprecated", category=DeprecationWarning)
        path = digits.ensure_digits_model(cache_dir, hold_out_reference=True)
        self._torch = torch
        self.model = torch.jit.load(str(path), map_location="cpu").eval()  # type: ignore[no-untyped-call]
        split = digits.load_digits_split(hold_out_reference=True)
        if split.reference is None:
            raise RuntimeError("the digits split has no held-out reference")
        self.reference = self.run(split.reference.features)
        self.clean = self.run(split.test.features)
        shifted = [self.run(corrupt(split.test.features, seed=seed)[0]) for seed in range(shifted_passes)]
        self.shifted = Traffic(
            np.concatenate([t.logits for t in shifted]), np.concatenate([t.embeddings for t in shifted])
        )

    def run(self, images: NDArray[np.float32]) -> Traffic:
        torch = self._torch
        with torch.no_grad():
            x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))
            return Traffic(self.model(x).numpy(), self.model.embed(x).numpy())

    def reference_body(self) -> bytes:
        logits = self.reference.logits.astype(np.float64)
        p = np.exp(logits - logits.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        return orjson.dumps(
            {"embeddings": self.reference.embeddings, "probabilities": p}, option=orjson.OPT_SERIALIZE_NUMPY
        )


class Poster(threading.Thread):
    """Posts batches of 10 events at ``rate`` events/s, round-robin to the replicas; clean or shifted."""

    def __init__(self, ports: list[int], data: DigitsData, *, rate: float, seed: int) -> None:
        super().__init__(name="poster", daemon=True)
        self._ports = ports
        self._data = data
        self._interval_s = 10 / rate
        self._rng = np.random.default_rng(seed)
        self._halt = threading.Event()
        self._lock = threading.Lock()
        self._shifted = False
        self._shifted_order: Iterator[int] = iter(())
        self._clean_order = self._passes(len(data.clean.logits))
        self._prefix = f"p{seed}"
        self.shift_started: float | None = None
        self.shifted_times: list[float] = []
        self.shifted_ids: list[str] = []
        self.sent: list[tuple[str, bool, int]] = []
        """(request id, shifted, row) of every event accepted, in the order posted."""
        self.posted = 0
        self.failures: list[str] = []
        self._ids = itertools.count()

    def _passes(self, size: int) -> Iterator[int]:
        while True:
            yield from self._rng.permutation(size).tolist()

    def shift(self) -> None:
        with self._lock:
            self._shifted_order = self._passes(len(self._data.shifted.logits))
            self.shifted_times = []
            self.shifted_ids = []
            self.shift_started = None
            self._shifted = True

    def clean(self) -> None:
        with self._lock:
            self._shifted = False

    def stop(self) -> None:
        self._halt.set()
        self.join(10)

    def run(self) -> None:
        connections = [http.client.HTTPConnection("127.0.0.1", port, timeout=5.0) for port in self._ports]
        next_at = time.monotonic()
        try:
            for turn in itertools.count():
                if self._halt.is_set():
                    return
                self._post(connections[turn % len(connections)])
                next_at += self._interval_s
                self._halt.wait(max(0.0, next_at - time.monotonic()))
        finally:
            for connection in connections:
                connection.close()

    def _post(self, connection: http.client.HTTPConnection) -> None:
        with self._lock:
            shifted = self._shifted
            order = self._shifted_order if shifted else self._clean_order
            rows = [next(order) for _ in range(10)]
            source = self._data.shifted if shifted else self._data.clean
            now = time.time()
            if shifted and self.shift_started is None:
                self.shift_started = time.monotonic()
            events = []
            for i, row in enumerate(rows):
                stamp = now + i * 1e-5
                request_id = f"{self._prefix}-{next(self._ids)}"
                events.append(
                    {
                        "model": DIGITS,
                        "model_version": "v1",
                        "request_id": request_id,
                        "timestamp": stamp,
                        "logits": source.logits[row],
                        "embedding": source.embeddings[row],
                    }
                )
                if shifted:
                    self.shifted_times.append(stamp)
                    self.shifted_ids.append(request_id)
        body = orjson.dumps({"events": events}, option=orjson.OPT_SERIALIZE_NUMPY)
        try:
            connection.request("POST", "/v1/events", body=body, headers={"Content-Type": "application/json"})
            response = connection.getresponse()
            answer = response.read()
            if response.status != 202 or orjson.loads(answer)["accepted"] != len(events):
                self.failures.append(f"HTTP {response.status}: {answer[:200]!r}")
            else:
                self.sent.extend((event["request_id"], shifted, row) for event, row in zip(events, rows, strict=True))
            self.posted += len(events)
        except (OSError, http.client.HTTPException) as error:
            self.failures.append(f"{type(error).__name__}: {error}")
            connection.close()


def get_drift(port: int) -> dict[str, Any] | None:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2.0)
    try:
        connection.request("GET", f"/v1/models/{DIGITS}/drift")
        response = connection.getresponse()
        body = response.read()
        return orjson.loads(body) if response.status == 200 else None
    except (OSError, http.client.HTTPException):
        return None
    finally:
        connection.close()


def wait_http(port: int, child: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=1.0)
        try:
            connection.request("GET", "/livez")
            if connection.getresponse().status == 200:
                return
        except OSError:
            pass
        finally:
            connection.close()
        if child.poll() is not None:
            break
        time.sleep(0.05)
    raise RuntimeError(f"serve on port {port} did not start:\n{log_tail(log)}")


@dataclass
class Detection:
    replicas: int
    events: int | None
    """Shifted events posted with an event time up to the alarm's ``since`` (coarse by one batch)."""
    seconds: float | None
    clean_events: int
    false_alarms: int
    note: str = ""
    load: str = field(default_factory=host_load)
    shifted_ids: list[str] = field(default_factory=list)
    exact_events: int | None = None
    """Shifted events up to the first whose statistic exceeds its threshold, replayed one by one."""


FLUSHED_EVENTS = 100
"""Clean events examined after which the online window (50) holds clean events only: an alarm then is false."""


def settle_clean(ports: list[int], poster: Poster, *, clean_events: int, timeout_s: float) -> tuple[int, int, str]:
    """Clean traffic until ``mmd_online`` says no drift with ``clean_events`` examined; (examined, false alarms)."""
    poster.clean()
    started = time.monotonic()
    base: int | None = None
    was_quiet = False
    false_alarms = 0
    for turn in itertools.count():
        status = get_drift(ports[turn % len(ports)])
        verdict = online_verdict(status)
        if status is not None and verdict is not None:
            base = status["examined"] if base is None else base
            examined = status["examined"] - base
            if not verdict["drift"]:
                was_quiet = True
                if examined >= clean_events:
                    return examined, false_alarms, ""
            elif was_quiet and examined >= FLUSHED_EVENTS:
                false_alarms += 1
                was_quiet = False
        if time.monotonic() - started > timeout_s:
            return 0, false_alarms, f"clean traffic did not settle within {timeout_s:.0f} s"
        time.sleep(0.1)
    raise AssertionError("unreachable")


def detect(ports: list[int], poster: Poster, *, timeout_s: float) -> tuple[int | None, float | None, str]:
    poster.shift()
    for turn in itertools.count():
        status = get_drift(ports[turn % len(ports)])
        seen = time.monotonic()
        verdict = online_verdict(status)
        started = poster.shift_started
        if verdict is not None and verdict["drift"] and started is not None:
            since = verdict["since"]
            with poster._lock:
                events = sum(1 for stamp in poster.shifted_times if stamp <= since)
            return events, seen - started, ""
        if started is not None and seen - started > timeout_s:
            return None, None, f"no drift within {timeout_s:.0f} s"
        time.sleep(0.05)
    raise AssertionError("unreachable")


def replay(client: redis.Redis, data: DigitsData, sent: list[tuple[str, bool, int]], runs: list[Detection]) -> None:
    """Exact events to the first alarm: every event accepted, in the order posted, through the stored detector.

    The monitor deletes what it has examined, so the feed cannot be read back; the order posted is the
    feed's order for one replica, and for three as long as each replica writes a POST's events to Redis
    before the next POST (50 ms later at 200 events/s).
    """
    from monitors.drift.online import OnlineDriftDetector
    from monitors.drift.reduction import Pca
    from monitors.drift.states import MonitorState, OnlineState

    body = client.get(keys.drift_state(DIGITS))
    if body is None or not sent:
        print("  (no stored drift state or no events: no replay)")
        return
    state = MonitorState.model_validate_json(body)
    online = OnlineDriftDetector.from_state(next(d for d in state.detectors if isinstance(d, OnlineState)))
    x = np.stack([(data.shifted if shifted else data.clean).embeddings[row] for _, shifted, row in sent])
    if state.pca is not None:
        x = Pca.from_state(state.pca).transform(x)
    scores, thresholds = online.scores(x)
    alarm = scores > thresholds
    position = {request_id: i for i, (request_id, _, _) in enumerate(sent)}
    for run in runs:
        shifted = {position[i] for i in run.shifted_ids if i in position}
        if not shifted:
            continue
        count = 0
        for i in range(min(shifted), len(sent)):
            count += i in shifted
            if alarm[i]:
                run.exact_events = count
                break


def detection_delay(redis_url: str, args: argparse.Namespace, logs: Path) -> list[Detection]:
    with contextlib.ExitStack() as stack:
        cache = args.cache_dir or Path(stack.enter_context(tempfile.TemporaryDirectory()))
        cache.mkdir(parents=True, exist_ok=True)
        data = DigitsData(cache, shifted_passes=4)
        client = redis.Redis.from_url(redis_url)
        client.flushdb()
        serve_env = {"VAI_REDIS_URL": redis_url, "VAI_MONITOR": "external", "VAI_LOG_LEVEL": "warning"}
        ports: list[int] = []

        def add_replica() -> None:
            port = free_port()
            log = logs / f"serve-{port}.log"
            command = [sys.executable, "-m", "common.cli", "serve", "--port", str(port)]
            child = stack.enter_context(process(command, serve_env, log=log))
            wait_http(port, child, log)
            ports.append(port)

        add_replica()
        monitor_log = logs / "monitor-digits.log"
        monitor = stack.enter_context(
            process(
                monitor_command(pinned=False),
                monitor_env(redis_url, free_port(), window_tests=args.delay_window_tests),
                log=monitor_log,
            )
        )
        upload_reference(ports[0], data)
        try:
            ready_s = wait_monitoring(client, DIGITS, monitor, timeout_s=300)
        except RuntimeError as error:
            raise RuntimeError(f"{error}\n{log_tail(monitor_log)}") from None
        rows = len(data.reference.logits)
        print(f"  digits reference ({rows} rows) calibrated {ready_s:.1f} s after upload", flush=True)
        results: list[Detection] = []
        sent: list[tuple[str, bool, int]] = []
        for replicas in (1, 3):
            while len(ports) < replicas:
                add_replica()
            results += shift_runs(ports, data, args, replicas=replicas, sent=sent)
        replay(client, data, sent, results)
        for d in results:
            print(f"  {d.replicas} replica(s): exact events to the first alarm (replayed): {d.exact_events}")
        return results


def upload_reference(port: int, data: DigitsData) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        connection.request(
            "PUT",
            f"/v1/models/{DIGITS}/reference",
            body=data.reference_body(),
            headers={"Content-Type": "application/json"},
        )
        response = connection.getresponse()
        answer = response.read()
    finally:
        connection.close()
    if response.status != 202:
        raise RuntimeError(f"reference upload: HTTP {response.status}: {answer[:300]!r}")


def shift_runs(
    ports: list[int], data: DigitsData, args: argparse.Namespace, *, replicas: int, sent: list[tuple[str, bool, int]]
) -> list[Detection]:
    results: list[Detection] = []
    poster = Poster(list(ports), data, rate=args.rate, seed=replicas)
    poster.start()
    try:
        for run in range(args.runs):
            clean, false_alarms, note = settle_clean(
                ports, poster, clean_events=args.clean_events, timeout_s=args.cap_s
            )
            events = seconds = None
            if not note:
                events, seconds, note = detect(ports, poster, timeout_s=args.cap_s)
            poster.clean()
            with poster._lock:
                shifted_ids = list(poster.shifted_ids)
            result = Detection(replicas, events, seconds, clean, false_alarms, note, shifted_ids=shifted_ids)
            results.append(result)
            print(
                f"  {replicas} replica(s) run {run + 1}: "
                + (f"{events} events, {seconds:.2f} s" if seconds is not None else f"no figure ({note})")
                + f"   (after {clean} clean events examined, {false_alarms} false alarms; {result.load})",
                flush=True,
            )
    finally:
        poster.stop()
        sent.extend(poster.sent)
    if poster.failures:
        print(f"  {len(poster.failures)} failed POSTs, first: {poster.failures[0]}")
    return results


# --- main --------------------------------------------------------------------------------------


def report(rows: list[ThroughputRow], detections: list[Detection]) -> None:
    if rows:
        print("\nthroughput of one monitor process (768-d, PCA + online MMD, ERT 1000), pinned to one core:")
        baseline = rows[0].events_per_s
        for row in rows:
            ratio = row.events_per_s / baseline
            print(f"  {row.name:17} {row.events_per_s:8.0f} events/s   ratio to window tests off {ratio:.2f}")
    if detections:
        print("\ndetection delay of mmd_online on a real shift (digits CNN, noise/blur/occlusion), medians:")
        baseline_s: float | None = None
        for replicas in (1, 3):
            done = [d for d in detections if d.replicas == replicas and d.seconds is not None]
            if not done:
                print(f"  {replicas} replica(s): no detection")
                continue
            events = statistics.median([d.events or 0 for d in done])
            exact = [d.exact_events for d in done if d.exact_events is not None]
            exact_text = f"{statistics.median(exact):5.0f}" if exact else "    -"
            seconds = statistics.median([d.seconds or 0.0 for d in done])
            baseline_s = baseline_s or seconds
            print(
                f"  {replicas} replica(s): {events:5.0f} events reported (batch bound), {exact_text} exact (replay), "
                f"{seconds:5.2f} s to a replica's GET showing drift ({len(done)} runs; "
                f"seconds ratio to 1 replica {seconds / baseline_s:.2f})"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=20_000, help="(a) clean records pushed per row")
    parser.add_argument(
        "--events-window-tests", type=int, default=5_000, help="(a) records pushed with window tests on (slower)"
    )
    parser.add_argument("--pca", type=int, default=32, help="(a) PCA components")
    parser.add_argument("--cap-s", type=float, default=90.0, help="time cap of each measurement")
    parser.add_argument("--runs", type=int, default=3, help="(b) shifts per replica count")
    parser.add_argument("--rate", type=float, default=200.0, help="(b) events/s posted, all replicas together")
    parser.add_argument("--clean-events", type=int, default=300, help="(b) clean events examined before a shift")
    parser.add_argument(
        "--delay-window-tests",
        choices=("true", "false"),
        default="true",
        help="(b) VAI_DRIFT__WINDOW_TESTS of the monitor (default true, the product's default)",
    )
    parser.add_argument("--cache-dir", type=Path, help="(b) where the digits CNN is trained once (default: temp dir)")
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--skip-delay", action="store_true")
    args = parser.parse_args()
    pin_self(0)
    print(f"host: {os.cpu_count()} CPUs, {host_load()} at start", flush=True)
    rows: list[ThroughputRow] = []
    detections: list[Detection] = []
    with tempfile.TemporaryDirectory() as tmp, EmbeddedRedis(data_dir=Path(tmp) / "redis", append_only=False) as server:
        logs = Path(tmp)
        try:
            if not args.skip_throughput:
                print("(a) throughput", flush=True)
                rows = throughput(server.url, args, logs)
            if not args.skip_delay:
                print("(b) detection delay", flush=True)
                detections = detection_delay(server.url, args, logs)
        finally:
            report(rows, detections)
            print(f"host {host_load()} at end")


if __name__ == "__main__":
    main()
