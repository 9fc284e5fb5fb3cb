"""What one drift calibration costs the monitor: wall time and resident memory at its peak, per reference size.

    .venv/bin/python -m benchmarks.calibration [--rows 2000 5000] [--dim 768] [--repeats 2]

Each (reference rows, repeat) runs in a fresh process, so one calibration's freed memory (which glibc keeps)
does not hide the next one's. The process imports the monitor's drift stack (alibi-detect, torch on one thread,
as ``VAI_DRIFT_THREADS=1``), feeds a :class:`DriftMonitor` with the default settings ``rows`` events of Gaussian
``--dim``-d embeddings as a warm-up, then calibrates it while a thread samples ``/proc/self/statm`` every 5 ms.
Printed: the resident memory before calibrating, its peak growth during the calibration, the calibration's
wall time, and ``steady_steps_per_ert`` as resolved (automatic: 1,000 from 5,000 rows, 0 below). The figures
bound what ``VAI_DRIFT_CALIBRATIONS`` concurrent calibrations add to a monitor's memory.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time

if not __package__:
    sys.exit("run it as a module from the repository root: .venv/bin/python -m benchmarks.calibration")

PAGE = 4096
SAMPLE_S = 0.005


def _resident_mib() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * PAGE / 2**20


def measure(rows: int, dim: int) -> dict[str, float]:
    """One calibration of ``rows`` default-config warm-up events, in this process."""
    import numpy as np
    import torch
    from prometheus_client import CollectorRegistry

    import monitors.drift._alibi  # noqa: F401 - alibi-detect loaded before the baseline, as in a running monitor
    from monitors.drift.base import DriftBatch
    from monitors.drift.config import DriftConfig
    from monitors.drift.metrics import DriftMetrics
    from monitors.drift.monitor import DriftMonitor

    torch.set_num_threads(1)
    config = DriftConfig(reference_events=rows)
    monitor = DriftMonitor(model="m", config=config, metrics=DriftMetrics(registry=CollectorRegistry()))
    rng = np.random.default_rng(0)
    for start in range(0, rows, 100):
        size = min(100, rows - start)
        embeddings = rng.normal(size=(size, dim)).astype(np.float32)
        batch = DriftBatch(
            predicted=rng.integers(0, 10, size), confidence=rng.uniform(0.4, 1.0, size), embeddings=embeddings, time_s=1
        )
        monitor.update(batch)
    before, peak, done = _resident_mib(), [0.0], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _resident_mib())
            time.sleep(SAMPLE_S)

    sampler = threading.Thread(target=sample)
    sampler.start()
    started = time.perf_counter()
    monitor.calibrate()
    seconds = time.perf_counter() - started
    done.set()
    sampler.join()
    return {
        "rows": rows,
        "before_mib": before,
        "peak_growth_mib": max(peak[0], _resident_mib()) - before,
        "seconds": seconds,
        "steady_steps_per_ert": float(config.steady_steps_for(rows)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[2000, 5000])
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # internal: measure in this process
    args = parser.parse_args()
    if args.one is not None:
        print(json.dumps(measure(args.one, args.dim)))
        return
    print(f"{'rows':>6} {'steady':>6} {'RSS before':>11} {'peak growth':>12} {'seconds':>8}")
    for rows in args.rows:
        for _ in range(args.repeats):
            out = subprocess.run(
                [sys.executable, "-m", "benchmarks.calibration", "--one", str(rows), "--dim", str(args.dim)],
                check=True,
                capture_output=True,
                text=True,
            ).stdout
            r = json.loads(out.strip().splitlines()[-1])
            print(
                f"{rows:>6} {int(r['steady_steps_per_ert']):>6} {r['before_mib']:>8.0f} MiB "
                f"{r['peak_growth_mib']:>8.0f} MiB {r['seconds']:>8.1f}"
            )


if __name__ == "__main__":
    main()
