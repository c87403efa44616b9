"""The dashboard's pages and controls, driven in-process by Streamlit's AppTest (no browser)."""
import json
import sys
import time
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from conftest import PLUGINS, ROOT, ends_checkpointed, run_to
from app import runtime
from trainer import RunConfig, Trainer


def stop_trainers():
    """End every trainer process the dashboard started in this test process, and forget its clients."""
    for key, p in list(runtime._PROCS.items()):
        if p.poll() is None:
            p.kill()
        p.wait(30)
        del runtime._PROCS[key]
    for h in list(runtime._HANDLES.values()):
        if hasattr(h, "close"):
            h.close()
    runtime._HANDLES.clear()
    runtime._PENDING.clear()


@pytest.fixture
def app(tmp_path, monkeypatch):
    monkeypatch.setenv("PANDA_RUNS", str(tmp_path / "runs"))
    stop_trainers()

    def make(**args):
        at = AppTest.from_file(str(ROOT / "streamlit_app.py"), default_timeout=120)
        if args:
            at.session_state["_args"] = args
        return at.run()

    yield make
    stop_trainers()


def shown(at):
    """The controls of the run this session shows: its trainer process's client (or a Detached view)."""
    return runtime.handle(at.session_state["_run_dir"])


def idle_run(d, task="quadratic", steps=25):
    """A run an earlier process trained to `steps` and closed, with no step limit: idle, resumable."""
    t = Trainer.create(RunConfig(task=task, run_dir=str(d)))
    run_to(t, steps)
    t.set_max_steps(0).wait()
    t.close()
    return d


def trainer_processes():
    return [p for p in runtime._PROCS.values() if p.poll() is None]


def values(a):
    """A plotly JSON array: a plain list, or NumPy data as base64 ('bdata') since plotly 6."""
    if isinstance(a, dict) and "bdata" in a:
        import base64

        import numpy as np
        return np.frombuffer(base64.b64decode(a["bdata"]), dtype=a["dtype"]).tolist()
    return a


def hp(t):
    return t.status().hparams


def errors(at):
    return [e.value for e in at.error]


def open_tab(at, label):
    """Pick one of the page's tabs, as a click does: only the open tab is drawn."""
    at.session_state["main_tab"] = label
    return at.run()


def test_page_renders_with_spirals_ready(app):
    at = app()
    assert not at.exception
    s = shown(at).status()
    assert s.run.task == "spirals" and s.state == "ready" and s.step == 0
    assert not at.button(key="btn_start").disabled and at.button(key="btn_pause").disabled
    assert any("No steps yet" in i.value for i in at.info)
    assert at.number_input(key="hp_lr").value == 0.1 and slider(at, "Learning rate, log₁₀").value == -1.0


def test_only_the_open_tab_is_drawn(app):
    """Hidden tabs cost nothing: their charts would be built in the browser and re-sent every tick."""
    at = app()
    t = shown(at)
    run_to(t, 30)
    at.run()
    keys = lambda: {c.key for c in at.get("plotly_chart")}  # noqa: E731
    assert not at.exception and "loss_chart" in keys() and not {k for k in keys() if k.startswith("diag_")}
    assert at.selectbox(key="restore_id")  # the Checkpoints tab, open by default
    open_tab(at, "Diagnostics")
    assert not at.exception and {"loss_chart", "diag_grad"} <= keys()
    with pytest.raises(KeyError):
        at.selectbox(key="restore_id")


def test_start_pause_resume_stop_drive_the_engine(app):
    at = app()
    at.button(key="btn_start").click().run()
    t = shown(at)
    assert t.status().state == "running"
    time.sleep(0.3)
    at.button(key="btn_pause").click().run()
    assert t.status().state == "paused" and not at.exception
    assert not at.button(key="btn_resume").disabled
    at.button(key="btn_resume").click().run()
    assert t.status().state == "running"
    at.button(key="btn_stop").click().run()
    assert ends_checkpointed(t.reader())
    assert trainer_processes()[0].wait(30) == 0  # Stop ends the trainer process, cleanly
    at.run()
    assert not at.exception and shown(at).status().state == "idle"
    assert any("No trainer process serves this run" in i.value for i in at.info)
    final = t.reader().checkpoints()[-1]["step"]  # (read now: the resumed process soon saves newer ones)
    at.button(key="btn_resume_detached").click().run()  # a new trainer process goes on from the final checkpoint
    s = shown(at).status()
    assert not at.exception and s.state == "running" and s.step >= final


def apply(at):
    at.button(key="FormSubmitter:hparams_form-Apply").click().run()
    assert not at.exception, at.exception
    return at


def test_apply_sends_the_edited_values_together(app):
    at = app()
    t = shown(at)
    at.number_input(key="hp_lr").set_value(0.02)
    at.number_input(key="hp_batch_size").set_value(32)
    apply(at)
    assert hp(t).lr == 0.02 and hp(t).batch_size == 32
    assert not errors(at)
    msgs = [e["message"] for e in t.reader().events(kinds=("hparams",))]
    assert msgs == ["lr 0.1 → 0.02", "batch_size 64 → 32"]


@pytest.mark.parametrize("key,value,field", [("hp_momentum", 1.5, "momentum"), ("hp_lr", -0.1, "lr"),
                                             ("hp_batch_size", 100000, "batch_size")])
def test_invalid_value_shows_the_engine_error_and_changes_nothing(app, key, value, field):
    at = app()
    t = shown(at)
    before = hp(t)
    at.number_input(key=key).set_value(value)
    apply(at)
    assert hp(t) == before
    assert any(e.startswith(f"{field}: must") for e in errors(at)), errors(at)


def slider(at, label):
    return next(s for s in at.slider if s.label == label)


def test_log_scale_sliders(app):
    at = app()
    t = shown(at)
    slider(at, "Learning rate, log₁₀").set_value(-2.0)
    apply(at)
    assert hp(t).lr == pytest.approx(0.01) and at.number_input(key="hp_lr").value == pytest.approx(0.01)
    slider(at, "Momentum, log₁₀(1 − β)").set_value(-2.0)
    apply(at)
    assert hp(t).momentum == pytest.approx(0.99)
    assert slider(at, "Momentum, log₁₀(1 − β)").value == -2.0
    # an exact value wins over the slider it sits under
    slider(at, "Learning rate, log₁₀").set_value(-4.0)
    at.number_input(key="hp_lr").set_value(0.003)
    apply(at)
    assert hp(t).lr == 0.003 and slider(at, "Learning rate, log₁₀").value == pytest.approx(-2.52)


def test_nudges_halve_and_double_the_lr(app):
    at = app()
    t = shown(at)
    at.button(key="nudge_up").click().run()
    assert hp(t).lr == 0.2
    at.button(key="nudge_down").click().run()
    at.button(key="nudge_down").click().run()
    assert hp(t).lr == 0.05 and at.number_input(key="hp_lr").value == 0.05  # the fields follow the engine


def test_save_then_restore_from_the_panel_makes_a_branch(app):
    at = app()
    t = shown(at)
    run_to(t, 30)
    at.text_input(key="ckpt_label").input("before bump")
    at.button(key="FormSubmitter:save_form-Save checkpoint").click().run()
    saved = [c for c in t.reader().checkpoints() if c["label"] == "before bump"]
    assert saved and saved[0]["step"] == 30
    run_to(t, 60)
    at.run()
    at.selectbox(key="restore_id").set_value(saved[0]["id"])
    at.number_input(key="restore_lr").set_value(0.03)
    at.button(key="FormSubmitter:restore_form-Restore").click().run()
    s = t.status()
    assert not at.exception and s.step == 30 and s.branch == 1 and s.hparams.lr == 0.03
    fig = json.loads(at.get("plotly_chart")[0].proto.spec)
    assert any(tr.get("name") == "abandoned branch" for tr in fig["data"])


def test_chart_carries_the_curve_and_markers(app):
    at = app()
    t = shown(at)
    run_to(t, 40)
    t.set_hparams(lr=0.05).wait()
    run_to(t, 80)
    at.run()
    fig = json.loads(at.get("plotly_chart")[0].proto.spec)
    raw = next(tr for tr in fig["data"] if tr.get("name") == "train loss")
    assert values(raw["x"]) == list(range(1, 81))
    assert "lr 0.1 → 0.05" in [a["text"] for a in fig["layout"]["annotations"]]
    assert fig["layout"]["uirevision"]


def test_error_banner_after_a_nan(app, tmp_path):
    at = app(task=f"{PLUGINS / 'nan_at.py'}:make", run_dir=str(tmp_path / "runs" / "nan"))
    t = shown(at)
    assert t.set_sentinel(policy="pause").wait().ok  # the default (skip) would drop the NaN step and go on
    assert t.set_max_steps(100).wait().ok
    at.button(key="btn_start").click().run()
    deadline = time.monotonic() + 60
    while t.status().state != "error":
        assert time.monotonic() < deadline, t.status()
        time.sleep(0.1)
    at.run()
    assert any("The sentinel paused training" in e and "non-finite loss at step 37" in e for e in errors(at))
    assert not at.button(key="btn_resume").disabled
    assert trainer_processes(), "an error keeps the trainer process serving, to fix and go on"


def test_new_run_with_a_broken_plugin_keeps_the_current_run(app):
    at = app()
    before = at.session_state["_run_dir"]
    at.selectbox(key="new_task").set_value("custom: module:function or file.py:function").run()
    at.text_input(key="new_custom").input(str(PLUGINS / "broken.py") + ":wrong_type")
    at.button(key="btn_new_run").click().run()
    assert any("must return trainer.Task" in e for e in errors(at)), errors(at)
    assert at.session_state["_run_dir"] == before and len(trainer_processes()) == 1
    assert [n for n, _ in runtime.list_runs()] == [Path(before).name]  # the failed start left no run behind


def test_new_run_pauses_the_shown_one_then_open_it_again(app, tmp_path):
    at = app()
    first = shown(at)
    run_to(first, 20)
    assert first.set_max_steps(0).wait().ok and first.start().wait().ok
    at.selectbox(key="new_task").set_value("digits")
    at.text_input(key="new_name").input("digits-a")
    at.button(key="btn_new_run").click().run()
    second = shown(at)
    assert not at.exception and second is not first and second.status().run.task == "digits"
    assert first.status().state == "paused" and len(trainer_processes()) == 2  # paused, still served
    first_dir = Path(first.status().run.run_dir)
    at.selectbox(key="open_name").set_value(first_dir.name)
    at.button(key="btn_open_run").click().run()
    assert shown(at) is first and not at.exception  # a live run: attached, not restarted
    assert not at.button(key="btn_resume").disabled


def test_open_an_idle_run_resumes_it_in_a_new_trainer_process(app, tmp_path):
    d = idle_run(tmp_path / "runs" / "old")
    at = app()
    assert ("old", "idle") in runtime.list_runs()
    at.selectbox(key="open_name").set_value("old")
    at.button(key="btn_open_run").click().run()
    s = shown(at).status()
    assert not at.exception and (s.run.task, s.step, s.state) == ("quadratic", 25, "ready")
    assert runtime.run_state(d) == "live"


def test_bad_run_names_never_leave_the_runs_folder(tmp_path):
    for bad in ["../x", "/etc", "a/b", ".hidden", "", "x" * 65]:
        with pytest.raises(ValueError):
            runtime.run_dir_for(bad, tmp_path)
    assert runtime.run_dir_for("ok-1.2_3", tmp_path) == (tmp_path / "ok-1.2_3").resolve()


def test_one_trainer_process_across_tabs_cache_clears_and_reimports(app):
    import streamlit as st

    a, _b = app(), app()  # two sessions: one default run, one process
    assert len(trainer_processes()) == 1 and len(runtime.list_runs()) == 1
    st.cache_resource.clear()
    for name in [m for m in sys.modules if m == "app" or m.startswith("app.")]:
        del sys.modules[name]  # what the file watcher does to an edited module
    c = app()
    assert not c.exception and len(trainer_processes()) == 1 and len(runtime.list_runs()) == 1
    a.button(key="btn_start").click().run()
    assert len(trainer_processes()) == 1 and shown(c).status().state == "running"


def test_opening_a_run_dir_from_the_command_line(app, tmp_path):
    d = idle_run(tmp_path / "runs" / "given")
    at = app(task="spirals", run_dir=str(d))
    s = shown(at).status()  # shown as the journal left it, until Resume
    assert not at.exception and s.run.task == "quadratic" and s.step == 25 and s.state == "idle"
    assert not trainer_processes()
    fig = json.loads(at.get("plotly_chart")[0].proto.spec)
    assert values(next(tr for tr in fig["data"] if tr.get("name") == "train loss")["x"])[-1] == 25


def test_compare_overlays_other_runs_and_the_chart_options_survive_a_reload(app, tmp_path):
    runs = tmp_path / "runs"
    idle_run(runs / "other", "quadratic", 30)
    idle_run(runs / "mine", "quadratic", 40)
    at = app(run_dir=str(runs / "mine"))
    at.multiselect(key="opt_compare").select("other")
    at.toggle(key="opt_robust").set_value(False)
    at.toggle(key="opt_branches").set_value(False)
    at.run()
    fig = json.loads(at.get("plotly_chart")[0].proto.spec)
    overlay = [tr for tr in fig["data"] if tr.get("name", "").startswith("other · quadratic · lr 0.01 · momentum 0")]
    assert overlay and values(overlay[0]["x"])[-1] == 30  # the other run's curve, to its last step
    assert "range" not in fig["layout"]["yaxis"]  # Ignore outliers off: plotly's own autorange
    again = app(run_dir=str(runs / "mine"))  # a reload: a new session on the same run
    assert again.multiselect(key="opt_compare").value == ["other"]
    assert again.toggle(key="opt_robust").value is False and again.toggle(key="opt_branches").value is False
    fig = json.loads(again.get("plotly_chart")[0].proto.spec)
    assert any(tr.get("name", "").startswith("other · quadratic") for tr in fig["data"])


def test_recover_from_the_banner_restores_the_checkpoint_before_the_anomaly(app, tmp_path):
    """lr 1000 under the pause policy: the banner offers Recover with the plan pre-filled (the
    checkpoint before the spike, lr x 0.5, its batches skipped); one click restores it."""
    at = app(run_dir=str(tmp_path / "runs" / "boom"))
    t = shown(at)
    assert t.set_sentinel(policy="pause").wait().ok
    run_to(t, 200)
    assert t.set_hparams(lr=1000.0).wait().ok and t.set_max_steps(300).wait().ok
    assert t.start().wait().ok  # from "done" at its step limit
    deadline = time.monotonic() + 60
    while t.status().state != "error":
        assert time.monotonic() < deadline, t.status()
        time.sleep(0.1)
    start = t.status().anomaly["start"]
    at.run()
    assert any("The sentinel paused training" in e and "spike" in e for e in errors(at))
    key = f"rec_banner_{start}"
    assert at.number_input(key=f"{key}_lr").value == 0.05
    assert at.number_input(key=f"{key}_skip").value == start - 200
    at.number_input(key=f"{key}_lr").set_value(0.02)  # editable
    at.button(key=f"{key}_go").click().run()
    assert not at.exception
    s = t.status()
    assert s.state == "paused" and s.anomaly is None and s.step == 200 and s.hparams.lr == 0.02
    restores = [e for e in t.reader().events() if e["kind"] == "restore"]
    at_200 = max(c["id"] for c in t.reader().checkpoints() if c["step"] == 200 and c["branch"] == 0)
    assert restores[-1]["data"]["checkpoint"] == at_200
    assert t.set_max_steps(260).wait().ok  # before Resume: 60 steps take less than one click's rerun
    at.button(key="btn_resume").click().run()
    run_to(t, 260)
    assert t.status().state == "done"


def test_the_anomalies_tab_lists_each_anomaly_with_recover_and_sets_the_policy_live(app, tmp_path):
    at = app(task=f"{PLUGINS / 'spike_at.py'}:make", run_dir=str(tmp_path / "runs" / "spiky"))
    t = shown(at)
    assert t.set_hparams(lr=0.05).wait().ok
    run_to(t, 20)
    assert t.save_checkpoint().wait().ok  # something to recover to
    run_to(t, 60)  # the poisoned batch comes at step 37: skipped by the default policy
    open_tab(at, "Anomalies")
    assert not at.exception
    pick = at.selectbox(key="anomaly_pick")
    assert pick.value == 37 and "skip step" in pick.format_func(37)
    assert at.number_input(key="rec_list_37_skip").value == 37 - 20
    at.selectbox(key="sentinel_policy").set_value("rollback").run()
    assert not at.exception and t.status().sentinel["policy"] == "rollback"
    at.button(key="rec_list_37_go").click().run()
    s = t.status()
    assert not at.exception and s.step == 20 and s.branch == 1 and s.hparams.lr == 0.025


def test_quadratic_shows_w_and_its_cost_live_and_the_probe_tab_its_result(app, tmp_path):
    at = app(task="quadratic", run_dir=str(tmp_path / "runs" / "quad"))
    t = shown(at)
    run_to(t, 300)
    at.run()
    assert not at.exception
    ev = t.status().eval
    w = next(m for m in at.metric if m.label.startswith("w (step"))
    cost = next(m for m in at.metric if m.label.startswith("cost (step"))
    assert float(w.value) == pytest.approx(ev["w"], rel=1e-5) and 4.5 < ev["w"] < 5.0  # on its way to 5
    assert float(cost.value) == pytest.approx((ev["w"] - 5) ** 2, rel=1e-3, abs=1e-9) and ev["cost"] >= 0
    assert t.probe(samples=3, steps=20, lr_range=[0.001, 0.1]).wait().ok
    deadline = time.monotonic() + 60
    while not t.reader().events(kinds=("probe",)):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    open_tab(at, "Probe")
    table = next(d.value for d in at.dataframe if "rank" in d.value.columns)
    assert not at.exception and list(table["rank"]) == [1, 2, 3]
    assert any(c.value.startswith("probe of 3 settings x 20 steps from step 300") for c in at.caption)
    at.button(key="btn_adopt").click().run()
    best = t.reader().events(kinds=("probe",))[-1]["data"]["results"][0]
    assert t.status().hparams.lr == float(f"{best['lr']:.4g}")
