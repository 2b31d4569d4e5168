"""The judge service's SQLite database: samples, pairwise results and token usage per release.

One file (WAL mode) or ":memory:" for tests; standard library only. Used from one thread (the
service's event loop): every call is short, and ingest writes a whole batch in one transaction.

The database is the source of truth for pending work: a sampled sample stays `pending` until a
worker records its outcome, so after a restart the service picks every pending sample and pair
up again. Timestamps are integer microseconds since the Unix epoch (UTC), so window bounds
compare exactly.

Sample statuses: `unsampled` (stored and counted, never scored), `pending`, `scored`, `error`,
`skipped_budget`. Pair statuses: `pending`, `done`, `error`, `skipped_budget`; a done pair's
`winner` is `canary`, `primary` or `tie`.

A pair is *complete* once its comparison and both its samples are final (not pending). The
transaction that makes it so gives it the next `completed_seq`: one sequence over the whole
database, handed out under SQLite's single write lock, so a reader that sees number n also sees
every number below it. `pairs_after` pages through that sequence (GET /v1/pairs).
"""

from __future__ import annotations

import secrets
import sqlite3
import time
from collections.abc import Container, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

__all__ = ["NewSample", "IngestResult", "SampleRow", "PairRow", "Counts", "CompletedPair", "PairPage", "Storage",
           "now_us", "SCHEMA_VERSION"]

# 2: pairs.completed_seq/completed_at and the meta table. A judge of version 1 must not open such a
# database: it would complete pairs without a sequence number, and GET /v1/pairs would never show them.
# 3: samples.mirrored (answers to mirrored copies of requests, the shadow phase).
# 4: samples.signals (injection signals of a scored answer, comma-separated: evidence only).
SCHEMA_VERSION = 4
DEFAULT_PAIR_WINDOW_US = 120 * 1_000_000  # answers to one input further apart than this are not paired by it
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
    ts           INTEGER NOT NULL,  -- the sample's timestamp, microseconds since the epoch
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
    signals      TEXT
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
    completed_at INTEGER
);
CREATE INDEX IF NOT EXISTS pairs_verdict ON pairs (release, canary_ts);
CREATE INDEX IF NOT EXISTS pairs_pending ON pairs (id) WHERE status = 'pending';

CREATE TABLE IF NOT EXISTS token_usage (
    release      TEXT    PRIMARY KEY,
    tokens       INTEGER NOT NULL DEFAULT 0
);

CREATE TABLE IF NOT EXISTS meta (
    key          TEXT    PRIMARY KEY,
    value        TEXT    NOT NULL
);
"""
# Created after the migration, which adds the columns they index to a version 1 database.
_INDEXES_V2 = (
    "CREATE UNIQUE INDEX IF NOT EXISTS pairs_completed ON pairs (completed_seq) WHERE completed_seq IS NOT NULL",
    "CREATE INDEX IF NOT EXISTS pairs_stream ON pairs (release, completed_seq) WHERE completed_seq IS NOT NULL",
    # Pairing by request id: the other variant's unpaired answer to the very same request.
    "CREATE INDEX IF NOT EXISTS samples_unpaired_request ON samples (release, request_id, variant)"
    " WHERE sampled = 1 AND pair_id IS NULL AND request_id IS NOT NULL",
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
    ts: int  # microseconds since the epoch
    status: Literal["unsampled", "pending", "skipped_budget"]
    revision: str | None = None
    request_id: str | None = None
    trace_id: str | None = None
    segment: str | None = None
    mirrored: bool = False  # the answer to a mirrored copy of a request, which no user saw

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


class Storage:
    """All the service's reads and writes. `path` is a file path or ":memory:"."""

    def __init__(self, path: str, pair_window_us: int = DEFAULT_PAIR_WINDOW_US) -> None:
        if pair_window_us <= 0:
            raise ValueError(f"pair_window_us must be positive, got {pair_window_us}")
        self.path = str(path)
        self.pair_window_us = pair_window_us
        self._db = sqlite3.connect(self.path, isolation_level=None)  # transactions are explicit
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
        self.database_id: str = self._db.execute("SELECT value FROM meta WHERE key = 'database_id'").fetchone()[0]

    @staticmethod
    def _migrate(db: sqlite3.Connection) -> None:
        """Bring an older database up to date; a no-op on a current one. Inside the caller's transaction."""
        # The id tells a cursor of this database from one of a database that replaced it.
        db.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('database_id', ?)", (secrets.token_hex(8),))
        sample_columns = {row["name"] for row in db.execute("PRAGMA table_info(samples)")}
        if "mirrored" not in sample_columns:
            db.execute("ALTER TABLE samples ADD COLUMN mirrored INTEGER NOT NULL DEFAULT 0 CHECK (mirrored IN (0, 1))")
        if "signals" not in sample_columns:
            db.execute("ALTER TABLE samples ADD COLUMN signals TEXT")
        columns = {row["name"] for row in db.execute("PRAGMA table_info(pairs)")}
        if "completed_seq" in columns:
            return
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
            db.execute("UPDATE pairs SET completed_seq = ?, completed_at = ? WHERE id = ?", (seq, row["done"], row["id"]))

    # -- plumbing ---------------------------------------------------------------------------

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def close(self) -> None:
        self._db.close()

    def ping(self) -> bool:
        """True when the database answers a query."""
        try:
            return self._db.execute("SELECT 1").fetchone()[0] == 1
        except sqlite3.Error:
            return False

    @property
    def journal_mode(self) -> str:
        return self._db.execute("PRAGMA journal_mode").fetchone()[0]

    # -- ingest -----------------------------------------------------------------------------

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
        `skipped_budget`, otherwise pending.
        """
        ingested_at = now_us() if ingested_at is None else ingested_at
        new_samples: list[int] = []
        new_pairs: list[int] = []
        sampled = 0
        with self._tx() as db:
            for s in samples:
                sid = db.execute(
                    "INSERT INTO samples (release, variant, revision, request, response, fingerprint,"
                    " request_id, trace_id, segment, ts, ingested_at, sampled, status, mirrored)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (s.release, s.variant, s.revision, s.request, s.response, s.fingerprint,
                     s.request_id, s.trace_id, s.segment, s.ts, ingested_at, int(s.sampled), s.status,
                     int(s.mirrored)),
                ).lastrowid
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
                pid = db.execute(
                    "INSERT INTO pairs (release, fingerprint, primary_id, canary_id, canary_ts, status,"
                    " created_at, finished_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (s.release, s.fingerprint, primary_id, canary_id, canary_ts, status, ingested_at,
                     ingested_at if status != "pending" else None),
                ).lastrowid
                db.execute("UPDATE samples SET pair_id = ? WHERE id IN (?, ?)", (pid, primary_id, canary_id))
                if status == "pending":
                    new_pairs.append(pid)
                else:  # skipped at once: complete now if both samples are final already
                    self._complete_if_final(db, pid, ingested_at)
        return IngestResult(len(samples), sampled, tuple(new_samples), tuple(new_pairs))

    def _partner(self, s: NewSample, variant: str) -> tuple[int, int] | None:
        """(id, ts) of the sample `s` pairs with, if any (see insert_samples)."""
        if s.request_id is not None:
            row = self._db.execute(
                "SELECT id, ts FROM samples WHERE release = ? AND request_id = ? AND variant = ?"
                " AND sampled = 1 AND pair_id IS NULL AND request_id IS NOT NULL AND fingerprint = ?"
                " ORDER BY abs(ts - ?), id LIMIT 1", (s.release, s.request_id, variant, s.fingerprint, s.ts)).fetchone()
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
        before = self._db.execute(f"SELECT id, ts {where} AND ts <= ? ORDER BY ts DESC, id LIMIT 1", args).fetchone()
        after = self._db.execute(f"SELECT id, ts {where} AND ts > ? ORDER BY ts, id LIMIT 1", args).fetchone()
        candidates = [row for row in (before, after) if row is not None]
        if not candidates:
            return None
        best = min(candidates, key=lambda row: (abs(row["ts"] - ts), row["id"]))
        return best["id"], best["ts"]

    # -- work -------------------------------------------------------------------------------

    def pending_sample_ids(self, after_id: int = 0, limit: int = 1000) -> list[int]:
        rows = self._db.execute("SELECT id FROM samples WHERE status = 'pending' AND id > ? ORDER BY id LIMIT ?",
                                (after_id, limit))
        return [row[0] for row in rows]

    def pending_pair_ids(self, after_id: int = 0, limit: int = 1000) -> list[int]:
        rows = self._db.execute("SELECT id FROM pairs WHERE status = 'pending' AND id > ? ORDER BY id LIMIT ?",
                                (after_id, limit))
        return [row[0] for row in rows]

    def count_pending(self) -> tuple[int, int]:
        """(pending samples, pending pairs)."""
        samples = self._db.execute("SELECT count(*) FROM samples WHERE status = 'pending'").fetchone()[0]
        pairs = self._db.execute("SELECT count(*) FROM pairs WHERE status = 'pending'").fetchone()[0]
        return samples, pairs

    def get_sample(self, sample_id: int) -> SampleRow | None:
        row = self._db.execute(
            "SELECT id, release, variant, revision, request, response, fingerprint, ts, status, score,"
            " reason, error, tokens, pair_id FROM samples WHERE id = ?", (sample_id,)).fetchone()
        return SampleRow(**dict(row)) if row else None

    def get_pair(self, pair_id: int) -> PairRow | None:
        row = self._db.execute(
            "SELECT p.id, p.release, p.fingerprint, p.primary_id, p.canary_id, c.request AS request,"
            " s.response AS primary_response, c.response AS canary_response, p.status, p.winner"
            " FROM pairs p JOIN samples s ON s.id = p.primary_id JOIN samples c ON c.id = p.canary_id"
            " WHERE p.id = ?", (pair_id,)).fetchone()
        return PairRow(**dict(row)) if row else None

    def finish_sample(self, sample_id: int, status: Literal["scored", "error", "skipped_budget"], *,
                      score: float | None = None, reason: str | None = None, error: str | None = None,
                      tokens: int = 0, release: str | None = None, signals: Sequence[str] = ()) -> bool:
        """Record a pending sample's outcome and add its tokens to its release's usage, atomically.

        False (and nothing written) when the sample is not pending any more.
        """
        with self._tx() as db:
            row = db.execute("SELECT release, pair_id FROM samples WHERE id = ? AND status = 'pending'",
                             (sample_id,)).fetchone()
            if row is None:
                return False
            at = now_us()
            db.execute("UPDATE samples SET status = ?, score = ?, reason = ?, error = ?, tokens = ?,"
                       " finished_at = ?, signals = ? WHERE id = ?",
                       (status, score, reason, error, tokens, at, ",".join(signals) or None, sample_id))
            self._add_tokens(db, row["release"], tokens)
            if row["pair_id"] is not None:
                self._complete_if_final(db, row["pair_id"], at)
        return True

    def finish_pair(self, pair_id: int, status: Literal["done", "error", "skipped_budget"], *,
                    winner: Literal["primary", "canary", "tie"] | None = None, reason: str | None = None,
                    error: str | None = None, tokens: int = 0) -> bool:
        with self._tx() as db:
            row = db.execute("SELECT release FROM pairs WHERE id = ? AND status = 'pending'", (pair_id,)).fetchone()
            if row is None:
                return False
            at = now_us()
            db.execute("UPDATE pairs SET status = ?, winner = ?, reason = ?, error = ?, tokens = ?,"
                       " finished_at = ? WHERE id = ?",
                       (status, winner, reason, error, tokens, at, pair_id))
            self._add_tokens(db, row["release"], tokens)
            self._complete_if_final(db, pair_id, at)
        return True

    @staticmethod
    def _complete_if_final(db: sqlite3.Connection, pair_id: int, at: int) -> None:
        """Give the pair the next completion number if it has just become complete.

        Called, inside the writing transaction, by whatever finished one of its three parts (the
        comparison or a sample), in whichever order they finish: only the last one matches.
        """
        # "IS NOT NULL" lets the max come from the partial index pairs_completed instead of a scan.
        db.execute(
            "UPDATE pairs SET completed_seq ="
            " (SELECT coalesce(max(completed_seq), 0) + 1 FROM pairs WHERE completed_seq IS NOT NULL),"
            " completed_at = ? WHERE id = ? AND completed_seq IS NULL AND status != 'pending'"
            f" AND (SELECT status FROM samples WHERE id = pairs.primary_id) IN {_FINAL}"
            f" AND (SELECT status FROM samples WHERE id = pairs.canary_id) IN {_FINAL}",
            (at, pair_id))

    @staticmethod
    def _add_tokens(db: sqlite3.Connection, release: str, tokens: int) -> None:
        if tokens:
            db.execute("INSERT INTO token_usage (release, tokens) VALUES (?, ?)"
                       " ON CONFLICT (release) DO UPDATE SET tokens = tokens + excluded.tokens",
                       (release, tokens))

    def tokens_used(self, release: str) -> int:
        row = self._db.execute("SELECT tokens FROM token_usage WHERE release = ?", (release,)).fetchone()
        return int(row[0]) if row else 0

    def _other_response(self, sample: dict) -> str | None:
        """The other variant's answer to the same input: the pair's, else the nearest in time."""
        other = "primary" if sample["variant"] == "canary" else "canary"
        if sample["pair_id"] is not None:
            row = self._db.execute(f"SELECT o.response FROM pairs p JOIN samples o ON o.id = p.{other}_id"
                                   " WHERE p.id = ?", (sample["pair_id"],)).fetchone()
            if row is not None:
                return row[0]
        where = "FROM samples WHERE release = ? AND fingerprint = ? AND variant = ?"
        args = (sample["release"], sample["fingerprint"], other, sample["ts"])
        before = self._db.execute(f"SELECT response, ts, id {where} AND ts <= ? ORDER BY ts DESC, id LIMIT 1",
                                  args).fetchone()
        after = self._db.execute(f"SELECT response, ts, id {where} AND ts > ? ORDER BY ts, id LIMIT 1",
                                 args).fetchone()
        candidates = [row for row in (before, after) if row is not None]
        if not candidates:
            return None
        return min(candidates, key=lambda row: (abs(row["ts"] - sample["ts"]), row["id"]))["response"]

    # -- the pair stream ---------------------------------------------------------------------

    def pairs_after(self, release: str, after: int = 0, *, limit: int = 500, since: int | None = None,
                    primary_revision: str | None = None, canary_revision: str | None = None) -> PairPage:
        """Complete pairs of `release` with completion number > `after`, in completion order.

        `since` keeps pairs whose two samples both have ts >= since; the revisions filter on each
        variant's sample. All filters are on what never changes once a pair is complete, so the
        cursor may move past pairs they leave out: the next page never has to look at them again.
        """
        # Read the end first and page only up to it: every number up to it is committed already
        # (see the module docstring), so no pair below the returned cursor can still turn up.
        end = self._db.execute("SELECT max(completed_seq) FROM pairs WHERE release = ? AND completed_seq IS NOT NULL",
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
        rows = self._db.execute(sql + " ORDER BY p.completed_seq LIMIT ?", [*args, limit + 1]).fetchall()
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

    def counts(self, release: str, variant: str, since: int, until: int, revision: str | None = None,
               segment: str | None = None) -> Counts:
        where, args = self._window("s", since, until, revision, variant, segment)
        row = self._db.execute(
            "SELECT count(*), coalesce(sum(s.sampled), 0), coalesce(sum(s.status = 'scored'), 0),"
            " coalesce(sum(s.status = 'pending'), 0), coalesce(sum(s.status = 'error'), 0),"
            " coalesce(sum(s.status = 'skipped_budget'), 0), coalesce(sum(s.mirrored), 0),"
            " coalesce(sum(s.status = 'scored' AND s.signals IS NOT NULL), 0)"
            f" FROM samples s WHERE s.release = ?{where}", [release, *args]).fetchone()
        return Counts(*(int(v) for v in row))

    def scores(self, release: str, variant: str, since: int, until: int, revision: str | None = None,
               segment: str | None = None) -> list[float]:
        where, args = self._window("s", since, until, revision, variant, segment)
        rows = self._db.execute(f"SELECT s.score FROM samples s WHERE s.release = ?{where} AND s.status = 'scored'"
                                " ORDER BY s.id", [release, *args])
        return [row[0] for row in rows]

    def segments(self, release: str, variant: str, since: int, until: int,
                 revision: str | None = None) -> dict[str, int]:
        """Judged (scored) samples per segment (cohort) in the window; samples without one are left out."""
        where, args = self._window("s", since, until, revision, variant)
        rows = self._db.execute(f"SELECT s.segment, coalesce(sum(s.status = 'scored'), 0) FROM samples s"
                                f" WHERE s.release = ?{where} AND s.segment IS NOT NULL GROUP BY s.segment",
                                [release, *args])
        return {row[0]: int(row[1]) for row in rows}

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
        counts = dict(self._db.execute(sql + " GROUP BY p.winner", args).fetchall())
        other = "primary" if variant == "canary" else "canary"
        return {"wins": counts.get(variant, 0), "losses": counts.get(other, 0), "ties": counts.get("tie", 0)}

    def failed_samples(self, release: str, pass_mark: float, *, variant: str | None = None,
                       revision: str | None = None, since: int | None = None, until: int | None = None,
                       page: int = 500) -> Iterator[dict]:
        """Judged samples scoring below `pass_mark`, oldest first, each with the other variant's answer.

        Pages through the table by (ts, id), so no cursor stays open between pages.
        """
        where, args = self._window("s", since, until, revision, variant)
        last: tuple[int, int] = (-(2**62), 0)
        while True:
            rows = self._db.execute(
                "SELECT s.id, s.fingerprint, s.release, s.variant, s.revision, s.request, s.response,"
                " s.score, s.reason, s.request_id, s.trace_id, s.segment, s.ts, s.pair_id, s.mirrored, s.signals"
                f" FROM samples s WHERE s.release = ?{where} AND s.status = 'scored' AND s.score < ?"
                " AND (s.ts, s.id) > (?, ?) ORDER BY s.ts, s.id LIMIT ?",
                [release, *args, pass_mark, *last, page]).fetchall()
            for row in rows:
                case = dict(row)
                case["other_response"] = self._other_response(case)
                yield case
            if len(rows) < page:
                return
            last = (rows[-1]["ts"], rows[-1]["id"])
