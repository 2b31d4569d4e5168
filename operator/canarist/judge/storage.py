"""The judge service's database: samples, pairwise results and token usage per release.

Two backends share every query here (`SqlStorage`): `Storage`, SQLite (one file in WAL mode, or
":memory:" for tests; standard library only), for one judge replica; and `PgStorage`
(canarist.judge.pgstorage), PostgreSQL, for several replicas sharing the work. `open_storage`
picks one from the `--db` value. The service calls a storage from one worker thread of its own,
never from its event loop; a lock per storage serializes the calls anyway, so a test may call it
from any thread.

The database is the source of truth for pending work: a sampled sample stays `pending` until a
worker records its outcome, so after a restart the service picks every pending sample and pair
up again. A replica *claims* pending work before scoring it (`claim`: claimed_by, claimed_until),
so two replicas never score the same sample; a dead replica's claims expire after their lease
and another replica takes the work over. Outcomes are recorded only while the work is pending
(`finish_sample`, `finish_pair`), so nothing is ever recorded twice. Timestamps are integer
microseconds since the Unix epoch (UTC), so window bounds compare exactly.

Sample statuses: `unsampled` (counted, never scored: its texts are not stored), `pending`,
`scored`, `error`, `skipped_budget`. Pair statuses: `pending`, `done`, `error`,
`skipped_budget`; a done pair's `winner` is `canary`, `primary` or `tie`.

A pair is *complete* once its comparison and both its samples are final (not pending). The
transaction that makes it so gives it the next `completed_seq` from the counter row
`counters.completed_seq`: it increments the row, whose lock it then holds until it commits, so
the next number is handed out only after this one is committed, and a reader that sees number n
also sees every number below it (SQLite's single write lock gives the same order). The counter
never goes back, even when retention deletes the pairs with the highest numbers, so a cursor
handed out earlier never skips a later pair. `pairs_after` pages through that sequence (GET
/v1/pairs).

Retention (`delete_older_than`) deletes by the server's ingestion time; pending work, and a
sample whose pair is not deletable yet, stay.
"""

from __future__ import annotations

import functools
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Container, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

__all__ = ["NewSample", "IngestResult", "SampleRow", "PairRow", "Counts", "CompletedPair", "PairPage", "Deleted",
           "SqlStorage", "Storage", "open_storage", "now_us", "SCHEMA_VERSION"]

# 2: pairs.completed_seq/completed_at and the meta table. A judge of version 1 must not open such a
# database: it would complete pairs without a sequence number, and GET /v1/pairs would never show them.
# 3: samples.mirrored (answers to mirrored copies of requests, the shadow phase).
# 4: samples.signals (injection signals of a scored answer, comma-separated: evidence only).
# 5: claims (claimed_by, claimed_until) on samples and pairs, and the counters table: the completion
# number survives the deletion of the pairs that had the highest ones (retention).
# 6: samples.client_ts: the client's timestamp, kept as data; ts is the judge's clock at ingest.
SCHEMA_VERSION = 6
DEFAULT_PAIR_WINDOW_US = 120 * 1_000_000
HOUR_US = 3600 * 1_000_000  # answers to one input further apart than this are not paired by it
Variant = Literal["primary", "canary"]
SampleStatus = Literal["unsampled", "pending", "scored", "error", "skipped_budget"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS samples (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    release      TEXT    NOT NULL,
    variant      TEXT    NOT NULL CHECK (variant IN ('primary', 'canary')),
    revision     TEXT,
    request      TEXT    NOT NULL,
    response     TEXT    NOT NULL,
    fingerprint  TEXT    NOT NULL,
    request_id   TEXT,
    trace_id     TEXT,
    segment      TEXT,
    ts           INTEGER NOT NULL,  -- the judge's clock at ingest, microseconds since the epoch
    ingested_at  INTEGER NOT NULL,
    sampled      INTEGER NOT NULL CHECK (sampled IN (0, 1)),
    status       TEXT    NOT NULL
                 CHECK (status IN ('unsampled', 'pending', 'scored', 'error', 'skipped_budget')),
    score        REAL,
    reason       TEXT,
    error        TEXT,
    tokens       INTEGER NOT NULL DEFAULT 0,
    finished_at  INTEGER,
    pair_id      INTEGER REFERENCES pairs(id),
    mirrored     INTEGER NOT NULL DEFAULT 0 CHECK (mirrored IN (0, 1)),
    signals      TEXT,
    client_ts    INTEGER,           -- the time the client gave: data only, never orders anything
    claimed_by   TEXT,
    claimed_until INTEGER
);
-- The verdict query: one release and variant over a time window.
CREATE INDEX IF NOT EXISTS samples_verdict ON samples (release, variant, ts);
-- Pairing: the unpaired sampled answers of one variant to one input, nearest in time.
CREATE INDEX IF NOT EXISTS samples_unpaired ON samples (release, fingerprint, variant, ts)
    WHERE sampled = 1 AND pair_id IS NULL;
-- Exports: the other variant's answer to the same input.
CREATE INDEX IF NOT EXISTS samples_fingerprint ON samples (release, fingerprint, variant, ts);
CREATE INDEX IF NOT EXISTS samples_pending ON samples (id) WHERE status = 'pending';

CREATE TABLE IF NOT EXISTS pairs (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    release      TEXT    NOT NULL,
    fingerprint  TEXT    NOT NULL,
    primary_id   INTEGER NOT NULL UNIQUE REFERENCES samples(id),
    canary_id    INTEGER NOT NULL UNIQUE REFERENCES samples(id),
    canary_ts    INTEGER NOT NULL,  -- verdicts count a pair by its canary sample's timestamp
    status       TEXT    NOT NULL CHECK (status IN ('pending', 'done', 'error', 'skipped_budget')),
    winner       TEXT    CHECK (winner IN ('primary', 'canary', 'tie')),
    reason       TEXT,
    error        TEXT,
    tokens       INTEGER NOT NULL DEFAULT 0,
    created_at   INTEGER NOT NULL,
    finished_at  INTEGER,
    completed_seq INTEGER,          -- see the module docstring; NULL until complete
    completed_at INTEGER,
    claimed_by   TEXT,
    claimed_until INTEGER
);
CREATE INDEX IF NOT EXISTS pairs_verdict ON pairs (release, canary_ts);
CREATE INDEX IF NOT EXISTS pairs_pending ON pairs (id) WHERE status = 'pending';

CREATE TABLE IF NOT EXISTS token_usage (
    release      TEXT    PRIMARY KEY,
    tokens       INTEGER NOT NULL DEFAULT 0
);

-- Every release's tokens together, by the hour they were spent in: the judge-wide budget's rolling day.
CREATE TABLE IF NOT EXISTS token_spend (
    hour         INTEGER PRIMARY KEY,  -- microseconds since the epoch // HOUR_US
    tokens       INTEGER NOT NULL DEFAULT 0
);

CREATE TABLE IF NOT EXISTS meta (
    key          TEXT    PRIMARY KEY,
    value        TEXT    NOT NULL
);

CREATE TABLE IF NOT EXISTS counters (
    name         TEXT    PRIMARY KEY,
    value        INTEGER NOT NULL
);
"""
# Created after the migration, which adds the columns they index to a version 1 database.
_INDEXES_V2 = (
    "CREATE UNIQUE INDEX IF NOT EXISTS pairs_completed ON pairs (completed_seq) WHERE completed_seq IS NOT NULL",
    "CREATE INDEX IF NOT EXISTS pairs_stream ON pairs (release, completed_seq) WHERE completed_seq IS NOT NULL",
    # Pairing by request id: the other variant's unpaired answer to the very same request.
    "CREATE INDEX IF NOT EXISTS samples_unpaired_request ON samples (release, request_id, variant)"
    " WHERE sampled = 1 AND pair_id IS NULL AND request_id IS NOT NULL",
    # Retention: what was ingested before a moment (a pair is created when its later sample is ingested).
    "CREATE INDEX IF NOT EXISTS samples_ingested ON samples (ingested_at)",
    "CREATE INDEX IF NOT EXISTS pairs_created ON pairs (created_at)",
)
_FINAL = "('scored', 'error', 'skipped_budget')"  # sample statuses that never change again


def now_us() -> int:
    return time.time_ns() // 1000


@dataclass(frozen=True)
class NewSample:
    """A validated sample, with the service's fingerprint and sampling decision."""

    release: str
    variant: Variant
    request: str
    response: str
    fingerprint: str
    ts: int  # the judge's clock at ingest, microseconds since the epoch
    status: Literal["unsampled", "pending", "skipped_budget"]
    revision: str | None = None
    request_id: str | None = None
    trace_id: str | None = None
    segment: str | None = None
    mirrored: bool = False  # the answer to a mirrored copy of a request, which no user saw
    client_ts: int | None = None  # the client's own timestamp, kept as data only

    @property
    def sampled(self) -> bool:
        return self.status != "unsampled"


@dataclass(frozen=True)
class IngestResult:
    accepted: int
    sampled: int
    pending_samples: tuple[int, ...]  # ids of the new samples waiting for a score
    pending_pairs: tuple[int, ...]    # ids of the new pairs waiting for a comparison


@dataclass(frozen=True)
class SampleRow:
    id: int
    release: str
    variant: Variant
    revision: str | None
    request: str
    response: str
    fingerprint: str
    ts: int
    status: SampleStatus
    score: float | None
    reason: str | None
    error: str | None
    tokens: int
    pair_id: int | None


@dataclass(frozen=True)
class PairRow:
    id: int
    release: str
    fingerprint: str
    primary_id: int
    canary_id: int
    request: str            # the canary sample's request (same normalized input as the primary's)
    primary_response: str
    canary_response: str
    status: str
    winner: str | None


@dataclass(frozen=True)
class CompletedPair:
    seq: int
    completed_at: int
    fingerprint: str
    primary_score: float | None  # None unless that sample was scored
    canary_score: float | None
    winner: str | None           # None unless the comparison was done
    segment: str | None          # the canary sample's, else the primary's
    mirrored: bool = False       # the canary's answer was to a mirrored request (the shadow phase)


@dataclass(frozen=True)
class PairPage:
    pairs: list[CompletedPair]
    cursor: int  # the position to pass as `after` next time
    more: bool


@dataclass(frozen=True)
class Counts:
    ingested: int
    sampled: int
    judged: int
    pending: int
    errors: int
    skipped_budget: int
    mirrored: int = 0
    flagged: int = 0  # scored samples whose answer carried injection signals


@dataclass(frozen=True)
class Deleted:
    """What a deletion removed: rows, and the LLM tokens the removed usage records had counted."""

    samples: int = 0
    pairs: int = 0
    releases_usage: int = 0  # token_usage rows (one per release)
    tokens: int = 0

    def __add__(self, other: Deleted) -> Deleted:
        return Deleted(self.samples + other.samples, self.pairs + other.pairs,
                       self.releases_usage + other.releases_usage, self.tokens + other.tokens)


_T = TypeVar("_T")


def _serialized(method: Callable[..., _T]) -> Callable[..., _T]:
    """One call at a time per storage: one connection, and a transaction must not interleave with another."""
    @functools.wraps(method)
    def locked(self: SqlStorage, *args: Any, **kwargs: Any) -> _T:
        with self._lock:
            return method(self, *args, **kwargs)
    return locked


_CHUNK = 500  # rows deleted per transaction, so retention never holds the write lock for long


class SqlStorage:
    """All the service's reads and writes, in SQL both backends understand (`?` placeholders).

    A subclass supplies the connection (`_db`), its transactions (`_in_tx`) and the row locks
    several writers need (`_FOR_UPDATE`, `_SKIP_LOCKED`, `_lock_batch`, `_lock_release`); on SQLite
    they are nothing, as its single write lock already serializes every writing transaction.
    """

    _FOR_UPDATE = ""   # appended to a SELECT whose rows the transaction goes on to change
    _SKIP_LOCKED = ""  # appended to the SELECT of rows to claim
    database_id: str
    path: str

    def __init__(self, pair_window_us: int) -> None:
        if pair_window_us <= 0:
            raise ValueError(f"pair_window_us must be positive, got {pair_window_us}")
        self.pair_window_us = pair_window_us
        self._lock = threading.RLock()

    # -- what a backend supplies -------------------------------------------------------------

    def _execute(self, sql: str, args: Sequence[Any] = ()) -> Any:
        """Run one statement on the connection; the result has fetchone, fetchall and rowcount."""
        raise NotImplementedError

    def _in_tx(self, work: Callable[[Any], _T]) -> _T:
        """`work(self)` inside one writing transaction (a backend may retry it after a deadlock)."""
        raise NotImplementedError

    def _lock_batch(self, samples: Sequence[NewSample]) -> None:
        """Serialize pairing of the batch's inputs with other writers (inside the transaction)."""

    def _lock_release(self, release: str) -> None:
        """Keep ingest of `release` out while its data is deleted (inside the transaction)."""

    def _defer_foreign_keys(self) -> None:
        """Let a transaction delete a pair and its samples in either order."""

    def close(self) -> None:
        raise NotImplementedError

    def ping(self) -> bool:
        raise NotImplementedError

    def database_bytes(self) -> int:
        """The database's size on disk."""
        raise NotImplementedError

    # -- ingest -----------------------------------------------------------------------------

    @_serialized
    def insert_samples(self, samples: Sequence[NewSample], *, ingested_at: int | None = None,
                       exhausted: Container[str] = ()) -> IngestResult:
        """Store a batch in one transaction and pair each sampled answer with the other variant's.

        A sampled sample is paired with the unpaired sampled answer of the other variant to the
        very same request: same release, request id and input, whatever their times (a mirrored
        copy carries the original's request id). Failing that, with the other variant's unpaired
        sampled answer to the same input nearest in time within the pair window: two users asking
        the same, each served by one variant. A mirrored answer with a request id is the exception
        on both sides: the answer to its own request is sure to come, so it pairs by id only.
        Every sample is in at most one pair. A new pair of a release in `exhausted` is
        `skipped_budget`, otherwise pending. An unsampled sample's texts are not stored: it is
        only counted (and never paired, scored or exported).
        """
        ingested_at = now_us() if ingested_at is None else ingested_at
        return self._in_tx(lambda _: self._insert(samples, ingested_at, exhausted))

    def _insert(self, samples: Sequence[NewSample], ingested_at: int, exhausted: Container[str]) -> IngestResult:
        self._lock_batch(samples)
        new_samples: list[int] = []
        new_pairs: list[int] = []
        skipped_pairs: list[int] = []
        sampled = 0
        for s in samples:
            sid = self._execute(
                "INSERT INTO samples (release, variant, revision, request, response, fingerprint,"
                " request_id, trace_id, segment, ts, ingested_at, sampled, status, mirrored, client_ts)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
                (s.release, s.variant, s.revision, s.request if s.sampled else "",
                 s.response if s.sampled else "", s.fingerprint, s.request_id, s.trace_id, s.segment, s.ts,
                 ingested_at, int(s.sampled), s.status, int(s.mirrored), s.client_ts),
            ).fetchone()[0]
            if not s.sampled:
                continue
            sampled += 1
            if s.status == "pending":
                new_samples.append(sid)
            other = self._partner(s, "primary" if s.variant == "canary" else "canary")
            if other is None:
                continue
            other_id, other_ts = other
            primary_id, canary_id = (other_id, sid) if s.variant == "canary" else (sid, other_id)
            canary_ts = s.ts if s.variant == "canary" else other_ts
            status = "skipped_budget" if s.release in exhausted else "pending"
            pid = self._execute(
                "INSERT INTO pairs (release, fingerprint, primary_id, canary_id, canary_ts, status,"
                " created_at, finished_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
                (s.release, s.fingerprint, primary_id, canary_id, canary_ts, status, ingested_at,
                 ingested_at if status != "pending" else None),
            ).fetchone()[0]
            self._execute("UPDATE samples SET pair_id = ? WHERE id IN (?, ?)", (pid, primary_id, canary_id))
            (new_pairs if status == "pending" else skipped_pairs).append(pid)
        # Skipped at once: complete now if both samples are final already. Last, so that the
        # counter's lock is taken after every sample row's (one lock order for every writer).
        for pid in skipped_pairs:
            self._complete_if_final(pid, ingested_at)
        return IngestResult(len(samples), sampled, tuple(new_samples), tuple(new_pairs))

    def _partner(self, s: NewSample, variant: str) -> tuple[int, int] | None:
        """(id, ts) of the sample `s` pairs with, if any (see insert_samples)."""
        if s.request_id is not None:
            row = self._execute(
                "SELECT id, ts FROM samples WHERE release = ? AND request_id = ? AND variant = ?"
                " AND sampled = 1 AND pair_id IS NULL AND request_id IS NOT NULL AND fingerprint = ?"
                f" ORDER BY abs(ts - ?), id LIMIT 1{self._FOR_UPDATE}",
                (s.release, s.request_id, variant, s.fingerprint, s.ts)).fetchone()
            if row is not None:
                return row["id"], row["ts"]
            if s.mirrored:
                return None  # the primary's answer to this very request will come: wait for it
        return self._nearest_unpaired(s.release, s.fingerprint, variant, s.ts)

    def _nearest_unpaired(self, release: str, fp: str, variant: str, ts: int) -> tuple[int, int] | None:
        # A mirrored answer that carries a request id waits for the answer to its own request.
        where = ("FROM samples WHERE release = ? AND fingerprint = ? AND variant = ?"
                 " AND sampled = 1 AND pair_id IS NULL AND ts BETWEEN ? AND ?"
                 " AND NOT (mirrored = 1 AND request_id IS NOT NULL)")
        window = (ts - self.pair_window_us, ts + self.pair_window_us)
        args = (release, fp, variant, *window, ts)
        # Locked (PostgreSQL): retention must not delete the partner before the pair refers to it.
        before = self._execute(f"SELECT id, ts {where} AND ts <= ? ORDER BY ts DESC, id LIMIT 1{self._FOR_UPDATE}",
                               args).fetchone()
        after = self._execute(f"SELECT id, ts {where} AND ts > ? ORDER BY ts, id LIMIT 1{self._FOR_UPDATE}",
                              args).fetchone()
        candidates = [row for row in (before, after) if row is not None]
        if not candidates:
            return None
        best = min(candidates, key=lambda row: (abs(row["ts"] - ts), row["id"]))
        return best["id"], best["ts"]

    # -- work -------------------------------------------------------------------------------

    @_serialized
    def pending_sample_ids(self, after_id: int = 0, limit: int = 1000) -> list[int]:
        rows = self._execute("SELECT id FROM samples WHERE status = 'pending' AND id > ? ORDER BY id LIMIT ?",
                             (after_id, limit)).fetchall()
        return [row[0] for row in rows]

    @_serialized
    def pending_pair_ids(self, after_id: int = 0, limit: int = 1000) -> list[int]:
        rows = self._execute("SELECT id FROM pairs WHERE status = 'pending' AND id > ? ORDER BY id LIMIT ?",
                             (after_id, limit)).fetchall()
        return [row[0] for row in rows]

    @_serialized
    def count_pending(self) -> tuple[int, int]:
        """(pending samples, pending pairs)."""
        samples = self._execute("SELECT count(*) FROM samples WHERE status = 'pending'").fetchone()[0]
        pairs = self._execute("SELECT count(*) FROM pairs WHERE status = 'pending'").fetchone()[0]
        return int(samples), int(pairs)

    @_serialized
    def count_unclaimed(self, now: int | None = None) -> int:
        """Pending samples and pairs no replica holds a live claim on."""
        now = now_us() if now is None else now
        free = "status = 'pending' AND (claimed_until IS NULL OR claimed_until < ?)"
        samples = self._execute(f"SELECT count(*) FROM samples WHERE {free}", (now,)).fetchone()[0]
        pairs = self._execute(f"SELECT count(*) FROM pairs WHERE {free}", (now,)).fetchone()[0]
        return int(samples) + int(pairs)

    @_serialized
    def claim(self, kind: Literal["sample", "pair"], owner: str, lease_us: int, limit: int,
              *, now: int | None = None) -> list[int]:
        """Claim up to `limit` pending samples (or pairs) for `owner` until now + lease, oldest first.

        Work is claimable when nobody holds a live claim on it; a claim that outlived its lease
        (its replica died) is taken over. On PostgreSQL rows another transaction is claiming are
        skipped, so replicas claiming at once get different work.
        """
        now = now_us() if now is None else now
        table = _TABLES[kind]
        return self._in_tx(lambda _: sorted(row[0] for row in self._execute(
            f"UPDATE {table} SET claimed_by = ?, claimed_until = ? WHERE id IN (SELECT id FROM {table}"
            " WHERE status = 'pending' AND (claimed_until IS NULL OR claimed_until < ?)"
            f" ORDER BY id LIMIT ?{self._SKIP_LOCKED}) RETURNING id",
            (owner, now + lease_us, now, limit)).fetchall()))

    @_serialized
    def renew_claim(self, kind: Literal["sample", "pair"], job_id: int, owner: str, lease_us: int,
                    *, now: int | None = None) -> bool:
        """Extend `owner`'s claim for a full lease as its work starts; False when the work is not
        pending any more or another replica took it over after the claim expired."""
        now = now_us() if now is None else now
        table = _TABLES[kind]
        return self._in_tx(lambda _: self._execute(
            f"UPDATE {table} SET claimed_by = ?, claimed_until = ? WHERE id = ? AND status = 'pending'"
            " AND (claimed_by = ? OR claimed_until IS NULL OR claimed_until < ?)",
            (owner, now + lease_us, job_id, owner, now)).rowcount == 1)

    @_serialized
    def release_claims(self, owner: str) -> int:
        """Give back `owner`'s claims on work still pending (a replica stopping), so others take it at once."""
        def release(_: Any) -> int:
            return sum(self._execute(f"UPDATE {table} SET claimed_by = NULL, claimed_until = NULL"
                                     " WHERE claimed_by = ? AND status = 'pending'", (owner,)).rowcount
                       for table in _TABLES.values())
        return self._in_tx(release)

    @_serialized
    def get_sample(self, sample_id: int) -> SampleRow | None:
        row = self._execute(
            "SELECT id, release, variant, revision, request, response, fingerprint, ts, status, score,"
            " reason, error, tokens, pair_id FROM samples WHERE id = ?", (sample_id,)).fetchone()
        return SampleRow(**dict(row)) if row else None

    @_serialized
    def get_pair(self, pair_id: int) -> PairRow | None:
        row = self._execute(
            "SELECT p.id, p.release, p.fingerprint, p.primary_id, p.canary_id, c.request AS request,"
            " s.response AS primary_response, c.response AS canary_response, p.status, p.winner"
            " FROM pairs p JOIN samples s ON s.id = p.primary_id JOIN samples c ON c.id = p.canary_id"
            " WHERE p.id = ?", (pair_id,)).fetchone()
        return PairRow(**dict(row)) if row else None

    @_serialized
    def finish_sample(self, sample_id: int, status: Literal["scored", "error", "skipped_budget"], *,
                      score: float | None = None, reason: str | None = None, error: str | None = None,
                      tokens: int = 0, release: str | None = None, signals: Sequence[str] = (),
                      at: int | None = None) -> bool:
        """Record a pending sample's outcome and add its tokens to its release's usage, atomically.

        False (and nothing written) when the sample is not pending any more. `at`: the service's clock.
        """
        when = now_us() if at is None else at

        def finish(_: Any) -> bool:
            # Lock order of every writer: sample rows, then pair rows, then the counter.
            row = self._execute(f"SELECT release, pair_id FROM samples WHERE id = ? AND status = 'pending'"
                                f"{self._FOR_UPDATE}", (sample_id,)).fetchone()
            if row is None:
                return False
            if row["pair_id"] is not None and self._FOR_UPDATE:
                # Two replicas finishing the pair's last two parts at once: the second waits here and
                # then sees the first's outcome, so exactly one of them completes the pair.
                self._execute(f"SELECT id FROM pairs WHERE id = ?{self._FOR_UPDATE}", (row["pair_id"],))
            self._execute("UPDATE samples SET status = ?, score = ?, reason = ?, error = ?, tokens = ?,"
                          " finished_at = ?, signals = ?, claimed_by = NULL, claimed_until = NULL WHERE id = ?",
                          (status, score, reason, error, tokens, when, ",".join(signals) or None, sample_id))
            self._add_tokens(row["release"], tokens, when)
            if row["pair_id"] is not None:
                self._complete_if_final(row["pair_id"], when)
            return True
        return self._in_tx(finish)

    @_serialized
    def finish_pair(self, pair_id: int, status: Literal["done", "error", "skipped_budget"], *,
                    winner: Literal["primary", "canary", "tie"] | None = None, reason: str | None = None,
                    error: str | None = None, tokens: int = 0, at: int | None = None) -> bool:
        when = now_us() if at is None else at

        def finish(_: Any) -> bool:
            row = self._execute(f"SELECT release FROM pairs WHERE id = ? AND status = 'pending'{self._FOR_UPDATE}",
                                (pair_id,)).fetchone()
            if row is None:
                return False
            self._execute("UPDATE pairs SET status = ?, winner = ?, reason = ?, error = ?, tokens = ?,"
                          " finished_at = ?, claimed_by = NULL, claimed_until = NULL WHERE id = ?",
                          (status, winner, reason, error, tokens, when, pair_id))
            self._add_tokens(row["release"], tokens, when)
            self._complete_if_final(pair_id, when)
            return True
        return self._in_tx(finish)

    def _complete_if_final(self, pair_id: int, at: int) -> None:
        """Give the pair the next completion number if it has just become complete.

        Called, inside the writing transaction, by whatever finished one of its three parts (the
        comparison or a sample), in whichever order they finish: only the last one matches.
        """
        complete = self._execute(
            "SELECT p.id FROM pairs p JOIN samples s ON s.id = p.primary_id JOIN samples c ON c.id = p.canary_id"
            " WHERE p.id = ? AND p.completed_seq IS NULL AND p.status != 'pending'"
            f" AND s.status IN {_FINAL} AND c.status IN {_FINAL}", (pair_id,)).fetchone()
        if complete is None:
            return
        # The counter row stays locked until this transaction commits: see the module docstring.
        seq = self._execute("UPDATE counters SET value = value + 1 WHERE name = 'completed_seq' RETURNING value"
                            ).fetchone()[0]
        self._execute("UPDATE pairs SET completed_seq = ?, completed_at = ? WHERE id = ?", (seq, at, pair_id))

    def _add_tokens(self, release: str, tokens: int, at: int) -> None:
        if tokens:
            self._execute("INSERT INTO token_usage (release, tokens) VALUES (?, ?)"
                          " ON CONFLICT (release) DO UPDATE SET tokens = token_usage.tokens + excluded.tokens",
                          (release, tokens))
            self._execute("INSERT INTO token_spend (hour, tokens) VALUES (?, ?)"
                          " ON CONFLICT (hour) DO UPDATE SET tokens = token_spend.tokens + excluded.tokens",
                          (at // HOUR_US, tokens))

    @_serialized
    def tokens_spent_since(self, since: int) -> int:
        """Every release's tokens spent in the hour holding `since` and after (the budget counts whole hours)."""
        row = self._execute("SELECT coalesce(sum(tokens), 0) FROM token_spend WHERE hour >= ?",
                            (since // HOUR_US,)).fetchone()
        return int(row[0])

    @_serialized
    def tokens_used(self, release: str) -> int:
        row = self._execute("SELECT tokens FROM token_usage WHERE release = ?", (release,)).fetchone()
        return int(row[0]) if row else 0

    def _other_response(self, sample: dict) -> str | None:
        """The other variant's answer to the same input: the pair's, else the nearest sampled one in time
        (an unsampled answer's text is not stored)."""
        other = "primary" if sample["variant"] == "canary" else "canary"
        if sample["pair_id"] is not None:
            row = self._execute(f"SELECT o.response FROM pairs p JOIN samples o ON o.id = p.{other}_id"
                                " WHERE p.id = ?", (sample["pair_id"],)).fetchone()
            if row is not None:
                return row[0]
        where = "FROM samples WHERE release = ? AND fingerprint = ? AND variant = ? AND sampled = 1"
        args = (sample["release"], sample["fingerprint"], other, sample["ts"])
        before = self._execute(f"SELECT response, ts, id {where} AND ts <= ? ORDER BY ts DESC, id LIMIT 1",
                               args).fetchone()
        after = self._execute(f"SELECT response, ts, id {where} AND ts > ? ORDER BY ts, id LIMIT 1",
                              args).fetchone()
        candidates = [row for row in (before, after) if row is not None]
        if not candidates:
            return None
        return min(candidates, key=lambda row: (abs(row["ts"] - sample["ts"]), row["id"]))["response"]

    # -- the pair stream ---------------------------------------------------------------------

    @_serialized
    def pairs_after(self, release: str, after: int = 0, *, limit: int = 500, since: int | None = None,
                    primary_revision: str | None = None, canary_revision: str | None = None) -> PairPage:
        """Complete pairs of `release` with completion number > `after`, in completion order.

        `since` keeps pairs whose two samples both have ts >= since; the revisions filter on each
        variant's sample. All filters are on what never changes once a pair is complete, so the
        cursor may move past pairs they leave out: the next page never has to look at them again.
        """
        # Read the end first and page only up to it: every number up to it is committed already
        # (see the module docstring), so no pair below the returned cursor can still turn up.
        end = self._execute("SELECT max(completed_seq) FROM pairs WHERE release = ? AND completed_seq IS NOT NULL",
                            (release,)).fetchone()[0]
        if end is None or end <= after:
            return PairPage([], after, False)
        sql = ("SELECT p.completed_seq, p.completed_at, p.fingerprint, p.status, p.winner,"
               " s.status AS p_status, s.score AS p_score, c.status AS c_status, c.score AS c_score,"
               " coalesce(c.segment, s.segment) AS segment, c.mirrored AS mirrored"
               " FROM pairs p JOIN samples s ON s.id = p.primary_id JOIN samples c ON c.id = p.canary_id"
               " WHERE p.release = ? AND p.completed_seq > ? AND p.completed_seq <= ?")
        args: list = [release, after, end]
        if since is not None:
            sql += " AND s.ts >= ? AND c.ts >= ?"
            args += [since, since]
        if primary_revision is not None:
            sql += " AND s.revision = ?"
            args.append(primary_revision)
        if canary_revision is not None:
            sql += " AND c.revision = ?"
            args.append(canary_revision)
        rows = self._execute(sql + " ORDER BY p.completed_seq LIMIT ?", [*args, limit + 1]).fetchall()
        more = len(rows) > limit
        rows = rows[:limit]
        pairs = [CompletedPair(seq=r["completed_seq"], completed_at=r["completed_at"], fingerprint=r["fingerprint"],
                               primary_score=r["p_score"] if r["p_status"] == "scored" else None,
                               canary_score=r["c_score"] if r["c_status"] == "scored" else None,
                               winner=r["winner"] if r["status"] == "done" else None, segment=r["segment"],
                               mirrored=bool(r["mirrored"]))
                 for r in rows]
        return PairPage(pairs, pairs[-1].seq if more else end, more)

    # -- verdicts ---------------------------------------------------------------------------

    @staticmethod
    def _window(alias: str, since: int | None, until: int | None, revision: str | None,
                variant: str | None = None, segment: str | None = None) -> tuple[str, list]:
        sql, args = "", []
        if segment is not None:
            sql += f" AND {alias}.segment = ?"
            args.append(segment)
        if variant is not None:
            sql += f" AND {alias}.variant = ?"
            args.append(variant)
        if since is not None:
            sql += f" AND {alias}.ts >= ?"
            args.append(since)
        if until is not None:
            sql += f" AND {alias}.ts < ?"
            args.append(until)
        if revision is not None:
            sql += f" AND {alias}.revision = ?"
            args.append(revision)
        return sql, args

    @_serialized
    def counts(self, release: str, variant: str, since: int, until: int, revision: str | None = None,
               segment: str | None = None) -> Counts:
        where, args = self._window("s", since, until, revision, variant, segment)
        row = self._execute(
            "SELECT count(*), coalesce(sum(s.sampled), 0), count(*) FILTER (WHERE s.status = 'scored'),"
            " count(*) FILTER (WHERE s.status = 'pending'), count(*) FILTER (WHERE s.status = 'error'),"
            " count(*) FILTER (WHERE s.status = 'skipped_budget'), coalesce(sum(s.mirrored), 0),"
            " count(*) FILTER (WHERE s.status = 'scored' AND s.signals IS NOT NULL)"
            f" FROM samples s WHERE s.release = ?{where}", [release, *args]).fetchone()
        return Counts(*(int(v) for v in row))

    @_serialized
    def scores(self, release: str, variant: str, since: int, until: int, revision: str | None = None,
               segment: str | None = None) -> list[float]:
        where, args = self._window("s", since, until, revision, variant, segment)
        rows = self._execute(f"SELECT s.score FROM samples s WHERE s.release = ?{where} AND s.status = 'scored'"
                             " ORDER BY s.id", [release, *args]).fetchall()
        return [row[0] for row in rows]

    @_serialized
    def segments(self, release: str, variant: str, since: int, until: int,
                 revision: str | None = None) -> dict[str, int]:
        """Judged (scored) samples per segment (cohort) in the window; samples without one are left out."""
        where, args = self._window("s", since, until, revision, variant)
        rows = self._execute(f"SELECT s.segment, count(*) FILTER (WHERE s.status = 'scored') FROM samples s"
                             f" WHERE s.release = ?{where} AND s.segment IS NOT NULL GROUP BY s.segment",
                             [release, *args]).fetchall()
        return {row[0]: int(row[1]) for row in rows}

    @_serialized
    def pairwise(self, release: str, variant: str, since: int, until: int,
                 revision: str | None = None, segment: str | None = None) -> dict[str, int]:
        """Done pairs whose canary sample lies in [since, until): {"wins", "losses", "ties"} for `variant`.

        `revision` filters on the revision of `variant`'s sample of each pair, `segment` on its segment.
        """
        sql = ("SELECT p.winner, count(*) FROM pairs p"
               f" JOIN samples s ON s.id = p.{'canary_id' if variant == 'canary' else 'primary_id'}"
               " WHERE p.release = ? AND p.canary_ts >= ? AND p.canary_ts < ? AND p.status = 'done'")
        args: list = [release, since, until]
        if revision is not None:
            sql += " AND s.revision = ?"
            args.append(revision)
        if segment is not None:
            sql += " AND s.segment = ?"
            args.append(segment)
        counts = {row[0]: int(row[1]) for row in self._execute(sql + " GROUP BY p.winner", args).fetchall()}
        other = "primary" if variant == "canary" else "canary"
        return {"wins": counts.get(variant, 0), "losses": counts.get(other, 0), "ties": counts.get("tie", 0)}

    def failed_samples(self, release: str, pass_mark: float, *, variant: str | None = None,
                       revision: str | None = None, since: int | None = None, until: int | None = None,
                       page: int = 500) -> Iterator[dict]:
        """Judged samples scoring below `pass_mark`, oldest first, each with the other variant's answer.

        Pages through the table by (ts, id), so no cursor (nor the lock) stays held between pages.
        """
        where, args = self._window("s", since, until, revision, variant)
        last: tuple[int, int] = (-(2**62), 0)
        while True:
            with self._lock:
                rows = self._execute(
                    "SELECT s.id, s.fingerprint, s.release, s.variant, s.revision, s.request, s.response,"
                    " s.score, s.reason, s.request_id, s.trace_id, s.segment, s.ts, s.pair_id, s.mirrored, s.signals,"
                    f" s.client_ts FROM samples s WHERE s.release = ?{where} AND s.status = 'scored' AND s.score < ?"
                    " AND (s.ts, s.id) > (?, ?) ORDER BY s.ts, s.id LIMIT ?",
                    [release, *args, pass_mark, *last, page]).fetchall()
                cases = []
                for row in rows:
                    case = dict(row)
                    case["other_response"] = self._other_response(case)
                    cases.append(case)
            yield from cases
            if len(rows) < page:
                return
            last = (rows[-1]["ts"], rows[-1]["id"])

    # -- retention and deletion ----------------------------------------------------------------

    @_serialized
    def delete_older_than(self, cutoff: int) -> Deleted:
        """Delete what was ingested before `cutoff` (microseconds), in transactions of a few hundred rows.

        A pair goes with its two samples, once both were ingested before the cutoff and all three
        are final; a sample in a pair that cannot go yet stays with it. Pending work stays whatever
        its age (it is deleted once it is finished and still old). Then the token usage of the
        releases with no sample left, and the judge-wide spend of a day before the cutoff. Completion
        numbers are never handed out again (the counter keeps counting), so the pair stream's cursors
        stay valid.
        """
        total = Deleted()
        while True:
            done = self._in_tx(lambda _: self._delete_old_pairs(cutoff))
            total += done
            if done.pairs < _CHUNK:
                break
        while True:
            done = self._in_tx(lambda _: self._delete_old_unpaired(cutoff))
            total += done
            if done.samples < _CHUNK:
                break
        total += self._in_tx(lambda _: self._delete_orphan_usage())
        # The judge-wide spend a day older than the cutoff: the budget looks back a day, whatever the retention.
        self._execute("DELETE FROM token_spend WHERE hour < ?", (cutoff // HOUR_US - 24,))
        return total

    def _delete_old_pairs(self, cutoff: int) -> Deleted:
        rows = self._execute(
            "SELECT p.id, p.primary_id, p.canary_id FROM pairs p JOIN samples s ON s.id = p.primary_id"
            " JOIN samples c ON c.id = p.canary_id WHERE p.created_at < ? AND p.status != 'pending'"
            " AND s.ingested_at < ? AND c.ingested_at < ? AND s.status != 'pending' AND c.status != 'pending'"
            f" ORDER BY p.created_at LIMIT ?{self._FOR_UPDATE}", (cutoff, cutoff, cutoff, _CHUNK)).fetchall()
        if not rows:
            return Deleted()
        self._defer_foreign_keys()
        pairs = self._execute(f"DELETE FROM pairs WHERE id IN ({_marks(rows)})", [r[0] for r in rows]).rowcount
        sample_ids = [r[i] for r in rows for i in (1, 2)]
        samples = self._execute(f"DELETE FROM samples WHERE id IN ({_marks(sample_ids)})", sample_ids).rowcount
        return Deleted(samples=samples, pairs=pairs)

    def _delete_old_unpaired(self, cutoff: int) -> Deleted:
        old = "ingested_at < ? AND pair_id IS NULL AND status != 'pending'"
        ids = [r[0] for r in self._execute(f"SELECT id FROM samples WHERE {old} ORDER BY ingested_at LIMIT ?",
                                           (cutoff, _CHUNK)).fetchall()]
        if not ids:
            return Deleted()
        # The conditions again: on PostgreSQL an ingest may have paired one of them meanwhile.
        return Deleted(samples=self._execute(f"DELETE FROM samples WHERE id IN ({_marks(ids)}) AND {old}",
                                             [*ids, cutoff]).rowcount)

    def _delete_orphan_usage(self) -> Deleted:
        rows = self._execute("DELETE FROM token_usage WHERE NOT EXISTS"
                             " (SELECT 1 FROM samples WHERE samples.release = token_usage.release)"
                             " RETURNING tokens").fetchall()
        return Deleted(releases_usage=len(rows), tokens=sum(int(r[0]) for r in rows))

    @_serialized
    def delete_release(self, release: str) -> Deleted:
        """Delete every sample, pair and the token usage of `release`, pending work included, at once."""
        def delete(_: Any) -> Deleted:
            self._lock_release(release)
            self._defer_foreign_keys()
            pairs = self._execute("DELETE FROM pairs WHERE release = ?", (release,)).rowcount
            samples = self._execute("DELETE FROM samples WHERE release = ?", (release,)).rowcount
            usage = self._execute("DELETE FROM token_usage WHERE release = ? RETURNING tokens", (release,)).fetchall()
            return Deleted(samples=samples, pairs=pairs, releases_usage=len(usage),
                           tokens=sum(int(r[0]) for r in usage))
        return self._in_tx(delete)


_TABLES = {"sample": "samples", "pair": "pairs"}


def _marks(items: Sequence[Any]) -> str:
    return ", ".join("?" * len(items))


class Storage(SqlStorage):
    """The SQLite backend, for one replica. `path` is a file path or ":memory:"."""

    def __init__(self, path: str, pair_window_us: int = DEFAULT_PAIR_WINDOW_US) -> None:
        super().__init__(pair_window_us)
        self.path = str(path)
        # Used from the service's storage thread and, in tests, from others: `_lock` serializes.
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA busy_timeout = 5000")
        self._db.execute("PRAGMA journal_mode = WAL")
        self._db.execute("PRAGMA synchronous = NORMAL")
        self._db.execute("PRAGMA foreign_keys = ON")
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise RuntimeError(f"{self.path}: database schema version {version} is newer than this "
                               f"judge's ({SCHEMA_VERSION}); run a newer judge or use another --db file")
        self._db.executescript(f"BEGIN IMMEDIATE; {_SCHEMA} COMMIT;")
        with self._tx() as db:
            self._migrate(db)
            for statement in _INDEXES_V2:
                db.execute(statement)
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            # One replica only: a claim in the file is a stopped process's, never a live one's.
            for table in _TABLES.values():
                db.execute(f"UPDATE {table} SET claimed_by = NULL, claimed_until = NULL"
                           " WHERE claimed_by IS NOT NULL AND status = 'pending'")
        self.database_id: str = self._db.execute("SELECT value FROM meta WHERE key = 'database_id'").fetchone()[0]

    @staticmethod
    def _migrate(db: sqlite3.Connection) -> None:
        """Bring an older database up to date; a no-op on a current one. Inside the caller's transaction."""
        # The id tells a cursor of this database from one of a database that replaced it.
        db.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('database_id', ?)", (secrets.token_hex(8),))
        for table in ("samples", "pairs"):
            columns = {row["name"] for row in db.execute(f"PRAGMA table_info({table})")}
            for column, kind in (("claimed_by", "TEXT"), ("claimed_until", "INTEGER")):
                if column not in columns:
                    db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
        sample_columns = {row["name"] for row in db.execute("PRAGMA table_info(samples)")}
        if "mirrored" not in sample_columns:
            db.execute("ALTER TABLE samples ADD COLUMN mirrored INTEGER NOT NULL DEFAULT 0 CHECK (mirrored IN (0, 1))")
        if "signals" not in sample_columns:
            db.execute("ALTER TABLE samples ADD COLUMN signals TEXT")
        if "client_ts" not in sample_columns:
            db.execute("ALTER TABLE samples ADD COLUMN client_ts INTEGER")
        columns = {row["name"] for row in db.execute("PRAGMA table_info(pairs)")}
        if "completed_seq" not in columns:
            db.execute("ALTER TABLE pairs ADD COLUMN completed_seq INTEGER")
            db.execute("ALTER TABLE pairs ADD COLUMN completed_at INTEGER")
            # Pairs completed before the upgrade enter the stream once, in the order they most likely
            # completed: by the last of their three finish times.
            rows = db.execute(
                "SELECT p.id, max(coalesce(p.finished_at, p.created_at), coalesce(s.finished_at, s.ingested_at),"
                " coalesce(c.finished_at, c.ingested_at)) AS done"
                " FROM pairs p JOIN samples s ON s.id = p.primary_id JOIN samples c ON c.id = p.canary_id"
                f" WHERE p.status != 'pending' AND s.status IN {_FINAL} AND c.status IN {_FINAL}"
                " ORDER BY done, p.id").fetchall()
            for seq, row in enumerate(rows, start=1):
                db.execute("UPDATE pairs SET completed_seq = ?, completed_at = ? WHERE id = ?",
                           (seq, row["done"], row["id"]))
        # Before version 5 the next number was max(completed_seq) + 1: the counter goes on from there.
        db.execute("INSERT INTO counters (name, value) SELECT 'completed_seq', coalesce(max(completed_seq), 0)"
                   " FROM pairs WHERE completed_seq IS NOT NULL ON CONFLICT (name) DO NOTHING")

    # -- plumbing ---------------------------------------------------------------------------

    def _execute(self, sql: str, args: Sequence[Any] = ()) -> sqlite3.Cursor:
        return self._db.execute(sql, args)

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def _in_tx(self, work: Callable[[Any], _T]) -> _T:
        with self._tx():
            return work(self)

    def _defer_foreign_keys(self) -> None:
        # samples.pair_id and pairs.*_id refer to each other; checked at commit instead.
        self._db.execute("PRAGMA defer_foreign_keys = ON")

    @_serialized
    def close(self) -> None:
        self._db.close()

    @_serialized
    def ping(self) -> bool:
        """True when the database answers a query."""
        try:
            return self._db.execute("SELECT 1").fetchone()[0] == 1
        except sqlite3.Error:
            return False

    @_serialized
    def database_bytes(self) -> int:
        page_count = self._db.execute("PRAGMA page_count").fetchone()[0]
        page_size = self._db.execute("PRAGMA page_size").fetchone()[0]
        return int(page_count) * int(page_size)

    @property
    def journal_mode(self) -> str:
        with self._lock:
            return self._db.execute("PRAGMA journal_mode").fetchone()[0]


def open_storage(db: str, *, pair_window_us: int = DEFAULT_PAIR_WINDOW_US) -> SqlStorage:
    """The storage `db` names: a postgresql:// or postgres:// URL, else an SQLite file (or ":memory:")."""
    if db.startswith(("postgresql://", "postgres://")):
        from .pgstorage import PgStorage  # imported late: an SQLite judge needs no psycopg
        return PgStorage(db, pair_window_us=pair_window_us)
    return Storage(db, pair_window_us=pair_window_us)
