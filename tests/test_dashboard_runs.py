"""Switching runs from the dashboard: the training run is left undisturbed, a locked run is explained."""
from conftest import PLUGINS
from test_app import app, errors, shown, trainer_processes  # noqa: F401  (app is a fixture)
from app import runtime
from trainer import RunConfig, Trainer
from trainer.runlock import RunLock


def test_a_broken_plugin_leaves_the_training_run_training(app):
    at = app()
    old = shown(at)
    at.button(key="btn_start").click().run()
    at.selectbox(key="new_task").set_value("custom: module:function or file.py:function").run()
    at.text_input(key="new_custom").input(str(PLUGINS / "broken.py") + ":wrong_type")
    at.button(key="btn_new_run").click().run()
    assert any("must return trainer.Task" in e for e in errors(at))
    assert shown(at) is old and old.status().state == "running"
    kinds = [e["kind"] for e in old.reader().events()]
    assert kinds[-2:] == ["pause", "resume"]  # rested while the new process tried to start
    assert len(trainer_processes()) == 1


def test_a_run_held_but_not_served_is_explained(app, tmp_path):
    d = tmp_path / "runs" / "busy"
    Trainer.create(RunConfig(task="quadratic", run_dir=str(d))).close()
    lock = RunLock(d)  # as a notebook's in-process Trainer would hold it
    try:
        at = app(run_dir=str(d))
        assert not at.exception
        assert any("holds this run but does not serve it" in i.value and "process" in i.value for i in at.info)
        assert shown(at).status().accepts == frozenset() and at.button(key="btn_stop").disabled
        r = shown(at).set_hparams(lr=0.5).wait()
        assert not r.ok and "starting or closing" in r.message
        # the sidebar still offers a way out: a new run
        at.text_input(key="new_name").input("fresh")
        at.button(key="btn_new_run").click().run()
        assert not at.exception and shown(at).status().run.run_dir.endswith("fresh")
        assert runtime.run_state(d) == "live" and len(trainer_processes()) == 1  # the held run untouched
    finally:
        lock.release()


def test_a_new_fp16_run_from_the_form_shows_its_loss_scale(app):
    """The New-run form's precision reaches the trainer process; the live view says it runs fp16 with
    its loss scale and the steps the scaler skipped."""
    at = app()
    at.selectbox(key="new_task").set_value("quadratic").run()
    at.selectbox(key="new_precision").set_value("fp16").run()
    at.text_input(key="new_name").input("half")
    at.button(key="btn_new_run").click().run()
    assert not at.exception and not errors(at)
    s = shown(at).status()
    assert s.run.run_dir.endswith("half") and s.run.precision == "fp16"
    assert shown(at).reader().meta()["config"]["precision"] == "fp16"
    assert any("precision **fp16**" in c.value and "loss scale" in c.value for c in at.caption)
