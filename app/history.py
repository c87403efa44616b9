"""What the loss chart draws of a run, read from the journal's summary: O(points) rows per tick.

`Reader.curve` gives a range of the lineage as units (single rows, or the journal's buckets with
their min and max and where they fell). Here they become the curves to draw:
- the raw loss: every unit's min and max point, then MinMaxLTTB (tsdownsample) down to the
  chart's width, which keeps each extreme at its own step: no spike is ever sampled away;
- the smoothed loss: TensorBoard's debiased EMA per step, carried over a bucket by its mean;
- the hyperparameter timeline (each unit's last values) and the x positions on every axis;
- the markers: every checkpoint, hyperparameter change, restore and spike on the lineage, at its
  own step, whatever the sampling.
Nothing is cached between ticks: at 10^6 steps a full read is a few milliseconds.
"""
from __future__ import annotations

import json
from typing import Any

import numpy as np
from tsdownsample import MinMaxLTTBDownsampler

from trainer import Reader
from trainer.probe import KINDS as SIDE_RUNS
from trainer.summary import UNIT

U = {name: i for i, name in enumerate(UNIT)}
MARKER_EVENTS = ("hparams", "restore", "rollback", "skip_step", "anomaly", "error")
POINTS = 500  # drawn points of the raw curve; the chart is about this many pixels wide
BUDGET = 2000  # units read for a range: the coarsest resolution that still beats the chart's pixels
ZOOM_BUDGET = 20_000  # a zoomed range this long or shorter is read row by row
ZOOM_POINTS = 4000  # ... and drawn whole up to this many rows (MinMaxLTTB beyond)
BRANCH_POINTS = 150
EVAL_POINTS = 300
SPIKE_WINDOW = 31  # units around a point that say what "normal" is
SPIKE_MADS = 10.0
SPIKE_RATIO = 3.0
SPIKE_MOST = 25  # spike markers per view, the tallest


def downsample(x: np.ndarray, y: np.ndarray, n: int) -> np.ndarray:
    """Indices of at most about n points of (x, y), x ascending, that keep every local extreme."""
    if len(x) <= n:
        return np.arange(len(x))
    ok = np.flatnonzero(np.isfinite(y))
    if len(ok) <= n:
        return ok
    keep = MinMaxLTTBDownsampler().downsample(x[ok].astype(np.float64), y[ok].astype(np.float64), n_out=n)
    return ok[np.asarray(keep, dtype=np.int64)]


def extremes(units: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each unit's min and max as points (step, loss), in step order; a single row is one point."""
    steps = np.column_stack([units[:, U["min_step"]], units[:, U["max_step"]]])
    losses = np.column_stack([units[:, U["min_loss"]], units[:, U["max_loss"]]])
    flip = steps[:, 0] > steps[:, 1]
    steps[flip], losses[flip] = steps[flip][:, ::-1], losses[flip][:, ::-1]
    steps, losses = steps.ravel(), losses.ravel()
    first = np.r_[True, steps[1:] != steps[:-1]]
    both = first & ~np.isnan(steps)
    return steps[both].astype(np.int64), losses[both]


def ema(units: np.ndarray, smoothing: float) -> np.ndarray:
    """TensorBoard's debiased EMA at each unit's last step, applied per step: a bucket of n steps
    with mean m moves the average as n steps of m would. Exact for single rows."""
    if not 0 <= smoothing < 1:
        raise ValueError(f"smoothing must be in [0, 1), got {smoothing}")
    out = [float("nan")] * len(units)
    last = count = 0.0
    # plain floats: a Python loop over NumPy scalars costs ten times as much
    for i, (n, total) in enumerate(zip(units[:, U["n_fin"]].tolist(), units[:, U["sum_loss"]].tolist())):
        if n <= 0:
            continue
        keep = smoothing ** n
        last = keep * last + (1 - keep) * total / n
        count += n
        debias = 1 - smoothing ** count
        out[i] = last / debias if debias > 0 else total / n
    return np.array(out)


def spikes(units: np.ndarray) -> np.ndarray:
    """Indices of units whose max loss stands far above the max of the units around it (robust: the
    median and the median absolute deviation over a window), at most SPIKE_MOST, the tallest first.
    Comparing maxima with maxima keeps a bucket of noisy steps from looking like a spike."""
    top = units[:, U["max_loss"]]
    if len(units) < 5:
        return np.flatnonzero(np.isposinf(top))
    half = SPIKE_WINDOW // 2
    win = np.lib.stride_tricks.sliding_window_view(np.pad(np.where(np.isfinite(top), top, np.nan), half,
                                                          mode="edge"), SPIKE_WINDOW)
    median = np.median if np.isfinite(top).all() else np.nanmedian  # the first is five times faster
    with np.errstate(all="ignore"):
        med = median(win, axis=1)
        mad = median(np.abs(win - med[:, None]), axis=1)
        ratio = top / np.abs(med)
        hit = np.flatnonzero((top > med + SPIKE_MADS * mad) & (ratio > SPIKE_RATIO) | np.isposinf(top))
    return np.sort(hit[np.argsort(-ratio[hit], kind="stable")[:SPIKE_MOST]])


def robust_range(units: np.ndarray, log: bool) -> list[float] | None:
    """A y range that ignores outliers: the lineage's loss with isolated spikes filtered out (a
    running median of the units' max and min), so a divergence cannot flatten the curve."""
    hi, lo = units[:, U["max_loss"]], units[:, U["min_loss"]]
    ok = np.isfinite(hi) & np.isfinite(lo) & ((lo > 0) if log else True)
    if ok.sum() < 3:
        return None
    hi, lo = hi[ok], lo[ok]
    k = min(9, len(hi) // 2 * 2 - 1)
    w = np.lib.stride_tricks.sliding_window_view(np.pad(hi, k // 2, mode="edge"), k)
    top = float(np.percentile(np.median(w, axis=1), 99))
    bottom = float(np.min(lo))
    if log:
        a, b = np.log10(bottom), np.log10(max(top, bottom * 1.0001))
        pad = 0.05 * (b - a)
        return [a - pad, b + pad]
    pad = 0.08 * (top - bottom) or abs(top) * 0.1 or 1.0
    return [bottom - pad, top + pad]


def positions(units: np.ndarray, busy_before: float = 0.0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """For each x axis: (unit last steps, that axis's value there), to place any step by interpolation."""
    at = units[:, U["last_step"]]
    return {"epoch": (at, units[:, U["epoch"]]), "time": (at, units[:, U["wall"]]),
            "train time": (at, busy_before + np.cumsum(units[:, U["busy"]]))}


def smoothed(units: np.ndarray, smoothing: float, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The EMA curve of these units at their last steps, downsampled to about n points: (steps, values)."""
    smooth = ema(units, smoothing)
    ok = np.flatnonzero(np.isfinite(smooth))
    keep = ok[downsample(units[ok, U["last_step"]], smooth[ok], n)]
    return units[keep, U["last_step"]].astype(np.int64), smooth[keep]


def place(steps, pos: dict, axis: str) -> np.ndarray:
    """x values of these steps on `axis` (step, epoch, wall time in s, training time in s)."""
    steps = np.asarray(steps, dtype=np.float64)
    if axis == "step":
        return steps
    at, val = pos[axis]
    return np.interp(steps, at, val) if len(at) else steps


def loss_view(reader: Reader, branch: int, *, zoom: tuple[int, int] | None = None, smoothing: float = 0.6,
              points: int | None = None, branches: bool = True) -> dict[str, Any]:
    """Everything the loss chart draws for `branch`'s lineage, over the zoomed range or the whole run."""
    lineage = reader.lineage(branch)
    lo, hi = zoom if zoom else (None, None)
    points = points or (ZOOM_POINTS if zoom else POINTS)
    units, width = reader.curve(branch, lo, hi, budget=ZOOM_BUDGET if zoom else BUDGET, lineage=lineage)
    busy_before = float(reader.curve(branch, None, lo - 1, budget=50, lineage=lineage)[0][:, U["busy"]].sum()) \
        if zoom and lo > 1 else 0.0
    step, loss = extremes(units)
    keep = downsample(step, loss, points)
    smooth_step, smooth = smoothed(units, smoothing, points // 2)
    bad = units[~np.isfinite(units[:, U["max_loss"]]) | (units[:, U["n_loss"]] < units[:, U["n"]])]
    first, last = (int(units[0, U["first_step"]]), int(units[-1, U["last_step"]])) if len(units) else (0, 0)
    out = {
        "width": width, "range": (first, last), "zoom": zoom, "units": units,
        "step": step[keep], "loss": loss[keep],
        "smooth_step": smooth_step, "smooth": smooth,
        "spikes": [(int(units[i, U["max_step"]]), float(units[i, U["max_loss"]])) for i in spikes(units)],
        "nonfinite": [int(u[U["max_step"]] if np.isinf(u[U["max_loss"]]) else u[U["last_step"]]) for u in bad],
        "positions": positions(units, busy_before),
        "events": [e for e in reader.events(limit=100_000, kinds=MARKER_EVENTS)
                   if Reader.on_lineage(e["branch"], e["step"], lineage) and first <= e["step"] + 1 <= last + 1],
        "checkpoints": [c for c in reader.checkpoints()
                        if Reader.on_lineage(c["branch"], c["step"], lineage) and first <= c["step"] <= last],
        "evals": evals(reader, lineage, first, last),
        "branches": other_branches(reader, branch, lineage, smoothing, lo or 1, hi) if branches else [],
        "fans": fans(reader, lineage, smoothing, first, last if zoom else None) if branches else [],
    }
    if out["fans"] and not zoom:  # the whole run's view reaches the end of the side runs
        out["range"] = (first, max(last, max(int(f["step"][-1]) for f in out["fans"] if len(f["step"]))))
    return out


def fans(reader: Reader, lineage: list, smoothing: float, lo: int, hi: int | None) -> list[dict]:
    """The probes' side runs forked from this lineage in lo..hi: each a smoothed curve from its fork,
    with its settings and (once its probe ended) its rank there."""
    side = [b for b in reader.branches() if b["reason"] == "probe" and b["parent"] is not None
            and Reader.on_lineage(b["parent"], b["fork_step"], lineage)
            and lo <= b["fork_step"] + 1 and (hi is None or b["fork_step"] <= hi)]
    if not side:
        return []
    found = {}
    for e in reader.events(limit=100_000, kinds=("probe",)):
        for i, r in enumerate(e["data"]["results"]):
            found[r["branch"]] = {**r, "rank": i + 1, "of": len(e["data"]["results"])}
    out = []
    for b in side:
        own = [(b["id"], b["fork_step"], float("inf"))]
        units, _ = reader.curve(b["id"], b["fork_step"] + 1, None, budget=BRANCH_POINTS * 2, lineage=own)
        if not len(units):
            continue
        steps, smooth = smoothed(units, smoothing, BRANCH_POINTS)
        r = found.get(b["id"]) or reader.query("SELECT lr, momentum FROM steps WHERE branch = ? ORDER BY step "
                                               "LIMIT 1", (b["id"],))[0]
        out.append({"id": b["id"], "fork_step": b["fork_step"], "step": steps, "smooth": smooth,
                    "positions": positions(units), "lr": r["lr"], "momentum": r.get("momentum"),
                    "rank": r.get("rank"), "of": r.get("of"), "score": r.get("score")})
    return out


def other_branches(reader: Reader, branch: int, lineage: list, smoothing: float, lo: int,
                   hi: int | None) -> list[dict]:
    """The abandoned paths seen from `branch` (Reader.other_branches' rule), each as a smoothed,
    downsampled curve over lo..hi (hi None: to its end)."""
    mine = {b for b, _, _ in lineage}
    paths = [(b["id"], b["fork_step"]) for b in reader.branches() if b["id"] not in mine and b["reason"] not in SIDE_RUNS]
    paths += [(b, int(upto)) for b, _, upto in lineage if upto != float("inf")]
    out = []
    for bid, fork in paths:
        own = [(bid, fork, float("inf"))]
        units, _ = reader.curve(bid, max(lo, fork + 1), hi, budget=BRANCH_POINTS * 2, lineage=own)
        if not len(units):
            continue
        steps, smooth = smoothed(units, smoothing, BRANCH_POINTS)
        out.append({"id": bid, "fork_step": fork, "step": steps, "smooth": smooth, "positions": positions(units)})
    return out


def evals(reader: Reader, lineage: list, lo: int, hi: int, most: int = EVAL_POINTS) -> list[dict]:
    """The lineage's evaluations in lo..hi; when there are many, each stretch's first, last, best and
    worst val loss (so an evaluation that went wrong is still drawn)."""
    rows = []
    for b, after, upto in lineage:
        a, z = max(int(after) + 1, lo), int(min(upto, hi))
        if z >= a:
            rows += reader.query("SELECT * FROM evals WHERE branch = ? AND step >= ? AND step <= ? ORDER BY step",
                                 (b, a, z))
    if len(rows) > most:
        groups = np.array_split(np.arange(len(rows)), most // 4)
        pick = set()
        for g in groups:
            vals = [rows[i]["val_loss"] if rows[i]["val_loss"] is not None else np.nan for i in g]
            pick |= {int(g[0]), int(g[-1])}
            if not np.all(np.isnan(vals)):
                pick |= {int(g[np.nanargmin(vals)]), int(g[np.nanargmax(vals)])}
        rows = [rows[i] for i in sorted(pick)]
    for r in rows:
        r.update(json.loads(r.pop("extra") or "{}"))
    return rows


def last_smoothed(reader: Reader, branch: int, smoothing: float) -> float | None:
    """The smoothed loss now, for the metrics row: the EMA over the lineage's last ~2,000 steps."""
    last = reader.last_row(branch)
    if last is None:
        return None
    units, _ = reader.curve(branch, max(1, last["step"] - 2000), last["step"], budget=2001)
    s = ema(units, smoothing)
    ok = s[np.isfinite(s)]
    return float(ok[-1]) if len(ok) else None
