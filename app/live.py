"""The live view: refreshed about once a second by fragments, without rerunning the page."""
from __future__ import annotations

import time
from datetime import datetime

import numpy as np
import streamlit as st

from trainer import Trainer

from . import figures
from .common import fmt, trainer

MAX_POINTS = 2000
TICK = 1.0


def _on_lineage(branch: int, step: int, lineage: list[tuple[int, int, float]]) -> bool:
    return any(b == branch and after <= step <= upto for b, after, upto in lineage)


def snapshot(t: Trainer) -> dict:
    """Everything the charts draw, read from the journal: the single source of truth."""
    j, st_ = t.journal, t.status()
    b = st_["branch"]
    lineage = j.lineage(b)
    evals = j.evals(b)
    if len(evals) > MAX_POINTS // 2:  # every k-th evaluation and the last: a bounded chart payload
        evals = evals[:-1:-(-len(evals) // (MAX_POINTS // 2))] + evals[-1:]
    return {
        "status": st_,
        "metrics": j.metrics(b, max_points=MAX_POINTS),
        "evals": evals,
        "events": [e for e in reversed(j.events(kinds=("hparams", "restore"), limit=2000, newest_first=True))
                   if _on_lineage(e["branch"], e["step"], lineage)],
        "checkpoints": [c for c in j.checkpoints() if _on_lineage(c["branch"], c["step"], lineage)],
        "branches": j.other_branches(b, max_points=500),
    }


def _eta(st_: dict) -> str:
    if not st_["max_steps"] or st_["state"] != "running" or not st_["samples_per_s"]:
        return "—"
    steps_s = st_["samples_per_s"] / st_["hparams"]["batch_size"]
    left = max(0, st_["max_steps"] - st_["step"]) / max(steps_s, 1e-9)
    return time.strftime("%H:%M:%S", time.gmtime(left)) if left < 86400 else f"{left / 86400:.1f} d"


STATE_BADGES = {"running": ":green-badge[running]", "paused": ":orange-badge[paused]", "error": ":red-badge[error]",
                "stopped": ":gray-badge[stopped]", "done": ":blue-badge[done]", "ready": ":gray-badge[ready]",
                "closed": ":gray-badge[closed]"}


def metrics_row(data: dict, smoothing: float) -> None:
    st_ = data["status"]
    smooth = figures.ema([m["loss"] for m in data["metrics"]], smoothing)
    ev = st_.get("eval") or {}
    cols = st.columns([1, 1.15, 1.1, 1, 1, 1, 1, 0.9])
    with cols[0]:
        st.caption("Status")
        st.markdown(f"#### {STATE_BADGES.get(st_['state'], st_['state'])}")
    cols[1].metric("Step", f"{st_['step']:,}", help=f"stops at step {st_['max_steps']:,}" if st_["max_steps"] else None)
    cols[2].metric("Epoch", f"{st_['epoch']} · {st_['epoch_progress']:.0%}")
    cols[2].progress(min(1.0, st_["epoch_progress"]))
    sps = st_["samples_per_s"] if st_["state"] == "running" else None
    cols[3].metric("Samples/s", f"{sps:,.0f}" if sps else "—")
    cols[4].metric("Loss (smoothed)", fmt(smooth[-1] if smooth else None, ".3g"))
    cols[5].metric("Val loss", fmt(ev.get("val_loss"), ".3g"))
    cols[6].metric("Val accuracy", fmt(ev.get("val_acc"), ".1%"))
    cols[7].metric("ETA", _eta(st_))


def _points(t: Trainer, n: int = 600):
    data = t.task.train_data
    if not hasattr(data, "tensors"):
        return None
    x, y = data.tensors
    idx = np.linspace(0, len(x) - 1, min(n, len(x))).astype(int)
    return x[idx].numpy(), y[idx].numpy()


def live_view() -> None:
    t = trainer()
    data = snapshot(t)
    st_ = data["status"]
    if st_["state"] == "error":
        st.error(f"**Training paused on an error.** {st_['error']}  \nChange a hyperparameter and Resume, or "
                 "restore a checkpoint below and go on.")
    smoothing = st.session_state.get("smoothing", 0.6)
    metrics_row(data, smoothing)
    x_axis = st.session_state.get("x_axis", "step")
    revision = f"{st_['run_dir']}|{x_axis}|{st.session_state.get('log_y', False)}"
    side = t.task.grid is not None or bool(t.task.metrics)
    left, right = st.columns([2.3, 1]) if side else (st.container(), None)
    with left:
        if not data["metrics"]:
            st.info("No steps yet. Press **Start** to train; the loss curve appears here within seconds.")
        fig = figures.loss_figure(data["metrics"], data["evals"], data["events"], data["checkpoints"],
                                  data["branches"], smoothing=smoothing, log_y=st.session_state.get("log_y", False),
                                  x_axis=x_axis, revision=revision)
        st.plotly_chart(fig, key="loss_chart", config={"displaylogo": False})
    if right is not None:
        with right:
            grid = t.view.get("grid")
            if grid is not None:
                st.plotly_chart(figures.boundary_figure(grid, _points(t), revision=st_["run_dir"]), key="boundary",
                                config={"displayModeBar": False})
            elif t.task.grid is not None:
                st.caption("The decision boundary appears at the first evaluation.")
            if t.task.metrics:
                st.plotly_chart(figures.accuracy_figure(data["evals"], data["metrics"], x_axis=x_axis,
                                                        revision=revision), key="acc_chart",
                                config={"displayModeBar": False})
    if st.session_state.get("_seen_state") not in (None, st_["state"]):
        st.session_state["_seen_state"] = st_["state"]
        st.rerun(scope="app")  # buttons and the refresh timer follow the new state
    st.session_state["_seen_state"] = st_["state"]


def chart_options() -> None:
    c1, c2, c3 = st.columns([2, 1.2, 1])
    c1.slider("Smoothing", 0.0, 0.99, 0.6, 0.01, key="smoothing",
              help="TensorBoard's debiased exponential moving average of the train loss.")
    c2.segmented_control("X axis", ["step", "epoch", "time"], default="step", key="x_axis")
    c3.toggle("Log scale (loss)", key="log_y")


def event_log() -> None:
    t = trainer()
    rows = t.journal.events(limit=200, newest_first=True)
    if not rows:
        st.caption("No events yet.")
        return
    st.dataframe(
        [{"time": datetime.fromtimestamp(e["wall"]).strftime("%H:%M:%S"), "step": e["step"],
          "branch": e["branch"], "event": e["kind"], "what": e["message"]} for e in rows],
        hide_index=True, height=320, key="events_table",
        column_config={"what": st.column_config.TextColumn(width="large")})


def checkpoint_table() -> None:
    t = trainer()
    rows = t.journal.checkpoints()
    if not rows:
        st.caption("No checkpoints yet: one is saved every "
                   f"{t.cfg.ckpt_every} steps, and whenever you press Save checkpoint.")
        return
    st.dataframe(
        [{"id": c["id"], "step": c["step"], "epoch": c["epoch"],
          "time": datetime.fromtimestamp(c["wall"]).strftime("%H:%M:%S"), "train loss": c["train_loss"],
          "val loss": c["val_loss"], "lr": c["hparams"].get("lr"), "momentum": c["hparams"].get("momentum"),
          "batch": c["hparams"].get("batch_size"), "label": c["label"] or "", "kind": c["kind"], "branch": c["branch"]}
         for c in reversed(rows)],
        hide_index=True, height=260, key="ckpt_table",
        column_config={"train loss": st.column_config.NumberColumn(format="%.4g"),
                       "val loss": st.column_config.NumberColumn(format="%.4g"),
                       "lr": st.column_config.NumberColumn(format="%.4g")})


def run_every() -> float | None:
    return TICK if trainer().state == "running" else None
