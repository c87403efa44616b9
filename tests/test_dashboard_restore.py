"""Restore, markers and task metrics as the dashboard shows them (AppTest, no browser)."""
import csv
import io
import json

from conftest import ROOT, run_to
from test_app import app, apply, hp, idle_run, shown, values  # noqa: F401  (app is a fixture)

REGRESSION = f"{ROOT / 'examples' / 'regression_task.py'}:make_task"


def restore(at):
    at.button(key="FormSubmitter:restore_form-Restore").click().run()
    assert not at.exception, at.exception
    return at


def charts(at):
    return [json.loads(c.proto.spec) for c in at.get("plotly_chart")]


def annotations(fig):
    return [a["text"] for a in fig["layout"].get("annotations", [])]


def test_restore_form_shows_what_comes_back_and_the_sidebar_follows(app):
    at = app()
    t = shown(at)
    run_to(t, 30)
    cid = t.save_checkpoint("base").wait().value
    at.number_input(key="hp_batch_size").set_value(32)
    at.number_input(key="hp_weight_decay").set_value(0.001)
    apply(at)
    run_to(t, 60)
    at.run()
    at.selectbox(key="restore_id").set_value(cid).run()
    note = next(c.value for c in at.caption if c.value.startswith("Restoring brings back"))
    assert "batch size **64**" in note and "weight decay **0**" in note and "learning rate **0.1**" in note
    assert at.number_input(key="restore_batch_size").placeholder == "64 (saved)"
    restore(at)
    assert (hp(t).batch_size, hp(t).weight_decay) == (64, 0.0)
    assert at.number_input(key="hp_batch_size").value == 64 and at.number_input(key="hp_weight_decay").value == 0
    assert not [c.value for c in at.caption if "changed elsewhere" in c.value]  # this tab restored it
    # an override wins over the checkpoint's value, and the sidebar shows it
    at.selectbox(key="restore_id").set_value(cid).run()
    at.number_input(key="restore_batch_size").set_value(16)
    restore(at)
    assert hp(t).batch_size == 16 and at.number_input(key="hp_batch_size").value == 16
    assert at.number_input(key="restore_batch_size").value is None  # an override is for one restore


def test_restore_overrides_are_checked_field_by_field(app):
    at = app()
    t = shown(at)
    run_to(t, 20)
    at.run()
    at.number_input(key="restore_batch_size").set_value(2.5)
    at.number_input(key="restore_lr").set_value(-1)
    restore(at)
    assert t.status().branch == 0 and t.status().step == 20  # nothing was restored
    errs = sorted(e.value.split(":")[0] for e in at.error)
    assert errs == ["batch_size", "lr"], errs


def test_opening_a_run_draws_no_restore_marker(app, tmp_path):
    d = idle_run(tmp_path / "runs" / "reopened", task="spirals", steps=30)
    at = app(run_dir=str(d))
    assert shown(at).set_max_steps(50).wait().ok  # kept for the trainer process Resume starts
    at.button(key="btn_resume_detached").click().run()  # a new trainer process opens it, and trains
    live = shown(at)
    assert "open" in [e["kind"] for e in live.reader().events()]
    run_to(live, 50)
    at.run()
    fig = charts(at)[0]
    assert not any("restored" in a for a in annotations(fig))
    assert not fig["layout"].get("shapes")
    # a real rollback is marked
    cid = next(c["id"] for c in live.reader().checkpoints() if c["step"] == 30)
    at.selectbox(key="restore_id").set_value(cid).run()
    restore(at)
    fig = charts(at)[0]
    assert any(a.startswith(f"restored #{cid}") for a in annotations(fig))


def test_a_plugin_metric_is_charted_shown_and_exported(app, tmp_path):
    at = app(task=REGRESSION, run_dir=str(tmp_path / "runs" / "sine"))
    t = shown(at)
    assert t.status().run.metrics == ("mae",)
    run_to(t, 120)
    at.run()
    mae = next(f for f in charts(at) if f["layout"].get("title", {}).get("text") == "MAE")
    by_name = {tr["name"]: values(tr["y"]) for tr in mae["data"]}
    evals = t.reader().evals(0)
    assert by_name["val"] == [e["val_mae"] for e in evals] and len(by_name["val"]) >= 2
    assert by_name["train"] == [e["train_mae"] for e in evals]
    assert any(m.label == "Val MAE" and m.value != "—" for m in at.metric)

    from app.checkpoints_panel import metrics_csv
    rows = list(csv.DictReader(io.StringIO(metrics_csv().decode())))
    assert {"val_mae", "train_mae", "val_loss"} <= set(rows[0])
    assert [float(r["val_mae"]) for r in rows if r["val_mae"]] == [e["val_mae"] for e in evals]
