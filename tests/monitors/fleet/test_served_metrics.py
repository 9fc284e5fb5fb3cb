"""What a monitor's ``/metrics`` shows of its models: their series only while its leases are surely held."""

from __future__ import annotations

import redis
from prometheus_client import CollectorRegistry, Gauge, generate_latest

from common import keys
from common.embedded_redis import EmbeddedRedis
from helpers import MonitorRunner, paused_redis, wait_until
from monitors.fleet.process import MonitorProcess
from monitors.fleet.served_metrics import ServedMetrics


def test_model_series_are_left_out_while_the_leases_may_have_lapsed() -> None:
    registry = CollectorRegistry()
    Gauge("vai_calibration_ece", "ECE", ["model"], registry=registry).labels("m").set(0.1)
    Gauge("vai_monitor_members", "members", registry=registry).set(2)
    fresh = True
    served = ServedMetrics(registry, lambda: fresh)
    assert b'vai_calibration_ece{model="m"} 0.1' in generate_latest(served)
    fresh = False
    text = generate_latest(served)
    assert b'model="m"' not in text and b"vai_monitor_members 2.0" in text
    named = generate_latest(served.restricted_registry(["vai_calibration_ece"]))
    assert b'model="m"' not in named
    fresh = True
    assert b'model="m"' in generate_latest(served.restricted_registry(["vai_calibration_ece"]))


def _exported(process: MonitorProcess) -> bool:
    served = ServedMetrics(process.registry, process.lease_round.leases_fresh)
    return b'model="m"' in generate_latest(served)


def test_a_monitor_whose_redis_hangs_stops_exporting_its_models_within_the_lease(own_redis: EmbeddedRedis) -> None:
    """Redis hangs (or the process was paused) past the lease TTL: another monitor may own the models by now, so
    their series leave the scrape at once, before the renewal's call gives up (the socket timeout is 5 s); they come
    back once the leases are renewed or the models taken again."""
    direct = redis.Redis.from_url(own_redis.url)
    direct.sadd(keys.MONITORED_MODELS, "m")
    runner = MonitorRunner(own_redis.url)
    process = runner.start(monitor_lease_ttl_s=1.5)
    try:
        wait_until(lambda: "m" in process.owned and _exported(process), what="the model owned and exported")
        with paused_redis(own_redis.data_dir):
            wait_until(lambda: not process.lease_round.leases_fresh(), what="the leases' TTL past")
            assert not _exported(process)
        wait_until(lambda: "m" in process.owned and _exported(process), what="the model exported again")
    finally:
        runner.stop(process)
        direct.close()
