"""The Diagnostics tab: the babysitting checklist (CS231n, Karpathy's recipe) read off the run's
instruments. The builders are pure (journal rows in, plotly figure out); diagnostics_view lays them out."""
from __future__ import annotations

import math

import numpy as np
import plotly.graph_objects as go
import streamlit as st

from trainer.advice import advise, first_loss

from .common import DETACHED, fmt, reader, status
from .figures import BLUE, GREEN, GREY, ORANGE, RED, TEMPLATE

HEALTHY = 1e-3  # update/weight per step that CS231n calls about right
INIT_TOLERANCE = 0.25  # how far the first loss may sit from log C and still count as a sane init
CHART = {"displayModeBar": False}
MIB = 2 ** 20
PALETTE = ["#2563eb", "#f97316", "#16a34a", "#a855f7", "#dc2626", "#0891b2", "#b45309", "#db2777"]


def _layout(fig: go.Figure, title: str, *, log_y: bool = False, height: int = 230, revision: str = "") -> go.Figure:
    fig.update_layout(template=TEMPLATE, height=height, margin={"l": 55, "r": 10, "t": 30, "b": 30},
                      title={"text": title, "font": {"size": 13}, "x": 0.01}, uirevision=revision,
                      legend={"orientation": "h", "yanchor": "bottom", "y": 1.0, "xanchor": "right", "x": 1})
    if log_y:
        fig.update_yaxes(type="log")
    return fig


def _steps(a) -> np.ndarray:
    return np.asarray(a, dtype=np.float64).astype(np.int32)  # half the bytes of int64 in the payload


def _guide(fig: go.Figure, y: float, text: str, color: str = GREY) -> None:
    # A shape's own label: an annotation would need log10(y) on a log axis, a shape takes y itself.
    fig.add_hline(y=y, line={"dash": "dash", "color": color, "width": 1},
                  label={"text": text, "textposition": "end", "font": {"size": 11, "color": color}})


def grad_figure(series: dict, clip: float = 0.0, revision: str = "") -> go.Figure:
    """The gradient norm before clipping (bucket max, so a spike shows), with the clip level if any."""
    fig = go.Figure(go.Scatter(x=_steps(series["step"]), y=np.asarray(series["grad_norm"], dtype=np.float32),
                               mode="lines", line={"color": BLUE, "width": 1.5}, name="grad norm"))
    if clip > 0:
        _guide(fig, clip, f"clip {clip:g}", RED)
    return _layout(fig, "Gradient norm (before clipping)", log_y=True, revision=revision)


def update_figure(series: dict, revision: str = "") -> go.Figure:
    """||Δθ|| / ||θ|| at the steps that measured it (every 10th on the CPU), against the 1e-3 rule of thumb."""
    y = np.asarray(series["update_ratio"], dtype=np.float64)
    has = np.isfinite(y)
    fig = go.Figure(go.Scatter(x=_steps(series["step"][has]), y=y[has].astype(np.float32), mode="lines",
                               line={"color": ORANGE, "width": 1.5}, name="update / weight"))
    _guide(fig, HEALTHY, "1e-3 (healthy)", GREEN)
    return _layout(fig, "Update ratio ‖Δθ‖ / ‖θ‖", log_y=True, revision=revision)


def scale_figure(series: dict, revision: str = "") -> go.Figure:
    """fp16's loss scale (bucket min, so a drop shows): halved at each overflow, doubled after a calm stretch."""
    y = np.asarray(series["loss_scale"], dtype=np.float64)
    has = np.isfinite(y)
    fig = go.Figure(go.Scatter(x=_steps(series["step"][has]), y=y[has].astype(np.float32), mode="lines",
                               line={"color": BLUE, "width": 1.5, "shape": "hv"}, name="loss scale"))
    return _layout(fig, "Loss scale (fp16)", log_y=True, revision=revision)


def heatmap_figure(rows: list[dict], revision: str = "") -> go.Figure:
    """Parameter layers × instrument steps, coloured by log10(update/weight): neutral at 1e-3."""
    params = [r for r in rows if r["idx"] >= 0 and r["update_ratio"] is not None]
    layers = sorted({(r["idx"], r["layer"]) for r in params})
    steps = sorted({r["step"] for r in params})
    at_layer, at_step = {v: i for i, v in enumerate(layers)}, {v: i for i, v in enumerate(steps)}
    z = np.full((len(layers), len(steps)), np.nan)
    for r in params:
        if r["update_ratio"] > 0:
            z[at_layer[(r["idx"], r["layer"])], at_step[r["step"]]] = math.log10(r["update_ratio"])
    fig = go.Figure(go.Heatmap(
        x=np.array(steps, dtype=np.int32), y=[label for _, label in layers], z=z, zmid=math.log10(HEALTHY),
        colorscale="RdBu_r", colorbar={"title": {"text": "log10 update/weight", "side": "right"}, "thickness": 12},
        hovertemplate="%{y}<br>step %{x}<br>log10 update/weight %{z:.2f}<extra></extra>"))
    fig = _layout(fig, "Update/weight per layer", height=90 + 24 * max(len(layers), 3), revision=revision)
    fig.update_yaxes(autorange="reversed")  # the first layer at the top, as the model reads
    return fig


def latest_activations(rows: list[dict]) -> tuple[int | None, list[dict]]:
    """The newest instrument step with activation statistics, and its activation layers as table rows
    (— where a statistic does not apply to the layer's kind)."""
    acts = [r for r in rows if r["idx"] >= 0 and r["act_mean"] is not None]
    if not acts:
        return None, []
    last = max(r["step"] for r in acts)
    return last, [{"layer": r["layer"], "mean": fmt(r["act_mean"], ".3g"), "std": fmt(r["act_std"], ".3g"),
             "dead %": _pct(r["act_dead"]), "saturated %": _pct(r["act_sat"])}
            for r in sorted(acts, key=lambda r: r["idx"]) if r["step"] == last]


def _pct(v: float | None) -> str:
    return "—" if v is None else f"{100 * v:.1f} %"


def dead_figure(rows: list[dict], revision: str = "") -> go.Figure:
    """The fraction of dead units (never > 0 in the batch) per ReLU-family layer over steps."""
    fig = go.Figure()
    dead = [r for r in rows if r["idx"] >= 0 and r["act_dead"] is not None]
    for i, (idx, label) in enumerate(sorted({(r["idx"], r["layer"]) for r in dead})):
        pts = [r for r in dead if r["idx"] == idx]
        fig.add_trace(go.Scatter(x=_steps([r["step"] for r in pts]), y=[r["act_dead"] for r in pts], mode="lines",
                                 name=label, line={"color": PALETTE[i % len(PALETTE)], "width": 1.5}))
    fig = _layout(fig, "Dead units per layer", revision=revision)
    fig.update_yaxes(tickformat=".0%", rangemode="tozero")
    return fig


def gap_figure(evals: list[dict], revision: str = "") -> go.Figure:
    """Train and validation loss at each evaluation, and the gap val − train."""
    pts = [e for e in evals if e.get("val_loss") is not None and e.get("train_loss") is not None]
    x = _steps([e["step"] for e in pts])
    train, val = np.array([e["train_loss"] for e in pts]), np.array([e["val_loss"] for e in pts])
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=x, y=train, mode="lines+markers", marker={"size": 4}, line={"color": BLUE}, name="train"))
    fig.add_trace(go.Scatter(x=x, y=val, mode="lines+markers", marker={"size": 4}, line={"color": ORANGE}, name="val"))
    fig.add_trace(go.Scatter(x=x, y=val - train, mode="lines+markers", marker={"size": 4},
                             line={"color": RED, "dash": "dot"}, name="gap"))
    return _layout(fig, "Train/val loss and gap (val − train)", revision=revision)


def init_check(first: tuple[int, float] | None, classes: int | None) -> tuple[bool, str] | None:
    """Whether the loss at initialisation sits near log C, as a softmax over C classes should start.

    None when it does not apply (no classifier, no step yet); else (ok, the line to show)."""
    if classes is None or classes < 2 or first is None or first[1] is None or not math.isfinite(first[1]):
        return None
    step, loss = first
    expect = math.log(classes)
    line = f"Loss at step {step}: {loss:.4g}; a softmax over {classes} classes starts near log {classes} = {expect:.4g}"
    if abs(loss - expect) <= INIT_TOLERANCE * expect:
        return True, f"{line} ✓ (within {INIT_TOLERANCE:.0%})."
    if loss > expect:
        return False, (f"{line} ⚠ {loss / expect:.2g}× higher: the final layer starts confidently wrong; "
                       "initialise its weights smaller (or zero its bias).")
    return False, (f"{line} ⚠ {loss / expect:.2g}× lower: too good for random weights; check the labels "
                   "(a leak, or fewer classes than outputs) and the final layer's init.")


def throughput_figure(series: dict, revision: str = "") -> go.Figure:
    fig = go.Figure(go.Scatter(x=_steps(series["step"]), y=np.asarray(series["samples_per_s"], dtype=np.float32),
                               mode="lines", line={"color": GREEN, "width": 1.5}, name="samples/s"))
    fig = _layout(fig, "Throughput, samples/s", revision=revision)
    fig.update_yaxes(rangemode="tozero")
    return fig


def memory_figure(rows: list[dict], revision: str = "") -> go.Figure:
    pts = [r for r in rows if r["idx"] == -1 and r["memory"] is not None]
    fig = go.Figure(go.Scatter(x=_steps([r["step"] for r in pts]), y=[r["memory"] / MIB for r in pts],
                               mode="lines+markers", marker={"size": 3}, line={"color": GREY}, name="memory"))
    fig = _layout(fig, "Memory, MiB", revision=revision)
    fig.update_yaxes(rangemode="tozero")
    return fig


def metric_names(evals: list[dict], names) -> list[str]:
    """The task's metrics that have at least one value."""
    return [n for n in names if any(e.get(f"{k}_{n}") is not None for e in evals for k in ("train", "val"))]


def plugin_metric_figure(evals: list[dict], name: str, revision: str = "") -> go.Figure:
    fig = go.Figure()
    for key, color in (("train", BLUE), ("val", ORANGE)):
        pts = [e for e in evals if e.get(f"{key}_{name}") is not None]
        fig.add_trace(go.Scatter(x=_steps([e["step"] for e in pts]), y=[e[f"{key}_{name}"] for e in pts],
                                 mode="lines+markers", marker={"size": 4}, line={"color": color}, name=key))
    fig = _layout(fig, f"{name} (train, val)", revision=revision)
    if name == "acc":
        fig.update_yaxes(range=[0, 1.02], tickformat=".0%")
    return fig


def _chart(fig: go.Figure, key: str) -> None:
    st.plotly_chart(fig, key=key, config=CHART)


def diagnostics_view() -> None:
    """Advice, then the instruments: gradients, updates per layer, activations, gap, init, speed, metrics."""
    s, r = status(), reader()
    rev = s.run.run_dir
    tips = advise(r, s.branch, s.run.classes)
    for a in tips:
        (st.warning if a.severity == "warning" else st.info)(a.text, icon="⚠️" if a.severity == "warning" else "💡")
    if not tips:
        st.caption("No advice: nothing in the instruments looks off.")
    series = r.series(s.branch)
    if not len(series["step"]):
        st.caption("No steps yet: the diagnostics fill in once training starts.")
        return
    left, right = st.columns(2)
    with left:
        _chart(grad_figure(series, s.hparams.grad_clip, rev), "diag_grad")
    with right:
        _chart(update_figure(series, rev), "diag_update")
    if series["width"] > 1:
        st.caption(f"Each point is the max over {series['width']} steps.")
    if np.isfinite(np.asarray(series.get("loss_scale", ()), dtype=np.float64)).any():
        left, right = st.columns(2)
        with left:
            _chart(scale_figure(series, rev), "diag_scale")
        with right:
            st.caption(f"fp16 loss scaling: the scaler halves the scale when gradients overflow and skips that "
                       f"step{f' ({s.overflows:,} so far)' if s.state not in DETACHED else ''}, and doubles it after 2,000 calm steps. The sentinel "
                       "judges only the steps it applies; a falling scale with a rising loss is a real divergence.")

    rows = r.layer_rows(s.branch)
    if any(row["idx"] >= 0 and row["update_ratio"] is not None for row in rows):
        _chart(heatmap_figure(rows, rev), "diag_heatmap")
        st.caption("Per layer, log10 of ‖Δθ‖/‖θ‖ per step: about −3 (1e-3, white) is healthy; red layers "
                   "move too fast for their weights (lr too high there), blue ones barely move.")
    else:
        every = r.meta().get("config", {}).get("instrument_every")
        st.caption("Per-layer instruments are off (instrument_every = 0)." if every == 0 else
                   f"No per-layer rows yet: they are taken every {every or 'instrument_every'} steps.")
    at, acts = latest_activations(rows)
    if acts:
        left, right = st.columns(2)
        with left:
            st.caption(f"Activations at step {at}")
            st.dataframe(acts, hide_index=True, key="diag_acts")
        if any(row["act_dead"] is not None for row in rows):
            with right:
                _chart(dead_figure(rows, rev), "diag_dead")

    evals = r.evals(s.branch)
    left, right = st.columns(2)
    with left:
        if evals:
            _chart(gap_figure(evals, rev), "diag_gap")
            st.caption("A gap that keeps growing while train loss falls is overfitting: more data or "
                       "augmentation, weight decay, or stop earlier.")
        else:
            st.caption("No evaluations yet: the train/val gap appears at the first one.")
    with right:
        check = init_check(first_loss(r, s.branch), s.run.classes)
        if check is None:
            st.caption("Loss at init against log C: only for a softmax classifier.")
        else:
            (st.success if check[0] else st.warning)(check[1])

    left, right = st.columns(2)
    with left:
        _chart(throughput_figure(series, rev), "diag_throughput")
    with right:
        sampled = any(row["idx"] == -1 and row["memory"] is not None for row in rows)
        if sampled:
            _chart(memory_figure(rows, rev), "diag_memory")
        where = "CUDA max allocated" if str(s.run.device).startswith("cuda") else "Peak RSS of the trainer process"
        now = f"now {s.memory / MIB:.0f} MiB" if s.memory else "now: known while a trainer process serves the run"
        st.caption(f"{where}{' at instrument steps' if sampled else ''}; {now}.")

    names = metric_names(evals, s.run.metrics)
    for i in range(0, len(names), 2):
        for col, name in zip(st.columns(2), names[i:i + 2]):
            with col:
                _chart(plugin_metric_figure(evals, name, rev), f"diag_metric_{name}")
