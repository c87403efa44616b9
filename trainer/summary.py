"""The journal's multi-resolution summary of the loss curve, so a chart of any range reads O(points) rows.

The writer keeps, per branch, buckets of 64, 1,024, 16,384 and 262,144 steps (levels 0-3). A bucket
holds what a chart needs of its rows: the min and max loss and the steps where they fell (so a spike
is never averaged away), the mean, the summed step time, and the last row's values (for the
hyperparameter timeline and the epoch and wall-clock axes). Every commit recomputes the buckets its
rows touched, in the same transaction, from the rows below them (steps for level 0, level k-1 for
level k): a bucket is always exactly its rows, even when a resumed run rewrites steps.

A "unit" is one step row or one bucket, with the same fields: `cover()` returns the units of a
range at the coarsest resolution that stays within a budget, finer at the range's edges, so
segments of a lineage that end mid-bucket are still exact.
"""
from __future__ import annotations

import sqlite3

import numpy as np

BITS = (6, 10, 14, 18)  # bucket widths 2**bits steps; each level is 16 buckets of the one below
UNIT = ("first_step", "last_step", "n", "n_loss", "min_loss", "min_step", "max_loss", "max_step", "sum_loss",
        "n_fin", "busy", "loss", "epoch", "lr", "momentum", "weight_decay", "batch_size", "wall")
LAST = UNIT[11:]  # the bucket's last row's values
VERSION = 1
SCHEMA = f"""
CREATE TABLE IF NOT EXISTS summary (
    branch INTEGER NOT NULL, level INTEGER NOT NULL, bucket INTEGER NOT NULL, {', '.join(f'{c} REAL' for c in UNIT)},
    PRIMARY KEY (branch, level, bucket)) WITHOUT ROWID;
"""
_RAW = "step, loss, epoch, lr, momentum, weight_decay, batch_size, samples_per_s, wall"


def _array(rows: list[tuple], width: int) -> np.ndarray:
    """SQL rows as a float array (NULL as NaN)."""
    if not rows:
        return np.empty((0, width))
    try:
        return np.array(rows, dtype=np.float64)
    except TypeError:  # a NULL somewhere
        return np.array([[np.nan if v is None else v for v in r] for r in rows], dtype=np.float64)


def raw_units(con: sqlite3.Connection, branch: int, lo: int, hi: int) -> np.ndarray:
    """The step rows lo <= step <= hi of one branch, each as a unit."""
    r = _array(con.execute(f"SELECT {_RAW} FROM steps WHERE branch = ? AND step >= ? AND step <= ? ORDER BY step",
                           (branch, lo, hi)).fetchall(), 9)
    step, loss, sps, bs = r[:, 0], r[:, 1], r[:, 7], r[:, 6]
    u = np.empty((len(r), len(UNIT)))
    has, fin = ~np.isnan(loss), np.isfinite(loss)
    u[:, 0] = u[:, 1] = u[:, 5] = u[:, 7] = step
    u[:, 2] = 1
    u[:, 3] = has
    u[:, 4] = u[:, 6] = loss
    u[:, 8] = np.where(fin, loss, 0.0)
    u[:, 9] = fin
    with np.errstate(divide="ignore", invalid="ignore"):
        u[:, 10] = np.where(sps > 0, bs / sps, 0.0)
    u[:, 11:] = np.column_stack([loss, r[:, 2], r[:, 3], r[:, 4], r[:, 5], bs, r[:, 8]])
    return u


def bucket_units(con: sqlite3.Connection, branch: int, level: int, b0: int, b1: int) -> np.ndarray:
    return _array(con.execute(f"SELECT {', '.join(UNIT)} FROM summary WHERE branch = ? AND level = ? "
                              "AND bucket >= ? AND bucket <= ? ORDER BY bucket", (branch, level, b0, b1)).fetchall(),
                  len(UNIT))


def aggregate(u: np.ndarray, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Merge consecutive units with equal keys (sorted by step): (distinct keys, merged units)."""
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
    ends = np.r_[starts[1:], len(keys)] - 1
    out = np.empty((len(starts), len(UNIT)))
    out[:, 0], out[:, 1] = u[starts, 0], u[ends, 1]
    for c in (2, 3, 8, 9, 10):
        out[:, c] = np.add.reduceat(u[:, c], starts)
    lo = np.where(np.isnan(u[:, 4]), np.inf, u[:, 4])
    hi = np.where(np.isnan(u[:, 6]), -np.inf, u[:, 6])
    for i, (s, e) in enumerate(zip(starts, ends)):  # a few dozen units per bucket
        a, b = s + int(np.argmin(lo[s:e + 1])), s + int(np.argmax(hi[s:e + 1]))
        out[i, 4], out[i, 5], out[i, 6], out[i, 7] = u[a, 4], u[a, 5], u[b, 6], u[b, 7]
    out[:, 11:] = u[ends, 11:]
    return keys[starts], out


def _store(con: sqlite3.Connection, branch: int, level: int, keys: np.ndarray, units: np.ndarray) -> None:
    con.executemany(f"INSERT OR REPLACE INTO summary VALUES ({','.join('?' * (3 + len(UNIT)))})",
                    [(branch, level, int(k), *(None if np.isnan(v) else float(v) for v in row))
                     for k, row in zip(keys, units)])


def update(con: sqlite3.Connection, touched: dict[int, tuple[int, int]]) -> None:
    """Recompute every bucket over the steps lo..hi of each touched branch (inside the caller's transaction)."""
    for branch, (lo, hi) in touched.items():
        b0, b1 = lo >> BITS[0], hi >> BITS[0]
        u = raw_units(con, branch, b0 << BITS[0], ((b1 + 1) << BITS[0]) - 1)
        if not len(u):
            continue
        keys, agg = aggregate(u, u[:, 0].astype(np.int64) >> BITS[0])
        _store(con, branch, 0, keys, agg)
        for level in range(1, len(BITS)):
            shift = BITS[level] - BITS[level - 1]
            b0, b1 = b0 >> shift, b1 >> shift
            below = bucket_units(con, branch, level - 1, b0 << shift, ((b1 + 1) << shift) - 1)
            keys, agg = aggregate(below, below[:, 0].astype(np.int64) >> BITS[level])
            _store(con, branch, level, keys, agg)


def rebuild(con: sqlite3.Connection) -> None:
    """Summarize every step from scratch: a journal written before the summary existed."""
    con.execute("DELETE FROM summary")
    for branch, lo, hi in con.execute("SELECT branch, MIN(step), MAX(step) FROM steps GROUP BY branch").fetchall():
        for a in range(lo, hi + 1, 1 << 16):  # in slices, so memory stays small
            update(con, {branch: (a, min(hi, a + (1 << 16) - 1))})


def level_for(span: int, budget: int) -> int:
    """The finest level (-1: single rows) that draws `span` steps in at most about `budget` units."""
    for level in range(-1, len(BITS)):
        if span <= budget * (1 if level < 0 else 1 << BITS[level]):
            return level
    return len(BITS) - 1


def cover(con: sqlite3.Connection, branch: int, lo: int, hi: int, level: int) -> np.ndarray:
    """Units covering steps lo..hi of one branch: whole buckets of `level`, finer ones at the edges."""
    if hi < lo:
        return np.empty((0, len(UNIT)))
    if level < 0:
        return raw_units(con, branch, lo, hi)
    bits = BITS[level]
    b0, b1 = -(-lo >> bits), ((hi + 1) >> bits) - 1  # buckets lying wholly inside lo..hi
    if b0 > b1:
        return cover(con, branch, lo, hi, level - 1)
    return np.concatenate([cover(con, branch, lo, (b0 << bits) - 1, level - 1),
                           bucket_units(con, branch, level, b0, b1),
                           cover(con, branch, (b1 + 1) << bits, hi, level - 1)])
