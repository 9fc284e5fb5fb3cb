"""The demo's traffic against a running sidecar: the compose stack's ``demo-traffic`` service.

``vai-sidecar demo`` runs every role in one process; with the roles deployed apart (compose,
Kubernetes), this replays the same digits traffic against a sidecar as a serving stack would:
it uploads the held-out drift reference, then posts the digits test set, clean for
``--drift-after`` seconds and then corrupted (noise, blur, occlusion), 30% of events with their
label, until stopped (SIGTERM/SIGINT) or ``--duration`` seconds::

    python deploy/compose/demo_traffic.py --url http://sidecar:8000 \\
        --model-file /models/digits-cnn-v1-heldout.pt --drift-after 600

The admin token (``ADMIN_TOKEN``, or the first of a comma-separated ``VAI_ADMIN_TOKENS``) posts
the events and uploads the reference. The model file is the one the worker explains: trained by
``demo.models.digits.ensure_digits_model(dir, hold_out_reference=True)``.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time
import warnings
from pathlib import Path
from types import FrameType

import torch

from demo.models import digits
from demo.traffic import DigitsTraffic

log = logging.getLogger("demo_traffic")


def _token() -> str | None:
    tokens = os.environ.get("ADMIN_TOKEN") or os.environ.get("VAI_ADMIN_TOKENS", "")
    return next((token.strip() for token in tokens.split(",") if token.strip()), None)


def _upload_reference(traffic: DigitsTraffic, token: str | None, *, attempts: int) -> bool:
    """The held-out third of the training data (never trained on, never replayed) as the drift reference."""
    reference = digits.load_digits_split(hold_out_reference=True).reference
    if reference is None:
        raise RuntimeError("the digits split came without its held-out reference")
    for attempt in range(attempts):
        if traffic.put_reference(reference, token=token):
            log.info("drift reference uploaded (%d images)", len(reference.labels))
            return True
        time.sleep(min(2.0**attempt, 10.0))
    return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="the sidecar's base URL")
    parser.add_argument("--model-file", type=Path, required=True, help="the scripted digits CNN (held-out variant)")
    parser.add_argument("--drift-after", type=float, default=600.0, metavar="S", help="seconds of clean traffic")
    parser.add_argument("--rate", type=float, default=40.0, help="events per second")
    parser.add_argument("--duration", type=float, default=0.0, metavar="S", help="stop after this long (0: never)")
    parser.add_argument(
        "--reference",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="upload the held-out drift reference first (default); --no-reference keeps the stored one",
    )
    parser.add_argument("--report-every", type=float, default=10.0, metavar="S", help="progress line interval")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stdout)
    warnings.filterwarnings("ignore", message=r"`torch\.jit\.load` is deprecated", category=DeprecationWarning)
    torch.set_num_threads(1)

    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, on_signal)

    model = torch.jit.load(str(args.model_file), map_location="cpu").eval()  # type: ignore[no-untyped-call]
    token = _token()
    traffic = DigitsTraffic(
        args.url,
        model=model,
        split=digits.load_digits_split(hold_out_reference=True).test,
        rate_per_s=args.rate,
        drift_after_s=args.drift_after,
        token=token,
    )
    if args.reference and not _upload_reference(traffic, token, attempts=8):
        log.error("could not upload the drift reference to %s", args.url)
        return 1
    if args.duration:
        timer = threading.Timer(args.duration, stop.set)
        timer.daemon = True
        timer.start()
    log.info("posting %g events/s to %s; drift phase after %g s", args.rate, args.url, args.drift_after)
    stats = traffic.run(stop, report_every_s=args.report_every)
    log.info(
        "stopped: %d events posted, %d accepted, %d failed requests",
        stats.events,
        stats.accepted,
        stats.failed_requests,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
