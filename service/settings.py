"""Settings of ``vai-sidecar serve``, the lean process beside every model-server replica.

The shared base (Redis, logging, config file) is ``common.settings.RoleSettings``; the
monitor and the attribution worker have settings classes of their own.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_settings import NoDecode

from common.names import MODEL_PATTERN, MODEL_RE
from common.settings import CohortKeys, RoleSettings, errors_in_brief
from sampler.policy import SamplingPolicy

_TOKEN_BLANKS = " \t"
"""What may surround a token in a comma-separated list: ASCII blanks only (``str.strip()`` takes U+0085, U+00A0 and
the other Unicode spaces too)."""


def _token_problem(token: str) -> str | None:
    """Why ``token`` cannot be a bearer token, without quoting it (it is a secret); None when it can."""
    if not token:
        return "is empty"
    for position, character in enumerate(token, 1):
        if not "!" <= character <= "~":
            what = "a space" if character == " " else f"U+{ord(character):04X}"
            return f"has {what} at character {position}"
    return None


def _check_tokens(tokens: tuple[str, ...]) -> tuple[str, ...]:
    for number, token in enumerate(tokens, 1):
        problem = _token_problem(token)
        if problem is not None:
            raise ValueError(
                f"token {number} of {len(tokens)} {problem}; a bearer token is sent in a header: one or more visible "
                "ASCII characters (! to ~), no spaces, control or non-ASCII characters"
            )
    return tokens


def _token_list(value: object) -> object:
    """Comma-separated tokens (the environment's form) split keeping every entry, so that an empty one is refused
    rather than dropped, and stripped of ASCII blanks only; a value of blanks alone is no token (auth off), as an
    empty variable is."""
    if not isinstance(value, str):
        return value
    if not value.strip(_TOKEN_BLANKS):
        return ()
    return tuple(part.strip(_TOKEN_BLANKS) for part in value.split(","))


Tokens = Annotated[tuple[str, ...], NoDecode, AfterValidator(_check_tokens)]
"""Bearer tokens, comma-separated in the environment; each must be one or more visible ASCII characters. An empty
token matched an empty or blank ``Authorization: Bearer`` (after Python's ``str.strip()``, ``Bearer \\x85``), and
a token with spaces or non-ASCII characters cannot be sent as it is in a header."""
STREAM_ROOM_MIN = 1_000
"""Fewest stream entries ``VAI_STREAM_MAXLEN`` must allow beyond ``VAI_QUEUE_MAX_LENGTH``: ten of the macro nodes
(``stream-node-max-entries``, 100) that ``XADD MAXLEN ~`` trims whole."""


class KServeMapping(BaseModel):
    """How KServe inference-logger payloads of one InferenceService become events (``[models.NAME.kserve]``).

    v2 (Open Inference Protocol) tensors are named; v1 ``predictions``/``instances`` items are
    either lists (used whole) or objects (a key picks the value). The first dimension of every v2
    tensor is the batch.
    """

    model_config = ConfigDict(extra="forbid")

    service: str | None = Field(default=None, min_length=1, max_length=253)
    """The InferenceService (``ce-inferenceservicename``) whose events are ingested as this model;
    default: the section name. Events always take the section name, so its sampling and labels apply."""
    scores_are: Literal["logits", "probabilities"]
    """Whether the scores output holds logits or probabilities."""
    scores: str | None = None
    """v2: the name of the output tensor holding the scores; v1: the key of each prediction object.
    Unset: the first v2 output, or each v1 prediction itself (a list of numbers)."""
    embedding: str | None = None
    """v2: the name of the output tensor holding the embedding; v1: the key of each prediction object. Unset: none."""
    input: str | None = None
    """The model input kept for attribution: v2, the name of an input tensor; v1, the key of each instance
    object, or ``"instances"`` for the whole instance. Unset: no input is kept (events are not explainable)."""
    input_shape: list[int] | None = Field(default=None, min_length=1, max_length=8)
    """Shape of one instance's input, without the batch dimension; each input is reshaped to it. Unset: as sent."""
    cohort_metadata: list[str] = Field(default_factory=list)
    """Keys of ``ce-metadata`` (the request headers the logger forwards) copied into the event's cohort."""
    label_metadata: str | None = None
    """Key of ``ce-metadata`` holding a ground-truth class index, when the caller knows it. Unset: none.
    A value that is no class of the prediction is dropped (counted), and the event monitored without it."""
    component: Literal["predictor", "transformer", "explainer"] = "predictor"
    """The InferenceService component (``ce-component``) whose events are ingested; the logger of every other
    component is answered 200 and counted as ``other_component``, so one inference is monitored once."""


class ModelConfig(BaseModel):
    """Per-model section of the config file (``[models.NAME]``)."""

    model_config = ConfigDict(extra="ignore")  # other roles' sections (``attribution``) share the file

    sampling: dict[str, Any] = Field(default_factory=dict)
    """Overrides of the default sampling policy for this model."""
    delayed_labels: bool = False
    """The serving stack posts labels for this model later: keep its predictions for them from the first event."""
    low_confidence_below: float | None = Field(default=None, ge=0.0, le=1.0, allow_inf_nan=False)
    """This model's ``VAI_LOW_CONFIDENCE_BELOW`` (unset: that setting)."""
    kserve: KServeMapping | None = None
    """How ``POST /v1/cloudevents`` (KServe's inference logger) maps this model's payloads; unset: not accepted."""


class SidecarSettings(RoleSettings):
    """Every setting of a sidecar process."""

    host: str = "127.0.0.1"
    """Address the HTTP server binds."""
    port: int = Field(default=8000, ge=0, le=65535)
    """Port the HTTP server binds."""
    redis_data_dir: Path = Path(".vai-data/redis")
    """Data directory of the embedded Redis (append-only file lives here)."""

    ingest_tokens: Tokens = ()
    """Bearer tokens allowed to post events and labels (comma-separated)."""
    read_tokens: Tokens = ()
    """Bearer tokens allowed to read status and explanations (comma-separated)."""
    admin_tokens: Tokens = ()
    """Bearer tokens allowed to change policies; they may also ingest and read."""

    @field_validator("ingest_tokens", "read_tokens", "admin_tokens", mode="before")
    @classmethod
    def _split_tokens(cls, value: object) -> object:
        """A subclass's before-validator runs ahead of the base class's comma splitter, which drops empty entries
        and strips Unicode spaces too."""
        return _token_list(value)

    max_batch: int = Field(default=1000, ge=1)
    """Most events in one ``POST /v1/events``."""
    max_body_bytes: int = Field(default=8 * 1024 * 1024, ge=1024)
    """Largest request body accepted; larger ones get 413 without being read whole."""
    max_pending_body_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)
    """Most bytes of request bodies being read at once, across every connection (each body counts its declared
    length from its first byte, a chunked one its bytes so far); a body that would pass it gets 503 with
    ``Retry-After``. Nothing else bounds them: each connection may hold up to its route's limit for up to
    ``body_timeout_s``, and 60 connections sending 8 MiB each took a sidecar from 132 to 580 MB. 64 MiB is eight
    bodies of ``max_body_bytes`` at once (a serving stack's are far smaller, and read in milliseconds), and about
    what such a flood can add to a sidecar's memory. A drift-reference upload holds its length of it while it
    arrives (one of the full ``max_reference_bytes`` leaves none for events meanwhile: raise this with that). At
    least ``max_body_bytes`` and ``max_reference_bytes`` (checked at start-up)."""

    @model_validator(mode="after")
    def _check_body_budget(self) -> SidecarSettings:
        """A body as large as its route allows must fit the budget, or it could never be read."""
        largest = max(self.max_body_bytes, self.max_reference_bytes)
        if self.max_pending_body_bytes < largest:
            raise ValueError(
                f"VAI_MAX_PENDING_BODY_BYTES ({self.max_pending_body_bytes}) must be at least VAI_MAX_BODY_BYTES "
                f"({self.max_body_bytes}) and VAI_MAX_REFERENCE_BYTES ({self.max_reference_bytes}): a body of "
                f"that size could never be read; raise it to {largest} or more"
            )
        return self

    max_reference_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)
    """Largest drift-reference upload accepted. 64 MiB holds what the detectors can use and more: an .npy of
    20,000 × 768 float32 rows (61 MB), or about 7,000 such rows as JSON (~12 characters a number); the
    detectors keep at most ``max_reference`` rows and twice as many spare ones (3,000 at the defaults). An
    upload is parsed with a few times its size in memory, holding the GIL in stretches (one upload at a time
    per process), and is stored in one Redis write: larger ones cost memory and stall the event loop and
    Redis for nothing."""
    body_timeout_s: float = Field(default=60.0, gt=0)
    """Longest a request body may take to arrive in full (408 after it, checked every second, or every quarter
    of the timeout when it is shorter than 4 s): a client that stops half-way would
    otherwise hold its connection, and a graceful shutdown, for as long as it likes. Raise it to upload
    a large drift reference over a slow link."""
    max_models: int = Field(default=20, ge=1)
    """Distinct model names accepted per process; events of further models are rejected, and so are sampling
    policies for further models (counting models with a stored policy)."""
    max_versions_per_model: int = Field(default=5, ge=1)
    """Distinct versions kept as metric labels per model; the rest count as ``__other__``."""
    cohort_keys: CohortKeys = ()
    """Cohort keys exported as metric labels (comma-separated allowlist)."""
    max_cohort_values: int = Field(default=20, ge=1)
    """Distinct values kept per cohort key; the rest count as ``__other__``."""
    low_confidence_below: float = Field(default=0.5, ge=0.0, le=1.0, allow_inf_nan=False)
    """An event whose top-1 probability is below this counts in ``vai_low_confidence_total`` (what the alert
    ``VaiModelLowConfidenceShareHigh`` watches); ``[models.NAME] low_confidence_below`` sets it per model. Apart
    from the sampling policy's ``confidence_below``, so changing what is sampled never changes what is alerted on."""
    dedupe_window: int = Field(default=10_000, ge=0)
    """Recent request ids remembered per model to reject duplicates (0 disables)."""
    max_embedding_dims: int = Field(default=8192, ge=2, le=1_000_000)
    """Widest embedding accepted, on events and uploaded references (a wider one is refused naming ``embedding``):
    a model's width is set by its first event, and the monitor keeps ``VAI_DRIFT__REFERENCE_EVENTS`` rows of it
    (5,000 x 4 bytes x width: 164 MB at 8,192) in memory and in Redis while it warms up; 150 events of 500,000
    values took a monitor from 0.5 to 1.2 GB and its stored warm-up to 286 MB."""
    kserve_join_ttl_s: int = Field(default=60, ge=1)
    """How long a KServe request waits in Redis for its response (``POST /v1/cloudevents``); later, it is an orphan."""
    kserve_max_pending: int = Field(default=10_000, ge=1)
    """Most KServe requests of one model waiting in Redis for their responses, across replicas: a request past it is
    not stored (counted ``pending_full``, answered 200) and its response is monitored without its inputs. Anyone who
    can post CloudEvents could otherwise send requests whose responses never come until Redis is full."""
    kserve_open: bool = False
    """``POST /v1/cloudevents`` takes events without a token (KServe's logger cannot send one); every other route
    keeps its tokens. Anyone who reaches the port can then post events of the mapped models: let a Kubernetes
    NetworkPolicy admit only the InferenceServices' pods to it. Set tokens too to bind a non-loopback address."""

    sampling: SamplingPolicy = SamplingPolicy()
    """Default sampling policy (``VAI_SAMPLING__EVERY_N=10`` or ``[sampling]`` in the file)."""
    models: dict[str, ModelConfig] = Field(default_factory=dict)
    """Per-model sections of the config file."""
    policy_refresh_s: float = Field(default=2.0, gt=0)
    """How often a replica re-reads run-time policy changes from Redis."""

    queue_max_length: int = Field(default=10_000, ge=1)
    """Backlog per model stream above which new samples are dropped (``queue_full``)."""
    stream_maxlen: int = Field(default=50_000, ge=1)
    """Approximate ``MAXLEN`` of each stream: a safety net far above the backlog cap, at least twice it and 1,000
    entries more. The cap is checked against a length polled every ``queue_poll_s`` while every replica writes, so
    a stream overshoots it; what ``MAXLEN`` trims is lost unexplained and counted nowhere."""
    queue_poll_s: float = Field(default=1.0, gt=0)
    """How often queue lengths are read from Redis."""
    buffer_max_events: int = Field(default=10_000, ge=1)
    """Sampled events held in memory while Redis is slow or down."""
    buffer_max_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)
    """Bytes of encoded sampled events held in memory while Redis is slow or down."""
    max_input_bytes: int = Field(default=1024 * 1024, ge=1024)
    """Largest ``input`` a sampled event takes to its stream, as encoded there (base64, 4/3 of its raw bytes); a
    sampled event with a larger one is not queued (counted ``input_too_large``) and is monitored all the same.
    1 MiB holds a 224 × 224 × 3 float32 image (602 KB, 803 KB encoded); an input may otherwise be as large as a
    body, and each waits in Redis until a worker explains it."""
    queue_max_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)
    """Approximate bytes of a model's stream backlog (its polled length times the mean size of the entries this
    replica queued for the model recently) above which new samples are dropped (``queue_bytes_full``). 64 MiB is ~80
    entries of a 224 × 224 × 3 float32 image, or 10,000 of 6.7 KB; ``queue_max_length`` alone let a stream of large
    inputs hold gigabytes, in a Redis shared by every model and role."""
    flush_batch: int = Field(default=200, ge=1)
    """Most stream entries written in one pipelined round trip."""
    flush_retry_s: float = Field(default=0.5, gt=0)
    """Wait before retrying after a failed flush."""
    redis_writer_timeout_s: float = Field(default=5.0, gt=0)
    """Socket timeout of the background writers' Redis calls (sampled events, monitoring records, queue
    polls); requests use ``redis_timeout_s``. Nobody waits on these calls, and a reply left unread while
    the event loop is busy must not count as an outage: a writer that gives up on a batch Redis has already
    taken sends it again."""
    explanation_ttl_s: int = Field(default=7 * 24 * 3600, ge=60)
    """Retention of stored explanations and their indices (every key gets this TTL)."""
    explanations_max_per_model: int = Field(default=20_000, ge=1)
    """Most explanation records kept per model, besides the retention: a save past it removes the model's oldest
    records by event time (from every index too, at most 10 a save, so a lowered cap takes a few saves to reach). At
    the shipped sampling budgets (20-50 samples/s per replica) the retention alone kept tens of GB, and Redis at its
    ``maxmemory`` refuses every write of every role. 20,000 is ~100 MB per model at ~5 KB a record (the digits CNN's;
    records of larger inputs and feature maps weigh more: size it so this times the record size times the models
    explained fits your Redis) and, at 30 samples/s, the last ~11 minutes of a busy model, days of a quiet one. The
    ``queued`` records of a model no worker explains are bounded by it too. Give the sidecars and the workers the same
    value: whichever saves applies its own."""

    monitors_enabled: bool = True
    """Publish monitoring records and keep predictions for delayed labels (off: only the ingest metrics)."""
    monitor: Literal["embedded", "external"] = "embedded"
    """``embedded``: ``serve`` starts one ``vai-sidecar monitor`` child on the same Redis and stops it on exit;
    ``external``: the monitors are a separate deployment (run as many as you like: leases share the models)."""
    monitor_max_per_second: int = Field(default=200, ge=0)
    """Most events per second this replica publishes to the drift feed; beyond it events are sampled uniformly
    at random (and counted as ``budget``). Size it as what one monitor examines per model (~150-1,000 events/s,
    see the README) divided by the replicas. 0: no limit. Labelled records are never sampled."""
    monitor_stream_maxlen: int = Field(default=100_000, ge=100)
    """Approximate ``MAXLEN`` of each model's monitoring streams: how far a stopped monitor can fall behind."""
    monitor_buffer_records: int = Field(default=50_000, ge=1)
    """Monitoring records waiting in memory to be written to Redis; beyond it the oldest are dropped and counted."""
    label_records: Literal["auto", "all", "none"] = "auto"
    """Which accepted events wait in Redis for a delayed label: ``auto``, those of models declared with
    ``delayed_labels = true`` or for which any replica has received a label; ``all``; ``none``."""
    prediction_ttl_s: int = Field(default=24 * 3600, ge=1)
    """How long a prediction waits in Redis for its delayed label."""
    label_join_retry_s: float = Field(default=0.25, ge=0.0, le=10.0, allow_inf_nan=False)
    """Labels of ``POST /v1/labels`` that find no prediction record look once more after this long (the record
    of an event that reached another replica a moment ago is on its way to Redis: ~50 ms); 0: answer at once."""
    brier_max_classes: int = Field(default=32, ge=2)
    """Publish the full probability vector (for the Brier score) of models with at most this many classes."""

    @model_validator(mode="after")
    def _check_model_policies(self) -> SidecarSettings:
        for name in self.models:
            try:
                self.model_policy(name)
            except ValidationError as error:
                raise ValueError(f"[models.{name}.sampling] {errors_in_brief(error)}") from None
        return self

    @model_validator(mode="after")
    def _check_stream_room(self) -> SidecarSettings:
        """The backlog cap must act before ``MAXLEN`` does: at or above it, ``queue_full`` never fired and the
        oldest samples were trimmed unexplained, without a counter."""
        room = max(self.queue_max_length, STREAM_ROOM_MIN)
        if self.stream_maxlen - self.queue_max_length < room:
            raise ValueError(
                f"VAI_STREAM_MAXLEN ({self.stream_maxlen}) must exceed VAI_QUEUE_MAX_LENGTH ({self.queue_max_length}) "
                f"by at least {room} (the cap, and at least {STREAM_ROOM_MIN}): the backlog cap acts on a length "
                "polled while every replica writes, and what XADD MAXLEN ~ trims is lost unexplained and uncounted; "
                f"raise VAI_STREAM_MAXLEN to {self.queue_max_length + room} or lower VAI_QUEUE_MAX_LENGTH"
            )
        return self

    @model_validator(mode="after")
    def _check_kserve_sections(self) -> SidecarSettings:
        mapped: dict[str, str] = {}
        for name, section in self.models.items():
            if section.kserve is None:
                continue
            if not MODEL_RE.match(name):
                raise ValueError(
                    f"models.{name}: not a model name ({MODEL_PATTERN}), so its kserve events could never be ingested"
                )
            service = section.kserve.service or name
            if service in mapped:
                raise ValueError(
                    f"models.{mapped[service]}.kserve and models.{name}.kserve both map InferenceService {service!r} "
                    "(kserve.service, default: the section name); each InferenceService maps to one section"
                )
            mapped[service] = name
        return self

    @property
    def auth_enabled(self) -> bool:
        return bool(self.ingest_tokens or self.read_tokens or self.admin_tokens)

    @property
    def open_without_auth(self) -> bool:
        """Auth is off and ``host`` is not loopback: anyone who reaches the port could use every API."""
        if self.auth_enabled or self.host == "localhost":
            return False
        try:
            return not ipaddress.ip_address(self.host).is_loopback
        except ValueError:  # a host name other than localhost
            return True

    def low_confidence_threshold(self, model: str) -> float:
        """The top-1 probability below which an event of ``model`` counts as low-confidence."""
        section = self.models.get(model)
        own = section.low_confidence_below if section else None
        return self.low_confidence_below if own is None else own

    def model_policy(self, model: str) -> SamplingPolicy:
        """Default policy with the config file's overrides for ``model`` applied."""
        section = self.models.get(model)
        return self.sampling.merged(section.sampling) if section else self.sampling
