"""Replay a labelled image test set against ``POST /v1/events`` as a serving stack would.

:class:`DigitsTraffic` runs the model itself for the logits and the penultimate
embedding, posts fixed-size batches at a steady rate, and after ``drift_after_s``
corrupts its inputs (see :mod:`demo.corruptions`) so confidence falls and the
embeddings move. It only needs the standard library's HTTP client, and a failed
request is logged and skipped: the replay never stops on an error of the server.
"""

from __future__ import annotations

import base64
import http.client
import itertools
import logging
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit

import numpy as np
import orjson
import torch

from demo.corruptions import corrupt
from demo.models.training import Split

log = logging.getLogger(__name__)

REGIONS = (("us", 0.5), ("eu", 0.3), ("apac", 0.2))
DEVICES = (("mobile", 0.6), ("web", 0.4))


class EmbeddingModel(Protocol):
    """A classifier with an ``embed`` entry point, such as the scripted digits CNN."""

    def __call__(self, x: torch.Tensor) -> torch.Tensor: ...

    def embed(self, x: torch.Tensor) -> torch.Tensor: ...


@dataclass
class TrafficStats:
    """What one replay has sent and what the sidecar answered."""

    requests: int = 0
    events: int = 0
    accepted: int = 0
    sampled: int = 0
    failed_requests: int = 0
    drifting: bool = False


class DigitsTraffic:
    """Post ``batch_size`` events every ``batch_size / rate_per_s`` seconds until stopped.

    ``drift_after_s=None`` never drifts. A ``label_fraction`` of the events carry their
    true label (what a labelling pipeline would send later). Deterministic for a seed,
    except the request ids, which start with ``run_id`` (random unless given).
    """

    def __init__(
        self,
        base_url: str,
        *,
        model: EmbeddingModel,
        split: Split,
        rate_per_s: float = 40.0,
        batch_size: int = 20,
        drift_after_s: float | None = 60.0,
        label_fraction: float = 0.3,
        model_name: str = "digits",
        model_version: str = "v1",
        token: str | None = None,
        timeout_s: float = 5.0,
        seed: int = 0,
        run_id: str | None = None,
    ) -> None:
        if rate_per_s <= 0 or batch_size < 1:
            raise ValueError("rate_per_s must be positive and batch_size at least 1")
        url = urlsplit(base_url)
        if url.scheme != "http" or not url.hostname:
            raise ValueError(f"base_url must be http://host:port, got {base_url!r}")
        self._host, self._port = url.hostname, url.port or 80
        self._path = url.path.rstrip("/") + "/v1/events"
        self._headers = {"Content-Type": "application/json"}
        if token:
            self._headers["Authorization"] = f"Bearer {token}"
        self._model = model
        self._split = split
        self.interval_s = batch_size / rate_per_s
        self.batch_size = batch_size
        self.drift_after_s = drift_after_s
        self._label_fraction = label_fraction
        self._model_name = model_name
        self._model_version = model_version
        self._timeout_s = timeout_s
        self._rng = np.random.default_rng(seed)
        self._order = self._shuffled_indices()
        self._run_id = run_id or secrets.token_hex(3)
        self._counter = itertools.count()
        self._connection: http.client.HTTPConnection | None = None
        self.stats = TrafficStats()

    def run(self, stop: threading.Event, *, report_every_s: float = 10.0) -> TrafficStats:
        """Post batches until ``stop`` is set; returns the totals."""
        started = next_at = last_report = time.monotonic()
        try:
            while not stop.is_set():
                now = time.monotonic()
                if now - last_report >= report_every_s:
                    last_report = now
                    self._report()
                drifting = self.drift_after_s is not None and now - started >= self.drift_after_s
                if drifting and not self.stats.drifting:
                    log.info("drift phase: inputs now corrupted by noise, blur and occlusion")
                self.stats.drifting = drifting
                self.post(self.events(self.batch_size, drifting=drifting))
                next_at = max(next_at + self.interval_s, time.monotonic() - self.interval_s)
                stop.wait(max(0.0, next_at - time.monotonic()))
        finally:
            self.close()
        self._report()
        return self.stats

    def events(self, count: int, *, drifting: bool) -> list[dict[str, Any]]:
        """The next ``count`` events of the replay (corrupted when ``drifting``)."""
        indices = np.fromiter(itertools.islice(self._order, count), dtype=np.int64, count=count)
        images = self._split.features[indices]
        if drifting:
            images, _ = corrupt(images, seed=int(self._rng.integers(2**32)))
        with torch.no_grad():
            batch = torch.from_numpy(images)
            logits = self._model(batch).numpy()
            embeddings = self._model.embed(batch).numpy()
        regions = self._rng.choice([r for r, _ in REGIONS], size=count, p=[p for _, p in REGIONS])
        devices = self._rng.choice([d for d, _ in DEVICES], size=count, p=[p for _, p in DEVICES])
        labelled = self._rng.random(count) < self._label_fraction
        return [
            self._event(
                images[i],
                logits[i],
                embeddings[i],
                cohort={"region": str(regions[i]), "device": str(devices[i])},
                label=int(self._split.labels[indices[i]]) if labelled[i] else None,
            )
            for i in range(count)
        ]

    def post(self, events: list[dict[str, Any]]) -> bool:
        """One ``POST /v1/events``; a failure is logged and counted, never raised."""
        body = orjson.dumps({"events": events}, option=orjson.OPT_SERIALIZE_NUMPY)
        self.stats.requests += 1
        self.stats.events += len(events)
        try:
            status, answer = self._send(body)
        except (OSError, http.client.HTTPException) as error:
            self.close()
            self._failed(f"{type(error).__name__}: {error}")
            return False
        if status != 202:
            self._failed(f"HTTP {status}: {answer[:200].decode(errors='replace')}")
            return False
        try:
            result = orjson.loads(answer)
            self.stats.accepted += int(result["accepted"])
            self.stats.sampled += len(result["sampled"])
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            self._failed(f"unexpected answer: {answer[:200].decode(errors='replace')}")
            return False
        return True

    def put_reference(self, reference: Split, *, token: str | None = None) -> bool:
        """``PUT`` the drift reference: embeddings and probabilities of ``reference`` (e.g. the training split).

        Needs an admin token when auth is on. A failure is logged and counted, never raised.
        """
        with torch.no_grad():
            x = torch.from_numpy(np.ascontiguousarray(reference.features, dtype=np.float32))
            body = orjson.dumps(
                {
                    "embeddings": self._model.embed(x).numpy(),
                    "probabilities": torch.softmax(self._model(x), dim=1).numpy(),
                },
                option=orjson.OPT_SERIALIZE_NUMPY,
            )
        headers = {**self._headers, **({"Authorization": f"Bearer {token}"} if token else {})}
        path = self._path.removesuffix("/v1/events") + f"/v1/models/{self._model_name}/reference"
        connection = http.client.HTTPConnection(self._host, self._port, timeout=60)
        try:
            connection.request("PUT", path, body=body, headers=headers)
            response = connection.getresponse()
            status, answer = response.status, response.read()
        except (OSError, http.client.HTTPException) as error:
            self._failed(f"reference upload: {type(error).__name__}: {error}")
            return False
        finally:
            connection.close()
        if status != 202:
            self._failed(f"reference upload: HTTP {status}: {answer[:200].decode(errors='replace')}")
            return False
        return True

    def close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.close()

    def _send(self, body: bytes) -> tuple[int, bytes]:
        if self._connection is None:
            self._connection = http.client.HTTPConnection(self._host, self._port, timeout=self._timeout_s)
        self._connection.request("POST", self._path, body=body, headers=self._headers)
        response = self._connection.getresponse()
        return response.status, response.read()

    def _event(
        self,
        image: np.ndarray[Any, Any],
        logits: np.ndarray[Any, Any],
        embedding: np.ndarray[Any, Any],
        *,
        cohort: dict[str, str],
        label: int | None,
    ) -> dict[str, Any]:
        data = base64.b64encode(np.ascontiguousarray(image, dtype="<f4").tobytes()).decode()
        event: dict[str, Any] = {
            "model": self._model_name,
            "model_version": self._model_version,
            "request_id": f"{self._run_id}-{next(self._counter):07d}",
            "logits": logits.round(5),
            "embedding": embedding.round(5),
            "input": {"shape": list(image.shape), "dtype": "float32", "data": data},
            "cohort": cohort,
        }
        if label is not None:
            event["label"] = label
        return event

    def _shuffled_indices(self) -> Iterator[int]:
        """Endless passes over the test set, each in a new shuffled order."""
        while True:
            yield from self._rng.permutation(len(self._split.labels)).tolist()

    def _failed(self, reason: str) -> None:
        self.stats.failed_requests += 1
        if self.stats.failed_requests == 1 or self.stats.failed_requests % 20 == 0:
            log.warning("traffic: POST %s failed (%d so far): %s", self._path, self.stats.failed_requests, reason)

    def _report(self) -> None:
        stats = self.stats
        log.info(
            "traffic (%s phase): %d events posted, %d accepted, %d sampled, %d failed requests",
            "drift" if stats.drifting else "clean",
            stats.events,
            stats.accepted,
            stats.sampled,
            stats.failed_requests,
        )
