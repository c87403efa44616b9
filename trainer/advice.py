"""Advice that cites its evidence: a few rules over the journal's instruments, each stating the numbers
it rests on. Rules only, no model of the run: each one is what a babysitting checklist says
(CS231n's "babysitting the learning process", Karpathy's recipe), tested on a constructed run.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

HEALTHY = 1e-3  # update / weight per step (CS231n: "somewhere around 1e-3")
RECENT = 200  # steps the trend rules look at


@dataclass(frozen=True)
class Advice:
    rule: str  # short id, e.g. "lr-too-high"
    text: str  # one line citing the numbers it rests on
    severity: str  # "warning" | "info"


def _recent(reader, branch: int, n: int = RECENT) -> tuple[np.ndarray, np.ndarray]:
    """The last n step rows of the lineage: (loss, update_ratio) as float arrays (NaN for NULL)."""
    rows: list[tuple] = []
    ratio = reader.ratio_column()
    for b, after, upto in reversed(reader.lineage(branch)):
        hi = 2 ** 62 if upto == float("inf") else upto
        rows = reader._con().execute(
            f"SELECT loss, {ratio} FROM steps WHERE branch = ? AND step > ? AND step <= ? ORDER BY step DESC "
            "LIMIT ?", (b, after, hi, n - len(rows))).fetchall()[::-1] + rows
        if len(rows) >= n:
            break
    a = np.array([[np.nan if v is None else v for v in r] for r in rows], dtype=float).reshape(-1, 2)
    return a[:, 0], a[:, 1]


def _trend(loss: np.ndarray) -> tuple[float, float] | None:
    """Median loss of the first and last quarter of the window, when it is long enough."""
    loss = loss[np.isfinite(loss)]
    if len(loss) < RECENT // 2:
        return None
    q = len(loss) // 4
    return float(np.median(loss[:q])), float(np.median(loss[-q:]))


def lr_rules(loss: np.ndarray, ratio: np.ndarray) -> list[Advice]:
    out = []
    trend = _trend(loss)
    r = ratio[np.isfinite(ratio) & (ratio > 0)]
    med = float(np.median(r)) if len(r) else None
    if trend and med is not None:
        first, last = trend
        if last > 1.2 * first and med > 10 * HEALTHY:
            out.append(Advice("lr-too-high", f"loss rising for {len(loss)} steps (median {first:.3g} → {last:.3g}) "
                                             f"and update/weight {med:.1e} ≫ 1e-3: the lr is likely too high",
                              "warning"))
        elif abs(last - first) <= 0.02 * abs(first) and med < 0.1 * HEALTHY:
            out.append(Advice("lr-too-low", f"update/weight {med:.1e} ≪ 1e-3 and the loss moved "
                                            f"{abs(last - first) / max(abs(first), 1e-12):.1%} in {len(loss)} steps "
                                            "(median {:.3g} → {:.3g}): the lr is likely too low".format(first, last),
                              "warning"))
    return out


def overfitting(evals: list[dict], n: int = 3) -> list[Advice]:
    """Val loss rising while train loss falls, for `n` evaluations in a row."""
    ev = [e for e in evals if e.get("val_loss") is not None and e.get("train_loss") is not None]
    if len(ev) < n + 1:
        return []
    last = ev[-(n + 1):]
    val, train = [e["val_loss"] for e in last], [e["train_loss"] for e in last]
    if all(b > a for a, b in zip(val, val[1:])) and all(b < a for a, b in zip(train, train[1:])):
        return [Advice("overfitting", f"val loss rising ({val[0]:.3g} → {val[-1]:.3g}) while train falls "
                                      f"({train[0]:.3g} → {train[-1]:.3g}) for {n} evaluations: overfitting — "
                                      "weight decay, or restore the best checkpoint?", "warning")]
    return []


def init_loss(first_loss: float | None, classes: int | None) -> list[Advice]:
    """A softmax classifier over C classes starts near -log(1/C) = log C (CS231n's first sanity check)."""
    if first_loss is None or not classes or classes < 2 or not math.isfinite(first_loss):
        return []
    expect = math.log(classes)
    if abs(first_loss - expect) > 0.25 * expect:
        what = ("too confident at init: scale the last layer's weights down" if first_loss > expect
                else "lower than chance: check the labels, or a loss that is not cross-entropy")
        return [Advice("init-loss", f"loss at step 1 is {first_loss:.3g}, but a softmax over {classes} classes starts "
                                    f"near log {classes} = {expect:.3g}: {what}", "info")]
    return []


def activation_rules(layers: list[dict]) -> list[Advice]:
    """Dead or saturated units at the latest instrument step."""
    acts = [r for r in layers if r.get("act_mean") is not None]
    if not acts:
        return []
    step = max(r["step"] for r in acts)
    out = []
    for r in (r for r in acts if r["step"] == step):
        if (r.get("act_dead") or 0) > 0.5:
            out.append(Advice("dead-units", f"{r['act_dead']:.0%} of the units of {r['layer']} never fire (step "
                                            f"{step}): dead ReLUs — a lower lr, or check the init", "warning"))
        if (r.get("act_sat") or 0) > 0.5:
            out.append(Advice("saturated", f"{r['act_sat']:.0%} of {r['layer']}'s outputs are saturated (step "
                                           f"{step}): gradients vanish there — normalise inputs or use ReLU",
                              "warning"))
    return out


def first_loss(reader, branch: int) -> tuple[int, float | None] | None:
    """(step, loss) of the lineage's first step, read alone (a long run's steps are never all read)."""
    root = reader.lineage(branch)[0][0]
    row = reader._con().execute("SELECT step, loss FROM steps WHERE branch = ? ORDER BY step LIMIT 1",
                                (root,)).fetchone()
    return (row[0], row[1]) if row else None


def advise(reader, branch: int, classes: int | None = None) -> list[Advice]:
    """Every rule over the lineage of `branch`, in order of urgency."""
    loss, ratio = _recent(reader, branch)
    return (lr_rules(loss, ratio) + overfitting(reader.evals(branch)) + activation_rules(reader.layer_rows(branch, 5))
            + init_loss((first_loss(reader, branch) or (None, None))[1], classes))


def summary(reader, branch: int) -> dict:
    """The latest instrument readings: for `diagnose` and the dashboard."""
    loss, ratio = _recent(reader, branch, 50)
    layers = reader.layer_rows(branch, 5)
    step = max((r["step"] for r in layers), default=None)
    row = reader.last_row(branch) or {}
    evals = [e for e in reader.evals(branch) if e.get("val_loss") is not None]
    last_eval = evals[-1] if evals else {}
    fin = lambda a: a[np.isfinite(a)]  # noqa: E731
    return {"step": row.get("step"), "loss": row.get("loss"), "grad_norm": row.get("grad_norm"),
            "update_ratio": row.get("update_ratio"),
            "loss_median_50": float(np.median(fin(loss))) if len(fin(loss)) else None,
            "update_ratio_median_50": float(np.median(fin(ratio))) if len(fin(ratio)) else None,
            "val_loss": last_eval.get("val_loss"), "train_loss": last_eval.get("train_loss"),
            "first_loss": (first_loss(reader, branch) or (None, None))[1],
            "layers_step": step, "layers": [r for r in layers if r["step"] == step]}
