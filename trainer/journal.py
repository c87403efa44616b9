"""The run journal: one SQLite file (WAL) per run, the single source of truth for what happened.

`Reader` opens it read-only (the dashboard, `checkpoints`, `export`, an archived run on a read-only
disk). `Journal` is the one writer, owned by the process that holds the run's lock: the training
thread only appends typed rows to memory; a writer thread commits them at least every
`flush_interval` seconds, so a `kill -9` loses at most that much.

Commit order makes every instant of a kill consistent: queued rows commit first, then the file jobs
queued before them run (a checkpoint: its file, then its row). So a checkpoint row never commits
before the steps it covers. A failed write keeps its rows for a retry and sets `error`, which the
trainer turns into a paused run with that message: nothing is dropped silently.
"""
from __future__ import annotations

import collections
import functools
import json
import os
import sqlite3
import threading
import time
import urllib.parse
from pathlib import Path
from typing import Any, Callable, NamedTuple

import numpy as np

from . import summary

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS steps (
    branch INTEGER NOT NULL, step INTEGER NOT NULL, epoch REAL NOT NULL, loss REAL,
    lr REAL, momentum REAL, weight_decay REAL, batch_size INTEGER, grad_norm REAL,
    samples_per_s REAL, wall REAL, update_ratio REAL, loss_scale REAL, PRIMARY KEY (branch, step)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS evals (
    branch INTEGER NOT NULL, step INTEGER NOT NULL, epoch INTEGER NOT NULL, val_loss REAL,
    val_acc REAL, train_loss REAL, train_acc REAL, extra TEXT, wall REAL, PRIMARY KEY (branch, step));
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT, wall REAL, step INTEGER, branch INTEGER, kind TEXT,
    message TEXT, data TEXT);
CREATE TABLE IF NOT EXISTS branches (
    id INTEGER PRIMARY KEY, parent INTEGER, fork_step INTEGER NOT NULL, reason TEXT,
    from_checkpoint INTEGER, wall REAL);
CREATE TABLE IF NOT EXISTS layers (
    branch INTEGER NOT NULL, step INTEGER NOT NULL, idx INTEGER NOT NULL, layer TEXT NOT NULL, grad_norm REAL,
    update_ratio REAL, weight_norm REAL, act_mean REAL, act_std REAL, act_dead REAL, act_sat REAL, memory REAL,
    PRIMARY KEY (branch, step, layer)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS checkpoints (
    id INTEGER PRIMARY KEY, step INTEGER, epoch INTEGER, branch INTEGER, path TEXT, wall REAL,
    train_loss REAL, val_loss REAL, hparams TEXT, label TEXT, kind TEXT, parent INTEGER,
    deleted INTEGER NOT NULL DEFAULT 0);
""" + summary.SCHEMA


STEP_COLUMNS_ADDED = ("update_ratio", "loss_scale")  # steps columns newer than the first journals


class StepRow(NamedTuple):
    branch: int
    step: int
    epoch: float  # fractional: epoch + offset / n_train
    loss: Any  # float, or a device tensor until the read-back
    lr: float
    momentum: float
    weight_decay: float
    batch_size: int
    grad_norm: Any
    samples_per_s: float
    wall: float
    update_ratio: Any = None  # ||dtheta|| / ||theta|| of this step's update (trainer/instruments.py)
    loss_scale: Any = None  # fp16: the GradScaler's scale this step used


class EvalRow(NamedTuple):
    branch: int
    step: int
    epoch: int
    val_loss: float | None
    val_acc: float | None
    train_loss: float | None
    train_acc: float | None
    extra: str | None  # JSON of the task's other metrics, e.g. {"val_mae": 0.1}
    wall: float


class CheckpointRow(NamedTuple):
    id: int
    step: int
    epoch: int
    branch: int
    path: str  # relative to the run directory
    wall: float
    train_loss: float | None
    val_loss: float | None
    hparams: str  # JSON
    label: str | None
    kind: str  # auto | manual | final
    parent: int | None


class JournalError(RuntimeError):
    pass


ROWS_PER_INSERT = 64  # 832 parameters at most: under SQLite's oldest default limit of 999


@functools.lru_cache(maxsize=64)
def _insert_many(table: str, n: int, k: int) -> str:
    return f"INSERT OR REPLACE INTO {table} VALUES " + ",".join([f"({','.join('?' * n)})"] * k)


def _inserts(table: str, n: int, rows) -> list[tuple[str, tuple]]:
    """Statements inserting `rows` (tuples of n values) in order, up to ROWS_PER_INSERT a statement:
    the writer's time goes to SQLite, not to one Python call per row."""
    rows = list(rows)
    if any(len(r) != n for r in rows):  # one flat parameter list: a short row would shift the others
        raise ValueError(f"a {table} row needs {n} values: {next(r for r in rows if len(r) != n)!r}")
    return [(_insert_many(table, n, len(part)), tuple(v for r in part for v in r))
            for part in (rows[i:i + ROWS_PER_INSERT] for i in range(0, len(rows), ROWS_PER_INSERT))]


class Reader:
    """Read-only access to a run's journal; each reading thread gets its own connection."""

    def __init__(self, path: Path | str):
        path = Path(path)
        self.path = path if path.suffix == ".sqlite" else path / "journal.sqlite"
        self.run_dir = self.path.parent
        self._local = threading.local()
        if not self.path.exists():
            raise JournalError(f"run directory {self.run_dir} holds no run (no journal.sqlite)")
        if not self.path.is_file():
            raise JournalError(f"{self.path} is not a file, so not a Panda journal")
        try:
            self.meta()
        except sqlite3.DatabaseError as e:
            raise JournalError(f"{self.path}: not a Panda journal ({e})") from None

    def _connect(self) -> sqlite3.Connection:
        # mode=ro never writes; on a read-only disk SQLite cannot even make the WAL index, so an
        # archived run is opened as immutable (nobody can be writing it there).
        q = "mode=ro" + ("" if os.access(self.run_dir, os.W_OK) else "&immutable=1")
        con = sqlite3.connect(f"file:{urllib.parse.quote(str(self.path.resolve()))}?{q}", uri=True, timeout=30,
                              check_same_thread=False)
        con.row_factory = sqlite3.Row
        return con

    def _con(self) -> sqlite3.Connection:
        con = getattr(self._local, "con", None)
        if con is None:
            con = self._local.con = self._connect()
        return con

    def query(self, sql: str, params: tuple = ()) -> list[dict]:
        return [dict(r) for r in self._con().execute(sql, params)]

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

    @staticmethod
    def on_lineage(branch: int, step: int, lineage: list[tuple[int, int, float]]) -> bool:
        """Whether (branch, step) lies on `lineage`, as lineage() gives it."""
        return any(b == branch and after <= step <= upto for b, after, upto in lineage)

    def _lineage_rows(self, table: str, branch: int, since_step: int, stride: int = 1) -> list[dict]:
        rows: list[dict] = []
        for b, after, upto in self.lineage(branch):
            hi = 2 ** 62 if upto == float("inf") else upto
            rows += self.query(f"SELECT * FROM {table} WHERE branch = ? AND step > ? AND step <= ? "
                               "AND step % ? = 0 ORDER BY step", (b, max(after, since_step), hi, stride))
        return rows

    def metrics(self, branch: int, since_step: int = 0, max_points: int | None = None) -> list[dict]:
        """Per-step metrics of `branch`'s lineage (its ancestors up to each fork), after `since_step`.

        With `max_points`, every k-th step (and the last) is returned, chosen in SQL.
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

    def curve(self, branch: int, lo: int | None = None, hi: int | None = None, budget: int = 2000,
              lineage: list[tuple[int, int, float]] | None = None) -> tuple[np.ndarray, int]:
        """The lineage's steps lo..hi as units (trainer/summary.py), about `budget` of them at most:
        single rows when the range fits, else the journal's buckets. Returns (units, bucket width);
        width 1 means every row. Reads O(budget) rows however long the run."""
        lineage = lineage or self.lineage(branch)
        segs = []
        for b, after, upto in lineage:
            a = int(after) + 1 if lo is None else max(int(after) + 1, lo)
            z = upto if hi is None else min(upto, hi)
            if z == float("inf"):
                z = self.last_step(b)
            if int(z) >= a:
                segs.append((b, a, int(z)))
        if not segs:
            return np.empty((0, len(summary.UNIT))), 1
        try:
            level = summary.level_for(segs[-1][2] - segs[0][1] + 1, budget)
            units = np.concatenate([summary.cover(self._con(), b, a, z, level) for b, a, z in segs])
        except sqlite3.OperationalError:  # an old journal opened read-only, before the summary: single rows
            level = -1
            units = np.concatenate([summary.raw_units(self._con(), b, a, z) for b, a, z in segs])
        return units, 1 if level < 0 else 1 << summary.BITS[level]

    def evals(self, branch: int, since_step: int = 0) -> list[dict]:
        """Evaluations on the lineage; a task's own metrics (e.g. val_mae) are columns like the rest."""
        rows = self._lineage_rows("evals", branch, since_step)
        for r in rows:
            r.update(json.loads(r.pop("extra") or "{}"))
        return rows

    def ratio_column(self, name: str = "update_ratio") -> str:
        """SQL for a steps column added later (STEP_COLUMNS_ADDED): NULL in an older journal opened
        read-only (its writer adds the column when it next opens it)."""
        cols = {r[1] for r in self._con().execute("PRAGMA table_info(steps)")}
        return name if name in cols else "NULL"

    def series(self, branch: int, budget: int = 2000) -> dict[str, np.ndarray]:
        """The lineage's per-step instruments in at most about `budget` buckets: the step where each
        starts, the max grad norm and update ratio (a spike is never averaged away), mean samples/s."""
        segs = [(b, after, self.last_step(b) if upto == float("inf") else upto) for b, after, upto in self.lineage(branch)]
        span = sum(max(0, int(z) - int(a)) for _, a, z in segs)
        width = max(1, -(-span // budget))
        rows: list[tuple] = []
        ratio, scale = self.ratio_column(), self.ratio_column("loss_scale")
        for b, after, upto in segs:
            rows += self._con().execute(
                f"SELECT MIN(step), MAX(grad_norm), MAX({ratio}), AVG(samples_per_s), MAX(loss), MIN({scale}) "
                "FROM steps WHERE branch = ? AND step > ? AND step <= ? GROUP BY step / ? ORDER BY 1",
                (b, after, upto, width)).fetchall()
        a = summary._array(rows, 6)
        return {"step": a[:, 0], "grad_norm": a[:, 1], "update_ratio": a[:, 2], "samples_per_s": a[:, 3],
                "loss": a[:, 4], "loss_scale": a[:, 5], "width": width}

    def layer_rows(self, branch: int, max_steps: int = 300) -> list[dict]:
        """Per-layer instrument rows on the lineage, from at most about `max_steps` instrument steps."""
        try:
            n = self.query("SELECT COUNT(DISTINCT step) AS n, MIN(step) AS lo, MAX(step) AS hi FROM layers")[0]
        except sqlite3.OperationalError:  # a journal from before the instruments, opened read-only
            return []
        if not n["n"]:
            return []
        every = max(1, (n["hi"] - n["lo"]) // max(1, n["n"] - 1)) if n["n"] > 1 else 1
        stride = every * max(1, -(-n["n"] // max_steps))
        return self._lineage_rows("layers", branch, 0, stride)

    def export_rows(self, branch: int, side_runs: bool = True) -> list[dict]:
        """The lineage's per-step metrics with each step's evaluation beside it (CSV/parquet export),
        `run` "main"; then, with side_runs, each probe's and range test's side runs forked from the
        lineage, their own steps only, `run` "probe" or "lr_find" (their branch tells them apart)."""
        lineage = self.lineage(branch)
        side = [b for b in self.branches() if side_runs and b["reason"] in ("probe", "lr_find")
                and self.on_lineage(b["parent"], b["fork_step"], lineage)]
        side_evals = {b["id"]: self.query("SELECT * FROM evals WHERE branch = ?", (b["id"],)) for b in side}
        evals = self.evals(branch)
        for e in (e for rows in side_evals.values() for e in rows):
            e.update(json.loads(e.pop("extra") or "{}"))
        names = [k for k in dict.fromkeys(k for e in [*evals, *sum(side_evals.values(), [])] for k in e)
                 if k not in ("branch", "step", "epoch", "wall", "train_loss")]
        out = []
        for run, rows, ends in [("main", self.metrics(branch), evals),
                                *((b["reason"], self.branch_metrics(b["id"]), side_evals[b["id"]]) for b in side)]:
            by_step = {e["step"]: e for e in ends}
            out += [{**r, "run": run, **{k: by_step.get(r["step"], {}).get(k) for k in names}} for r in rows]
        return out

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
        out = [{**b, "steps": self.branch_metrics(b["id"], max_points)} for b in self.branches()
               if b["id"] not in mine and b["reason"] not in ("probe", "lr_find")]  # side runs: probe.KINDS
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

    def checkpoint_file(self, cid: int) -> Path:
        """The file of a listed checkpoint, checked to lie inside the run directory."""
        from .checkpoints import contained

        rows = [c for c in self.checkpoints() if c["id"] == cid]
        if not rows:
            raise JournalError(f"checkpoint {cid}: no such checkpoint")
        return contained(self.run_dir, rows[0]["path"])

    def resume_point(self, branch: int) -> dict | None:
        """The newest checkpoint on `branch`'s lineage: where a resume starts (None: from step 0)."""
        lineage = self.lineage(branch)
        on = [c for c in self.checkpoints() if self.on_lineage(c["branch"], c["step"], lineage)]
        return max(on, key=lambda c: (c["step"], c["id"])) if on else None

    def last_row(self, branch: int) -> dict | None:
        """The newest step row of `branch`'s lineage."""
        for b, _, upto in reversed(self.lineage(branch)):
            hi = 2 ** 62 if upto == float("inf") else upto
            rows = self.query("SELECT * FROM steps WHERE branch = ? AND step <= ? ORDER BY step DESC LIMIT 1", (b, hi))
            if rows:
                return rows[0]
        return None

    def last_step(self, branch: int) -> int:
        r = self.query("SELECT MAX(step) AS s FROM steps WHERE branch = ?", (branch,))
        return r[0]["s"] or 0

    def close(self) -> None:
        con = getattr(self._local, "con", None)
        if con is not None:
            con.close()
            self._local.con = None


class Journal(Reader):
    """The run's one writer (see the module docstring for the commit order)."""

    def __init__(self, path: Path | str, flush_interval: float = 0.2):
        path = Path(path)
        self.flush_interval = flush_interval
        try:
            self._wcon = sqlite3.connect(str(path), timeout=30, isolation_level=None, check_same_thread=False)
            self._wcon.execute("PRAGMA journal_mode=WAL")
            self._wcon.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: a commit survives a process kill
            self._wcon.executescript(SCHEMA)
            cols = {r[1] for r in self._wcon.execute("PRAGMA table_info(steps)")}
            for col in STEP_COLUMNS_ADDED:  # a journal from before them
                if col not in cols:
                    self._wcon.execute(f"ALTER TABLE steps ADD COLUMN {col} REAL")
            row = self._wcon.execute("SELECT value FROM meta WHERE key = 'summary'").fetchone()
            if row is None or json.loads(row[0]) != summary.VERSION:  # written before the summary existed
                self.transaction([("INSERT OR REPLACE INTO meta VALUES ('summary', ?)", (json.dumps(summary.VERSION),))],
                                 then=summary.rebuild)
        except sqlite3.DatabaseError as e:
            raise JournalError(f"{path}: not a Panda journal ({e})") from None
        super().__init__(path)
        self._steps: collections.deque = collections.deque()
        self._evals: collections.deque = collections.deque()
        self._layers: collections.deque = collections.deque()
        self._events: collections.deque = collections.deque()
        self._sql: collections.deque = collections.deque()  # (statement, params)
        self._jobs: collections.deque = collections.deque()  # callables run on the writer thread
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._flush_lock = threading.Lock()
        self._jobs_done = threading.Condition()
        self._writer: threading.Thread | None = None
        self._closed = False
        self.error: str | None = None  # the last failed write, until a flush succeeds

    # --- write side: cheap appends from any thread ------------------------------------------
    def start_writer(self) -> None:
        if self._writer is None or not self._writer.is_alive():
            self._stop.clear()
            self._writer = threading.Thread(target=self._write_loop, name="panda-journal", daemon=True)
            self._writer.start()

    def log_steps(self, rows: list[StepRow]) -> None:
        self._steps.extend(rows)

    def log_eval(self, row: EvalRow) -> None:
        self._evals.append(row)

    def log_layers(self, rows: list) -> None:
        """Per-layer instrument rows (instruments.LayerRow)."""
        self._layers.extend(rows)

    def event(self, step: int, branch: int, kind: str, message: str, data: Any = None) -> None:
        self._events.append(self.event_row(step, branch, kind, message, data))

    @staticmethod
    def event_row(step: int, branch: int, kind: str, message: str, data: Any = None) -> tuple:
        return (time.time(), step, branch, kind, message, None if data is None else json.dumps(data))

    def execute(self, sql: str, params: tuple = ()) -> None:
        self._sql.append((sql, params))

    def submit(self, job: Callable[[sqlite3.Connection], None]) -> None:
        """Run `job(connection)` on the writer thread, after the rows queued before it are committed."""
        self._jobs.append(job)
        self._wake.set()

    def set_meta(self, key: str, value: Any) -> None:
        self.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, json.dumps(value)))

    def add_branch(self, bid: int, parent: int | None, fork_step: int, reason: str, ckpt: int | None) -> None:
        self.execute("INSERT INTO branches VALUES (?, ?, ?, ?, ?, ?)",
                     (bid, parent, fork_step, reason, ckpt, time.time()))

    def transaction(self, statements: list[tuple[str, tuple]],
                    then: Callable[[sqlite3.Connection], None] | None = None) -> None:
        """Commit these statements (and `then(connection)`) together; call from a submitted job
        (the writer's connection)."""
        con = self._wcon
        con.execute("BEGIN")
        try:
            for stmt, params in statements:
                con.execute(stmt, params)
            if then is not None:
                then(con)
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise

    def flush(self) -> None:
        """Commit everything queued, then run the jobs queued before it. Safe from any thread.

        Jobs run one at a time, each after a commit of every row queued until then, so rows keep
        reaching the disk while checkpoint files are written. Raises JournalError (and sets `error`)
        when a write fails; what failed stays queued, in order, for the next try.
        """
        with self._flush_lock:
            jobs = len(self._jobs)  # every row queued before one of these jobs is committed before it runs
            while True:
                self._commit_rows()
                if not jobs:
                    break
                job = self._jobs.popleft()
                jobs -= 1
                try:
                    job(self)
                except Exception as e:
                    self._jobs.appendleft(job)
                    self._failed(e)
                with self._jobs_done:
                    self._jobs_done.notify_all()
            self.error = None

    def _commit_rows(self) -> None:
        queues = (self._sql, self._steps, self._evals, self._layers, self._events)
        batch = [_drain(q) for q in queues]
        if not any(batch):
            return
        sql, steps, evals, layers, events = batch
        touched: dict[int, tuple[int, int]] = {}
        for r in steps:
            lo, hi = touched.get(r[0], (r[1], r[1]))
            touched[r[0]] = (min(lo, r[1]), max(hi, r[1]))
        try:
            self.transaction([*sql, *_inserts("steps", 13, [(*r, None, None)[:13] for r in steps]),
                              *_inserts("evals", 9, evals), *_inserts("layers", 12, layers),
                              *(("INSERT INTO events (wall, step, branch, kind, message, data) "
                                 "VALUES (?, ?, ?, ?, ?, ?)", e) for e in events)],
                             then=lambda con: summary.update(con, touched))
        except Exception as e:
            for q, rows in zip(queues, batch):
                q.extendleft(reversed(rows))  # kept, in order, for the next try
            self._failed(e)

    def wait_for_jobs(self, most: int) -> None:
        """Block while more than `most` jobs wait: checkpoints cannot be taken faster than the disk writes them."""
        with self._jobs_done:
            while len(self._jobs) > most and self._writer is not None and self._writer.is_alive() and not self.error:
                self._jobs_done.wait(0.5)

    def _failed(self, e: Exception) -> None:
        self.error = f"journal write failed: {type(e).__name__}: {e}"
        raise JournalError(self.error) from e

    def _write_loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.flush_interval)
            self._wake.clear()
            try:
                self.flush()
            except JournalError:
                self._stop.wait(self.flush_interval)  # `error` tells the trainer; try again later

    def close(self) -> None:
        """Stop the writer and commit what is left; raises JournalError if that fails. Idempotent."""
        with self._flush_lock:
            if self._closed:
                return
            self._closed = True
        self._stop.set()
        self._wake.set()
        if self._writer is not None:
            self._writer.join()
        try:
            self.flush()
            # Everything into the main file: an archived copy then reads whole without its WAL.
            self._wcon.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            super().close()
            self._wcon.close()


def _drain(d: collections.deque) -> list:
    out = []
    while d:
        out.append(d.popleft())
    return out
