"""The loss chart's options (smoothing, x axis, log y, ignore outliers, abandoned branches, runs to
compare), kept per run across reloads in `<runs>/.views/<run>.json`: beside the run, never inside
it (the trainer process is the run directory's one writer)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import streamlit as st

from trainer import Reader

from . import history, runtime
from .figures import X_TITLES, fmt3

DEFAULTS = {"smoothing": 0.6, "x_axis": "step", "log_y": False, "robust": True, "branches": True, "compare": []}
KEYS = {k: f"opt_{k}" for k in DEFAULTS}
X_AXES = list(X_TITLES)
COMPARE_MOST = 5


def path(run_dir: str | Path) -> Path:
    return Path(run_dir).parent / ".views" / f"{Path(run_dir).name}.json"


def valid(o: dict) -> dict:
    """The known, well-typed options of `o`; anything else is dropped (a hand-edited file cannot break the page)."""
    out = {}
    if isinstance(o.get("smoothing"), (int, float)) and 0 <= o["smoothing"] <= 0.99:
        out["smoothing"] = float(o["smoothing"])
    if o.get("x_axis") in X_AXES:
        out["x_axis"] = o["x_axis"]
    for k in ("log_y", "robust", "branches"):
        if isinstance(o.get(k), bool):
            out[k] = o[k]
    if isinstance(o.get("compare"), list):
        out["compare"] = [n for n in o["compare"] if isinstance(n, str) and n and "/" not in n and n[0] != "."]
    return out


def load(run_dir: str | Path) -> dict:
    try:
        return {**DEFAULTS, **valid(json.loads(path(run_dir).read_text()))}
    except (OSError, ValueError, AttributeError):
        return dict(DEFAULTS)


def save(run_dir: str | Path, options: dict) -> None:
    p = path(run_dir)
    try:
        p.parent.mkdir(exist_ok=True)
        tmp = p.with_suffix(".tmp")
        tmp.write_text(json.dumps(valid(options)))
        tmp.replace(p)
    except OSError as e:  # a read-only runs folder: the options still hold for this session
        st.toast(f"Chart options not saved: {e}", icon="⚠️")


def get() -> dict:
    """This session's options for the run it shows, loaded from the run's file when the run changes."""
    ss = st.session_state
    rd = ss.get("_run_dir")
    # Streamlit drops a widget's state on a run that does not draw it: then load again too
    if rd and (ss.get("_options_for") != rd or any(ss.get(key) is None for key in KEYS.values())):
        for k, v in load(rd).items():
            ss[KEYS[k]] = v
        ss["_options_for"] = rd
    return {**DEFAULTS, **valid({k: ss.get(key) for k, key in KEYS.items()})}


def _changed() -> None:
    save(st.session_state["_run_dir"], get())


def widgets() -> None:
    o = get()
    c1, c2, c3, c4, c5 = st.columns([1.6, 1.9, 0.9, 1.1, 1.1])
    c1.slider("Smoothing", 0.0, 0.99, step=0.01, key=KEYS["smoothing"], on_change=_changed,
              help="TensorBoard's debiased exponential moving average of the train loss, per step.")
    c2.segmented_control("X axis", X_AXES, key=KEYS["x_axis"], on_change=_changed, required=True,
                         help="train time: time spent training, pauses removed. Box-select zooms on the step axis.")
    c3.toggle("Log y", key=KEYS["log_y"], on_change=_changed)
    c4.toggle("Ignore outliers", key=KEYS["robust"], on_change=_changed,
              help="Bound the y axis by the curve without its isolated spikes; a spike above it is drawn at the "
                   "top edge (red triangle), its value in the hover.")
    c5.toggle("Abandoned branches", key=KEYS["branches"], on_change=_changed)
    me = Path(st.session_state["_run_dir"]).name
    others = [n for n, _ in runtime.list_runs(Path(st.session_state["_run_dir"]).parent) if n != me]
    if o["compare"] and any(n not in others for n in o["compare"]):
        st.session_state[KEYS["compare"]] = [n for n in o["compare"] if n in others]
    st.multiselect("Compare with runs", others, key=KEYS["compare"], on_change=_changed,
                   max_selections=COMPARE_MOST, placeholder="Overlay other runs' loss and val curves…")


def compare_curves(run_dir: str, names: list[str], smoothing: float) -> list[dict]:
    """Each named run beside `run_dir`: its newest lineage's smoothed loss and val loss, downsampled,
    named with its task and starting hyperparameters."""
    out = []
    for name in names[:COMPARE_MOST]:
        d = Path(run_dir).parent / name
        try:
            j = Reader(d)
            newest = j.query("SELECT branch FROM summary ORDER BY wall DESC LIMIT 1")
            if not newest:
                continue
            branch = newest[0]["branch"]
            units, _ = j.curve(branch, budget=history.BUDGET)
            first = j.query("SELECT lr, momentum FROM steps WHERE branch = ? ORDER BY step LIMIT 1",
                            (j.lineage(branch)[0][0],))
            task = (j.meta().get("run_info") or {}).get("task_name", "?")
        except Exception:  # a run being created, or not a run: left out of the overlay
            continue
        steps, smooth = history.smoothed(units, smoothing, history.BRANCH_POINTS)
        ev = [e for e in history.evals(j, j.lineage(branch), 0, 2 ** 62, most=60) if e.get("val_loss") is not None]
        hp = f" · lr {fmt3(first[0]['lr'])} · momentum {fmt3(first[0]['momentum'])}" if first else ""
        out.append({"name": f"{name} · {task}{hp}", "step": steps,
                    "smooth": smooth, "positions": history.positions(units),
                    "val_step": np.array([e["step"] for e in ev]), "val": np.array([e["val_loss"] for e in ev])})
    return out
