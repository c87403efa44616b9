"""The live view: refreshed every one or two seconds by fragments, without rerunning the page."""
from __future__ import annotations

import time
from datetime import datetime

import plotly.graph_objects as go
import streamlit as st

from trainer import Reader, Status

from . import figures, history, recover, view_options
from .common import DETACHED, fmt, follow_live, reader, status

TICK = 1.0
SIDE_EVERY = 5  # the side charts refresh every fifth tick (evaluations are less frequent than steps)
# The loss chart redraws at most every 2 s: each redraw is ~17 kB of websocket and ~250 ms of plotly
# in a browser on a slow core. The metrics row above it keeps the one-second tick.
CHART_S = 2.0


def loss_chart_data(run_dir: str, branch: int, *, zoom: tuple[int, int] | None = None,
                    options: dict | None = None, j: Reader | None = None) -> tuple[dict, go.Figure]:
    """One tick of the loss chart, without Streamlit: the journal reads (the view) and the figure."""
    o = {**view_options.DEFAULTS, **(options or {})}
    view = history.loss_view(j or Reader(run_dir), branch, zoom=zoom, smoothing=o["smoothing"],
                             branches=o["branches"])
    return view, figures.loss_figure(view, log_y=o["log_y"], x_axis=o["x_axis"], robust=o["robust"],
                                     compare=view_options.compare_curves(run_dir, o["compare"], o["smoothing"]),
                                     revision=_revision(run_dir, o, zoom))


def _revision(run_dir: str, o: dict, zoom) -> str:
    """plotly keeps the user's own zoom and legend clicks while this stays the same."""
    return f"{run_dir}|{o['x_axis']}|{o['log_y']}|{zoom}"


def _eta(s: Status) -> str:
    if not s.max_steps or s.state != "running" or not s.samples_per_s:
        return "—"
    steps_s = s.samples_per_s / s.hparams.batch_size
    left = max(0, s.max_steps - s.step) / max(steps_s, 1e-9)
    return time.strftime("%H:%M:%S", time.gmtime(left)) if left < 86400 else f"{left / 86400:.1f} d"


STATE_BADGES = {"running": ":green-badge[running]", "paused": ":orange-badge[paused]", "error": ":red-badge[error]",
                "stopped": ":gray-badge[stopped]", "done": ":blue-badge[done]", "ready": ":gray-badge[ready]",
                "closed": ":gray-badge[closed]", "probing": ":violet-badge[probing]", "idle": ":gray-badge[no trainer]",
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
    if s.run.precision != "fp32" or s.run.compiled:
        st.caption(engine_line(s))
    if s.ranks and s.state == "running":
        st.caption(ranks_line(s))


def ranks_line(s: Status) -> str:
    """Each rank's throughput over its own busy time (a straggler shows low), its share of the wall
    clock spent computing rather than waiting, and its memory."""
    where = "GPU" if str(s.run.device).startswith("cuda") else "RSS"
    return " · ".join(f"rank {r['rank']}: **{r['samples_per_s']:,.0f}** samples/s, busy {r['busy']:.0%}, "
                      f"{where} {r['memory'] / 2**20:,.0f} MiB" for r in s.ranks)


def engine_line(s: Status) -> str:
    """Precision, the fp16 loss scale and its skipped steps, the compile time: what changes the math or the speed."""
    parts = [f"precision **{s.run.precision}**"]
    if s.run.precision == "fp16":
        parts.append(f"loss scale **{fmt(s.loss_scale, ',.0f')}**")
        if s.state not in DETACHED:  # a trainer serves the run and counts them (a journal alone does not say)
            parts.append(f"**{s.overflows:,}** step{'s' if s.overflows != 1 else ''} skipped by the scaler (overflow)")
    if s.run.compiled:
        parts.append(f"torch.compile: **{s.compile_s:.1f} s** compiling" if s.compile_s else "torch.compile: not yet compiled")
    return " · ".join(parts)


def live_header() -> None:
    """The error banner and the metrics row, once a second; follows a state changed elsewhere."""
    s = status()
    if s.state == "error":
        recover.banner()
    metrics_row(s, history.last_smoothed(reader(), s.branch, view_options.get()["smoothing"]))
    follow_live(s)  # buttons, fields and the refresh timer follow a new state


def loss_chart() -> None:
    """The loss curve with its markers and hyperparameter timeline, every two seconds while training.
    A box drawn on it zooms to that range at full resolution."""
    s = status()
    ss = st.session_state
    zoom = ss.get("_zoom", {}).get(s.run.run_dir)
    o = view_options.get()
    if zoom:
        c1, c2 = st.columns([4, 1])
        c1.caption(f"Zoomed to steps {zoom[0]:,}–{zoom[1]:,}: every step drawn (up to {history.ZOOM_POINTS:,}), "
                   "spikes and markers at their own step.")
        c2.button("↔ Whole run", key="btn_whole_run", on_click=_unzoom, args=(s.run.run_dir,), width="stretch")
    view, fig = loss_chart_data(s.run.run_dir, s.branch, zoom=zoom, options=o, j=reader())
    if not zoom:  # the spikes the chart marks, each offered Recover in the Anomalies tab
        ss.setdefault("_spikes", {})[s.run.run_dir] = [(int(p), float(v)) for p, v in view["spikes"]]
    if not s.step and not zoom:
        st.info("No steps yet. Press **Start** to train; the loss curve appears here within seconds.")
    event = st.plotly_chart(fig, key="loss_chart", on_select="rerun", selection_mode="box",
                            config={"displaylogo": False})
    _on_select(event, s.run.run_dir, o["x_axis"])
    if view["checkpoints"]:
        strip = st.plotly_chart(figures.checkpoint_strip(view, x_axis=o["x_axis"],
                                                         revision=_revision(s.run.run_dir, o, zoom)),
                                key="checkpoint_strip", on_select="rerun", selection_mode="points",
                                config={"displayModeBar": False})
        _on_pick(strip)


def _unzoom(run_dir: str) -> None:
    st.session_state.setdefault("_zoom", {}).pop(run_dir, None)


def _on_select(event, run_dir: str, x_axis: str) -> None:
    """A new box (in steps) zooms to its range. Each box is acted on once: plotly re-sends a
    standing box whenever the data under it change."""
    ss = st.session_state
    boxes = [b.get("x") for b in ((event or {}).get("selection") or {}).get("box") or []]
    if not boxes or repr(boxes[-1]) == ss.get("_seen_box"):
        return
    ss["_seen_box"] = repr(boxes[-1])
    if x_axis == "step" and len(boxes[-1] or []) == 2:
        lo, hi = sorted(int(round(float(v))) for v in boxes[-1])
        if hi - lo >= 2:
            ss.setdefault("_zoom", {})[run_dir] = (max(1, lo), hi)
            st.rerun(scope="fragment")


def _on_pick(event) -> None:
    """A checkpoint clicked on the strip becomes the Restore form's choice (once per click)."""
    ss = st.session_state
    picked = [p.get("customdata") for p in ((event or {}).get("selection") or {}).get("points") or []]
    picked = [c for c in picked if isinstance(c, int)]
    if not picked:
        ss.pop("_seen_pick", None)
        return
    if picked[0] == ss.get("_seen_pick"):
        return
    # Handed to the Restore form through a key of its own: a widget's state is dropped by any run that
    # does not draw the widget, and the form is drawn only while its tab is open.
    ss["_seen_pick"] = ss["_pick"] = picked[0]
    ss["main_tab"] = "Checkpoints"  # the Restore form is drawn only in its open tab: open it
    ss.setdefault("_flash", []).append(("ok", f"Checkpoint #{picked[0]} picked: Restore it in the Checkpoints tab."))
    st.rerun(scope="app")


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
        o = view_options.get()
        zoom = st.session_state.get("_zoom", {}).get(s.run.run_dir)
        view = history.loss_view(reader(), s.branch, zoom=zoom, smoothing=o["smoothing"], branches=False)
        for name in s.run.metrics:  # every metric the task declares, e.g. acc or a plugin's mae
            st.plotly_chart(figures.metric_figure(view, name, x_axis=o["x_axis"],
                                                  revision=f"{s.run.run_dir}|{o['x_axis']}|{zoom}"),
                            key=f"metric_chart_{name}", config={"displayModeBar": False})


def shown_values() -> None:
    """What the task shows at each evaluation (Task.show): numbers as metrics (quadratic's w and
    cost), text as a block (charlm's sample, generated in eval mode)."""
    s = status()
    ev = dict(s.eval or {})
    shown = {k: v for k, v in ev.items() if k != "step" and not k.startswith(("val_", "train_"))}
    if not shown:
        return
    nums = {k: v for k, v in shown.items() if not isinstance(v, str)}
    if nums:
        cols = st.columns(max(4, len(nums)))
        for col, (k, v) in zip(cols, nums.items()):
            col.metric(f"{k} (step {ev['step']:,})", fmt(v, ".6g"))
    for k, v in shown.items():
        if isinstance(v, str):
            st.caption(f"{k} at step {ev['step']:,} (the model in eval mode)")
            st.code(v, language=None, wrap_lines=True)


def live_view(every: float) -> None:
    """The live part of the page: fragments, so each redraws only what it shows, at its pace."""
    st.fragment(run_every=every)(live_header)()
    s = status()
    chart_every = every and max(every, CHART_S)
    if s.run.has_grid or s.run.metrics:
        left, right = st.columns([2.3, 1])
        with left:
            st.fragment(run_every=chart_every)(loss_chart)()
            st.fragment(run_every=SIDE_EVERY * every)(shown_values)()
        with right:
            st.fragment(run_every=SIDE_EVERY * every)(side_charts)()
    else:
        st.fragment(run_every=chart_every)(loss_chart)()
        st.fragment(run_every=SIDE_EVERY * every)(shown_values)()


def chart_options() -> None:
    """The chart's options, kept per run across reloads (runs/.views/<run>.json)."""
    view_options.widgets()


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
    return TICK if status().state in ("running", "probing") else 5 * TICK
