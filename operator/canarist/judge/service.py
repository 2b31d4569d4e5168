"""The judge service: an aiohttp application implementing docs/judge-protocol.md.

    POST /v1/samples   validate strictly, store, answer 202 at once (never waits on scoring)
    GET  /v1/verdict   numbers for one release, variant and time window
    GET  /v1/pairs     complete pairs of one release in completion order, from a cursor
    GET  /v1/export    failed samples as NDJSON eval cases
    DELETE /v1/releases/{namespace}/{name}   a release's samples, pairs and token usage
    GET  /healthz      200 when the database answers
    GET  /metrics      Prometheus text, from a registry of this application only

Every storage call runs on one thread of the service's own (SQLite and psycopg block), never on
the event loop, so a slow query delays other queries but never the HTTP server or the scorer.

Scoring runs in the background: the database is the source of truth for pending work, a feeder
task claims pending samples and pairs (a lease in the database: with PostgreSQL several replicas
share the work, and none scores what another claimed) and moves them into a bounded asyncio
queue, and `concurrency` worker tasks take them from there, renewing the claim as each job
starts, so at most that many scorer calls are in flight. Pending work left by a stopped process
is picked up when the next one starts on the same database, or by another replica once the dead
one's claims expire; the feeder also polls, for work other replicas ingested.

Retention: a background task deletes what was ingested more than `retention` seconds ago.

Token budgets: before each scorer call the worker checks its release's spent tokens against
`token_budget`, and every release's tokens of the last 24 hours against `global_token_budget`;
once either is reached, remaining sampled samples and pairs (of that release; of every release)
are marked `skipped_budget` (the calls already in flight may overshoot it by their own tokens).
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import json
import logging
import math
import os
import re
import secrets
import signal
import socket
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from .auth import Authenticator, KubernetesTokenReviewer, Policy, TokenReviewer, auth_middleware, check_reporter
from .config import ConfigError, JudgeConfig
from .sampling import fingerprint, is_sampled
from .stats import summarize
from .storage import NewSample, SqlStorage, now_us, open_storage
from .types import JudgeError, Scorer

__all__ = [
    "JudgeService", "ValidationError", "SampleIn", "create_app", "build_scorer", "serve",
    "parse_samples", "parse_time", "format_time", "MAX_BATCH", "MAX_TEXT_BYTES",
    "SERVICE_KEY", "MAX_PAIRS_LIMIT",
]

log = logging.getLogger("canarist.judge")

MAX_BATCH = 1000
MAX_TEXT_BYTES = 64 * 1024          # request and response, UTF-8
MAX_LABEL_CHARS = 1024              # revision, requestId, traceId, segment
DEFAULT_PAIRS_LIMIT = 500
MAX_PAIRS_LIMIT = 5000
_OUTCOMES = {"canary": "win", "primary": "loss", "tie": "tie"}  # GET /v1/pairs: the canary's point of view
VARIANTS = ("primary", "canary")
REQUIRED_FIELDS = ("release", "variant", "request", "response")
OPTIONAL_FIELDS = ("revision", "requestId", "traceId", "segment", "timestamp", "mirrored")
SAMPLE_FIELDS = REQUIRED_FIELDS + OPTIONAL_FIELDS
# namespace: a DNS-1123 label; name: a DNS-1123 subdomain (what Kubernetes accepts for both).
_RELEASE_RE = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?/[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
_RFC3339_RE = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$")
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_US = timedelta(microseconds=1)


# ---------------------------------------------------------------------------------------------
# Validation


class ValidationError(ValueError):
    """Bad input; the message starts with the field it is about: "<field>: <what and how to fix>"."""


class CursorGone(ValidationError):
    """A well-formed cursor of another database: answered 410, so a client can tell it from a typo."""


def parse_time(value: Any, field: str, *, query: bool = False) -> int:
    """An RFC 3339 timestamp with an offset -> microseconds since the epoch.

    In a query string an unescaped "+" of the offset arrives as a space; `query=True` takes it back.
    """
    if not isinstance(value, str):
        raise ValidationError(f"{field}: must be an RFC 3339 string such as 2026-11-27T10:00:00Z, got {value!r}")
    text = value
    if query and len(text) > 6 and text[-6] == " ":
        text = text[:-6] + "+" + text[-5:]
    if not _RFC3339_RE.match(text):
        raise ValidationError(f"{field}: must be an RFC 3339 timestamp with a time zone such as "
                              f"2026-11-27T10:00:00Z, got {value!r}")
    try:
        moment = datetime.fromisoformat(text.upper())
    except ValueError as exc:
        raise ValidationError(f"{field}: not a valid date and time ({exc}), got {value!r}") from None
    return (moment - _EPOCH) // _US


def format_time(us: int) -> str:
    """Microseconds since the epoch -> RFC 3339 in UTC ("Z"), with a fraction only when there is one."""
    return (_EPOCH + timedelta(microseconds=us)).isoformat().replace("+00:00", "Z")


def _check_release(value: Any, field: str = "release") -> str:
    if not isinstance(value, str) or not _RELEASE_RE.match(value):
        raise ValidationError(f"{field}: must be the CanaryRelease as 'namespace/name' (lowercase "
                              f"Kubernetes names), got {value!r}")
    return value


def _check_text(value: Any, field: str, *, limit_bytes: int | None = None, limit_chars: int | None = None) -> str:
    if not isinstance(value, str):
        raise ValidationError(f"{field}: must be a string, got {type(value).__name__}")
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        raise ValidationError(f"{field}: is not valid Unicode (it holds a lone surrogate); "
                              "send UTF-8 text") from None
    if limit_bytes is not None and size > limit_bytes:
        raise ValidationError(f"{field}: is {size} bytes of UTF-8, at most {limit_bytes} are accepted; "
                              "truncate it before sending")
    if limit_chars is not None and len(value) > limit_chars:
        raise ValidationError(f"{field}: is {len(value)} characters long, at most {limit_chars} are accepted")
    return value


@dataclass(frozen=True)
class SampleIn:
    """One validated sample of the protocol (camelCase fields in, snake_case here)."""

    release: str
    variant: str
    request: str
    response: str
    revision: str | None = None
    request_id: str | None = None
    trace_id: str | None = None
    segment: str | None = None
    timestamp: int | None = None  # the client's own time, microseconds since the epoch: kept as data only
    mirrored: bool = False        # an answer to a mirrored copy of a request (the shadow phase)


def _parse_sample(obj: Any, path: str) -> SampleIn:
    prefix = f"{path}." if path else ""
    if not isinstance(obj, dict):
        raise ValidationError(f"{path or 'body'}: must be a sample object with release, variant, request "
                              f"and response, got {type(obj).__name__}")
    unknown = sorted(set(obj) - set(SAMPLE_FIELDS))
    if unknown:
        raise ValidationError(f"{prefix}{unknown[0]}: unknown field; a sample has only "
                              f"{', '.join(SAMPLE_FIELDS)}")
    for name in REQUIRED_FIELDS:
        if obj.get(name) is None:
            raise ValidationError(f"{prefix}{name}: is required")
    release = _check_release(obj["release"], f"{prefix}release")
    variant = obj["variant"]
    if variant not in VARIANTS:
        raise ValidationError(f"{prefix}variant: must be 'primary' or 'canary', got {variant!r}")
    request = _check_text(obj["request"], f"{prefix}request", limit_bytes=MAX_TEXT_BYTES)
    response = _check_text(obj["response"], f"{prefix}response", limit_bytes=MAX_TEXT_BYTES)
    labels = {}
    for name in ("revision", "requestId", "traceId", "segment"):
        value = obj.get(name)
        # an empty string counts as absent, like null: a reporter passing "" must not lose its batch
        if value is not None:
            value = _check_text(value, f"{prefix}{name}", limit_chars=MAX_LABEL_CHARS) or None
        labels[name] = value
    ts = obj.get("timestamp")
    mirrored = obj.get("mirrored")
    if mirrored is not None and not isinstance(mirrored, bool):
        raise ValidationError(f"{prefix}mirrored: must be true or false (true: the answer to a mirrored copy of "
                              f"a request, which no user saw), got {mirrored!r}")
    return SampleIn(release=release, variant=variant, request=request, response=response,
                    revision=labels["revision"], request_id=labels["requestId"], trace_id=labels["traceId"],
                    segment=labels["segment"], mirrored=bool(mirrored),
                    timestamp=None if ts is None else parse_time(ts, f"{prefix}timestamp"))


def parse_samples(body: Any) -> list[SampleIn]:
    """A decoded POST /v1/samples body -> validated samples, or ValidationError naming the field."""
    if isinstance(body, dict) and "samples" in body:
        extra = sorted(set(body) - {"samples"})
        if extra:
            raise ValidationError(f"{extra[0]}: unknown field next to 'samples'; send either one sample "
                                  "object or {\"samples\": [...]}")
        batch = body["samples"]
        if not isinstance(batch, list):
            raise ValidationError(f"samples: must be a list of sample objects, got {type(batch).__name__}")
        if len(batch) > MAX_BATCH:
            raise ValidationError(f"samples: holds {len(batch)} samples, at most {MAX_BATCH} are accepted "
                                  "per request; split the batch")
        return [_parse_sample(item, f"samples[{i}]") for i, item in enumerate(batch)]
    return [_parse_sample(body, "")]


# ---------------------------------------------------------------------------------------------
# Metrics


class _Metrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.ingested = Counter("canarist_judge_samples_ingested", "Samples received.",
                                ["release", "variant"], registry=registry)
        self.sampled = Counter("canarist_judge_samples_sampled", "Samples selected for scoring.",
                               ["release", "variant"], registry=registry)
        self.judged = Counter("canarist_judge_samples_judged", "Sampled samples finished, by outcome.",
                              ["release", "variant", "outcome"], registry=registry)
        self.latency = Histogram("canarist_judge_judge_latency_seconds",
                                 "Duration of one scorer call (a score, or a comparison in both orders).",
                                 ["call"], registry=registry,
                                 buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120))
        self.score = Histogram("canarist_judge_score", "Scores of judged samples.", ["release", "variant"],
                               registry=registry, buckets=tuple(i / 10 for i in range(1, 11)))
        self.tokens = Counter("canarist_judge_tokens", "LLM tokens spent, by release.", ["release"],
                              registry=registry)
        self.pairs = Counter("canarist_judge_pairs", "Pairwise comparisons finished, by outcome.",
                             ["release", "outcome"], registry=registry)
        self.signals = Counter("canarist_judge_injection_signals",
                               "Scored answers that carried an injection signal (evidence, not a verdict), by signal.",
                               ["signal"], registry=registry)
        self.queue_depth = Gauge("canarist_judge_queue_depth",
                                 "Scoring jobs (samples and pairs) pending and not yet being worked on: those no "
                                 "replica has claimed, and those this one holds in its queue.",
                                 registry=registry)
        self.database_bytes = Gauge("canarist_judge_database_bytes",
                                    "Size of the judge's database (SQLite: page_count x page_size; PostgreSQL: "
                                    "pg_database_size).", registry=registry)
        self.retention_deleted = Counter("canarist_judge_retention_deleted",
                                         "Rows deleted by retention or on request, by table.", ["table"],
                                         registry=registry)


# ---------------------------------------------------------------------------------------------
# The service


_Job = tuple[str, int]  # ("sample" | "pair", id)
_POLL = 1.0             # seconds between looks for work other replicas ingested or left behind
_DAY_US = 24 * 3600 * 1_000_000  # the judge-wide token budget's window


class JudgeService:
    """Ingest, background scoring and the verdict numbers, over one storage and one Scorer."""

    def __init__(self, config: JudgeConfig, scorer: Scorer, storage: SqlStorage,
                 registry: CollectorRegistry | None = None) -> None:
        self.config = config
        self.scorer = scorer
        self.storage = storage
        self.metrics = _Metrics(registry or CollectorRegistry())
        self.metrics.queue_depth.set_function(lambda: self._unclaimed + self._queued)
        self._queue: asyncio.Queue[_Job | None] = asyncio.Queue(maxsize=max(config.queue_size, config.concurrency))
        self._wake = asyncio.Event()
        self._workers: list[asyncio.Task] = []
        self._feeder: asyncio.Task | None = None
        self._retention: asyncio.Task | None = None
        self._held: set[_Job] = set()  # claimed by this replica: in the queue or in a worker's hands
        self._queued = 0      # jobs in the queue, not yet taken by a worker
        self._unclaimed = 0   # pending jobs no replica has claimed, as of the last look
        self._stopping = False
        # This replica's name in claims: unique per process, so a restarted pod does not own the old one's.
        self.owner = f"{socket.gethostname()}/{os.getpid()}/{secrets.token_hex(3)}"
        # One thread per storage: a connection is used by one thread at a time, and calls keep their order.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="judge-db")
        # The judge's own clock places every sample in time (verdict windows, pairing, retention): a
        # client that could choose the time could move its samples into or out of a step's window.
        self.clock: Callable[[], int] = now_us

    async def db(self, call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run a blocking storage call on the storage thread, so the event loop never waits on the database."""
        return await asyncio.get_running_loop().run_in_executor(
            self._executor, functools.partial(call, *args, **kwargs))

    @property
    def _lease_us(self) -> int:
        return round(self.config.lease * 1_000_000)

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the feeder, the workers and retention; pending work in the database is picked up first."""
        samples, pairs = await self.db(self.storage.count_pending)
        self._unclaimed = await self.db(self.storage.count_unclaimed)
        if samples or pairs:
            log.info("resuming %d pending samples and %d pending pairs", samples, pairs)
        self._feeder = asyncio.create_task(self._feed(), name="judge-feeder")
        self._workers = [asyncio.create_task(self._work(), name=f"judge-worker-{i}")
                         for i in range(self.config.concurrency)]
        if self.config.retention > 0:
            self._retention = asyncio.create_task(self._retain(), name="judge-retention")
        self._wake.set()

    async def stop(self, grace: float | None = None) -> None:
        """Stop quickly: queued jobs are not started, in-flight ones get `grace` seconds to finish.

        Whatever is not finished stays pending in the database, its claims given back, for the
        next start or another replica.
        """
        grace = self.config.shutdown_grace if grace is None else grace
        self._stopping = True
        for task in (self._feeder, self._retention):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        while not self._queue.empty():
            self._queue.get_nowait()
        self._queued = 0
        for _ in self._workers:
            self._queue.put_nowait(None)  # one stop sign per worker; fits, maxsize >= concurrency
        if self._workers:
            _, unfinished = await asyncio.wait(self._workers, timeout=grace)
            for task in unfinished:
                task.cancel()
            await asyncio.gather(*self._workers, return_exceptions=True)
            if unfinished:
                log.info("stopped %d scorer calls in flight; their work resumes on the next start", len(unfinished))
        self._workers = []
        try:
            await self.db(self.storage.release_claims, self.owner)
        except Exception:  # the database is gone: the claims expire by themselves
            log.warning("could not give back this replica's claims; they expire after %gs", self.config.lease)
        self._executor.shutdown(wait=True)

    async def wait_idle(self, timeout: float = 10.0, poll: float = 0.01) -> None:
        """Wait until no sample or pair is pending (tests and benchmarks)."""
        deadline = time.monotonic() + timeout
        while (pending := await self.db(self.storage.count_pending)) != (0, 0):
            if time.monotonic() > deadline:
                raise TimeoutError(f"judge still has pending work after {timeout}s: {pending}")
            await asyncio.sleep(poll)

    # -- ingest --------------------------------------------------------------------------------

    def budget_exhausted(self, release: str) -> bool:
        """Blocking: call it on the storage thread."""
        return self.budget(release)["exhaustedBy"] is not None

    def budget(self, release: str) -> dict:
        """Blocking: the release's and the judge-wide token budgets, and which one is exhausted if any."""
        used, budget = self.storage.tokens_used(release), self.config.token_budget
        day, global_budget = None, self.config.global_token_budget
        if global_budget is not None:
            day = self.storage.tokens_spent_since(self.clock() - _DAY_US)
        by = ("release" if budget is not None and used >= budget
              else "global" if day is not None and global_budget is not None and day >= global_budget else None)
        return {"tokensUsed": used, "tokenBudget": budget, "globalTokensUsed24h": day,
                "globalTokenBudget": global_budget, "exhausted": by is not None, "exhaustedBy": by}

    async def ingest(self, samples: Iterable[SampleIn], *, now: int | None = None) -> tuple[int, int]:
        """Store validated samples and wake the workers; (accepted, sampled). Never waits on scoring."""
        now = self.clock() if now is None else now
        samples = list(samples)
        rows, result = await self.db(self._store, samples, now)
        for row in rows:
            self.metrics.ingested.labels(row.release, row.variant).inc()
            if row.sampled:
                self.metrics.sampled.labels(row.release, row.variant).inc()
            if row.status == "skipped_budget":
                self.metrics.judged.labels(row.release, row.variant, "skipped_budget").inc()
        new_jobs = len(result.pending_samples) + len(result.pending_pairs)
        if new_jobs:
            self._unclaimed += new_jobs
            self._wake.set()
        return result.accepted, result.sampled

    def _store(self, samples: list[SampleIn], now: int) -> tuple[list[NewSample], Any]:
        """The storage thread's part of ingest: the budget check and the insert."""
        exhausted = {r for r in {s.release for s in samples} if self.budget_exhausted(r)}
        rows = []
        for s in samples:
            fp = fingerprint(s.request)
            if not is_sampled(fp, self.config.sample_rate):
                status = "unsampled"  # counted only: the storage keeps no text of it
            elif s.release in exhausted:
                status = "skipped_budget"
            else:
                status = "pending"
            rows.append(NewSample(release=s.release, variant=s.variant, request=s.request, response=s.response,
                                  fingerprint=fp, ts=now, client_ts=s.timestamp, status=status,
                                  revision=s.revision, request_id=s.request_id, trace_id=s.trace_id,
                                  segment=s.segment, mirrored=s.mirrored))
        return rows, self.storage.insert_samples(rows, ingested_at=now, exhausted=exhausted)

    # -- background work -----------------------------------------------------------------------

    async def _feed(self) -> None:
        """Claim pending work, oldest first, and move it into the bounded queue.

        Wakes on this replica's ingest, and every _POLL seconds for work other replicas ingested
        or left behind (claims expired); a job this replica already holds is never queued twice.
        """
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), _POLL)
            except TimeoutError:
                pass
            self._wake.clear()
            try:
                await self._claim_into_queue()
            except asyncio.CancelledError:
                raise
            except Exception:  # the database is unreachable: try again at the next poll
                log.exception("claiming pending work failed")

    async def _claim_into_queue(self) -> None:
        while not self._stopping:
            room = self._queue.maxsize - self._queue.qsize()  # only the feeder adds: all claimed jobs fit
            jobs: list[_Job] = []
            for kind in ("sample", "pair"):
                if room - len(jobs) > 0:
                    ids = await self.db(self.storage.claim, kind, self.owner, self._lease_us, room - len(jobs))
                    # One of ours whose claim expired while it waited is claimed again, not queued twice.
                    jobs += [(kind, i) for i in ids if (kind, i) not in self._held]
            self._unclaimed = await self.db(self.storage.count_unclaimed)
            if not jobs:
                return  # nothing to do, or the queue is full: the workers wake us when they take a job
            for job in jobs:
                self._held.add(job)
                self._queued += 1
                self._queue.put_nowait(job)

    async def _work(self) -> None:
        while True:
            job = await self._queue.get()
            if job is None or self._stopping:
                return
            self._queued -= 1
            self._wake.set()  # room in the queue: the feeder may claim more
            kind, job_id = job
            try:
                # The claim may have expired while the job waited; another replica may have it now.
                if await self.db(self.storage.renew_claim, kind, job_id, self.owner, self._lease_us):
                    if kind == "sample":
                        await self._score_sample(job_id)
                    else:
                        await self._compare_pair(job_id)
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug or a database failure: the job is taken again once its claim expires
                log.exception("judge job %s %d failed unexpectedly", kind, job_id)
            finally:
                self._held.discard(job)

    async def _timed(self, call: str, make: Callable[[], Any]) -> Any:
        started = time.perf_counter()
        try:
            return await make()
        finally:
            self.metrics.latency.labels(call).observe(time.perf_counter() - started)

    async def _score_sample(self, sample_id: int) -> None:
        row = await self.db(self.storage.get_sample, sample_id)
        if row is None or row.status != "pending":
            return
        labels = (row.release, row.variant)
        if await self.db(self.budget_exhausted, row.release):
            if await self.db(self.storage.finish_sample, sample_id, at=self.clock(), status="skipped_budget"):
                self.metrics.judged.labels(*labels, "skipped_budget").inc()
            return
        try:
            result = await self._timed("score", lambda: self.scorer.score(row.request, row.response))
            score = float(result.score)
            if not (math.isfinite(score) and 0.0 <= score <= 1.0):
                raise JudgeError(f"the scorer returned a score outside [0, 1]: {result.score!r}")
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # JudgeError, or a scorer bug: either way this sample failed
            message = str(exc) if isinstance(exc, JudgeError) else f"{type(exc).__name__}: {exc}"
            log.warning("scoring sample %d of %s (%s) failed: %s", sample_id, row.release, row.variant, message)
            if await self.db(self.storage.finish_sample, sample_id, at=self.clock(), status="error",
                             error=message[:2000]):
                self.metrics.judged.labels(*labels, "error").inc()
            return
        tokens = max(0, int(result.tokens))
        signals = tuple(result.signals)
        if await self.db(self.storage.finish_sample, sample_id, at=self.clock(), status="scored", score=score,
                         reason=result.reason, tokens=tokens, signals=signals):
            self.metrics.judged.labels(*labels, "scored").inc()
            for signal_name in signals:
                self.metrics.signals.labels(signal_name).inc()
            self.metrics.score.labels(*labels).observe(score)
            self.metrics.tokens.labels(row.release).inc(tokens)

    async def _compare_pair(self, pair_id: int) -> None:
        pair = await self.db(self.storage.get_pair, pair_id)
        if pair is None or pair.status != "pending":
            return
        if await self.db(self.budget_exhausted, pair.release):
            if await self.db(self.storage.finish_pair, pair_id, at=self.clock(), status="skipped_budget"):
                self.metrics.pairs.labels(pair.release, "skipped_budget").inc()
            return
        try:
            # a = the primary's answer, b = the canary's; the scorer runs both orders itself.
            result = await self._timed("compare", lambda: self.scorer.compare(
                pair.request, pair.primary_response, pair.canary_response))
            winner = {"a": "primary", "b": "canary", "tie": "tie"}.get(result.winner)
            if winner is None:
                raise JudgeError(f"the scorer returned an unknown winner: {result.winner!r}")
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            message = str(exc) if isinstance(exc, JudgeError) else f"{type(exc).__name__}: {exc}"
            log.warning("comparing pair %d of %s failed: %s", pair_id, pair.release, message)
            if await self.db(self.storage.finish_pair, pair_id, at=self.clock(), status="error", error=message[:2000]):
                self.metrics.pairs.labels(pair.release, "error").inc()
            return
        tokens = max(0, int(result.tokens))
        if await self.db(self.storage.finish_pair, pair_id, at=self.clock(), status="done", winner=winner,
                         reason=result.reason, tokens=tokens):
            self.metrics.pairs.labels(pair.release, winner).inc()
            self.metrics.tokens.labels(pair.release).inc(tokens)

    # -- retention -----------------------------------------------------------------------------

    @property
    def retention_interval(self) -> float:
        """Seconds between retention runs: a tenth of the age, at most an hour."""
        return min(3600.0, self.config.retention / 10)

    async def _retain(self) -> None:
        while True:
            try:
                await self.apply_retention()
            except asyncio.CancelledError:
                raise
            except Exception:  # the database is unreachable: try again next time
                log.exception("retention failed")
            await asyncio.sleep(self.retention_interval)

    async def apply_retention(self, now: int | None = None) -> Any:
        """Delete what was ingested more than `retention` seconds before `now`; refresh the size gauge."""
        now = now_us() if now is None else now
        deleted = await self.db(self.storage.delete_older_than, now - round(self.config.retention * 1_000_000))
        self._count_deleted(deleted)
        if deleted.samples or deleted.pairs:
            log.info("retention deleted %d samples and %d pairs ingested more than %gs ago",
                     deleted.samples, deleted.pairs, self.config.retention)
        await self.refresh_gauges()
        return deleted

    async def delete_release(self, release: str) -> Any:
        deleted = await self.db(self.storage.delete_release, release)
        self._count_deleted(deleted)
        log.info("deleted release %s on request: %d samples, %d pairs", release, deleted.samples, deleted.pairs)
        return deleted

    def _count_deleted(self, deleted: Any) -> None:
        self.metrics.retention_deleted.labels("samples").inc(deleted.samples)
        self.metrics.retention_deleted.labels("pairs").inc(deleted.pairs)
        self.metrics.retention_deleted.labels("token_usage").inc(deleted.releases_usage)

    async def refresh_gauges(self) -> None:
        """The gauges read from the database: its size, and the work no replica has claimed."""
        self.metrics.database_bytes.set(await self.db(self.storage.database_bytes))
        self._unclaimed = await self.db(self.storage.count_unclaimed)

    # -- verdicts ------------------------------------------------------------------------------

    async def verdict(self, release: str, variant: str, since: int, until: int, revision: str | None = None,
                      segment: str | None = None) -> dict:
        """The verdict on `variant`'s samples in [since, until), of one segment (cohort) if given."""
        return await self.db(self._verdict, release, variant, since, until, revision, segment)

    def _verdict(self, release: str, variant: str, since: int, until: int, revision: str | None,
                 segment: str | None) -> dict:
        counts = self.storage.counts(release, variant, since, until, revision, segment)
        summary = summarize(self.storage.scores(release, variant, since, until, revision, segment),
                            self.config.pass_mark)
        return {
            "release": release, "variant": variant, "revision": revision, "segment": segment,
            "since": format_time(since), "until": format_time(until),
            "ingested": counts.ingested, "sampled": counts.sampled, "judged": counts.judged,
            "pending": counts.pending, "errors": counts.errors, "skippedBudget": counts.skipped_budget,
            "mirrored": counts.mirrored, "flagged": counts.flagged,
            "meanScore": summary.mean, "ci95": list(summary.ci95) if summary.ci95 else None,
            "sumScores": summary.sum_scores, "sumSquares": summary.sum_squares,
            "passMark": self.config.pass_mark, "failed": summary.failed,
            "pairwise": self.storage.pairwise(release, variant, since, until, revision, segment),
            # Coverage: judged samples of every segment in the window, whatever `segment` filters.
            "segments": self.storage.segments(release, variant, since, until, revision),
            "budget": self.budget(release),
        }

    async def pairs(self, release: str, after: str | None, *, limit: int = DEFAULT_PAIRS_LIMIT,
                    since: int | None = None, primary_revision: str | None = None,
                    canary_revision: str | None = None) -> dict:
        """The GET /v1/pairs answer; `after` is a cursor this database returned (ValidationError if not)."""
        page = await self.db(functools.partial(
            self.storage.pairs_after, release, self._cursor_position(after), limit=limit, since=since,
            primary_revision=primary_revision, canary_revision=canary_revision))
        return {
            "pairs": [{"id": p.seq, "at": format_time(p.completed_at), "fingerprint": p.fingerprint,
                       "primaryScore": p.primary_score, "canaryScore": p.canary_score,
                       "outcome": _OUTCOMES.get(p.winner) if p.winner else None, "segment": p.segment,
                       "mirrored": p.mirrored}
                      for p in page.pairs],
            "cursor": f"{self.storage.database_id}.{page.cursor}",
            "more": page.more,
        }

    def _cursor_position(self, after: str | None) -> int:
        if after is None:
            return 0
        db_id, _, position = after.rpartition(".")
        if not db_id or not (position.isascii() and position.isdigit() and len(position) <= 18):
            raise ValidationError(f"after: {after!r} is not a cursor; pass the \"cursor\" of the previous "
                                  "answer unchanged, or leave after out to start from the beginning")
        if db_id != self.storage.database_id:
            # A new database numbers from 1 again: resuming would silently skip its first pairs.
            raise CursorGone(f"after: the cursor is from another judge database (it was replaced); the pairs "
                             "it stands for are gone: start the sequential test again without after")
        return int(position)

    def export_lines(self, release: str, *, variant: str | None = None, revision: str | None = None,
                     since: int | None = None, until: int | None = None) -> Iterable[bytes]:
        """Blocking (it reads the database page by page): iterate it on the storage thread (`export_chunks`)."""
        for row in self.storage.failed_samples(release, self.config.pass_mark, variant=variant,
                                               revision=revision, since=since, until=until):
            case = {
                "fingerprint": row["fingerprint"], "release": row["release"], "variant": row["variant"],
                "revision": row["revision"], "request": row["request"], "response": row["response"],
                "otherResponse": row["other_response"], "score": row["score"], "reason": row["reason"],
                "requestId": row["request_id"], "traceId": row["trace_id"], "segment": row["segment"],
                "timestamp": format_time(row["ts"]),
                "clientTimestamp": None if row["client_ts"] is None else format_time(row["client_ts"]),
                "mirrored": bool(row["mirrored"]),
                "signals": row["signals"].split(",") if row["signals"] else [],
            }
            yield (json.dumps(case, ensure_ascii=False) + "\n").encode("utf-8")

    async def export_chunks(self, release: str, lines_per_chunk: int = 200, **filters: Any):
        """The export's NDJSON in chunks of lines, each read on the storage thread."""
        lines = iter(self.export_lines(release, **filters))
        while chunk := await self.db(lambda: list(itertools.islice(lines, lines_per_chunk))):
            yield b"".join(chunk)


SERVICE_KEY = web.AppKey("judge_service", JudgeService)
INGEST_SLOTS = web.AppKey("judge_ingest_slots", asyncio.Semaphore)


# ---------------------------------------------------------------------------------------------
# HTTP


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def _query(request: web.Request, allowed: Iterable[str], required: Iterable[str] = ()) -> dict[str, str]:
    allowed = tuple(allowed)
    params: dict[str, str] = {}
    for key, value in request.query.items():
        if key not in allowed:
            raise ValidationError(f"{key}: unknown query parameter; {request.path} takes {', '.join(allowed)}")
        if key in params:
            raise ValidationError(f"{key}: given more than once; give it once")
        if value == "":
            raise ValidationError(f"{key}: is empty; give a value or leave the parameter out")
        params[key] = value
    for key in required:
        if key not in params:
            raise ValidationError(f"{key}: query parameter is required")
    return params


def _window(params: dict[str, str]) -> tuple[int | None, int]:
    since = parse_time(params["since"], "since", query=True) if "since" in params else None
    until = parse_time(params["until"], "until", query=True) if "until" in params else now_us()
    if since is not None and until < since:
        raise ValidationError(f"until: {params.get('until', 'now')} is before since {params['since']}; "
                              "the window is [since, until)")
    return since, until


def _variant(params: dict[str, str]) -> str | None:
    variant = params.get("variant")
    if variant is not None and variant not in VARIANTS:
        raise ValidationError(f"variant: must be 'primary' or 'canary', got {variant!r}")
    return variant


async def _post_samples(request: web.Request) -> web.Response:
    # Bodies are read and parsed a few at a time, so a flood of large ones stays within memory.
    async with request.app[INGEST_SLOTS]:
        return await _ingest(request)


async def _ingest(request: web.Request) -> web.Response:
    service = request.app[SERVICE_KEY]
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        return _error(413, f"body: larger than {service.config.max_body_bytes} bytes; send fewer samples per request")
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        return _error(400, f"body: not valid JSON ({exc}); send one sample object or {{\"samples\": [...]}}")
    try:
        samples = parse_samples(body)
    except ValidationError as exc:
        return _error(400, str(exc))
    refused = check_reporter(request, (s.release for s in samples))
    if refused:
        return _error(403, refused)
    accepted, sampled = await service.ingest(samples)
    return web.json_response({"accepted": accepted, "sampled": sampled}, status=202)


async def _get_verdict(request: web.Request) -> web.Response:
    service = request.app[SERVICE_KEY]
    try:
        params = _query(request, ("release", "variant", "since", "until", "revision", "segment"),
                        ("release", "variant", "since"))
        release = _check_release(params["release"])
        variant = _variant(params)
        since, until = _window(params)
    except ValidationError as exc:
        return _error(400, str(exc))
    assert since is not None and variant is not None
    return web.json_response(await service.verdict(release, variant, since, until, params.get("revision"),
                                                   params.get("segment") or None))


async def _get_pairs(request: web.Request) -> web.Response:
    service = request.app[SERVICE_KEY]
    try:
        params = _query(request, ("release", "after", "since", "canaryRevision", "primaryRevision", "limit"),
                        ("release",))
        release = _check_release(params["release"])
        since = parse_time(params["since"], "since", query=True) if "since" in params else None
        limit = params.get("limit", str(DEFAULT_PAIRS_LIMIT))
        if not (limit.isascii() and limit.isdigit() and 1 <= int(limit) <= MAX_PAIRS_LIMIT):
            raise ValidationError(f"limit: must be a whole number from 1 to {MAX_PAIRS_LIMIT}, got {limit!r}")
        answer = await service.pairs(release, params.get("after"), limit=int(limit), since=since,
                                     primary_revision=params.get("primaryRevision"),
                                     canary_revision=params.get("canaryRevision"))
    except CursorGone as exc:
        return _error(410, str(exc))
    except ValidationError as exc:
        return _error(400, str(exc))
    return web.json_response(answer)


async def _get_export(request: web.Request) -> web.StreamResponse:
    service = request.app[SERVICE_KEY]
    try:
        params = _query(request, ("release", "revision", "since", "until", "variant"), ("release",))
        release = _check_release(params["release"])
        variant = _variant(params)
        since, until = _window(params)
    except ValidationError as exc:
        return _error(400, str(exc))
    response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson; charset=utf-8"})
    await response.prepare(request)
    async for chunk in service.export_chunks(release, variant=variant, revision=params.get("revision"),
                                             since=since, until=until):
        await response.write(chunk)
    await response.write_eof()
    return response


async def _delete_release(request: web.Request) -> web.Response:
    """DELETE /v1/releases/{namespace}/{name}: every sample, pair and the token usage of one release."""
    service = request.app[SERVICE_KEY]
    try:
        release = _check_release(f"{request.match_info['namespace']}/{request.match_info['name']}")
    except ValidationError as exc:
        return _error(400, str(exc))
    deleted = await service.delete_release(release)
    return web.json_response({"release": release, "deleted": {
        "samples": deleted.samples, "pairs": deleted.pairs, "tokens": deleted.tokens}})


async def _healthz(request: web.Request) -> web.Response:
    service = request.app[SERVICE_KEY]
    if await service.db(service.storage.ping):
        return web.Response(text="ok\n")
    return web.Response(status=503, text="database unreachable\n")


async def _metrics(request: web.Request) -> web.Response:
    service = request.app[SERVICE_KEY]
    try:
        await service.refresh_gauges()
    except Exception:  # the database is unreachable: the gauges keep their last values, /healthz tells
        log.warning("could not read the database's size for /metrics", exc_info=True)
    body = generate_latest(service.metrics.registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def build_scorer(config: JudgeConfig) -> Scorer:
    """The real LLM scorer of `config`: an OpenAI-compatible client, the rubric, the API key.

    Raises ConfigError when a setting it needs is missing or unreadable. The key is read here and
    handed to the client only; it is never logged.
    """
    from .llm import LLMClient, load_api_key  # imported late: tests with a fake scorer need neither
    from .scorer import LLMScorer

    config.require_llm()
    rubric = None
    if config.rubric_file is not None:
        try:
            rubric = Path(config.rubric_file).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"--rubric-file: cannot read {config.rubric_file}: {exc.strerror}") from None
    try:
        api_key = load_api_key(config.api_key_env, config.api_key_file)
    except ValueError as exc:  # its messages never hold the key
        raise ConfigError(f"API key: {exc}") from None
    try:
        llm = LLMClient(config.llm_base_url, config.model, api_key, timeout=config.timeout,
                        retries=config.retries, backoff=config.backoff, response_format=config.response_format)
    except ValueError as exc:
        raise ConfigError(f"LLM client: {exc}") from None
    return LLMScorer(llm, rubric)


def create_app(config: JudgeConfig, scorer: Scorer | None = None, *,
               registry: CollectorRegistry | None = None, reviewer: TokenReviewer | None = None) -> web.Application:
    """The judge's aiohttp application; its database opens and its workers start with the app.

    `scorer` defaults to `build_scorer(config)`, built at startup. The service object is
    `app[SERVICE_KEY]` once the app has started. The scorer and the database are closed on cleanup.
    """
    middlewares = []
    if config.auth == "kubernetes":
        # `reviewer`: tests of the policy; a judge process always asks the API server.
        authenticator = Authenticator(reviewer or KubernetesTokenReviewer(config.kubeconfig), config.auth_audience)
        middlewares.append(auth_middleware(authenticator, Policy(config.readers, config.admins)))
    app = web.Application(client_max_size=config.max_body_bytes, middlewares=middlewares)
    app[INGEST_SLOTS] = asyncio.Semaphore(config.ingest_concurrency)

    async def lifecycle(app: web.Application):
        # Opening PostgreSQL connects over the network: off the event loop too.
        storage = await asyncio.to_thread(open_storage, config.db,
                                          pair_window_us=round(config.pair_window * 1_000_000))
        try:
            service = JudgeService(config, scorer if scorer is not None else build_scorer(config), storage,
                                   registry=registry)
        except BaseException:
            storage.close()
            raise
        app[SERVICE_KEY] = service
        await service.start()
        try:
            yield
        finally:
            await service.stop()
            try:
                await service.scorer.close()
            finally:
                storage.close()

    app.cleanup_ctx.append(lifecycle)
    app.router.add_post("/v1/samples", _post_samples)
    app.router.add_get("/v1/verdict", _get_verdict)
    app.router.add_get("/v1/pairs", _get_pairs)
    app.router.add_get("/v1/export", _get_export)
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/metrics", _metrics)
    app.router.add_delete("/v1/releases/{namespace}/{name}", _delete_release)
    return app


def _db_label(db: str) -> str:
    """The --db value for a log line: a PostgreSQL URL without its password."""
    parts = urlsplit(db)
    if parts.scheme.startswith("postgres") and parts.password is not None:
        return parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@", 1)).geturl()
    return db


async def serve(config: JudgeConfig, *, scorer: Scorer | None = None, port_file: str | None = None,
                stop: asyncio.Event | None = None) -> None:
    """Serve until SIGTERM or SIGINT (or `stop` is set), then shut down gracefully.

    The scorer is built before the server listens, so a bad LLM setting fails at once. With
    `port_file` the bound port is written there once the server accepts connections.
    """
    scorer = scorer if scorer is not None else build_scorer(config)
    app = create_app(config, scorer)
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=max(config.shutdown_grace, 0.1))
    await runner.setup()
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    try:
        site = web.TCPSite(runner, config.host, config.port, reuse_address=True)
        await site.start()
        port = runner.addresses[0][1]
        log.info("judge listening on %s:%d (db %s, sample rate %g, pass mark %g, model %s at %s, concurrency %d, "
                 "token budget %s per release, %s a day in all)", config.host, port, _db_label(config.db),
                 config.sample_rate, config.pass_mark, config.model, config.llm_base_url, config.concurrency,
                 config.token_budget or "none", config.global_token_budget or "none")
        if port_file:
            tmp = Path(port_file + ".tmp")
            tmp.write_text(f"{port}\n")
            tmp.replace(port_file)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        log.info("judge shutting down")
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        await runner.cleanup()
        log.info("judge stopped")
