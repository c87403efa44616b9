"""A little caviar for the panda: short side runs from the live state, and the LR range test.

The lecture's sampling advice, as code: sample at random (Latin hypercube over equal strata, never a
grid), on a log scale (lr = 10^r, momentum = 1 - 10^r), and go coarse to fine (`refine`). The engine
runs the side runs (Trainer._probe_tick); this module plans and scores them. Pure: no torch.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Any

KINDS = ("probe", "lr_find")  # journal branches of these reasons are side runs, not the run's paths
TAIL = 0.2  # a side run's score: mean training loss over this last fraction of its steps
MAX_SAMPLES, MAX_STEPS = 64, 100_000
LR_LIMITS = (1e-12, 1e6)
DIVERGE_FACTOR = 4.0  # the range test stops once the smoothed loss exceeds this many times its minimum
SMOOTH = 0.98  # the range test's EMA of the loss (fastai's), bias-corrected
MIN_DROP = 0.1  # a range test suggests nothing unless its loss fell by this fraction somewhere


class ProbeError(ValueError):
    pass


def log_uniform(k: int, lo: float, hi: float, rng: random.Random) -> list[float]:
    """k values with log10 uniform on [log10 lo, log10 hi]: one at random in each of k equal strata
    (a Latin hypercube in one dimension), in random order. A random sample, never a grid, that
    still covers the range."""
    a, b = math.log10(lo), math.log10(hi)
    r = [a + (b - a) * (i + rng.random()) / k for i in range(k)]
    rng.shuffle(r)
    return [10.0 ** x for x in r]


def sample(k: int, lr_range: tuple[float, float], momentum_range: tuple[float, float] | None,
           seed: int) -> list[dict[str, float]]:
    """k settings: lr log-uniform in lr_range; momentum as 1 - 10^r with r uniform (1 - momentum
    log-uniform), stratified independently of the lr (a Latin hypercube in two dimensions)."""
    rng = random.Random(seed)
    lrs = log_uniform(k, *lr_range, rng)
    out = [{"lr": lr} for lr in lrs]
    if momentum_range is not None:
        lo, hi = momentum_range
        for s, m in zip(out, log_uniform(k, 1.0 - hi, 1.0 - lo, rng)):
            s["momentum"] = 1.0 - m
    return out


def parse_range(text: str, name: str) -> tuple[float, float]:
    """'1e-4:1e-1' -> (1e-4, 0.1)."""
    lo, sep, hi = str(text).partition(":")
    try:
        if not sep:
            raise ValueError
        return float(lo), float(hi)
    except ValueError:
        raise ProbeError(f"{name}: expected LO:HI, e.g. 1e-4:1e-1, got {text!r}") from None


def check_plan(k: Any, steps: Any, lr_range: Any, momentum_range: Any) -> tuple[tuple[float, float], tuple | None]:
    """Raise ProbeError unless these are a valid probe; return the ranges as float pairs."""
    for name, v, most in (("samples", k, MAX_SAMPLES), ("steps", steps, MAX_STEPS)):
        if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= most:
            raise ProbeError(f"{name}: must be an integer from 1 to {most}, got {v!r}")
    lr = _pair(lr_range, "lr_range")
    if not LR_LIMITS[0] <= lr[0] < lr[1] <= LR_LIMITS[1]:
        raise ProbeError(f"lr_range: must be LO < HI within {LR_LIMITS[0]:g}..{LR_LIMITS[1]:g}, got {lr[0]:g}:{lr[1]:g}")
    if momentum_range is None:
        return lr, None
    m = _pair(momentum_range, "momentum_range")
    if not 0 <= m[0] < m[1] < 1:
        raise ProbeError(f"momentum_range: must be 0 <= LO < HI < 1, got {m[0]:g}:{m[1]:g}")
    return lr, m


def _pair(v: Any, name: str) -> tuple[float, float]:
    if (not isinstance(v, (list, tuple)) or len(v) != 2
            or any(isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x) for x in v)):
        raise ProbeError(f"{name}: expected two finite numbers [lo, hi], got {v!r}")
    return float(v[0]), float(v[1])


def score(losses: list[float]) -> float:
    """Mean training loss over the last TAIL of the steps; inf when the side run diverged."""
    if not losses:
        return math.inf
    tail = losses[-max(1, math.ceil(TAIL * len(losses))):]
    s = sum(tail) / len(tail)
    return s if math.isfinite(s) else math.inf


def rank(results: list[dict]) -> list[dict]:
    """Best first: by score, then by val loss (a diverged run, score None, comes last)."""
    def key(r):
        s, v = r.get("score"), r.get("val_loss")
        return (math.inf if s is None else s, v if v is not None and math.isfinite(v) else math.inf)
    return sorted(results, key=key)


def refine(lr_range: tuple[float, float], momentum_range: tuple | None, best: dict) -> tuple[tuple, tuple | None]:
    """Coarse to fine: a range a third as wide (in log10) around the best setting."""
    def around(centre: float, lo: float, hi: float) -> tuple[float, float]:
        half = (math.log10(hi) - math.log10(lo)) / 6
        return 10 ** (math.log10(centre) - half), 10 ** (math.log10(centre) + half)
    lr = around(best["lr"], *lr_range)
    lr = (max(lr[0], LR_LIMITS[0]), min(lr[1], LR_LIMITS[1]))
    if momentum_range is None or "momentum" not in best:
        return lr, momentum_range
    lo, hi = around(1.0 - best["momentum"], 1.0 - momentum_range[1], 1.0 - momentum_range[0])
    return lr, (max(0.0, 1.0 - hi), min(1.0 - 1e-9, 1.0 - lo))


# --- the LR range test (Smith 2015; fastai's lr_find) ---------------------------------------------

def range_lr(i: int, n: int, lo: float, hi: float) -> float:
    """The lr of step i (0-based) of n: exponential from lo to hi."""
    return lo * (hi / lo) ** (i / max(1, n - 1))


def smoothed(losses: list[float]) -> list[float]:
    out, avg = [], 0.0
    for i, v in enumerate(losses, 1):
        avg = SMOOTH * avg + (1 - SMOOTH) * v
        out.append(avg / (1 - SMOOTH ** i))
    return out


def centred(losses: list[float]) -> list[float]:
    """A centred moving average over about a tenth of the curve: no lag, unlike the EMA that the
    online stop rule has to use, so the suggestions sit where the raw curve turns."""
    h = max(1, len(losses) // 20)
    return [sum(losses[max(0, i - h):i + h + 1]) / len(losses[max(0, i - h):i + h + 1]) for i in range(len(losses))]


def diverged(losses: list[float], steps: int) -> bool:
    """Stop the range test (of `steps` steps): a non-finite loss, or the smoothed loss above
    DIVERGE_FACTOR x its minimum once a tenth of the steps have set that minimum (a trained model's
    batch losses alone vary that much, and the first averages rest on a few of them)."""
    if not losses or not math.isfinite(losses[-1]):
        return bool(losses)
    if len(losses) < max(5, steps // 10):
        return False
    s = smoothed(losses)
    return s[-1] > DIVERGE_FACTOR * min(s)


def suggestions(lrs: list[float], losses: list[float]) -> dict[str, float | None]:
    """fastai's two: the lr where the smoothed loss falls fastest (per decade of lr) on the way down
    to its minimum, and the lr of that minimum divided by 10. None where the curve has no such point:
    the loss never falls MIN_DROP below where it started (a trained model's curve is flat, then rises,
    and its minimum is noise)."""
    pts = [(lr, v) for lr, v in zip(lrs, centred(losses)) if math.isfinite(v)]
    if len(pts) < 3:
        return {"steepest": None, "min_div10": None}
    lo = min(range(len(pts)), key=lambda i: pts[i][1])
    skip = max(1, len(pts) // 20)  # the edge points' averages rest on fewer losses
    if pts[lo][1] > (1 - MIN_DROP) * pts[min(skip, lo)][1]:
        return {"steepest": None, "min_div10": None}
    slopes = {i: (pts[i + 1][1] - pts[i][1]) / (math.log10(pts[i + 1][0]) - math.log10(pts[i][0]))
              for i in range(skip, lo)}
    steep = min(slopes, key=slopes.get) if slopes else None
    return {"steepest": pts[steep][0] if steep is not None and slopes[steep] < 0 else None,
            "min_div10": pts[lo][0] / 10 if lo > 0 else None}


@dataclass
class Plan:
    """One probe or range test the training thread is working through."""
    kind: str  # "probe" | "lr_find"
    settings: list[dict[str, float]]  # per side run: the hyperparameters it changes (lr_find: one, {})
    steps: int
    start_step: int
    main_branch: int
    prior_state: str
    base: dict  # the snapshot every side run starts from, and the main run returns to
    lr_range: tuple[float, float]
    momentum_range: tuple[float, float] | None = None
    started: float = 0.0  # time.monotonic() at the start
    index: int = 0  # the side run under way
    done_steps: int = 0  # its steps so far
    branch: int | None = None  # its journal branch, once it has one
    losses: list[float] = field(default_factory=list)
    lrs: list[float] = field(default_factory=list)
    results: list[dict] = field(default_factory=list)

    @property
    def total(self) -> int:
        return len(self.settings) * self.steps

    def progress(self) -> float:
        return (self.index * self.steps + self.done_steps) / self.total

    def eta(self, now: float) -> float | None:
        p = self.progress()
        return (now - self.started) * (1 - p) / p if p > 0 else None
