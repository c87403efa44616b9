"""Pure figure builders: plain rows from the journal in, plotly figures out. No Streamlit here."""
from __future__ import annotations

import math
from datetime import datetime
from typing import Any

import numpy as np
import plotly.graph_objects as go

from trainer.probe import DIVERGE_FACTOR
from trainer.summary import UNIT

U_HP = [UNIT.index(k) for k in ("lr", "momentum", "weight_decay", "batch_size")]

BLUE, ORANGE, GREEN, GREY, RED = "#2563eb", "#f97316", "#16a34a", "#94a3b8", "#dc2626"
PURPLE = "#7c3aed"
CLASS_COLORS = ["#ef4444", "#3b82f6", "#22c55e", "#f59e0b", "#a855f7", "#14b8a6"]
TIMELINE = (("lr", "lr", True), ("momentum", "momentum", False), ("weight_decay", "weight decay", False),
            ("batch_size", "batch", False))
X_TITLES = {"step": "step", "epoch": "epoch", "time": "wall time", "train time": "training time"}
COMPARE_COLORS = ["#7c3aed", "#db2777", "#0891b2", "#65a30d", "#b45309"]
# No plotly template: a named one ("plotly_white") travels expanded, ~7 kB in every chart message;
# Streamlit's own chart theme styles the figure in the browser instead.
TEMPLATE = "none"


X_UNITS = ((3600 * 24, "d"), (3600, "h"), (60, "min"), (1, "s"))


def fmt3(v: Any) -> str:
    """A number with 3 significant digits, as labels show it ("0.0501", "1e-05", "64")."""
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def x_values(steps, view: dict, axis: str, scale: float = 1.0):
    """Steps placed on `axis`: ints for steps, epochs, datetimes for wall time, scaled training time."""
    from .history import place

    if axis not in X_TITLES:
        raise ValueError(f"x axis must be one of {', '.join(X_TITLES)}, got {axis!r}")
    v = place(steps, view["positions"], axis)
    if axis == "step":
        return v.astype(np.int32)  # half the bytes of int64 in the chart payload
    if axis == "time":  # the browser's clock is the server's here (localhost): local time, as wall clocks read
        offset = datetime.now().astimezone().utcoffset().total_seconds()
        return ((v + offset) * 1000).astype("datetime64[ms]")
    return v / scale if axis == "train time" else v


def time_scale(view: dict) -> tuple[float, str]:
    total = float(view["positions"]["train time"][1][-1]) if len(view["positions"]["train time"][1]) else 0.0
    return next(((s, u) for s, u in X_UNITS if total >= 2 * s), (1, "s"))


def x_range(view: dict, axis: str, scale: float = 1.0) -> list:
    """The x range both the loss chart and the checkpoint strip show (so their steps line up): the
    zoomed range, or the run's, with 1 % to spare on each side."""
    first, last = view["zoom"] or view["range"]
    pad = max(1.0, (last - first) * 0.01)
    ends = x_values([first - pad, last + pad], view, axis, scale)
    return [str(v) for v in ends] if axis == "time" else ends.tolist()


ALERTS = ("restored", "rolled back", "skipped", "anomaly", "paused")  # drawn red


def marker_groups(events: list[dict], steps_apart: float) -> list[dict]:
    """Hyperparameter changes and restores at the step where they take effect, labels with 3
    significant digits; changes closer than `steps_apart` are one group (one label, a hover list)."""
    marks = []
    for e in events:
        data = e.get("data") or {}
        if e["kind"] == "hparams":
            label = (f"{data['field'].replace('_', ' ')} {fmt3(data['old'])} → {fmt3(data['new'])}"
                     if "field" in data else e["message"])
            marks.append((int(data.get("at_step", e["step"] + 1)), 1, label))
        elif e["kind"] == "restore":  # marked where the new path begins
            marks.append((int(e["step"]) + 1, 0, f"restored #{data.get('checkpoint', '?')}"))
        elif e["kind"] == "rollback":  # the sentinel's restore
            marks.append((int(e["step"]) + 1, 0, f"rolled back to #{data.get('checkpoint', '?')}"))
        elif e["kind"] in ("skip_step", "anomaly") or e["kind"] == "error" and "series" in data:
            what = data.get("series", "").replace("_", " ")  # at the anomalous step itself
            verb = {"skip_step": "skipped", "anomaly": "anomaly", "error": "paused"}[e["kind"]]
            marks.append((int(e["step"]), 0, f"{verb}: {what} {fmt3(data.get('value', ''))}".strip()))
    groups: list[dict] = []
    for step, order, label in sorted(marks):
        if groups and step - groups[-1]["steps"][-1] <= steps_apart:
            groups[-1]["steps"].append(step)
            groups[-1]["labels"].append(f"{label} (step {step})")
        else:
            groups.append({"steps": [step], "labels": [f"{label} (step {step})"]})
    for g in groups:
        g["restore"] = any(lab.startswith(ALERTS) for lab in g["labels"])
        first = g["labels"][0].rsplit(" (step", 1)[0]
        g["text"] = first if len(g["labels"]) == 1 else f"{first} +{len(g['labels']) - 1}"
    return groups


def best_checkpoint(checkpoints: list[dict]) -> dict | None:
    with_val = [c for c in checkpoints if c.get("val_loss") is not None and math.isfinite(c["val_loss"])]
    return min(with_val, key=lambda c: (c["val_loss"], -c["step"])) if with_val else None


ROW_HEIGHTS = (0.52, 0.12, 0.12, 0.12, 0.12)
ROW_GAP = 0.025


def _row_domains() -> list[list[float]]:
    """Vertical domains of the five rows, top to bottom (what make_subplots would compute)."""
    usable = 1 - ROW_GAP * (len(ROW_HEIGHTS) - 1)
    out, top = [], 1.0
    for h in ROW_HEIGHTS:
        out.append([max(0.0, top - h * usable), top])
        top -= h * usable + ROW_GAP
    return out


def _line(x, y, row: int, **kw) -> dict:
    suffix = "" if row == 1 else str(row)
    return {"type": "scatter", "x": x, "y": y, "xaxis": f"x{suffix}", "yaxis": f"y{suffix}", **kw}


def _f32(a) -> np.ndarray:
    # float32: the losses are float32 tensors' values, so nothing is lost, and the payload halves
    return np.asarray(a, dtype=np.float32)


def loss_figure(view: dict, *, log_y: bool = False, x_axis: str = "step", robust: bool = True,
                compare: list[dict] | None = None, revision: str = "", height: int = 640) -> go.Figure:
    """The loss curve of a `history.loss_view`, with its markers and the hyperparameter timeline
    underneath on one shared x-axis; `compare` adds other runs' curves, faded.

    Built as one dict and validated once: plotly's incremental API (make_subplots, update_layout,
    add_shape) costs tens of milliseconds per call, paid every refresh on the server's GIL.
    """
    scale, unit = time_scale(view) if x_axis == "train time" else (1.0, "")
    X = lambda steps, v=view: x_values(steps, v, x_axis, scale)  # noqa: E731
    data: list[dict] = []
    for i, b in enumerate(view["branches"]):  # abandoned paths, faded, from their fork step
        data.append(_line(x_values(b["step"], b, x_axis, scale), _f32(b["smooth"]), 1, mode="lines",
                          line={"color": GREY, "width": 1.5}, opacity=0.45, name="abandoned branch",
                          legendgroup="abandoned", showlegend=i == 0,
                          hovertemplate=f"abandoned (branch {b['id']}, fork at step {b['fork_step']})<br>"
                                        "%{x}: %{y:.4g}<extra></extra>"))
    legend: set[str] = set()
    for f in view.get("fans", []):  # a probe's side runs from its fork: the best one green
        best = f["rank"] == 1
        label = f"lr {fmt3(f['lr'])}" + (f", momentum {f['momentum']:.4g}" if f.get("momentum") is not None else "")
        rank = f"rank {f['rank']} of {f['of']}, score {fmt3(f['score'])}" if f["rank"] else "running"
        data.append(_line(x_values(f["step"], f, x_axis, scale), _f32(f["smooth"]), 1, mode="lines",
                          line={"color": GREEN if best else PURPLE, "width": 2 if best else 1.2},
                          opacity=0.9 if best else 0.5, name="best side run" if best else "probe side run",
                          legendgroup="best probe" if best else "probe", showlegend=best not in legend,
                          hovertemplate=f"probe from step {f['fork_step']}: {label}<br>{rank}<br>"
                                        "%{x}: %{y:.4g}<extra></extra>"))
        legend.add(best)
    for i, c in enumerate(compare or []):
        color = COMPARE_COLORS[i % len(COMPARE_COLORS)]
        data.append(_line(x_values(c["step"], c, x_axis, scale), _f32(c["smooth"]), 1, mode="lines", opacity=0.6,
                          line={"color": color, "width": 1.5, "dash": "dot"}, name=c["name"],
                          hovertemplate=f"{c['name']}<br>%{{x}}: %{{y:.4g}}<extra></extra>"))
        if len(c.get("val_step", [])):
            data.append(_line(x_values(c["val_step"], c, x_axis, scale), _f32(c["val"]), 1, mode="markers",
                              marker={"color": color, "size": 5, "symbol": "circle-open"}, opacity=0.6,
                              name=f"{c['name']} val", showlegend=False,
                              hovertemplate=f"{c['name']} val<br>%{{x}}: %{{y:.4g}}<extra></extra>"))
    data.append(_line(X(view["step"]), _f32(view["loss"]), 1, mode="lines", line={"color": BLUE, "width": 1},
                      opacity=0.3, name="train loss", hovertemplate="%{x}: %{y:.4g}<extra>train loss</extra>"))
    data.append(_line(X(view["smooth_step"]), _f32(view["smooth"]), 1, mode="lines", line={"color": BLUE, "width": 2},
                      name="train loss (smoothed)", hovertemplate="%{x}: %{y:.4g}<extra>smoothed</extra>"))
    ev = [e for e in view["evals"] if e.get("val_loss") is not None]
    if ev:
        data.append(_line(X([e["step"] for e in ev]), _f32([e["val_loss"] for e in ev]), 1, mode="markers",
                          marker={"color": ORANGE, "size": 6}, name="val loss",
                          hovertemplate="%{x}: %{y:.4g}<extra>val loss</extra>"))
    y_range = None
    if robust and len(view["units"]):
        from .history import robust_range
        y_range = robust_range(view["units"], log_y)
    top = None if y_range is None else (10 ** y_range[1] if log_y else y_range[1])
    on_curve = lambda steps: np.interp(steps, view["smooth_step"], view["smooth"]) \
        if len(view["smooth_step"]) else np.zeros(len(steps))  # noqa: E731
    cps = view["checkpoints"]
    best = best_checkpoint(cps)
    if cps:
        steps = [c["step"] for c in cps]
        data.append(_line(X(steps), _f32(on_curve(steps)), 1, mode="markers", name="checkpoint",
                          marker={"symbol": "diamond", "size": 9, "color": GREEN, "line": {"width": 1, "color": "white"}},
                          customdata=[c["id"] for c in cps],
                          text=[f"#{c['id']} {c.get('label') or c.get('kind', '')}, step {c['step']}"
                                + (f", val {fmt3(c['val_loss'])}" if c.get("val_loss") is not None else "") for c in cps],
                          hovertemplate="checkpoint %{text}<extra></extra>"))
    if best:
        data.append(_line(X([best["step"]]), _f32(on_curve([best["step"]])), 1, mode="markers+text",
                          name="best checkpoint (val)", customdata=[best["id"]], text=["best val"],
                          textposition="top center", textfont={"size": 10, "color": "#a16207"},
                          marker={"symbol": "star", "size": 15, "color": "#eab308", "line": {"width": 1, "color": "white"}},
                          hovertemplate=f"best val loss {fmt3(best['val_loss'])}: checkpoint #{best['id']}, "
                                        f"step {best['step']}<extra></extra>"))
    if view["spikes"]:
        s_steps = [s for s, _ in view["spikes"]]
        s_loss = np.array([v for _, v in view["spikes"]])
        shown = s_loss if top is None else np.minimum(s_loss, top)  # above the axis: drawn at its top edge
        data.append(_line(X(s_steps), _f32(np.where(np.isfinite(shown), shown, top or 0)), 1, mode="markers",
                          name="spike", marker={"symbol": "triangle-up", "size": 10, "color": RED}, cliponaxis=False,
                          customdata=_f32(s_loss), hovertemplate="spike: loss %{customdata:.4g}<br>%{x}<extra></extra>"))
    if view["nonfinite"]:
        data.append(_line(X(view["nonfinite"]), _f32([top or 0] * len(view["nonfinite"])), 1, mode="markers",
                          name="non-finite loss", marker={"symbol": "x", "size": 9, "color": RED}, cliponaxis=False,
                          hovertemplate="non-finite loss<br>%{x}<extra></extra>"))
    domains = _row_domains()
    x_title = X_TITLES[x_axis] + (f" ({unit})" if unit else "")
    layout: dict[str, Any] = {
        "template": TEMPLATE, "height": height, "uirevision": revision, "dragmode": "select",
        "margin": {"l": 60, "r": 10, "t": 30, "b": 40},
        "legend": {"orientation": "h", "yanchor": "bottom", "y": 1.01, "x": 0, "font": {"size": 11}},
        "yaxis": {"domain": domains[0], "title": {"text": "loss"}, "type": "log" if log_y else "linear",
                  **({"range": y_range} if y_range else {})},
        "xaxis": {"anchor": "y", "showticklabels": False, "matches": "x5"},
        "shapes": [], "annotations": [],
    }
    units = view["units"]
    changed = np.r_[True, np.any(units[1:, U_HP] != units[:-1, U_HP], axis=1)] if len(units) else np.zeros(0, bool)
    keep = np.flatnonzero(changed | (np.arange(len(units)) == len(units) - 1))
    for row, (key, title, log) in enumerate(TIMELINE, start=2):
        col = units[keep, UNIT.index(key)] if len(units) else np.zeros(0)
        data.append(_line(X(units[keep, UNIT.index("last_step")] if len(units) else []), col, row, mode="lines",
                          line_shape="hv", line={"color": "#475569", "width": 1.5}, name=title, showlegend=False,
                          hovertemplate=f"%{{x}}: %{{y:.3g}}<extra>{title}</extra>"))
        layout[f"yaxis{row}"] = {"domain": domains[row - 1], "title": {"text": title, "font": {"size": 11}},
                                 "type": "log" if log else "linear", "tickfont": {"size": 10}, "nticks": 3,
                                 **({"dtick": 1, "tickformat": ".0e"} if log else {})}
        last = row == len(TIMELINE) + 1
        layout[f"xaxis{row}"] = {"anchor": f"y{row}", "showticklabels": last,
                                 **({"matches": "x5"} if not last else {"title": {"text": x_title}}),
                                 **({"type": "date"} if x_axis == "time" else {})}
    if x_axis == "time":
        layout["xaxis"]["type"] = "date"
    if len(units):
        layout["xaxis5"]["range"] = x_range(view, x_axis, scale)
    first, last = view["range"]
    for g in marker_groups(view["events"], max(1.0, (last - first) / 60)):
        xv = X([g["steps"][0]])[0]
        xv = str(xv) if x_axis == "time" else xv.item()  # a layout value, not an array element
        layout["shapes"].append({"type": "line", "x0": xv, "x1": xv, "xref": "x", "y0": 0, "y1": 1, "yref": "paper",
                                 "opacity": 0.7, "line": {"dash": "dot", "width": 1,
                                                          "color": RED if g["restore"] else "#7c3aed"}})
        layout["annotations"].append({"x": xv, "y": 1, "xref": "x", "yref": "y domain", "text": g["text"],
                                      "hovertext": "<br>".join(g["labels"]), "showarrow": False, "textangle": -90,
                                      "xanchor": "right", "yanchor": "top", "font": {"size": 10, "color": "#4c1d95"},
                                      "bgcolor": "rgba(255,255,255,0.7)"})
    # Not validated here (7 ms a tick at 10^6 steps): the tests validate every kind of trace it builds.
    return go.Figure(data=data, layout=layout, _validate=False)


def checkpoint_strip(view: dict, *, x_axis: str = "step", revision: str = "", height: int = 90) -> go.Figure:
    """The lineage's checkpoints on a thin strip under the loss chart, over the same x range: a click
    on one picks it for Restore. (The loss chart's drag draws a zoom box, and Streamlit turns point
    clicks into selections only when the drag does not select.)"""
    scale = time_scale(view)[0] if x_axis == "train time" else 1.0
    X = lambda steps: x_values(steps, view, x_axis, scale)  # noqa: E731
    cps, best = view["checkpoints"], best_checkpoint(view["checkpoints"])
    data = [_line(X([c["step"] for c in cps]), np.zeros(len(cps), dtype=np.float32), 1, mode="markers+text",
                  marker={"symbol": ["star" if c is best else "diamond" for c in cps], "line": {"width": 1, "color": "white"},
                          "size": [15 if c is best else 11 for c in cps],
                          "color": ["#eab308" if c is best else GREEN for c in cps]},
                  text=[f"#{c['id']}" for c in cps], textposition="top center", textfont={"size": 9},
                  customdata=[c["id"] for c in cps], name="checkpoint",
                  hovertext=[f"#{c['id']} {c.get('label') or c.get('kind', '')}, step {c['step']}"
                             + (f", val {fmt3(c['val_loss'])}" if c.get("val_loss") is not None else "")
                             + ("<br>best val loss" if c is best else "") + "<br>click: pick it for Restore" for c in cps],
                  hoverinfo="text")]
    layout = {"template": TEMPLATE, "height": height, "uirevision": revision, "showlegend": False,
              "margin": {"l": 60, "r": 10, "t": 4, "b": 4}, "dragmode": "pan",
              "xaxis": {"range": x_range(view, x_axis, scale), "showticklabels": False, "fixedrange": True, "showgrid": False,
                        **({"type": "date"} if x_axis == "time" else {})},
              "yaxis": {"range": [-0.6, 1.2], "visible": False, "fixedrange": True},
              "annotations": [{"text": "checkpoints · click one to pick it for Restore", "xref": "paper", "yref": "paper",
                               "x": 0, "y": 1, "showarrow": False, "xanchor": "left", "yanchor": "top",
                               "font": {"size": 10, "color": "#64748b"}}]}
    return go.Figure(data=data, layout=layout, _validate=False)


METRIC_TITLES = {"acc": "accuracy", "mae": "MAE"}


def metric_title(name: str) -> str:
    return METRIC_TITLES.get(name, name.replace("_", " "))


def metric_format(name: str) -> str:
    return ".1%" if name == "acc" else ".3g"


def metric_figure(view: dict, name: str, *, x_axis: str = "step", revision: str = "", height: int = 230) -> go.Figure:
    """A task's metric (train_<name>, val_<name> of each evaluation in a `history.loss_view`);
    accuracy on a 0-100 % axis."""
    fig = go.Figure()
    scale = time_scale(view)[0] if x_axis == "train time" else 1.0
    for key, label, color in ((f"train_{name}", "train", BLUE), (f"val_{name}", "val", ORANGE)):
        pts = [e for e in view["evals"] if e.get(key) is not None]
        fig.add_trace(go.Scatter(x=x_values([e["step"] for e in pts], view, x_axis, scale), y=np.array([e[key] for e in pts]),
                                 mode="lines+markers", marker={"size": 4}, line={"color": color}, name=label))
    yaxis = {"range": [0, 1.02], "tickformat": ".0%"} if name == "acc" else {}
    fig.update_layout(template=TEMPLATE, height=height, margin={"l": 50, "r": 10, "t": 30, "b": 30},
                      title={"text": metric_title(name), "font": {"size": 13}, "x": 0.01},
                      yaxis=yaxis, uirevision=revision,
                      legend={"orientation": "h", "yanchor": "bottom", "y": 1.0, "xanchor": "right", "x": 1})
    if x_axis == "time":
        fig.update_xaxes(type="date")
    return fig


def lr_find_figure(lrs: list[float], losses: list[float], smooth: list[float], result: dict,
                   height: int = 300) -> go.Figure:
    """The LR range test: loss against lr on a log x-axis, smoothed, with the two suggestions marked.
    The y-axis stops at 4x the smoothed minimum's height above it: the blow-up at the end is the
    stop signal, not something to read."""
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=lrs, y=_f32(losses), mode="lines", line={"color": BLUE, "width": 1}, opacity=0.35,
                             name="loss"))
    fig.add_trace(go.Scatter(x=lrs, y=_f32(smooth), mode="lines", line={"color": BLUE, "width": 2.5}, name="smoothed"))
    for name, label, color in (("steepest", "steepest descent", GREEN), ("min_div10", "minimum / 10", ORANGE)):
        v = result.get(name)
        if v is not None:  # on a log axis a shape takes the value itself, an annotation its log10
            fig.add_vline(x=v, line={"color": color, "dash": "dash", "width": 1.5})
            fig.add_annotation(x=math.log10(v), y=1 if name == "min_div10" else 0.02, yref="paper",
                               text=f"{label}<br>{v:.3g}", showarrow=False, font={"size": 11, "color": color},
                               xanchor="left" if name == "min_div10" else "right",
                               yanchor="top" if name == "min_div10" else "bottom", align="left")
    ok = [v for v in smooth if math.isfinite(v)]
    yaxis: dict[str, Any] = {"title": "loss"}
    if ok:  # up to the stop threshold: what lies above it is the blow-up
        lo = min(ok)
        top = min(max(ok), DIVERGE_FACTOR * lo) if lo > 0 else max(ok)
        yaxis["range"] = [lo - 0.05 * (top - lo), top + 0.05 * (top - lo)]
    xaxis = {"type": "log", "title": "learning rate (log scale)", "exponentformat": "power"}
    if lrs:
        xaxis["range"] = [math.log10(min(lrs)), math.log10(max(lrs))]
    fig.update_layout(template=TEMPLATE, height=height, margin={"l": 50, "r": 10, "t": 30, "b": 40},
                      xaxis=xaxis, yaxis=yaxis, showlegend=False)
    return fig


def _png(rgb: np.ndarray) -> str:
    import base64
    import io

    from PIL import Image  # Streamlit's own dependency

    buf = io.BytesIO()
    Image.fromarray(rgb, "RGB").save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def boundary_figure(grid: dict[str, Any], points: tuple[np.ndarray, np.ndarray] | None = None, *,
                    revision: str = "", height: int = 330) -> go.Figure:
    """The course's softmax picture: each grid cell coloured by its class probabilities."""
    probs = np.asarray(grid["probs"], dtype=np.float32)
    axis = np.asarray(grid["axis"], dtype=np.float32)
    n_cls = probs.shape[-1]
    palette = np.array([[int(c[i:i + 2], 16) for i in (1, 3, 5)] for c in CLASS_COLORS[:n_cls]], dtype=np.float32)
    rgb = probs @ palette * 0.55 + 255 * 0.45  # washed out, so the data points stand out
    step = float(axis[1] - axis[0])
    # A PNG: about 3 kB for a 60x60 picture where the raw RGB array travels as ~15 kB of base64.
    fig = go.Figure(go.Image(source=_png(rgb.astype(np.uint8)), x0=float(axis[0]), dx=step, y0=float(axis[0]),
                             dy=step, hoverinfo="skip"))
    if points is not None:
        px, py = points
        px = np.asarray(px, dtype=np.float32)
        for c in range(n_cls):
            m = py == c
            fig.add_trace(go.Scatter(x=px[m, 0], y=px[m, 1], mode="markers", name=f"class {c}",
                                     marker={"size": 4, "color": CLASS_COLORS[c], "line": {"width": 0.5, "color": "white"}},
                                     hoverinfo="skip", showlegend=False))
    fig.update_layout(template=TEMPLATE, height=height, margin={"l": 10, "r": 10, "t": 30, "b": 10},
                      title={"text": f"decision boundary · step {grid.get('step', '?')}", "font": {"size": 13},
                             "x": 0.01}, uirevision=revision)
    fig.update_xaxes(visible=False, range=[float(axis[0]), float(axis[-1])])
    fig.update_yaxes(visible=False, autorange=True, scaleanchor="x", range=[float(axis[0]), float(axis[-1])])
    return fig
