"""The live view: refreshed about once a second by fragments, without rerunning the page."""
from __future__ import annotations

import time
from datetime import datetime

import streamlit as st

from trainer import Reader, Status

from . import figures
from .history import history
from .common import fmt, follow_live, reader, status

MAX_POINTS = 500  # rows drawn on the loss chart: each bucket's min and max, so no spike is hidden
TICK = 1.0
SIDE_EVERY = 5  # the side charts refresh every fifth tick (evaluations are less frequent than steps)
SMOOTH_TAIL = 2000  # the metrics row's smoothed loss: the EMA over the last rows (0.99^2000 ~ 2e-9)


def snapshot(s: Status, j: Reader) -> dict:
    """Everything the charts draw: the run's history on the branch `s` is on, read incrementally
    (app/history.py) and picked down to about MAX_POINTS rows, spikes and markers kept."""
    h = history(j, s.run.run_dir, s.branch)
    return {
        "status": s,
        "metrics": h.rows(MAX_POINTS),
        "evals": figures.thin(h.evals, MAX_POINTS // 4),
        "events": list(h.events),
        "checkpoints": list(h.checkpoints),
        "branches": h.branches,
    }


def _eta(s: Status) -> str:
    if not s.max_steps or s.state != "running" or not s.samples_per_s:
        return "—"
    steps_s = s.samples_per_s / s.hparams.batch_size
    left = max(0, s.max_steps - s.step) / max(steps_s, 1e-9)
    return time.strftime("%H:%M:%S", time.gmtime(left)) if left < 86400 else f"{left / 86400:.1f} d"


STATE_BADGES = {"running": ":green-badge[running]", "paused": ":orange-badge[paused]", "error": ":red-badge[error]",
                "stopped": ":gray-badge[stopped]", "done": ":blue-badge[done]", "ready": ":gray-badge[ready]",
                "closed": ":gray-badge[closed]", "idle": ":gray-badge[no trainer]",
                "finished": ":blue-badge[finished]", "busy": ":gray-badge[starting or closing]"}


def metrics_row(s: Status, smoothed_loss: float | None) -> None:
    ev = s.eval or {}
    cols = st.columns([1, 1.15, 1.1, 1, 1, 1, 1, 0.9])
    with cols[0]:
        st.caption("Status")
        st.markdown(f"#### {STATE_BADGES.get(s.state, s.state)}")
    cols[1].metric("Step", f"{s.step:,}", help=f"stops at step {s.max_steps:,}" if s.max_steps else None)
    cols[2].metric("Epoch", f"{s.epoch} · {s.epoch_progress:.0%}")
    cols[2].progress(min(1.0, s.epoch_progress))
    sps = s.samples_per_s if s.state == "running" else None
    cols[3].metric("Samples/s", f"{sps:,.0f}" if sps else "—")
    cols[4].metric("Loss (smoothed)", fmt(smoothed_loss, ".3g"))
    cols[5].metric("Val loss", fmt(ev.get("val_loss"), ".3g"))
    if s.run.metrics:  # the task's first metric; the side charts show them all
        name = s.run.metrics[0]
        cols[6].metric(f"Val {figures.metric_title(name)}", fmt(ev.get(f"val_{name}"), figures.metric_format(name)))
    cols[7].metric("ETA", _eta(s))


def live_header() -> None:
    """The error banner and the metrics row, once a second; follows a state changed elsewhere."""
    s = status()
    if s.state == "error":
        st.error(f"**Training paused on an error.** {s.error}  \nChange a hyperparameter and Resume, or "
                 "restore a checkpoint below and go on.")
    tail = history(reader(), s.run.run_dir, s.branch).column("loss")[-SMOOTH_TAIL:]
    smooth = figures.ema(tail.tolist(), st.session_state.get("smoothing", 0.6))
    metrics_row(s, smooth[-1] if smooth else None)
    follow_live(s)  # buttons, fields and the refresh timer follow a new state


def _revision(s: Status) -> str:
    return f"{s.run.run_dir}|{st.session_state.get('x_axis', 'step')}|{st.session_state.get('log_y', False)}"


def loss_chart() -> None:
    """The loss curve with its markers and hyperparameter timeline, once a second while training."""
    s = status()
    data = snapshot(s, reader())
    if not data["metrics"]:
        st.info("No steps yet. Press **Start** to train; the loss curve appears here within seconds.")
    fig = figures.loss_figure(data["metrics"], data["evals"], data["events"], data["checkpoints"],
                              data["branches"], smoothing=st.session_state.get("smoothing", 0.6),
                              log_y=st.session_state.get("log_y", False),
                              x_axis=st.session_state.get("x_axis", "step"), revision=_revision(s))
    st.plotly_chart(fig, key="loss_chart", config={"displaylogo": False})


def side_charts() -> None:
    """The decision boundary and the task's metrics: they change at evaluations, so a slower tick."""
    s = status()
    if s.grid is not None:
        grid = {"step": s.grid.step, "axis": s.grid.axis, "probs": s.grid.probs}
        st.plotly_chart(figures.boundary_figure(grid, s.run.points, revision=s.run.run_dir), key="boundary",
                        config={"displayModeBar": False})
    elif s.run.has_grid:
        st.caption("The decision boundary appears at the first evaluation.")
    if s.run.metrics:
        h = history(reader(), s.run.run_dir, s.branch)
        evals = figures.thin(h.evals, MAX_POINTS // 4)
        for name in s.run.metrics:  # every metric the task declares, e.g. acc or a plugin's mae
            st.plotly_chart(figures.metric_figure(evals, name, h.rows(MAX_POINTS // 4),
                                                  x_axis=st.session_state.get("x_axis", "step"),
                                                  revision=_revision(s)), key=f"metric_chart_{name}",
                            config={"displayModeBar": False})


def live_view(every: float) -> None:
    """The live part of the page: three fragments, so each redraws only what it shows, at its pace."""
    st.fragment(run_every=every)(live_header)()
    s = status()
    if s.run.has_grid or s.run.metrics:
        left, right = st.columns([2.3, 1])
        with left:
            st.fragment(run_every=every)(loss_chart)()
        with right:
            st.fragment(run_every=SIDE_EVERY * every)(side_charts)()
    else:
        st.fragment(run_every=every)(loss_chart)()


def chart_options() -> None:
    c1, c2, c3 = st.columns([2, 1.2, 1])
    c1.slider("Smoothing", 0.0, 0.99, 0.6, 0.01, key="smoothing",
              help="TensorBoard's debiased exponential moving average of the train loss.")
    c2.segmented_control("X axis", ["step", "epoch", "time"], default="step", key="x_axis")
    c3.toggle("Log scale (loss)", key="log_y")


def event_log() -> None:
    rows = reader().events(limit=200, newest_first=True)
    if not rows:
        st.caption("No events yet.")
        return
    st.dataframe(
        [{"time": datetime.fromtimestamp(e["wall"]).strftime("%H:%M:%S"), "step": e["step"],
          "branch": e["branch"], "event": e["kind"], "what": e["message"]} for e in rows],
        hide_index=True, height=320, key="events_table",
        column_config={"what": st.column_config.TextColumn(width="large")})


def checkpoint_table() -> None:
    rows = reader().checkpoints()
    if not rows:
        st.caption("No checkpoints yet: one is saved every "
                   f"{status().run.ckpt_every} steps, and whenever you press Save checkpoint.")
        return
    st.dataframe(
        [{"id": c["id"], "step": c["step"], "epoch": c["epoch"],
          "time": datetime.fromtimestamp(c["wall"]).strftime("%H:%M:%S"), "train loss": c["train_loss"],
          "val loss": c["val_loss"], "lr": c["hparams"].get("lr"), "momentum": c["hparams"].get("momentum"),
          "weight decay": c["hparams"].get("weight_decay"), "batch": c["hparams"].get("batch_size"), "label": c["label"] or "", "kind": c["kind"], "branch": c["branch"]}
         for c in reversed(rows)],
        hide_index=True, height=260, key="ckpt_table",
        column_config={"train loss": st.column_config.NumberColumn(format="%.4g"),
                       "val loss": st.column_config.NumberColumn(format="%.4g"),
                       "lr": st.column_config.NumberColumn(format="%.4g"),
                       "weight decay": st.column_config.NumberColumn(format="%.4g")})


def run_every() -> float:
    """Once a second while training; slower otherwise, so a change made elsewhere (`ctl`, another tab,
    a trainer process that ended) still shows."""
    return TICK if status().state == "running" else 5 * TICK
