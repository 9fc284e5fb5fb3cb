"""End-to-end latency of the attribution path on the digits CNN: event sampled -> explanation stored.

    .venv/bin/python -m benchmarks.end_to_end [--rate 20 [40 ...]] [--seconds 30] [--batch 2]

Starts an embedded Redis, the sidecar (``python -m common.cli serve``, monitors
off so only attribution is measured) and one attribution worker (``python -m
common.cli worker``) as subprocesses, with a config file that samples every
digits event carrying an input and explains it with the five image methods
(the settings of ``vai-sidecar demo``). Traffic is :class:`demo.traffic.DigitsTraffic`
replaying the digits test split at each ``--rate`` (events/s, in batches of
``--batch``) for ``--seconds``; then it waits (bounded) until every sampled event's
record is ``done``, lists the records (``GET /v1/explanations``, paged), reads each
one for its ``explained_at``, and reports ``explained_at - timestamp`` (the event
carries no timestamp, so it is the sidecar's receive time). Everything runs on
this machine (two cores here), the load generator included; torch uses one thread.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if not __package__:
    sys.exit("run it as a module from the repository root: .venv/bin/python -m benchmarks.end_to_end")

import httpx
import numpy as np
import torch

from common.embedded_redis import EmbeddedRedis, free_port
from demo.models import digits
from demo.settings import METHODS
from demo.traffic import DigitsTraffic, TrafficStats

ROOT = Path(__file__).resolve().parent.parent
MODEL = "digits"
ATTRIBUTION = {
    "ig_steps": 16,
    "shap_samples": 8,
    "fidelity_steps": 8,
    "fidelity_random_orders": 2,
    "sanity_every_s": 60,
}
"""As ``demo.settings.ATTRIBUTION`` (its randomisation sanity check included)."""


def config_toml(model_path: Path) -> str:
    """The sidecar's and the worker's config file: sample every event with an input, explain it with 5 methods."""
    lines = [
        f"[models.{MODEL}.sampling]",
        "every_n = 1",
        "require_input = true",
        "max_per_second = 10000",
        f"[models.{MODEL}.attribution]",
        f"methods = {json.dumps(list(METHODS))}",
        *(f"{key} = {value}" for key, value in ATTRIBUTION.items()),
        f"[models.{MODEL}.attribution.model]",
        f"torchscript = {json.dumps(str(model_path.resolve()))}",
        f"input_shape = {json.dumps(list(digits.INPUT_SHAPE))}",
        f"num_classes = {digits.NUM_CLASSES}",
    ]
    return "\n".join(lines) + "\n"


@contextlib.contextmanager
def process(command: list[str], env: dict[str, str], name: str) -> Iterator[subprocess.Popen[bytes]]:
    """A child process, sent SIGTERM (then SIGKILL after 20 s) on exit."""
    child = subprocess.Popen(command, cwd=ROOT, env={**os.environ, **env})
    try:
        yield child
    finally:
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
            try:
                child.wait(20)
            except subprocess.TimeoutExpired:
                print(f"{name} ignored SIGTERM for 20 s: killed", file=sys.stderr)
                child.kill()
                child.wait()


def wait_live(client: httpx.Client, child: subprocess.Popen[bytes], *, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        with contextlib.suppress(httpx.HTTPError):
            if client.get("/livez", timeout=1.0).status_code == 200:
                return
        if child.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("the sidecar did not start (see its output above)")
        time.sleep(0.1)


def records(client: httpx.Client, *, since: float, prefix: str) -> list[dict[str, Any]]:
    """Summaries of this run's records (``request_id`` starting with ``prefix``), every page."""
    found: list[dict[str, Any]] = []
    params: dict[str, Any] = {"model": MODEL, "limit": 500, "since": since}
    while True:
        page = client.get("/v1/explanations", params=params).raise_for_status().json()
        found.extend(item for item in page["items"] if item["request_id"].startswith(prefix))
        if not page["next_cursor"]:
            return found
        params["cursor"] = page["next_cursor"]


def wait_done(
    client: httpx.Client,
    *,
    since: float,
    prefix: str,
    expected: int,
    timeout_s: float,
    workers: list[subprocess.Popen[bytes]],
) -> tuple[list[dict[str, Any]], float]:
    """Poll until ``expected`` records are ``done`` (or failed) or ``timeout_s`` passes; (summaries, wait in s)."""
    started = time.monotonic()
    while True:
        summaries = records(client, since=since, prefix=prefix)
        settled = sum(item["status"] != "queued" for item in summaries)
        waited = time.monotonic() - started
        if settled >= expected or waited > timeout_s or any(w.poll() is not None for w in workers):
            return summaries, waited
        time.sleep(0.5)  # each poll pages through the run's records: keep it light beside the worker


@dataclass
class RunResult:
    rate: float
    seconds: float
    stats: TrafficStats
    done: int
    failed: int
    queued: int
    latencies_s: list[float]
    """``explained_at - timestamp`` of each done record, in event order."""
    span_s: float
    """First event timestamp to last ``explained_at``."""
    drain_s: float
    """From the end of the traffic until the last record was settled (or the wait gave up)."""


def run_rate(
    client: httpx.Client,
    base_url: str,
    model: Any,
    *,
    rate: float,
    args: argparse.Namespace,
    worker: subprocess.Popen[bytes],
) -> RunResult:
    prefix = f"rate{rate:g}-"
    traffic = DigitsTraffic(
        base_url,
        model=model,
        split=digits.load_digits_split().test,
        rate_per_s=rate,
        batch_size=args.batch,
        drift_after_s=None,
        label_fraction=0.0,
        seed=int(rate),
        run_id=prefix.rstrip("-"),
    )
    since = time.time() - 1.0
    stop = threading.Event()
    thread = threading.Thread(target=traffic.run, args=(stop,), kwargs={"report_every_s": 1e9}, daemon=True)
    thread.start()
    time.sleep(args.seconds)
    stop.set()
    thread.join()
    stopped = time.time()
    timeout_s = max(60.0, 2.0 * args.seconds)
    summaries, _ = wait_done(
        client, since=since, prefix=prefix, expected=traffic.stats.sampled, timeout_s=timeout_s, workers=[worker]
    )
    details = [client.get(f"/v1/explanations/{MODEL}/{s['request_id']}").raise_for_status().json() for s in summaries]
    done = sorted((d for d in details if d["status"] == "done"), key=lambda d: (d["timestamp"], d["request_id"]))
    last = max((d["explained_at"] for d in done), default=stopped)
    return RunResult(
        rate=rate,
        seconds=args.seconds,
        stats=traffic.stats,
        done=len(done),
        failed=sum(d["status"] == "failed" for d in details),
        queued=sum(d["status"] == "queued" for d in details),
        latencies_s=[d["explained_at"] - d["timestamp"] for d in done],
        span_s=last - min((d["timestamp"] for d in done), default=stopped),
        drain_s=max(0.0, last - stopped),
    )


def kept_up(result: RunResult) -> tuple[bool, str]:
    """The worker kept up if everything was explained, the backlog did not grow, and it drained at once."""
    lat = result.latencies_s
    if not lat or result.done < result.stats.sampled:
        return False, f"{result.stats.sampled - result.done} sampled events not explained in time"
    third = max(1, len(lat) // 3)
    first, final = float(np.median(lat[:third])), float(np.median(lat[-third:]))
    growing = final > 1.5 * first + 0.25
    slow_drain = result.drain_s > 2.0 + 2.0 * float(np.median(lat))
    why = f"median latency first third {first:.2f} s, last third {final:.2f} s; drain {result.drain_s:.2f} s"
    return not (growing or slow_drain), why


def report(result: RunResult) -> None:
    s = result.stats
    posted_rate = s.sampled / result.seconds
    print(
        f"\nrate {result.rate:g} events/s for {result.seconds:g} s in batches of {s.events // max(1, s.requests)}: "
        f"posted {s.events}, accepted {s.accepted}, sampled {s.sampled}, failed requests {s.failed_requests}"
    )
    print(
        f"  records: done {result.done}, failed {result.failed}, still queued {result.queued} (of {s.sampled} sampled)"
    )
    if result.latencies_s:
        lat = np.array(result.latencies_s)
        figures = "  ".join(f"p{q} {np.percentile(lat, q):6.3f}" for q in (50, 90, 99))
        print(f"  sample -> stored latency (s): n {lat.size}  {figures}  max {lat.max():6.3f}  mean {lat.mean():6.3f}")
        print(
            f"  explanations/s achieved {result.done / result.span_s:6.1f} (sampled posted {posted_rate:.1f}/s); "
            f"first event to last explanation {result.span_s:.1f} s"
        )
    ok, why = kept_up(result)
    print(f"  worker kept up: {'yes' if ok else 'NO'} ({why})", flush=True)


def warm_up(client: httpx.Client, base_url: str, model: Any, worker: subprocess.Popen[bytes]) -> float:
    """A few events explained before measuring: worker start-up (torch import, model load) is not counted."""
    started = time.monotonic()
    traffic = DigitsTraffic(
        base_url,
        model=model,
        split=digits.load_digits_split().test,
        drift_after_s=None,
        label_fraction=0.0,
        run_id="warmup",
    )
    since = time.time() - 1.0
    for _ in range(4):
        traffic.post(traffic.events(2, drifting=False))
    traffic.close()
    summaries, _ = wait_done(
        client, since=since, prefix="warmup-", expected=traffic.stats.sampled, timeout_s=180.0, workers=[worker]
    )
    done = sum(item["status"] == "done" for item in summaries)
    if traffic.stats.sampled == 0 or done < traffic.stats.sampled:
        raise RuntimeError(
            f"warm-up: {done} of {traffic.stats.sampled} sampled events explained; is the worker running?"
        )
    return time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, nargs="+", default=[20.0], help="events/s; several run one after another")
    parser.add_argument("--seconds", type=float, default=30.0, help="traffic duration per rate")
    parser.add_argument("--batch", type=int, default=2, help="events per POST")
    parser.add_argument("--cache-dir", type=Path, help="where the digits CNN is trained once (default: a temp dir)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", message=r"`torch\.jit\.\w+` is deprecated", category=DeprecationWarning)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as temporary:
        results = run_all(args, Path(temporary))
    if len(results) > 1:
        summary(results)
    print(f"\nTotal {time.perf_counter() - started:.0f} s")


def run_all(args: argparse.Namespace, temporary: Path) -> list[RunResult]:
    model_path = digits.ensure_digits_model(args.cache_dir or temporary)
    model = torch.jit.load(str(model_path), map_location="cpu").eval()  # type: ignore[no-untyped-call]
    config = temporary / "vai.toml"
    config.write_text(config_toml(model_path))
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    results = []
    with EmbeddedRedis(data_dir=temporary / "redis") as redis_server:
        env = {
            "VAI_REDIS_URL": redis_server.url,
            "VAI_LOG_LEVEL": "warning",
            "VAI_MONITORS_ENABLED": "false",
            "VAI_CONFIG_FILE": str(config),
        }
        serve = [sys.executable, "-m", "common.cli", "serve", "--port", str(port)]
        work = [sys.executable, "-m", "common.cli", "worker"]
        with (
            httpx.Client(base_url=base_url, timeout=10.0) as client,
            process(serve, env, "sidecar") as sidecar,
            process(work, {**env, "VAI_WORKER_METRICS_PORT": "0"}, "worker") as worker,
        ):
            wait_live(client, sidecar)
            print(
                f"sidecar {base_url}, one worker, Redis {redis_server.url}; methods {', '.join(METHODS)}; "
                f"worker batch <= 16 events, torch 1 thread",
                flush=True,
            )
            warm_s = warm_up(client, base_url, model, worker)
            print(f"warm-up: 8 events explained {warm_s:.1f} s after the sidecar answered", flush=True)
            for rate in args.rate:
                results.append(run_rate(client, base_url, model, rate=rate, args=args, worker=worker))
                report(results[-1])
    return results


def summary(results: list[RunResult]) -> None:
    print("\nsummary (latency in s)")
    print(
        f"  {'rate/s':>7s} {'explained':>10s} {'p50':>7s} {'p90':>7s} {'p99':>7s} {'max':>7s} {'expl/s':>7s}  kept up"
    )
    for r in results:
        lat = np.array(r.latencies_s) if r.latencies_s else np.array([np.nan])
        cells = " ".join(f"{np.percentile(lat, q):7.3f}" for q in (50, 90, 99, 100))
        rate = r.done / r.span_s if r.span_s > 0 else float("nan")
        verdict = "yes" if kept_up(r)[0] else "NO"
        print(f"  {r.rate:7g} {f'{r.done}/{r.stats.sampled}':>10s} {cells} {rate:7.1f}  {verdict}")


if __name__ == "__main__":
    main()
