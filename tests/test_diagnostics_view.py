"""The Diagnostics tab: its figure builders checked against a real run's journal, and the tab rendered."""
import json
import math

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from conftest import ROOT, run_to
from test_app import stop_trainers, values
from app import diagnostics as d
from trainer import Reader, RunConfig, Trainer
from trainer.advice import advise


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A spirals run trained to step 120 with per-layer instruments every 10 steps, then closed: one
    for the whole module (training is the slow part), read through a fresh Reader like the app's."""
    run_dir = tmp_path_factory.mktemp("diag") / "spirals"
    t = Trainer.create(RunConfig(task="spirals", run_dir=str(run_dir), instrument_every=10, ckpt_every=0))
    run_to(t, 120)
    status = t.status()
    t.close()
    reader = Reader(run_dir)
    yield reader, status
    reader.close()


def params_of(rows):
    return [r for r in rows if r["idx"] >= 0 and r["update_ratio"] is not None]


def test_heatmap_has_one_row_per_parameter_layer_in_order_and_log10_update_ratios(run):
    reader, s = run
    rows = reader.layer_rows(s.branch)
    fig = d.heatmap_figure(rows)
    hm = fig.data[0]
    layers = sorted({(r["idx"], r["layer"]) for r in params_of(rows)})
    assert list(hm.y) == [label for _, label in layers] and len(layers) >= 3  # Linear, BatchNorm1d, ...
    assert not any("ReLU" in y or y == "(model)" for y in hm.y)
    assert list(hm.x) == list(range(10, 121, 10))
    for r in params_of(rows):
        assert hm.z[list(hm.y).index(r["layer"]), list(hm.x).index(r["step"])] == pytest.approx(math.log10(r["update_ratio"]))
    assert hm.zmid == -3 and hm.colorbar.title.text == "log10 update/weight"
    assert fig.layout.yaxis.autorange == "reversed"  # the first layer at the top


def test_grad_and_update_charts_carry_the_series_and_their_guides(run):
    reader, s = run
    series = reader.series(s.branch)
    rows = reader.metrics(s.branch)
    assert series["width"] == 1 and len(series["step"]) == 120
    fig = d.update_figure(series)
    measured = [r for r in rows if r["update_ratio"] is not None]  # every 10th step on the CPU, and layer steps
    assert list(fig.data[0].x) == [r["step"] for r in measured] and len(measured) >= 12
    np.testing.assert_allclose(fig.data[0].y, [r["update_ratio"] for r in measured], rtol=1e-6)
    assert fig.layout.yaxis.type == "log"
    guide = fig.layout.shapes[0]
    assert guide.y0 == guide.y1 == 1e-3 and guide.line.dash == "dash" and guide.label.text == "1e-3 (healthy)"
    grad = d.grad_figure(series, clip=1.5)
    np.testing.assert_allclose(grad.data[0].y, [r["grad_norm"] for r in rows], rtol=1e-6)
    assert grad.layout.yaxis.type == "log" and grad.layout.shapes[0].y0 == 1.5
    assert not d.grad_figure(series).layout.shapes  # no clipping, no clip line


def test_gap_is_val_minus_train_at_each_evaluation(run):
    reader, s = run
    evals = reader.evals(s.branch)
    assert len(evals) >= 2
    fig = d.gap_figure(evals)
    gap = next(t for t in fig.data if t.name == "gap")
    assert list(gap.x) == [e["step"] for e in evals]
    np.testing.assert_allclose(gap.y, [e["val_loss"] - e["train_loss"] for e in evals])
    assert {t.name for t in fig.data} == {"train", "val", "gap"}


def test_activations_table_is_the_latest_step_and_dead_chart_follows_each_relu(run):
    reader, s = run
    rows = reader.layer_rows(s.branch)
    step, table = d.latest_activations(rows)
    acts = [r for r in rows if r["step"] == 120 and r["act_mean"] is not None]
    assert step == 120 and [t["layer"] for t in table] == [r["layer"] for r in sorted(acts, key=lambda r: r["idx"])]
    assert all("ReLU" in t["layer"] for t in table) and all(t["saturated %"] == "—" for t in table)
    assert table[0]["mean"] == format(acts[0]["act_mean"], ".3g")
    fig = d.dead_figure(rows)
    assert [t.name for t in fig.data] == [t["layer"] for t in table]
    assert list(fig.data[0].x) == list(range(10, 121, 10))


def test_init_loss_is_checked_against_log_c(run):
    reader, s = run
    first = d.first_loss(reader, s.branch)
    assert s.run.classes == 3 and first == (1, reader.metrics(s.branch)[0]["loss"])
    ok, text = d.init_check(first, s.run.classes)
    assert ok == (abs(first[1] - math.log(3)) <= 0.25 * math.log(3)) and "log 3 = 1.099" in text
    ok, text = d.init_check((1, 4.0), 3)
    assert not ok and "⚠" in text and "final layer" in text
    ok, text = d.init_check((1, 0.2), 3)
    assert not ok and "labels" in text
    assert d.init_check(first, None) is None and d.init_check(None, 3) is None


def test_throughput_memory_and_task_metrics(run):
    reader, s = run
    series, rows, evals = reader.series(s.branch), reader.layer_rows(s.branch), reader.evals(s.branch)
    np.testing.assert_allclose(d.throughput_figure(series).data[0].y, series["samples_per_s"], rtol=1e-6)
    mem = d.memory_figure(rows).data[0]
    model = [r for r in rows if r["idx"] == -1]
    assert list(mem.x) == [r["step"] for r in model]
    np.testing.assert_allclose(mem.y, [r["memory"] / 2 ** 20 for r in model])
    assert d.metric_names(evals, s.run.metrics) == ["acc"] and d.metric_names(evals, ("mae",)) == []
    fig = d.plugin_metric_figure(evals, "acc")
    assert [list(t.y) for t in fig.data] == [[e["train_acc"] for e in evals], [e["val_acc"] for e in evals]]


def test_empty_inputs_give_empty_figures():
    empty = {"step": np.empty(0), "grad_norm": np.empty(0), "update_ratio": np.empty(0),
             "samples_per_s": np.empty(0), "loss": np.empty(0), "width": 1}
    for fig in (d.grad_figure(empty, 1.0), d.update_figure(empty), d.throughput_figure(empty), d.heatmap_figure([]),
                d.dead_figure([]), d.gap_figure([]), d.memory_figure([]), d.plugin_metric_figure([], "acc")):
        fig.to_json()
        assert all(len(t.x) == 0 for t in fig.data if t.x is not None)
    assert d.latest_activations([]) == (None, []) and d.metric_names([], ("acc",)) == []


@pytest.fixture
def app(tmp_path, monkeypatch):
    """As in test_app.py: the page run in-process on a given run directory."""
    monkeypatch.setenv("PANDA_RUNS", str(tmp_path / "runs"))
    stop_trainers()

    def make(run_dir):
        at = AppTest.from_file(str(ROOT / "streamlit_app.py"), default_timeout=120)
        at.session_state["_args"] = {"run_dir": str(run_dir)}
        at.session_state["main_tab"] = "Diagnostics"  # only the open tab is drawn
        return at.run()

    yield make
    stop_trainers()


def tab(at, label):
    return next(t for t in at.tabs if t.label == label)


def test_diagnostics_tab_renders_a_trained_run(app, run):
    reader, s = run
    at = app(reader.run_dir)
    assert not at.exception, at.exception
    diag = tab(at, "Diagnostics")
    tips = advise(reader, s.branch, s.run.classes)
    shown_tips = [m.value for m in [*diag.warning, *diag.info]]
    assert all(a.text in shown_tips for a in tips)
    assert any(c.value.startswith("No advice") for c in diag.caption) == (not tips)
    titles = [json.loads(c.proto.spec)["layout"]["title"]["text"] for c in diag.get("plotly_chart")]
    assert titles[:3] == ["Gradient norm (before clipping)", "Update ratio ‖Δθ‖ / ‖θ‖", "Update/weight per layer"]
    assert "acc (train, val)" in titles and "Memory, MiB" in titles
    heat = next(json.loads(c.proto.spec) for c in diag.get("plotly_chart")
                if json.loads(c.proto.spec)["data"][0]["type"] == "heatmap")
    assert values(heat["data"][0]["x"])[-1] == 120
    assert len(diag.dataframe) == 1
    assert any("log 3" in m.value for m in [*diag.success, *diag.warning])


def test_diagnostics_tab_of_a_run_with_no_steps(app, tmp_path):
    t = Trainer.create(RunConfig(task="quadratic", run_dir=str(tmp_path / "runs" / "fresh"), instrument_every=0))
    t.close()
    at = app(tmp_path / "runs" / "fresh")
    assert not at.exception, at.exception
    diag = tab(at, "Diagnostics")
    assert not diag.get("plotly_chart")
    assert any("No steps yet" in c.value for c in diag.caption)
