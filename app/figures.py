"""Pure figure builders: plain rows from the journal in, plotly figures out. No Streamlit here."""
from __future__ import annotations

import math
from datetime import datetime
from typing import Any

import numpy as np
import plotly.graph_objects as go

BLUE, ORANGE, GREEN, GREY, RED = "#2563eb", "#f97316", "#16a34a", "#94a3b8", "#dc2626"
CLASS_COLORS = ["#ef4444", "#3b82f6", "#22c55e", "#f59e0b", "#a855f7", "#14b8a6"]
TIMELINE = (("lr", "lr", True), ("momentum", "momentum", False), ("weight_decay", "weight decay", False),
            ("batch_size", "batch", False))
X_TITLES = {"step": "step", "epoch": "epoch", "time": "wall time"}
# No plotly template: a named one ("plotly_white") travels expanded, ~7 kB in every chart message;
# Streamlit's own chart theme styles the figure in the browser instead.
TEMPLATE = "none"


def ema(values: list[float | None], smoothing: float) -> list[float]:
    """TensorBoard's debiased exponential moving average; non-finite values are skipped."""
    if not 0 <= smoothing < 1:
        raise ValueError(f"smoothing must be in [0, 1), got {smoothing}")
    out, last, n = [], 0.0, 0
    for v in values:
        if v is None or not math.isfinite(v):
            out.append(float("nan"))
            continue
        n += 1
        last = smoothing * last + (1 - smoothing) * v
        out.append(last / (1 - smoothing ** n))
    return out


def xs(rows: list[dict], axis: str) -> np.ndarray:
    """x values as arrays: plotly keeps NumPy arrays whole instead of checking each element."""
    if axis == "step":  # int32: half the bytes of int64 in the chart payload
        return np.fromiter((r["step"] for r in rows), dtype=np.int32, count=len(rows))
    if axis == "epoch":
        return np.fromiter((r["epoch"] for r in rows), dtype=np.float64, count=len(rows))
    if axis == "time":
        return np.array([datetime.fromtimestamp(r["wall"]) for r in rows], dtype="datetime64[ms]")
    raise ValueError(f"x axis must be step, epoch or time, got {axis!r}")


def ys(rows: list[dict], key: str) -> np.ndarray:
    return np.array([np.nan if r.get(key) is None else r[key] for r in rows], dtype=np.float64)


def _x_at(step: int, rows: list[dict], axis: str):
    """The x position of `step` on this axis, taken from the nearest recorded row."""
    if axis == "step" or not rows:
        return step
    lo, hi = 0, len(rows) - 1
    while lo < hi:  # first row with row.step >= step
        mid = (lo + hi) // 2
        if rows[mid]["step"] < step:
            lo = mid + 1
        else:
            hi = mid
    x = xs([rows[lo]], axis)[0]
    return x.item() if axis != "time" else datetime.fromtimestamp(rows[lo]["wall"])


SMOOTH_POINTS = 250


def _spread(n: int, most: int) -> np.ndarray:
    """Indices of at most `most` of n points, evenly spread, the first and last included."""
    return np.arange(n) if n <= most else np.unique(np.linspace(0, n - 1, most).round().astype(np.int64))


def _xs_at(steps: list[int], rows: list[dict], axis: str):
    """_x_at for many steps, as an array when the axis is numeric."""
    pts = [_x_at(st, rows, axis) for st in steps]
    return np.array(pts, dtype=np.int32 if axis == "step" else np.float64) if axis != "time" else pts


def thin(rows: list, max_points: int) -> list:
    """Every k-th row and the last, at most about `max_points` of them: a bounded chart payload."""
    if len(rows) <= max_points:
        return rows
    k = -(-len(rows) // max_points)
    return rows[:-1:k] + rows[-1:]


def _changes_only(rows: list[dict], key: str) -> list[dict]:
    """A step function (drawn with line_shape "hv") needs only its first row, each row where the
    value changes, and the last row: small chart payloads however long the run."""
    return [r for i, r in enumerate(rows) if i == 0 or i == len(rows) - 1 or r[key] != rows[i - 1][key]]


def marker_labels(events: list[dict]) -> dict[int, list[str]]:
    """Hyperparameter changes and restores grouped by the step at which they take effect. Other
    events (an "open" when a run is reopened, pauses, skips) are no change of course: no marker."""
    out: dict[int, list[str]] = {}
    for e in events:
        data = e.get("data") or {}
        if e["kind"] == "hparams":
            out.setdefault(int(data.get("at_step", e["step"] + 1)), []).append(e["message"])
        elif e["kind"] == "restore":  # marked where the new path begins, beside what came with it
            out.setdefault(int(e["step"]) + 1, []).insert(0, f"restored #{data.get('checkpoint', '?')}")
    return out


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


def loss_figure(metrics: list[dict], evals: list[dict] | None = None, events: list[dict] | None = None,
                checkpoints: list[dict] | None = None, branches: list[dict] | None = None, *,
                smoothing: float = 0.6, log_y: bool = False, x_axis: str = "step", revision: str = "",
                height: int = 640) -> go.Figure:
    """The loss curve with its hyperparameter timeline underneath, on one shared x-axis.

    Built as one dict and validated once: plotly's incremental API (make_subplots, update_layout,
    add_shape) costs tens of milliseconds per call, paid every refresh on the server's GIL.
    """
    data: list[dict] = []
    for i, b in enumerate(branches or []):  # abandoned paths, faded, from their fork step
        rows = b["steps"]
        data.append(_line(xs(rows, x_axis), np.array(ema([r["loss"] for r in rows], smoothing), dtype=np.float32), 1,
                          mode="lines",
                          line={"color": GREY, "width": 1.5}, opacity=0.45, name="abandoned branch",
                          legendgroup="abandoned", showlegend=i == 0,
                          hovertemplate=f"abandoned (branch {b['id']}, fork at step {b['fork_step']})<br>"
                                        "%{x}: %{y:.4g}<extra></extra>"))
    x = xs(metrics, x_axis)
    loss = ys(metrics, "loss")
    smooth = np.array(ema(list(loss), smoothing))
    # float32: the losses are float32 tensors' values, so nothing is lost, and the payload halves
    data.append(_line(x, loss.astype(np.float32), 1, mode="lines", line={"color": BLUE, "width": 1}, opacity=0.25,
                      name="train loss", hovertemplate="%{x}: %{y:.4g}<extra>train loss</extra>"))
    every = _spread(len(smooth), SMOOTH_POINTS)  # a smooth curve needs fewer points than the raw one
    data.append(_line(x[every], smooth[every].astype(np.float32), 1, mode="lines", line={"color": BLUE, "width": 2},
                      name="train loss (smoothed)", hovertemplate="%{x}: %{y:.4g}<extra>smoothed</extra>"))
    ev = [e for e in (evals or []) if e.get("val_loss") is not None]
    if ev:
        data.append(_line(_xs_at([e["step"] for e in ev], metrics, x_axis), np.array([e["val_loss"] for e in ev], dtype=np.float32), 1,
                          mode="markers", marker={"color": ORANGE, "size": 6}, name="val loss",
                          hovertemplate="%{x}: %{y:.4g}<extra>val loss</extra>"))
    if checkpoints:
        by_step = {r["step"]: v for r, v in zip(metrics, smooth)}
        cps = [c for c in checkpoints if c["step"] in by_step]
        data.append(_line([_x_at(c["step"], metrics, x_axis) for c in cps], [by_step[c["step"]] for c in cps], 1,
                          mode="markers", name="checkpoint",
                          marker={"symbol": "diamond", "size": 9, "color": GREEN, "line": {"width": 1, "color": "white"}},
                          text=[f"#{c['id']} {c.get('label') or c.get('kind', '')}" for c in cps],
                          hovertemplate="checkpoint %{text}<br>%{x}<extra></extra>"))
    domains = _row_domains()
    layout: dict[str, Any] = {
        "template": TEMPLATE, "height": height, "uirevision": revision,
        "margin": {"l": 60, "r": 10, "t": 30, "b": 40},
        "legend": {"orientation": "h", "yanchor": "bottom", "y": 1.01, "x": 0, "font": {"size": 11}},
        "yaxis": {"domain": domains[0], "title": {"text": "loss"}, "type": "log" if log_y else "linear"},
        "xaxis": {"anchor": "y", "showticklabels": False, "matches": "x5"},
        "shapes": [], "annotations": [],
    }
    for row, (key, title, log) in enumerate(TIMELINE, start=2):
        pts = _changes_only(metrics, key)
        data.append(_line(xs(pts, x_axis), ys(pts, key), row, mode="lines", line_shape="hv",
                          line={"color": "#475569", "width": 1.5}, name=title, showlegend=False,
                          hovertemplate=f"%{{x}}: %{{y:.4g}}<extra>{title}</extra>"))
        layout[f"yaxis{row}"] = {"domain": domains[row - 1], "title": {"text": title, "font": {"size": 11}},
                                 "type": "log" if log else "linear", "tickfont": {"size": 10}, "nticks": 3,
                                 **({"dtick": 1, "tickformat": ".0e"} if log else {})}
        last = row == len(TIMELINE) + 1
        layout[f"xaxis{row}"] = {"anchor": f"y{row}", "showticklabels": last,
                                 **({"matches": "x5"} if not last else {"title": {"text": X_TITLES[x_axis]}}),
                                 **({"type": "date"} if x_axis == "time" else {})}
    if x_axis == "time":
        layout["xaxis"]["type"] = "date"
    for step, labels in sorted(marker_labels(events or []).items()):
        if metrics and step > metrics[-1]["step"] + 1:
            continue
        xv = _x_at(step, metrics, x_axis)
        restore = any(lab.startswith("restored") for lab in labels)
        layout["shapes"].append({"type": "line", "x0": xv, "x1": xv, "xref": "x", "y0": 0, "y1": 1, "yref": "paper",
                                 "opacity": 0.7, "line": {"dash": "dot", "width": 1,
                                                          "color": RED if restore else "#7c3aed"}})
        layout["annotations"].append({"x": xv, "y": 1, "xref": "x", "yref": "y domain", "text": ", ".join(labels),
                                      "showarrow": False, "textangle": -90, "xanchor": "right", "yanchor": "top",
                                      "font": {"size": 10, "color": "#4c1d95"}, "bgcolor": "rgba(255,255,255,0.7)"})
    return go.Figure(data=data, layout=layout)


METRIC_TITLES = {"acc": "accuracy", "mae": "MAE"}


def metric_title(name: str) -> str:
    return METRIC_TITLES.get(name, name.replace("_", " "))


def metric_format(name: str) -> str:
    return ".1%" if name == "acc" else ".3g"


def metric_figure(evals: list[dict], name: str, metrics: list[dict] | None = None, *, x_axis: str = "step",
                  revision: str = "", height: int = 230) -> go.Figure:
    """A task's metric (train_<name>, val_<name> of each evaluation); accuracy on a 0-100 % axis."""
    fig = go.Figure()
    metrics = metrics or []
    for key, label, color in ((f"train_{name}", "train", BLUE), (f"val_{name}", "val", ORANGE)):
        pts = [e for e in evals if e.get(key) is not None]
        fig.add_trace(go.Scatter(x=_xs_at([e["step"] for e in pts], metrics, x_axis), y=np.array([e[key] for e in pts]),
                                 mode="lines+markers", marker={"size": 4}, line={"color": color}, name=label))
    yaxis = {"range": [0, 1.02], "tickformat": ".0%"} if name == "acc" else {}
    fig.update_layout(template=TEMPLATE, height=height, margin={"l": 50, "r": 10, "t": 30, "b": 30},
                      title={"text": metric_title(name), "font": {"size": 13}, "x": 0.01},
                      yaxis=yaxis, uirevision=revision,
                      legend={"orientation": "h", "yanchor": "bottom", "y": 1.0, "xanchor": "right", "x": 1})
    if x_axis == "time":
        fig.update_xaxes(type="date")
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
