"""The live view's history of a run, read incrementally: each tick reads only what the journal gained.

One `History` per (run, branch) is shared by every session of this server. It keeps the lineage's
per-step columns as NumPy arrays: the segments of ancestor branches are read once (they never change
again), and each tick appends only the tip branch's new rows, new evaluations and new events.
Checkpoints (a few rows, some retired while training) and the abandoned branches are re-read only
when their tables changed.

`view()` then picks at most about `max_points` rows to draw: the first and last, each bucket's min
and max loss (so a spike is never hidden by sampling), every row where a hyperparameter changes,
and every checkpoint's step (its diamond sits on the curve).
"""
from __future__ import annotations

import itertools
import json
import threading
import time
from collections import OrderedDict

import numpy as np

from trainer import Reader

COLS = ("step", "epoch", "loss", "lr", "momentum", "weight_decay", "batch_size", "wall")
HPARAM_COLS = ("lr", "momentum", "weight_decay", "batch_size")
MARKER_EVENTS = ("hparams", "restore")
KEEP = 8  # histories kept (runs x branches recently viewed)
BRANCH_POINTS = 500


class History:
    def __init__(self, reader: Reader, branch: int):
        self.branch = branch
        self.lineage = reader.lineage(branch)
        self._lock = threading.Lock()
        self._cols = {c: np.empty(0, dtype=np.float64) for c in COLS}
        self.n = 0
        self.evals: list[dict] = []
        self.events: list[dict] = []
        self._event_id = 0
        self._tip_after = self.lineage[-1][1]  # the tip branch's rows come after its fork step
        self._ckpt_key: tuple | None = None
        self.checkpoints: list[dict] = []
        self._branches_key: tuple | None = None
        self.branches: list[dict] = []
        for b, after, upto in self.lineage[:-1]:  # closed segments: read once
            self._append(_steps(reader, "branch = ? AND step > ? AND step <= ?", (b, after, upto)))
            self.evals += _evals(reader, b, after, upto)

    # --- reading -------------------------------------------------------------------------------
    def update(self, reader: Reader) -> History:
        """Append what the journal gained since the last update (rows, evaluations, events)."""
        with self._lock:
            tip = self.lineage[-1][0]
            last = int(self._cols["step"][self.n - 1]) if self.n else self._tip_after
            last = max(last, self._tip_after)
            self._append(_steps(reader, "branch = ? AND step > ?", (tip, last)))
            last_eval = self.evals[-1]["step"] if self.evals else self._tip_after
            self.evals += _evals(reader, tip, max(last_eval, self._tip_after), 2 ** 62)
            new = reader.events(since_id=self._event_id, limit=100_000, kinds=MARKER_EVENTS)
            if new:
                self._event_id = new[-1]["id"]
                self.events += [e for e in new if Reader.on_lineage(e["branch"], e["step"], self.lineage)]
            key = tuple(reader.query("SELECT COUNT(*) AS n, MAX(id) AS i, SUM(deleted) AS d FROM checkpoints")[0].values())
            if key != self._ckpt_key:
                self._ckpt_key = key
                self.checkpoints = [c for c in reader.checkpoints() if Reader.on_lineage(c["branch"], c["step"], self.lineage)]
            key = (len(reader.branches()), int(time.monotonic() // 10))  # abandoned paths: re-read now and then
            if key != self._branches_key:
                self._branches_key = key
                self.branches = reader.other_branches(self.branch, max_points=BRANCH_POINTS)
        return self

    def _append(self, block: np.ndarray) -> None:
        """Append rows given as a (k, len(COLS)) float array."""
        if not len(block):
            return
        need = self.n + len(block)
        if need > len(self._cols["step"]):
            cap = max(need, 2 * len(self._cols["step"]), 1024)
            for c, a in self._cols.items():
                grown = np.empty(cap, dtype=np.float64)
                grown[:self.n] = a[:self.n]
                self._cols[c] = grown
        for i, c in enumerate(COLS):
            self._cols[c][self.n:need] = block[:, i]
        self.n = need

    # --- drawing -------------------------------------------------------------------------------
    def column(self, name: str) -> np.ndarray:
        return self._cols[name][:self.n]

    def picks(self, max_points: int) -> np.ndarray:
        """Indices of the rows to draw, in order (see the module's docstring)."""
        n = self.n
        if n <= max_points:
            return np.arange(n)
        loss = np.nan_to_num(self.column("loss"), nan=0.0, posinf=np.finfo(np.float64).max,
                             neginf=np.finfo(np.float64).min)
        buckets = max(1, max_points // 2)
        width = -(-n // buckets)
        pad = buckets * width - n
        lo = np.concatenate([loss, np.full(pad, np.inf)]).reshape(buckets, width)
        hi = np.concatenate([loss, np.full(pad, -np.inf)]).reshape(buckets, width)
        base = np.arange(buckets) * width
        keep = [base + lo.argmin(axis=1), base + hi.argmax(axis=1), np.array([0, n - 1])]
        for c in HPARAM_COLS:  # where a step function changes, and the row before (drawn as steps)
            a = self.column(c)
            ch = np.flatnonzero(a[1:] != a[:-1])
            keep += [ch, ch + 1]
        steps = self.column("step")
        marks = np.array([c["step"] for c in self.checkpoints], dtype=np.float64)
        if len(marks):
            at = np.searchsorted(steps, marks)
            keep.append(at[(at < n) & (steps[np.minimum(at, n - 1)] == marks)])
        idx = np.unique(np.concatenate(keep))
        return idx[idx < n]

    def rows(self, max_points: int) -> list[dict]:
        """The rows to draw, as plain dicts (what app.figures takes)."""
        with self._lock:
            idx = self.picks(max_points)
            cols = {c: self.column(c)[idx] for c in COLS}
        out = []
        for i in range(len(idx)):
            r = {c: (None if np.isnan(v := cols[c][i]) else float(v)) for c in COLS}
            r["step"] = int(r["step"])
            r["batch_size"] = None if r["batch_size"] is None else int(r["batch_size"])
            out.append(r)
        return out


def _steps(reader: Reader, where: str, params: tuple) -> np.ndarray:
    """Step rows as a float array (NULL as NaN), read as tuples: a million rows in about a second."""
    rows = reader._con().execute(f"SELECT {', '.join(COLS)} FROM steps WHERE {where} ORDER BY step", params).fetchall()
    try:
        flat = np.fromiter(itertools.chain.from_iterable(rows), dtype=np.float64, count=len(rows) * len(COLS))
        return flat.reshape(len(rows), len(COLS))
    except TypeError:  # a NULL somewhere (a loss never read back)
        return np.array([[np.nan if v is None else v for v in r] for r in rows], dtype=np.float64)


def _evals(reader: Reader, branch: int, after: int, upto: int) -> list[dict]:
    rows = reader.query("SELECT * FROM evals WHERE branch = ? AND step > ? AND step <= ? ORDER BY step",
                        (branch, after, upto))
    for r in rows:
        r.update(json.loads(r.pop("extra") or "{}"))
    return rows


_CACHE: OrderedDict[tuple, History] = OrderedDict()
_CACHE_LOCK = threading.Lock()


def history(reader: Reader, run_dir: str, branch: int) -> History:
    """The up-to-date history of `branch` in `run_dir`, shared by every session."""
    key = (run_dir, branch)
    with _CACHE_LOCK:
        h = _CACHE.get(key)
        if h is None:
            h = _CACHE[key] = History(reader, branch)
        _CACHE.move_to_end(key)
        while len(_CACHE) > KEEP:
            _CACHE.popitem(last=False)
    return h.update(reader)
