"""The figure builders against the journal rows they draw (a journal built by hand, read the way the
live view reads it)."""
import json
from datetime import datetime

import numpy as np
import pytest

from app import figures, history
from trainer import Reader
from trainer.journal import EvalRow, Journal, StepRow


def rows(n=100, change_at=50, branch=0, start=1):
    return [dict(step=i, epoch=i / 20, wall=1.7e9 + i, loss=1.0 / i + 0.01 * (i % 3), branch=branch,
                 lr=0.1 if i < change_at else 0.05, momentum=0.9, weight_decay=0.0, batch_size=64)
            for i in range(start, n + 1)]


def journal(tmp_path, steps=None, events=(), checkpoints=(), evals=(), forks=()):
    """A journal holding these rows; `forks` are (branch, parent, fork_step, rows) added after."""
    tmp_path.mkdir(exist_ok=True)
    j = Journal(tmp_path / "journal.sqlite")
    j.add_branch(0, None, 0, "start", None)
    for r in steps or rows():
        j.log_steps([StepRow(r["branch"], r["step"], r["epoch"], r["loss"], r["lr"], r["momentum"],
                             r["weight_decay"], r["batch_size"], 1.0, 64 / 0.01, r["wall"])])
    for bid, parent, fork, more in forks:
        j.add_branch(bid, parent, fork, "restore", None)
        j.flush()
        j.log_steps([StepRow(r["branch"], r["step"], r["epoch"], r["loss"], r["lr"], r["momentum"],
                             r["weight_decay"], r["batch_size"], 1.0, 64 / 0.01, r["wall"]) for r in more])
    for e in events:
        j.event(e["step"], e.get("branch", 0), e["kind"], e["message"], e.get("data"))
    for c in checkpoints:
        j.execute("INSERT INTO checkpoints (id, step, epoch, branch, path, wall, val_loss, hparams, label, kind) "
                  "VALUES (?, ?, 0, ?, 'x', 0, ?, '{}', ?, ?)", (c["id"], c["step"], c.get("branch", 0),
                                                                  c.get("val_loss"), c.get("label"), c["kind"]))
    for step, val in evals:
        j.log_eval(EvalRow(0, step, 0, val, None, None, None, None, 0.0))
    j.flush()
    return Reader(tmp_path / "journal.sqlite")


def fig_of(tmp_path, branch=0, smoothing=0.6, zoom=None, **kw):
    opts = {k: kw.pop(k) for k in ("log_y", "x_axis", "robust", "revision") if k in kw}
    view = history.loss_view(journal(tmp_path, **kw), branch, smoothing=smoothing, zoom=zoom)
    return figures.loss_figure(view, **opts)


def trace(fig, name):
    return next(t for t in fig.data if t.name == name)


def reference_ema(x, w):
    """Closed form of the debiased EMA: sum_k (1-w) w^(n-k) x_k / (1 - w^n)."""
    x = np.asarray(x, dtype=float)
    out = []
    for n in range(1, len(x) + 1):
        weights = (1 - w) * w ** np.arange(n - 1, -1, -1)
        out.append((weights * x[:n]).sum() / (1 - w ** n))
    return out


@pytest.mark.parametrize("w", [0.0, 0.3, 0.6, 0.9, 0.99])
def test_smoothing_matches_the_reference_ema(tmp_path, w):
    r = rows(200)
    units, width = journal(tmp_path, r).curve(0)
    assert width == 1 and history.ema(units, w) == pytest.approx(reference_ema([x["loss"] for x in r], w), rel=1e-9)


def test_smoothing_skips_non_finite_values(tmp_path):
    r = rows(3)
    r[1]["loss"] = None
    units, _ = journal(tmp_path, r).curve(0)
    out = history.ema(units, 0.5)
    assert np.isnan(out[1]) and out[2] == pytest.approx(reference_ema([r[0]["loss"], r[2]["loss"]], 0.5)[1])


def hp_event(at, field, old, new):
    return {"kind": "hparams", "step": at - 1, "message": f"{field} {old} → {new}",
            "data": {"field": field, "old": old, "new": new, "at_step": at}}


def test_hparam_changes_are_labelled_markers_with_three_digits(tmp_path):
    fig = fig_of(tmp_path, events=[hp_event(50, "lr", 0.1, 0.0501187), hp_event(50, "momentum", 0.9, 0.5)])
    assert [a.text for a in fig.layout.annotations] == ["lr 0.1 → 0.0501 +1"]
    assert fig.layout.annotations[0].hovertext == "lr 0.1 → 0.0501 (step 50)<br>momentum 0.9 → 0.5 (step 50)"
    assert [s.x0 for s in fig.layout.shapes] == [50]


def test_markers_close_together_are_one_group_far_apart_are_not(tmp_path):
    groups = figures.marker_groups([hp_event(s, "lr", 0.1, 0.2) for s in (10, 12, 14, 60)], steps_apart=5)
    assert [g["steps"] for g in groups] == [[10, 12, 14], [60]]
    assert groups[0]["text"] == "lr 0.1 → 0.2 +2" and groups[1]["text"] == "lr 0.1 → 0.2"


def test_restore_is_a_marker_too(tmp_path):
    ev = [{"kind": "restore", "step": 40, "message": "restore", "data": {"checkpoint": 3}},
          hp_event(41, "lr", 0.1, 0.05)]
    fig = fig_of(tmp_path, events=ev)
    assert [a.text for a in fig.layout.annotations] == ["restored #3 +1"]
    assert [s.x0 for s in fig.layout.shapes] == [41] and fig.layout.shapes[0].line.color == figures.RED


def test_timeline_shows_the_lr_change_on_a_log_axis(tmp_path):
    fig = fig_of(tmp_path)
    lr = trace(fig, "lr")
    assert lr.line.shape == "hv" and lr.y[0] == 0.1 and lr.y[-1] == 0.05
    assert list(lr.x) == [1, 50, 100]  # only where it changes
    assert fig.layout.yaxis2.type == "log"
    assert {t.name for t in fig.data} >= {"train loss", "train loss (smoothed)", "momentum", "weight decay", "batch"}


def test_raw_loss_is_faint_and_smoothed_uses_the_slider(tmp_path):
    r = rows()
    fig = fig_of(tmp_path, steps=r, smoothing=0.9)
    raw, smooth = trace(fig, "train loss"), trace(fig, "train loss (smoothed)")
    assert raw.opacity < 0.5 and list(raw.y) == pytest.approx([x["loss"] for x in r], rel=1e-6)  # float32
    assert list(smooth.y) == pytest.approx(reference_ema([x["loss"] for x in r], 0.9), rel=1e-6)


def test_abandoned_branch_is_faded_from_its_fork(tmp_path):
    fig = fig_of(tmp_path, branch=1, forks=[(1, 0, 60, rows(80, branch=1, start=61))])
    ab = [t for t in fig.data if t.name == "abandoned branch"]
    assert len(ab) == 1 and ab[0].opacity < 0.6 and min(ab[0].x) == 61 and max(ab[0].x) == 100


def test_log_y_toggle_and_validation_points(tmp_path):
    fig = fig_of(tmp_path, evals=[(20, 0.3)], log_y=True)
    assert fig.layout.yaxis.type == "log"
    val = trace(fig, "val loss")
    assert list(val.x) == [20] and list(val.y) == pytest.approx([0.3])


def test_x_axis_by_epoch_time_and_training_time(tmp_path):
    ev = [hp_event(50, "lr", 0.1, 0.05)]
    fe = fig_of(tmp_path / "e", events=ev, x_axis="epoch")
    assert trace(fe, "train loss").x[-1] == 5.0 and fe.layout.annotations[0].x == 2.5
    ft = fig_of(tmp_path / "t", events=ev, x_axis="time")
    first = trace(ft, "train loss").x[0]
    local = datetime.fromtimestamp(1.7e9 + 1)
    assert np.datetime64(first, "s") == np.datetime64(local, "s") and ft.layout.xaxis5.type == "date"
    fr = fig_of(tmp_path / "r", x_axis="train time")  # each step took 0.01 s (64 samples at 6,400/s)
    assert trace(fr, "train loss").x[-1] == pytest.approx(1.0) and "training time (s)" in fr.layout.xaxis5.title.text
    with pytest.raises(ValueError):
        fig_of(tmp_path / "w", x_axis="wallclock")


def test_zoom_survives_refresh_via_uirevision(tmp_path):
    assert fig_of(tmp_path, revision="run|step").layout.uirevision == "run|step"


def test_checkpoints_are_markers_on_the_curve_and_the_best_is_marked(tmp_path):
    cps = [{"id": 4, "step": 30, "label": "good", "kind": "manual", "val_loss": 0.2},
           {"id": 5, "step": 60, "kind": "auto", "val_loss": 0.1}, {"id": 6, "step": 90, "kind": "auto"}]
    fig = fig_of(tmp_path, checkpoints=cps)
    cp = trace(fig, "checkpoint")
    assert list(cp.x) == [30, 60, 90] and cp.marker.symbol == "diamond" and "good" in cp.text[0]
    assert list(cp.customdata) == [4, 5, 6]  # each diamond names its checkpoint
    best = trace(fig, "best checkpoint (val)")
    assert list(best.x) == [60] and list(best.customdata) == [5]
    strip = figures.checkpoint_strip(history.loss_view(Reader(tmp_path / "journal.sqlite"), 0))
    assert list(strip.data[0].x) == [30, 60, 90] and list(strip.data[0].customdata) == [4, 5, 6]
    assert list(strip.data[0].marker.symbol) == ["diamond", "star", "diamond"]  # the best, by val loss
    assert list(strip.layout.xaxis.range) == list(fig.layout.xaxis5.range) == [0, 101]  # the same steps, lined up


def test_boundary_picture_blends_class_colours():
    probs = np.zeros((4, 4, 3), dtype=np.float32)
    probs[..., 0] = 1.0  # all class 0
    probs[0, 0] = [0, 0, 1]
    grid = {"axis": [-1, -1 / 3, 1 / 3, 1], "probs": probs, "step": 7}
    fig = figures.boundary_figure(grid, (np.zeros((2, 2)), np.array([0, 2])))
    import base64
    import io

    from PIL import Image

    src = fig.data[0].source
    assert src.startswith("data:image/png;base64,")
    img = np.asarray(Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))).convert("RGB"))
    assert img.shape == (4, 4, 3)
    assert tuple(img[1, 1]) != tuple(img[0, 0])  # class 0 and class 2 cells differ
    assert "step 7" in fig.layout.title.text


def metric_view(evals):
    return {"evals": evals, "positions": {}}


def test_accuracy_figure_has_train_and_val():
    fig = figures.metric_figure(metric_view([{"step": 10, "train_acc": 0.5, "val_acc": 0.4}]), "acc")
    assert [t.name for t in fig.data] == ["train", "val"] and fig.layout.yaxis.tickformat == ".0%"
    assert fig.layout.title.text == "accuracy"


def test_a_plugin_metric_gets_its_own_figure():
    fig = figures.metric_figure(metric_view([{"step": 10, "train_mae": 0.5, "val_mae": 0.4, "val_acc": None},
                                             {"step": 20, "train_mae": 0.3, "val_mae": 0.35}]), "mae")
    assert [(t.name, list(t.y)) for t in fig.data] == [("train", [0.5, 0.3]), ("val", [0.4, 0.35])]
    assert fig.layout.title.text == "MAE" and fig.layout.yaxis.range is None  # not a 0-100 % axis


def test_only_hparam_changes_and_restores_are_markers(tmp_path):
    ev = [{"kind": k, "step": 10, "message": k, "data": {"checkpoint": 1, "branch": 0}}
          for k in ("open", "create", "pause", "resume", "skip", "limit", "stopped")]
    assert figures.marker_groups(ev, 1) == []
    fig = fig_of(tmp_path, events=ev)
    assert not fig.layout.annotations and not fig.layout.shapes


@pytest.mark.parametrize("x_axis", ["step", "epoch", "time", "train time"])
def test_every_kind_of_trace_is_a_valid_plotly_figure(tmp_path, x_axis):
    """loss_figure skips plotly's validation for speed: here every trace and layout key it can build is validated."""
    import plotly.graph_objects as go

    r = rows(200)
    r[150]["loss"] = 50.0  # a spike
    r[170]["loss"] = float("inf")
    cps = [{"id": 4, "step": 30, "label": "good", "kind": "manual", "val_loss": 0.2}]
    ev = [hp_event(50, "lr", 0.1, 0.05), {"kind": "restore", "step": 60, "message": "r", "data": {"checkpoint": 4}}]
    view = history.loss_view(journal(tmp_path, r, events=ev, checkpoints=cps, evals=[(20, 0.3)],
                                     forks=[(1, 0, 60, rows(120, branch=1, start=61))]), 0)
    compare = [{**b, "name": "other", "val_step": np.array([70]), "val": np.array([0.5])} for b in view["branches"]]
    fig = figures.loss_figure(view, x_axis=x_axis, compare=compare, log_y=True)
    assert {"spike", "non-finite loss", "best checkpoint (val)", "abandoned branch", "other"} <= {t.name for t in fig.data}
    go.Figure(json.loads(fig.to_json()))  # raises on any invalid property
    go.Figure(json.loads(figures.checkpoint_strip(view, x_axis=x_axis).to_json()))


def test_the_sentinels_decisions_are_red_markers_at_their_step():
    spike = {"series": "loss", "value": 17082.0, "kind": "spike"}
    events = [{"kind": "skip_step", "step": 37, "data": spike},
              {"kind": "rollback", "step": 300, "data": {"checkpoint": 3}},
              {"kind": "error", "step": 502, "data": {**spike, "series": "grad_norm"}},
              {"kind": "error", "step": 600, "data": {"traceback": "..."}},  # a crash: no marker
              {"kind": "hparams", "step": 700, "data": {"field": "lr", "old": 0.1, "new": 0.05, "at_step": 701}}]
    groups = figures.marker_groups(events, steps_apart=1)
    assert [(g["steps"], g["text"], g["restore"]) for g in groups] == [
        ([37], "skipped: loss 1.71e+04", True), ([301], "rolled back to #3", True),
        ([502], "paused: grad norm 1.71e+04", True), ([701], "lr 0.1 → 0.05", False)]
