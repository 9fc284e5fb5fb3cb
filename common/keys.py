"""Every Redis key name the sidecar and its workers use, in one place.

All keys share the ``vai:`` prefix so an operator can find (or flush) them with
one pattern, and so the sidecar can share a Redis with other tenants.
"""

from __future__ import annotations

PREFIX = "vai"

POLICY_MODELS = f"{PREFIX}:policy-models"
"""Set of the models that have run-time sampling-policy overrides."""
POLICY_VERSION = f"{PREFIX}:policy-version"
"""Counter bumped by every change of any model's sampling-policy overrides (``INCR``): a replica's refresh reads
the hashes only when it moved, or vanished (Redis lost its data, or a writer of an earlier release never set it)."""

CONSUMER_GROUP = "attribution"
"""Consumer group the attribution workers read the sample streams with."""


def policy(model: str) -> str:
    """Hash of a model's run-time sampling-policy overrides: field -> JSON value."""
    return f"{PREFIX}:policy:{model}"


def sample_stream(model: str) -> str:
    """Stream of sampled events waiting for attribution, one per model."""
    return f"{PREFIX}:stream:{model}"


def dead_letter_stream(model: str) -> str:
    """Stream of sampled events that failed attribution ``max_deliveries`` times."""
    return f"{PREFIX}:dead:{model}"


def explanation(model: str, request_id: str) -> str:
    """Hash of one sampled event's explanation: ``status``, ``summary`` and ``detail`` (JSON)."""
    return f"{PREFIX}:expl:{model}:{request_id}"


EXPLANATION_STATUS = "status"
"""The field of an explanation hash (:func:`explanation`) holding its record's status, in the clear for scripts to
read without parsing the summary (written by ``sampler.explanations``; read by the monitors' projection too)."""
EXPLANATION_DONE = "done"
"""The status of a finished explanation, its maps stored: final, never overwritten."""


def explanation_index(model: str, facet: str = "time", value: str = "") -> str:
    """Sorted set of request ids by event time: all of a model's (``time``), or one facet value
    (``reason``, ``cohort`` as ``key=value``, ``predicted``, ``version``, and ``status`` ``done`` for finished ones)."""
    return f"{PREFIX}:idx:{model}:{facet}" + (f":{value}" if value else "")


EXPLAINED_MODELS = f"{PREFIX}:expl-models"
"""Set of the models that have stored explanations."""


def worker_heartbeat(consumer: str) -> str:
    """String with a TTL, refreshed by a live attribution worker."""
    return f"{PREFIX}:worker:{consumer}"


def sanity(model: str) -> str:
    """Hash of method -> JSON of the latest randomisation sanity check of a model."""
    return f"{PREFIX}:sanity:{model}"


def layer_health(model: str, worker: str, version: str) -> str:
    """JSON of one worker's layer-health report of one version of a model (``sampler.layers``), with a TTL."""
    return f"{PREFIX}:layers:{model}:{worker}:{version}"


def layer_health_index(model: str) -> str:
    """Sorted set of the :func:`layer_health` keys of a model's fresh reports, scored by report time (epoch s)."""
    return f"{PREFIX}:layers-index:{model}"


def layer_baseline(model: str, version: str, digest: str) -> str:
    """JSON of the activation-shift baseline of one version of a model with the weights of ``digest`` (a loaded
    model's digest), shared by its workers (``sampler.layers``): the first one a worker completed, written once
    (``SET NX``) with a long TTL. Other weights under the same version name have a baseline of their own."""
    return f"{PREFIX}:layer-baseline:{model}:{version}:{digest}"


def prediction_prefix() -> str:
    """What every :func:`prediction` key starts with."""
    return f"{PREFIX}:pred:"


def prediction(model: str, request_id: str) -> str:
    """A compact prediction record waiting for its delayed label (with a TTL)."""
    return f"{PREFIX}:pred:{model}:{request_id}"


def drift_state(model: str) -> str:
    """JSON of a model's calibrated drift monitor, shared by every replica."""
    return f"{PREFIX}:drift:{model}"


def drift_version(model: str) -> str:
    """Changes whenever :func:`drift_state` is replaced, so replicas know to reload it."""
    return f"{PREFIX}:drift-version:{model}"


# --- the fleet monitor (monitors.fleet) ------------------------------------------------------

MONITORED_MODELS = f"{PREFIX}:monitored-models"
"""Set of the models whose sidecars publish monitoring records."""

LABELLED_MODELS = f"{PREFIX}:labelled-models"
"""Set of the models some replica has received labels for: their predictions wait in Redis for labels."""

MONITOR_GROUP = "monitor"
"""Consumer group the owning monitor reads a model's prediction feed with."""

MONITOR_MEMBERS = f"{PREFIX}:monitor-members"
"""Sorted set of live monitor processes, scored by the time their membership expires (epoch ms)."""

DRIFT_CONFIG = f"{PREFIX}:drift-config"
"""JSON of the drift settings the monitors calibrate with (``DriftConfig``), written by each live monitor every
lease round: sidecars refuse a reference too small for them at upload instead of it failing to calibrate."""


def prediction_feed(model: str) -> str:
    """Stream of compact monitoring records, one per accepted event of a model (``MAXLEN ~``)."""
    return f"{PREFIX}:feed:{model}"


def labelled_feed(model: str) -> str:
    """Stream of labelled monitoring records of a model, trimmed to the calibration window (``MINID ~``)."""
    return f"{PREFIX}:labelled:{model}"


def monitor_lease(model: str) -> str:
    """The id of the monitor process that owns a model, with a TTL it renews."""
    return f"{PREFIX}:lease:{model}"


def drift_status(model: str) -> str:
    """JSON of the owning monitor's latest drift verdicts of a model, read by every sidecar."""
    return f"{PREFIX}:drift-status:{model}"


def quality_report(model: str) -> str:
    """JSON of the owning monitor's calibration and quality figures of a model, read by every sidecar."""
    return f"{PREFIX}:quality:{model}"


def drift_reference(model: str) -> str:
    """An uploaded drift reference (arrays, no pickle), waiting for the owning monitor to calibrate on it."""
    return f"{PREFIX}:reference:{model}"


def projection(model: str, method: str) -> str:
    """JSON of the owning monitor's latest 2-D embedding projection of a model by ``method``."""
    return f"{PREFIX}:projection:{model}:{method}"


def projection_wanted(model: str, method: str) -> str:
    """Marker with a TTL a sidecar sets when a projection is asked for; the owner computes only wanted ones."""
    return f"{PREFIX}:projection-wanted:{model}:{method}"


def projection_status(model: str) -> str:
    """JSON of the owner's projection methods and their latest errors, read by the sidecars."""
    return f"{PREFIX}:projection-status:{model}"


def projection_traffic_reference(model: str) -> str:
    """Versioned JSON of the traffic sample standing in for a model's reference in its projections (no reference
    uploaded): written by the owner that took it, adopted by the next owner after a failover."""
    return f"{PREFIX}:projection-traffic-reference:{model}"


def drift_verdicts(model: str) -> str:
    """Versioned JSON of the latest drift verdicts of a model and the calibration they are of
    (``monitors.fleet.carried``), written by the owner with each status: a new owner that adopts that calibration
    carries them on until its own results replace them."""
    return f"{PREFIX}:drift-verdicts:{model}"


def recent_predictions(model: str) -> str:
    """Versioned JSON of the owner's window of recent prediction confidences of a model, the accuracy estimates'
    (``monitors.fleet.recent_store``), written with each quality report (with a TTL): a new owner restores it."""
    return f"{PREFIX}:recent-predictions:{model}"


def drift_history(model: str) -> str:
    """Stream of a model's detector verdicts over time (capped ``MAXLEN``), appended by the owning monitor."""
    return f"{PREFIX}:drift-history:{model}"


def distributions(model: str) -> str:
    """JSON of the confidence and margin histograms of a model's recent traffic against its reference."""
    return f"{PREFIX}:distributions:{model}"


# --- the KServe inference logger (service.kserve) ---------------------------------------------

KSERVE_PENDING_INDEX = f"{PREFIX}:kserve-pending"
"""Sorted set of the stored KServe requests (:func:`kserve_join_member`), scored by when they become orphans
(epoch s)."""


def kserve_pending_of(model: str) -> str:
    """Sorted set of ``model``'s waiting KServe requests (:func:`kserve_join_member`), scored by when their records
    expire (epoch s, Redis's clock), with a TTL: what ``VAI_KSERVE_MAX_PENDING`` counts."""
    return f"{KSERVE_PENDING_INDEX}:{model}"


def kserve_join_member(model: str, namespace: str, ce_id: str) -> str:
    """A request's join scope: ``{model}:{len}:{namespace}:{ce_id}``. A ce-id is the caller's to choose (KServe takes
    it from the ``Ce-Id`` header), so it is unique only within one model and namespace. A model name holds no ``:``
    and the namespace's length comes before it, so any two triples stay apart; the model comes first, as in the
    ``{model}:{ce_id}`` members of earlier releases, which read it the same way during a rolling upgrade."""
    return f"{model}:{len(namespace)}:{namespace}:{ce_id}"


def kserve_member_model(member: str) -> str:
    """The model of a :func:`kserve_join_member` (or of an earlier release's ``{model}:{ce_id}``)."""
    return member.partition(":")[0]


def kserve_pending(model: str, namespace: str, ce_id: str) -> str:
    """A KServe request waiting for its response (JSON, with a TTL), or the marker a response leaves."""
    return f"{PREFIX}:kserve:{kserve_join_member(model, namespace, ce_id)}"


def cohort_values(model: str, key: str) -> str:
    """Set of the values of cohort ``key`` admitted as labels of ``model`` for the whole fleet (first come, first
    admitted, at most ``VAI_MAX_COHORT_VALUES``; ``monitors.cohort_admission``), with a TTL its users refresh."""
    return f"{PREFIX}:cohort-values:{model}:{key}"


# --- the fleet monitor's warm-ups (monitors.fleet.warmup_store) ---------------------------------


def drift_warmup(model: str) -> str:
    """Hash of the drift warm-up its owner has collected so far (``monitors.fleet.warmup_store``), with a TTL: a new
    owner resumes it instead of collecting ``reference_events`` anew."""
    return f"{PREFIX}:drift-warmup:{model}"


# --- each sidecar process's own (service.sidecar) --------------------------------------------


def sidecar_mark(replica: str) -> str:
    """Set by each sidecar process (``replica``: an id drawn at start) at every policy refresh, with a TTL: gone
    while the process lives means Redis lost its data since it last looked (restarted empty, or flushed), so the
    run-time overrides that vanished with it were lost, not reset (a reset leaves the mark)."""
    return f"{PREFIX}:sidecar-mark:{replica}"


# --- what the monitors say about Redis and one another (monitors.fleet) -------------------------

EPOCH = f"{PREFIX}:epoch"
"""A random id set once (``SET NX``) by the first monitor to find it missing. Every monitor remembers the one it
saw: another one (or none) means Redis lost its data (restarted empty, flushed) since, and with it every model's
drift reference and calibration (``monitors.fleet.baselines.Baselines``)."""

DRIFT_CONFIGS = f"{PREFIX}:drift-configs"
"""Hash of monitor id -> JSON of the drift settings it calibrates with (``DriftConfig``), written by each live
monitor every lease round; a field counts while its monitor is a live member of :data:`MONITOR_MEMBERS`
(``monitors.fleet.lease.live_drift_configs``). Sidecars check an uploaded reference against the strictest."""


def drift_lost(model: str) -> str:
    """JSON of the drift baseline Redis lost for a model (``monitors.fleet.drift_started.LostBaseline``): written by a
    monitor that saw Redis lose its data when no monitor kept that baseline to store back; read by every owner,
    deleted once the model has a reference or a calibrated state again."""
    return f"{PREFIX}:drift-lost:{model}"
