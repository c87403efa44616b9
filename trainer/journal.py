"""The run journal: one SQLite file (WAL) per run, the single source of truth for what happened.

The training thread only appends to in-memory buffers; a writer thread flushes them (and runs queued
file jobs such as checkpoint writes) at least every `flush_interval` seconds, so a `kill -9` loses at
most that much. Readers, such as the dashboard, open their own connections.
"""
from __future__ import annotations

import collections
import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Callable

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS steps (
    branch INTEGER NOT NULL, step INTEGER NOT NULL, epoch REAL NOT NULL, loss REAL,
    lr REAL, momentum REAL, weight_decay REAL, batch_size INTEGER, grad_norm REAL,
    samples_per_s REAL, wall REAL, PRIMARY KEY (branch, step)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS evals (
    branch INTEGER NOT NULL, step INTEGER NOT NULL, epoch INTEGER NOT NULL, val_loss REAL,
    val_acc REAL, train_loss REAL, train_acc REAL, extra TEXT, wall REAL, PRIMARY KEY (branch, step));
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT, wall REAL, step INTEGER, branch INTEGER, kind TEXT,
    message TEXT, data TEXT);
CREATE TABLE IF NOT EXISTS branches (
    id INTEGER PRIMARY KEY, parent INTEGER, fork_step INTEGER NOT NULL, reason TEXT,
    from_checkpoint INTEGER, wall REAL);
CREATE TABLE IF NOT EXISTS checkpoints (
    id INTEGER PRIMARY KEY, step INTEGER, epoch INTEGER, branch INTEGER, path TEXT, wall REAL,
    train_loss REAL, val_loss REAL, hparams TEXT, label TEXT, kind TEXT, parent INTEGER,
    deleted INTEGER NOT NULL DEFAULT 0);
"""

STEP_COLS = ("branch", "step", "epoch", "loss", "lr", "momentum", "weight_decay", "batch_size",
             "grad_norm", "samples_per_s", "wall")
EVAL_COLS = ("branch", "step", "epoch", "val_loss", "val_acc", "train_loss", "train_acc", "extra", "wall")
CKPT_COLS = ("id", "step", "epoch", "branch", "path", "wall", "train_loss", "val_loss", "hparams",
             "label", "kind", "parent")


def connect(path: Path | str) -> sqlite3.Connection:
    con = sqlite3.connect(str(path), timeout=30, isolation_level=None, check_same_thread=False)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: a commit survives a process kill
    return con


class Journal:
    def __init__(self, path: Path | str, flush_interval: float = 0.5):
        self.path = Path(path)
        self.flush_interval = flush_interval
        self._con = connect(self.path)
        self._con.executescript(SCHEMA)
        self._steps: collections.deque = collections.deque()
        self._evals: collections.deque = collections.deque()
        self._events: collections.deque = collections.deque()
        self._sql: collections.deque = collections.deque()  # (statement, params)
        self._jobs: collections.deque = collections.deque()  # callables run on the writer thread
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._flush_lock = threading.Lock()
        self._local = threading.local()
        self._writer: threading.Thread | None = None
        self.errors: list[str] = []

    # --- write side: cheap appends from any thread ------------------------------------------
    def start_writer(self) -> None:
        if self._writer is None or not self._writer.is_alive():
            self._stop.clear()
            self._writer = threading.Thread(target=self._write_loop, name="panda-journal", daemon=True)
            self._writer.start()

    def log_steps(self, rows: list[tuple]) -> None:
        self._steps.extend(rows)

    def log_eval(self, row: tuple) -> None:
        self._evals.append(row)

    def event(self, step: int, branch: int, kind: str, message: str, data: Any = None) -> None:
        self._events.append((time.time(), step, branch, kind, message,
                             None if data is None else json.dumps(data)))

    def execute(self, sql: str, params: tuple = ()) -> None:
        self._sql.append((sql, params))

    def submit(self, job: Callable[[], None]) -> None:
        """Run `job` on the writer thread before the next flush (checkpoint writes go here)."""
        self._jobs.append(job)
        self._wake.set()

    def set_meta(self, key: str, value: Any) -> None:
        self.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, json.dumps(value)))

    def add_branch(self, bid: int, parent: int | None, fork_step: int, reason: str, ckpt: int | None) -> None:
        self.execute("INSERT INTO branches VALUES (?, ?, ?, ?, ?, ?)",
                     (bid, parent, fork_step, reason, ckpt, time.time()))

    def add_checkpoint(self, row: tuple) -> None:
        """Index a checkpoint whose file is written; call from the writer thread (a submitted job)."""
        self._con.execute(f"INSERT OR REPLACE INTO checkpoints VALUES ({','.join('?' * len(CKPT_COLS))}, 0)", row)

    def mark_deleted(self, cid: int) -> None:
        self._con.execute("UPDATE checkpoints SET deleted = 1 WHERE id = ?", (cid,))

    def flush(self) -> None:
        """Write everything buffered. Safe from any thread; the writer thread calls it on a timer."""
        with self._flush_lock:
            while self._jobs:
                job = self._jobs.popleft()
                try:
                    job()
                except Exception as e:  # a failed job is an event, never a dead writer
                    self.errors.append(f"{type(e).__name__}: {e}")
                    self.event(-1, -1, "error", f"journal job failed: {type(e).__name__}: {e}")
            steps, evals, events, sql = (_drain(self._steps), _drain(self._evals),
                                         _drain(self._events), _drain(self._sql))
            if not (steps or evals or events or sql):
                return
            con = self._con
            con.execute("BEGIN")
            try:
                for stmt, params in sql:
                    con.execute(stmt, params)
                con.executemany(f"INSERT OR REPLACE INTO steps VALUES ({','.join('?' * len(STEP_COLS))})", steps)
                con.executemany(f"INSERT OR REPLACE INTO evals VALUES ({','.join('?' * len(EVAL_COLS))})", evals)
                con.executemany("INSERT INTO events (wall, step, branch, kind, message, data) "
                                "VALUES (?, ?, ?, ?, ?, ?)", events)
                con.execute("COMMIT")
            except Exception:
                con.execute("ROLLBACK")
                raise

    def _write_loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.flush_interval)
            self._wake.clear()
            try:
                self.flush()
            except Exception as e:
                self.errors.append(f"{type(e).__name__}: {e}")
        self.flush()

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._writer is not None:
            self._writer.join()
        self.flush()

    # --- read side: each reading thread gets its own connection ------------------------------
    def _reader(self) -> sqlite3.Connection:
        con = getattr(self._local, "con", None)
        if con is None:
            con = self._local.con = sqlite3.connect(str(self.path), timeout=30, check_same_thread=False)
            con.row_factory = sqlite3.Row
        return con

    def query(self, sql: str, params: tuple = ()) -> list[dict]:
        return [dict(r) for r in self._reader().execute(sql, params)]

    def meta(self) -> dict[str, Any]:
        return {r["key"]: json.loads(r["value"]) for r in self.query("SELECT key, value FROM meta")}

    def branches(self) -> list[dict]:
        return self.query("SELECT * FROM branches ORDER BY id")

    def lineage(self, branch: int) -> list[tuple[int, int, float]]:
        """Segments (branch, after_step, up_to_step] whose rows make up `branch`'s history."""
        tree = {b["id"]: b for b in self.branches()}
        segs, upto, b = [], float("inf"), branch
        while b is not None and b in tree:
            segs.append((b, tree[b]["fork_step"], upto))
            upto, b = tree[b]["fork_step"], tree[b]["parent"]
        if not segs:
            segs.append((branch, -1, upto))
        return segs[::-1]

    def _lineage_rows(self, table: str, branch: int, since_step: int, stride: int = 1) -> list[dict]:
        rows: list[dict] = []
        for b, after, upto in self.lineage(branch):
            hi = 2 ** 62 if upto == float("inf") else upto
            rows += self.query(f"SELECT * FROM {table} WHERE branch = ? AND step > ? AND step <= ? "
                               "AND step % ? = 0 ORDER BY step", (b, max(after, since_step), hi, stride))
        return rows

    def metrics(self, branch: int, since_step: int = 0, max_points: int | None = None) -> list[dict]:
        """Per-step metrics of `branch`'s lineage (its ancestors up to each fork), after `since_step`.

        With `max_points`, every k-th step (and the last) is returned, chosen in SQL: the seam where a
        min/max downsampler goes once runs reach 10^6 steps.
        """
        stride = 1
        if max_points:
            last = self.query("SELECT MAX(step) AS s FROM steps WHERE branch = ?", (branch,))[0]["s"] or 0
            stride = max(1, -(-(last - since_step) // max_points))
        rows = self._lineage_rows("steps", branch, since_step, stride)
        if stride > 1:
            tail = self._lineage_rows("steps", branch, max(since_step, rows[-1]["step"] if rows else 0))
            rows += tail[-1:]
        return rows

    def export_rows(self, branch: int) -> list[dict]:
        """The lineage's per-step metrics with each step's evaluation beside it (CSV/parquet export)."""
        evals = {e["step"]: e for e in self.evals(branch)}
        rows = self.metrics(branch)
        for r in rows:
            e = evals.get(r["step"], {})
            r.update({k: e.get(k) for k in ("val_loss", "val_acc", "train_acc")})
        return rows

    def evals(self, branch: int, since_step: int = 0) -> list[dict]:
        return self._lineage_rows("evals", branch, since_step)

    def branch_metrics(self, branch: int, max_points: int | None = None) -> list[dict]:
        """A branch's own rows (after its fork), e.g. an abandoned path drawn faded."""
        stride = 1
        if max_points:
            n = self.query("SELECT COUNT(*) AS n FROM steps WHERE branch = ?", (branch,))[0]["n"]
            stride = max(1, -(-n // max_points))
        return self.query("SELECT * FROM steps WHERE branch = ? AND step % ? = 0 ORDER BY step", (branch, stride))

    def other_branches(self, branch: int, max_points: int | None = None) -> list[dict]:
        """The abandoned paths, seen from `branch`: every branch off its lineage, and each ancestor's
        steps after the fork that left it. Each comes with its own steps, for drawing faded."""
        lineage = self.lineage(branch)
        mine = {b for b, _, _ in lineage}
        out = [{**b, "steps": self.branch_metrics(b["id"], max_points)} for b in self.branches() if b["id"] not in mine]
        for b, _, upto in lineage:
            if upto != float("inf"):
                rows = [r for r in self.branch_metrics(b, max_points) if r["step"] > upto]
                if rows:
                    out.append({"id": b, "parent": None, "fork_step": upto, "reason": "abandoned", "steps": rows})
        return out

    def events(self, since_id: int = 0, limit: int = 1000, kinds: tuple[str, ...] | None = None,
               newest_first: bool = False) -> list[dict]:
        where = "id > ?" + (f" AND kind IN ({','.join('?' * len(kinds))})" if kinds else "")
        rows = self.query(f"SELECT * FROM events WHERE {where} ORDER BY id {'DESC' if newest_first else ''} LIMIT ?",
                          (since_id, *(kinds or ()), limit))
        for r in rows:
            r["data"] = json.loads(r["data"]) if r["data"] else None
        return rows

    def checkpoints(self, include_deleted: bool = False) -> list[dict]:
        rows = self.query("SELECT * FROM checkpoints" + ("" if include_deleted else " WHERE deleted = 0")
                          + " ORDER BY id")
        for r in rows:
            r["hparams"] = json.loads(r["hparams"]) if r["hparams"] else {}
        return rows

    def last_step(self, branch: int) -> int:
        r = self.query("SELECT MAX(step) AS s FROM steps WHERE branch = ?", (branch,))
        return r[0]["s"] or 0


def _drain(d: collections.deque) -> list:
    out = []
    while d:
        out.append(d.popleft())
    return out
