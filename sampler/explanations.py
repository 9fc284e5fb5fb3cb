"""Stored explanations: the Redis store that workers write and the API reads (records in
:mod:`sampler.explanation_records`).

One hash per sampled event (``status``, ``summary``, ``detail``), indexed by event
time per model and per facet (reason, cohort value, predicted class, version).
Every key has a TTL (the retention); index entries older than the retention are
trimmed on write. The sidecar marks an event ``queued`` when it is written to
the stream, so it can be found before a worker explains it.

Records are also capped by count per model (``max_per_model``, ``VAI_EXPLANATIONS_MAX_PER_MODEL``): at the shipped
sampling budgets the retention alone kept tens of GB, far past Redis's ``maxmemory`` (at which it refuses every write
of every role). A save that takes a model past the cap removes its oldest records by event time, their hashes and
their entries in every index, at most ``REMOVED_PER_SAVE`` a save, in the save's own script. The ``queued`` records of
a model no worker explains are bounded by the same cap.

Cohort values are indexed within the bounds of the metrics' cohort labels, or an event's 32 cohort pairs would each
make a key that lives for the retention (200 events made 6,601): a pair is indexed only when its value is one the fleet
admitted for that model and key (``keys.cohort_values``: the decisions of the cohort guard behind
``vai_cohort_events_total``, ``monitors.cohort_admission``), which exist for the keys of ``VAI_COHORT_KEYS`` only, at
most ``VAI_MAX_COHORT_VALUES`` per model and key. The save script reads them, so the sidecar's saves and the
attribution worker's index alike. A value not admitted yet when its event is queued (its first events, until the next
decision round: 50 ms) is indexed by a later save of the record, the worker's. Every pair stays in the record's
summary; a list filter on a key that is not indexed is refused by the reader.

A list request reads the smallest of its filters' indices and checks the others by membership (``ZMSCORE``,
one round trip a chunk), so only summaries that match every filter are fetched and parsed; it examines at most
``examine_max`` index entries, and when that bound comes first it answers what it found with a cursor from where
it stopped (``ScannedPage``).

A stored record or sanity figure that no longer parses (written by a bug, or by hand) is logged once and
read as absent: one bad record never fails a page, and a bad figure is overwritten by the next check.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import Counter
from collections.abc import Iterator

from pydantic import ValidationError
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.exceptions import RedisError

from common import keys
from common.errors import InvalidInput, RedisUnavailable
from common.redis import REDIS_FAILED, execute, queue_script, text
from sampler.contract import SampledEvent
from sampler.explanation_records import (
    ExplanationDetail,
    ExplanationPage,
    ExplanationQuery,
    ExplanationRecord,
    ExplanationSummary,
    SanityFigure,
)

log = logging.getLogger(__name__)


INDICES_FIELD = "indices"
"""The field of an explanation hash listing (JSON array) every index its record was written to, so that the cap
removes its members from each without re-deriving their keys. Records of earlier releases have none: the cap removes
them from the time index and deletes their hash, and their other index entries go with the retention (readers skip
members whose hash is gone)."""

MAX_PER_MODEL = 20_000
"""Records kept per model by default (the settings' ``explanations_max_per_model``, which says why this many)."""

REMOVED_PER_SAVE = 10
"""Records one save removes for the cap at most: each costs a few ``ZREM`` and a ``DEL``, so a cap lowered below a
large stored set converges over the next saves (each adds at most one record) instead of in one script that holds
Redis for as long as it takes to delete them all."""

_CAP_LOG_EVERY_S = 60.0
"""Least time between two log lines counting the records removed for the cap."""

_SAVE = f"""
if redis.call('HGET', KEYS[1], '{keys.EXPLANATION_STATUS}') == '{keys.EXPLANATION_DONE}' then return {{0, 0}} end
if ARGV[1] == 'queued' and redis.call('EXISTS', KEYS[1]) == 1 then return {{0, 0}} end
local function written_to(key)
  local stored = redis.call('HGET', key, '{INDICES_FIELD}')
  local ok, found = pcall(cjson.decode, stored or '[]')
  if ok and type(found) == 'table' then return found end
  return {{}}
end
local fixed = tonumber(ARGV[9])
local written = {{}}
for _, index in ipairs(written_to(KEYS[1])) do written[index] = true end
for i = 2, #KEYS - 1 do
  local pair = i - fixed - 1
  if pair < 0 or (pair % 2 == 0 and redis.call('SISMEMBER', KEYS[i + 1], ARGV[13 + pair / 2]) == 1) then
    redis.call('ZADD', KEYS[i], ARGV[5], ARGV[6])
    redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', '(' .. ARGV[7])
    redis.call('EXPIRE', KEYS[i], ARGV[4])
    written[KEYS[i]] = true
  end
end
local indices = {{}}
for index in pairs(written) do indices[#indices + 1] = index end
table.sort(indices)
redis.call('HSET', KEYS[1], '{keys.EXPLANATION_STATUS}', ARGV[1], 'summary', ARGV[2], 'detail', ARGV[3],
  '{INDICES_FIELD}', cjson.encode(indices))
redis.call('EXPIRE', KEYS[1], ARGV[4])
redis.call('SADD', KEYS[#KEYS], ARGV[8])
local over = math.min(redis.call('ZCARD', KEYS[2]) - tonumber(ARGV[10]), tonumber(ARGV[12]))
local removed = 0
if over > 0 then
  for _, member in ipairs(redis.call('ZRANGE', KEYS[2], 0, over - 1)) do
    local key = ARGV[11] .. member
    for _, index in ipairs(written_to(key)) do redis.call('ZREM', index, member) end
    redis.call('ZREM', KEYS[2], member)
    redis.call('DEL', key)
    removed = removed + 1
  end
end
return {{1, removed}}
"""
"""A ``done`` record is final: a later save of any status (a redelivered entry explained again) changes nothing.
Indices first: a score Redis refuses fails the script before the record exists (scripts do not roll back).
``KEYS[2..ARGV[9]]`` are the record's indices (``KEYS[2]`` the model's time index); after them come, per cohort pair,
its value's index and the fleet's set of admitted values of its key (``ARGV[13..]``: the values, in order): the index
is written only when the value is a member. The record keeps the indices it is in (``INDICES_FIELD``, the union over
its saves).

Then the cap (``ARGV[10]``: ``max_per_model``): while the model's time index holds more, its oldest members (by event
time; the record just saved is one of them when it is older than every record kept, so a record the cap removed is
not brought back by a later save) are removed, at most ``ARGV[12]`` per save: each from every index its record
lists, from the time index, and its hash (``ARGV[11]`` is the hash key of a request id less the id). Answers
``{stored, removed}``: ``stored`` 0 when a record was there already (done, or any for a ``queued`` save), and nothing
changed."""


EXAMINE_MAX = 5_000
"""Index entries one list request examines at most (entries skipped as before its cursor do not count). A filter
that matches nothing otherwise reads the whole index (up to the retention: millions of entries), holding the loop
and Redis for seconds; 5,000 is 10 chunks of ``ZREVRANGEBYSCORE`` + ``ZMSCORE``, ~15 ms (mostly awaiting Redis)."""

_INDEX_CHUNK = 500
"""Index entries read (and checked against the other filters' indices) per round trip."""

_WARNED_MAX = 1024
"""Unreadable keys remembered so each is logged once (past this many, the memory starts again)."""


def _index_keys(summary: ExplanationSummary) -> list[str]:
    """The indices a record is always written to (its cohort values' are written only if admitted: ``_SAVE``)."""
    model = summary.model
    found = [keys.explanation_index(model)]
    found += [keys.explanation_index(model, "reason", reason) for reason in summary.reasons]
    found.append(keys.explanation_index(model, "predicted", str(summary.predicted)))
    found.append(keys.explanation_index(model, "version", summary.model_version))
    if summary.status == "done":
        found.append(keys.explanation_index(model, "status", "done"))
    return found


def _cohort_index_keys(summary: ExplanationSummary) -> tuple[list[str], list[str]]:
    """Per cohort pair of ``summary``, its value's index and the set of its key's admitted values (alternating); and
    the values."""
    pairs = sorted(summary.cohort.items())
    found: list[str] = []
    for key, value in pairs:
        found += [
            keys.explanation_index(summary.model, "cohort", f"{key}={value}"),
            keys.cohort_values(summary.model, key),
        ]
    return found, [value for _, value in pairs]


class ScannedPage(ExplanationPage):
    """A page of a list request, with how far its scan went."""

    examined: int
    """Index entries this request examined (past its cursor), at most the store's ``examine_max``."""
    complete: bool
    """``False`` when the scan stopped at ``examine_max`` before it found ``limit`` items: ``items`` are the matches
    among the entries examined (maybe none), and ``next_cursor`` continues from the last one examined. An empty
    page that is not complete does not mean that nothing matches."""


class ExplanationStore:
    """Writes are idempotent by (model, request_id): a ``done`` record is never overwritten. Each model keeps its
    newest ``max_per_model`` records by event time, and none past the retention ``ttl_s`` (see ``_SAVE``)."""

    def __init__(
        self, redis: Redis, *, ttl_s: int, max_per_model: int = MAX_PER_MODEL, examine_max: int = EXAMINE_MAX
    ) -> None:
        if max_per_model < 1:
            raise ValueError(f"max_per_model must be at least 1, not {max_per_model}")
        self._redis = redis
        self._ttl_s = ttl_s
        self._max_per_model = max_per_model
        self._examine_max = examine_max
        self._warned: set[tuple[str, str]] = set()
        self.removed_by_cap: Counter[str] = Counter()
        """Records this process's saves removed for the cap, per model (since it started)."""
        self._unlogged: Counter[str] = Counter()
        self._logged_at = -math.inf

    def mark_queued(self, pipe: Pipeline, event: SampledEvent) -> None:
        """Queue the 'queued' record of ``event`` on ``pipe`` (no-op in Redis if a record exists)."""
        self._add_save(pipe, ExplanationRecord(summary=ExplanationSummary.queued(event)))

    async def mark_failed(self, event: SampledEvent, error: str) -> None:
        """Record that ``event`` will never be explained (best effort: Redis may be the problem)."""
        summary = ExplanationSummary.queued(event).model_copy(update={"status": "failed"})
        with contextlib.suppress(OSError, RedisError):
            await self.save(ExplanationRecord(summary=summary, detail=ExplanationDetail(error=error[:2000])))

    async def save(self, record: ExplanationRecord) -> bool:
        """Store ``record``; ``False`` when a finished one was there already. ``True`` also when the cap removed it
        at once (older than every record the model keeps)."""
        pipe = self._redis.pipeline(transaction=False)
        self._add_save(pipe, record)
        (reply,) = await execute(pipe)
        return self.saved(record.summary.model, reply)

    def saved(self, model: str, reply: object) -> bool:
        """Whether the save script's ``reply`` (the result of a save queued on a pipeline: ``mark_queued``) stored
        its record; counts the records it removed for the cap in ``removed_by_cap`` and logs them, a line a minute
        at most."""
        if not isinstance(reply, list) or len(reply) != 2:
            return False  # an error Redis answered for this save (a pipeline run with raise_on_error=False)
        stored, removed = int(reply[0]), int(reply[1])
        if removed:
            self.removed_by_cap[model] += removed
            self._unlogged[model] += removed
            now = time.monotonic()
            if now - self._logged_at >= _CAP_LOG_EVERY_S:
                self._logged_at = now
                counts = ", ".join(f"{name}: {count}" for name, count in sorted(self._unlogged.items()))
                self._unlogged.clear()
                log.info(
                    "removed the oldest explanations past VAI_EXPLANATIONS_MAX_PER_MODEL=%d per model (%s)",
                    self._max_per_model,
                    counts,
                )
        return bool(stored)

    def _add_save(self, pipe: Pipeline, record: ExplanationRecord) -> None:
        """Queue the save script; a non-finite time or confidence (which JSON would store as null, unreadable)
        raises ``InvalidInput`` before anything is written."""
        summary = record.summary
        for name in ("timestamp", "confidence"):
            if not math.isfinite(getattr(summary, name)):
                raise InvalidInput(f"{name}: must be a finite number to store an explanation", field=name)
        index_keys = _index_keys(summary)
        cohort_keys, cohort_values = _cohort_index_keys(summary)
        cutoff = time.time() - self._ttl_s
        queue_script(
            pipe,
            _SAVE,
            [keys.explanation(summary.model, summary.request_id), *index_keys, *cohort_keys, keys.EXPLAINED_MODELS],
            [
                summary.status,
                summary.model_dump_json(),
                record.detail.model_dump_json(exclude_none=True),
                self._ttl_s,
                summary.timestamp,
                summary.request_id,
                cutoff,
                summary.model,
                len(index_keys) + 1,
                self._max_per_model,
                keys.explanation(summary.model, ""),  # + a request id: its hash
                REMOVED_PER_SAVE,
                *cohort_values,
            ],
        )

    async def cohort_admitted(self, model: str, key: str, value: str) -> tuple[bool, int]:
        """Whether the fleet admitted ``value`` of ``model``'s cohort ``key`` (so indexes it), and how many values of
        the key it admitted: at ``VAI_MAX_COHORT_VALUES``, a value not among them is refused for good."""
        pipe = self._redis.pipeline(transaction=False)
        pipe.sismember(keys.cohort_values(model, key), value)
        pipe.scard(keys.cohort_values(model, key))
        with _reading():
            admitted, size = await execute(pipe)
        return bool(admitted), int(size)

    async def get(self, model: str, request_id: str) -> ExplanationRecord | None:
        """The stored record; None when there is none, or it no longer parses (logged once)."""
        key = keys.explanation(model, request_id)
        with _reading():
            summary, detail = await self._redis.hmget(key, ["summary", "detail"])
        if summary is None:
            return None
        try:
            return ExplanationRecord(
                summary=ExplanationSummary.model_validate_json(summary),
                detail=ExplanationDetail.model_validate_json(detail or b"{}"),
            )
        except ValidationError as error:
            self._unreadable(key, "record", error)
            return None

    async def save_sanity(self, model: str, method: str, figure: SanityFigure) -> None:
        pipe = self._redis.pipeline(transaction=False)
        pipe.hset(keys.sanity(model), method, figure.model_dump_json())
        pipe.expire(keys.sanity(model), self._ttl_s)
        await execute(pipe)

    async def sanity(self, model: str) -> dict[str, SanityFigure]:
        """The latest figure of each method; one that no longer parses is logged once and left out, as if never
        checked (the next check overwrites it)."""
        key = keys.sanity(model)
        with _reading():
            stored = await self._redis.hgetall(key)
        figures: dict[str, SanityFigure] = {}
        for field, body in stored.items():
            method = text(field)
            try:
                figures[method] = SanityFigure.model_validate_json(body)
            except ValidationError as error:
                self._unreadable(key, method, error)
        return figures

    def _unreadable(self, key: str, field: str, error: ValidationError) -> None:
        """Log a stored value that no longer parses, once per key and field."""
        if (key, field) in self._warned:
            return
        if len(self._warned) >= _WARNED_MAX:
            self._warned.clear()
        self._warned.add((key, field))
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "value"
        log.warning("unreadable stored %s of %s, read as absent: %s: %s", field, key, where, first["msg"])

    async def latest_done(self, model: str, *, limit: int) -> list[ExplanationSummary]:
        """The model's newest ``limit`` done summaries (by event time), newest first, from the index of finished
        explanations: a backlog of queued events does not hide the finished ones behind it."""
        with _reading():  # no scores: redis-py turns each into a float on the loop, ~1.4 ms for 1,000
            members: list[bytes] = await self._redis.zrevrange(  # type: ignore[assignment]
                keys.explanation_index(model, "status", "done"), 0, limit - 1
            )
            found = [s for s in await self._summaries(model, [m.decode() for m in members]) if s.status == "done"]
        return found[:limit]

    async def models(self) -> list[str]:
        with _reading():
            members = await self._redis.smembers(keys.EXPLAINED_MODELS)
        return sorted(map(text, members))

    async def fleet_knows(self, model: str) -> bool:
        """Whether ``model`` is a model of this fleet: one with explanation records (a sampled event, even one still
        queued), or one the monitors know (``keys.MONITORED_MODELS``: a replica published its events, or a reference
        was uploaded). A view of no explanations then says "none finished yet", not "no such model"."""
        pipe = self._redis.pipeline(transaction=False)
        pipe.sismember(keys.EXPLAINED_MODELS, model)
        pipe.sismember(keys.MONITORED_MODELS, model)
        with _reading():
            explained, monitored = await execute(pipe)
        return bool(explained or monitored)

    async def query(self, query: ExplanationQuery) -> ScannedPage:
        """Newest first, filtered; examines at most ``examine_max`` index entries (see ``ScannedPage``)."""
        with _reading():
            items, examined, stopped_at = await self._find(query)
        page, extra = items[: query.limit], items[query.limit :]
        cursor = (page[-1].timestamp, page[-1].request_id) if extra else stopped_at
        return ScannedPage(items=page, next_cursor=cursor, examined=examined, complete=stopped_at is None)

    async def _find(self, query: ExplanationQuery) -> tuple[list[ExplanationSummary], int, tuple[float, str] | None]:
        """Up to ``limit + 1`` matching summaries, newest first; the index entries examined; and the last one
        examined when the scan stopped at ``examine_max`` before finding ``limit + 1`` (else None)."""
        index, others = await self._indices(query)
        upper: float | str = query.until if query.until is not None else "+inf"
        if query.cursor is not None:
            upper = min(query.cursor[0], query.until) if query.until is not None else query.cursor[0]
        lower: float | str = query.since if query.since is not None else "-inf"
        items: list[ExplanationSummary] = []
        examined = offset = 0
        last: tuple[float, str] | None = None
        while index is not None and len(items) <= query.limit:
            want = min(_INDEX_CHUNK, self._examine_max - examined)
            members: list[tuple[bytes, float]] = await self._redis.zrevrangebyscore(  # type: ignore[assignment]
                index, upper, lower, start=offset, num=want, withscores=True
            )
            offset += len(members)
            fresh = [(m.decode(), score) for m, score in members]
            if query.cursor is not None:  # ties at the cursor's time come first, already listed
                fresh = [(rid, score) for rid, score in fresh if _after_cursor(score, rid, query.cursor)]
            if fresh:
                examined, last = examined + len(fresh), (fresh[-1][1], fresh[-1][0])
                await self._collect(query, [rid for rid, _ in fresh], others, items)
            if len(members) < want:
                break
            if examined >= self._examine_max and len(items) <= query.limit:
                return items, examined, last
        return items, examined, None

    async def _indices(self, query: ExplanationQuery) -> tuple[str | None, list[str]]:
        """The index to read (the smallest of the filters', by ``ZCARD``) and the others, checked by membership;
        ``None`` to read when a filter's index is empty, as nothing can match."""
        filters = _filter_indices(query)
        if len(filters) <= 1:
            return (filters[0] if filters else keys.explanation_index(query.model)), []
        pipe = self._redis.pipeline(transaction=False)
        for index in filters:
            pipe.zcard(index)
        sizes = await execute(pipe)
        by_size = [index for _, index in sorted(zip(sizes, filters, strict=True), key=lambda pair: pair[0])]
        return (by_size[0] if min(sizes) else None), by_size[1:]

    async def _collect(
        self, query: ExplanationQuery, request_ids: list[str], others: list[str], items: list[ExplanationSummary]
    ) -> None:
        """Append the matches among ``request_ids`` (in order) to ``items`` until it holds ``limit + 1``: only
        those in every other filter's index are fetched and parsed, no more at a time than still wanted."""
        if others:
            pipe = self._redis.pipeline(transaction=False)
            for index in others:
                pipe.zmscore(index, request_ids)
            scores = await execute(pipe)
            request_ids = [rid for rid, *found in zip(request_ids, *scores, strict=True) if None not in found]
        while request_ids and len(items) <= query.limit:
            take = query.limit + 1 - len(items)
            wanted, request_ids = request_ids[:take], request_ids[take:]
            items += [summary for summary in await self._summaries(query.model, wanted) if _matches(summary, query)]

    async def _summaries(self, model: str, wanted: list[str]) -> list[ExplanationSummary]:
        """The stored summaries of ``wanted`` that exist and parse, in order (all but a few parsed in a thread).

        One script reads them all: a pipeline of one ``HGET`` each cost the loop ~16 ms for 1,000 summaries
        (packing the commands and reading 1,000 replies), the script's one array ~2 ms."""
        if not wanted:
            return []
        pipe = self._redis.pipeline(transaction=False)
        queue_script(pipe, _SUMMARIES, [keys.explanation(model, request_id) for request_id in wanted], [])
        (stored,) = await execute(pipe)
        raws = [(rid, raw) for rid, raw in zip(wanted, stored, strict=True) if raw is not None]
        if sum(len(raw) for _, raw in raws) <= _PARSED_ON_THE_LOOP_BYTES:
            parsed = _parsed(raws)
        else:
            parsed = await asyncio.to_thread(_parsed, raws)
        summaries: list[ExplanationSummary] = []
        for request_id, found in parsed:
            if isinstance(found, ValidationError):
                self._unreadable(keys.explanation(model, request_id), "summary", found)
            else:
                summaries.append(found)
        return summaries


_SUMMARIES = """
local found = {}
for i, key in ipairs(KEYS) do found[i] = redis.call('HGET', key, 'summary') end
return found
"""
"""The ``summary`` field of each hash in ``KEYS``, in order (nil where there is none)."""

_PARSED_ON_THE_LOOP_BYTES = 8_192
"""Stored summary JSON parsed on the event loop at most (about four done summaries of four methods); more is parsed
in a thread. Parsing costs ~13 µs a KiB here and more on a busy host: 64 summaries parsed on the loop held it for up
to 18 ms, and a list page or the trust report reads up to 501 or 1,000."""


def _parsed(raws: list[tuple[str, bytes]]) -> list[tuple[str, ExplanationSummary | ValidationError]]:
    """Each stored summary by request id, or the error that says why it does not parse."""
    found: list[tuple[str, ExplanationSummary | ValidationError]] = []
    for request_id, raw in raws:
        try:
            found.append((request_id, ExplanationSummary.model_validate_json(raw)))
        except ValidationError as error:
            found.append((request_id, error))
    return found


@contextlib.contextmanager
def _reading() -> Iterator[None]:
    """Redis failing a read (down, hung past the timeout, refusing) becomes ``RedisUnavailable`` (503). Logged at
    debug: the answer says it, and a Redis outage is logged once by the writers (a warning per read was ~70 lines
    per replica in a 20 s outage)."""
    try:
        yield
    except REDIS_FAILED as error:
        log.debug("explanations not read: %s", error)
        raise RedisUnavailable("explanations cannot be read now") from None


def _after_cursor(score: float, request_id: str, cursor: tuple[float, str]) -> bool:
    """Order is (timestamp desc, request_id desc): is this member past the cursor?"""
    return score < cursor[0] or (score == cursor[0] and request_id < cursor[1])


def _filter_indices(query: ExplanationQuery) -> list[str]:
    """The index of each filter of ``query`` (every filter but the time range has one)."""
    found = []
    if query.cohort is not None:
        found.append(keys.explanation_index(query.model, "cohort", f"{query.cohort[0]}={query.cohort[1]}"))
    if query.predicted is not None:
        found.append(keys.explanation_index(query.model, "predicted", str(query.predicted)))
    if query.reason is not None:
        found.append(keys.explanation_index(query.model, "reason", query.reason))
    if query.version is not None:
        found.append(keys.explanation_index(query.model, "version", query.version))
    return found


def _matches(summary: ExplanationSummary, query: ExplanationQuery) -> bool:
    return (
        (query.version is None or summary.model_version == query.version)
        and (query.reason is None or query.reason in summary.reasons)
        and (query.cohort is None or summary.cohort.get(query.cohort[0]) == query.cohort[1])
        and (query.predicted is None or summary.predicted == query.predicted)
    )
