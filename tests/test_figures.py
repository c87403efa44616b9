"""The figure builders, as pure functions: rows in, figure out."""
from datetime import datetime

import numpy as np
import pytest

from app import figures


def rows(n=100, change_at=50, branch=0):
    return [dict(step=i, epoch=i / 20, wall=1.7e9 + i, loss=1.0 / i + 0.01 * (i % 3), branch=branch,
                 lr=0.1 if i < change_at else 0.05, momentum=0.9, weight_decay=0.0, batch_size=64)
            for i in range(1, n + 1)]


def reference_ema(x, w):
    """Closed form of the debiased EMA: sum_k (1-w) w^(n-k) x_k / (1 - w^n)."""
    x = np.asarray(x, dtype=float)
    out = []
    for n in range(1, len(x) + 1):
        weights = (1 - w) * w ** np.arange(n - 1, -1, -1)
        out.append((weights * x[:n]).sum() / (1 - w ** n))
    return out


@pytest.mark.parametrize("w", [0.0, 0.3, 0.6, 0.9, 0.99])
def test_smoothing_matches_the_reference_ema(w):
    x = np.random.default_rng(0).random(200) * 3
    assert figures.ema(list(x), w) == pytest.approx(reference_ema(x, w), rel=1e-9)


def test_smoothing_skips_non_finite_values():
    out = figures.ema([1.0, float("nan"), 3.0], 0.5)
    assert np.isnan(out[1]) and out[2] == pytest.approx(reference_ema([1.0, 3.0], 0.5)[1])


def test_smoothing_rejects_bad_weight():
    with pytest.raises(ValueError):
        figures.ema([1.0], 1.0)


def hp_event(at, msg):
    return {"kind": "hparams", "step": at - 1, "message": msg, "data": {"at_step": at}}


def test_hparam_change_is_a_labelled_vertical_marker():
    fig = figures.loss_figure(rows(), events=[hp_event(50, "lr 0.1 → 0.05"), hp_event(50, "momentum 0.9 → 0.5")])
    labels = [a.text for a in fig.layout.annotations]
    assert "lr 0.1 → 0.05, momentum 0.9 → 0.5" in labels
    assert [s.x0 for s in fig.layout.shapes] == [50]


def test_restore_is_a_marker_too():
    ev = [{"kind": "restore", "step": 40, "message": "restore", "data": {"checkpoint": 3}}, hp_event(41, "lr 0.1 → 0.05")]
    fig = figures.loss_figure(rows(), events=ev)
    assert [a.text for a in fig.layout.annotations] == ["restored #3, lr 0.1 → 0.05"]
    assert [s.x0 for s in fig.layout.shapes] == [41] and fig.layout.shapes[0].line.color == figures.RED


def test_timeline_shows_the_lr_change_on_a_log_axis():
    fig = figures.loss_figure(rows())
    lr = next(t for t in fig.data if t.name == "lr")
    assert lr.line.shape == "hv" and lr.y[0] == 0.1 and lr.y[-1] == 0.05
    assert list(lr.x) == [1, 50, 100]  # only where it changes
    assert fig.layout.yaxis2.type == "log"
    assert {t.name for t in fig.data} >= {"train loss", "train loss (smoothed)", "momentum", "weight decay", "batch"}


def test_raw_loss_is_faint_and_smoothed_uses_the_slider():
    r = rows()
    fig = figures.loss_figure(r, smoothing=0.9)
    raw = next(t for t in fig.data if t.name == "train loss")
    smooth = next(t for t in fig.data if t.name == "train loss (smoothed)")
    assert raw.opacity < 0.5 and list(raw.y) == pytest.approx([x["loss"] for x in r], rel=1e-6)  # float32
    assert list(smooth.y) == pytest.approx(reference_ema([x["loss"] for x in r], 0.9))


def test_abandoned_branch_is_faded_from_its_fork():
    other = [{"id": 0, "fork_step": 60, "steps": rows()[60:]}]
    fig = figures.loss_figure(rows(80, branch=1), branches=other)
    ab = [t for t in fig.data if t.name == "abandoned branch"]
    assert len(ab) == 1 and ab[0].opacity < 0.6 and min(ab[0].x) == 61


def test_log_y_toggle_and_validation_points():
    fig = figures.loss_figure(rows(), evals=[{"step": 20, "val_loss": 0.3}], log_y=True)
    assert fig.layout.yaxis.type == "log"
    val = next(t for t in fig.data if t.name == "val loss")
    assert list(val.x) == [20] and list(val.y) == [0.3]


def test_x_axis_by_epoch_and_time():
    ev = [hp_event(50, "lr 0.1 → 0.05")]
    fe = figures.loss_figure(rows(), events=ev, x_axis="epoch")
    assert next(t for t in fe.data if t.name == "train loss").x[-1] == 5.0
    assert fe.layout.annotations[0].x == 2.5
    ft = figures.loss_figure(rows(), events=ev, x_axis="time")
    first = next(t for t in ft.data if t.name == "train loss").x[0]
    assert np.datetime64(first, "s") == np.datetime64(datetime.fromtimestamp(1.7e9 + 1), "s")
    assert ft.layout.xaxis5.type == "date"
    with pytest.raises(ValueError):
        figures.loss_figure(rows(), x_axis="wallclock")


def test_zoom_survives_refresh_via_uirevision():
    assert figures.loss_figure(rows(), revision="run|step").layout.uirevision == "run|step"


def test_checkpoints_are_markers_on_the_curve():
    fig = figures.loss_figure(rows(), checkpoints=[{"id": 4, "step": 30, "label": "good", "kind": "manual"}])
    cp = next(t for t in fig.data if t.name == "checkpoint")
    assert list(cp.x) == [30] and cp.marker.symbol == "diamond" and "good" in cp.text[0]


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


def test_accuracy_figure_has_train_and_val():
    fig = figures.metric_figure([{"step": 10, "train_acc": 0.5, "val_acc": 0.4}], "acc")
    assert [t.name for t in fig.data] == ["train", "val"] and fig.layout.yaxis.tickformat == ".0%"
    assert fig.layout.title.text == "accuracy"


def test_a_plugin_metric_gets_its_own_figure():
    fig = figures.metric_figure([{"step": 10, "train_mae": 0.5, "val_mae": 0.4, "val_acc": None},
                                 {"step": 20, "train_mae": 0.3, "val_mae": 0.35}], "mae")
    assert [(t.name, list(t.y)) for t in fig.data] == [("train", [0.5, 0.3]), ("val", [0.4, 0.35])]
    assert fig.layout.title.text == "MAE" and fig.layout.yaxis.range is None  # not a 0-100 % axis


def test_only_hparam_changes_and_restores_are_markers():
    ev = [{"kind": k, "step": 10, "message": k, "data": {"checkpoint": 1, "branch": 0}}
          for k in ("open", "create", "pause", "resume", "skip", "limit", "stopped")]
    assert figures.marker_labels(ev) == {}
    fig = figures.loss_figure(rows(), events=ev)
    assert not fig.layout.annotations and not fig.layout.shapes


def test_thinning_keeps_the_first_every_kth_and_the_last():
    r = list(range(3001))
    out = figures.thin(r, 1000)
    assert out[0] == 0 and out[-1] == 3000 and 500 < len(out) <= 1001
    assert out[:3] == [0, 4, 8] and figures.thin(r[:10], 1000) == r[:10]
