"""Switching runs from the dashboard: the training run is left undisturbed, a locked run is explained."""
import pytest

from conftest import PLUGINS
from test_app import app, errors, trainer_threads  # noqa: F401  (app is a fixture)
from app import runtime
from trainer import RunConfig, Trainer
from trainer.runlock import RunLock


def test_a_new_run_is_built_while_the_old_one_rests(app, tmp_path):
    app()
    old = runtime.live_trainer()
    assert old.start().wait().ok
    seen = []

    def broken():
        seen.append(old.status().state)
        raise ValueError("bad input")

    with pytest.raises(ValueError):
        runtime._swap(broken)
    assert seen == ["paused"]  # built while the old run rested: its RNG streams were parked
    assert old.status().state == "running" and runtime.live_trainer() is old  # and it goes on

    def good():
        seen.append(old.status().state)
        return Trainer.create(RunConfig(task="quadratic", run_dir=str(tmp_path / "runs" / "next")))

    new = runtime._swap(good)
    assert seen[-1] == "paused" and old.status().state == "closed" and runtime.live_trainer() is new
    assert len(trainer_threads()) == 1


def test_a_broken_plugin_leaves_the_training_run_training(app):
    at = app()
    old = runtime.live_trainer()
    at.button(key="btn_start").click().run()
    at.selectbox(key="new_task").set_value("custom: module:function or file.py:function").run()
    at.text_input(key="new_custom").input(str(PLUGINS / "broken.py") + ":wrong_type")
    at.button(key="btn_new_run").click().run()
    assert any("must return trainer.Task" in e for e in errors(at))
    assert runtime.live_trainer() is old and old.status().state == "running"
    kinds = [e["kind"] for e in old.reader().events()]
    assert kinds[-2:] == ["pause", "resume"]


def test_a_run_locked_by_another_process_is_explained(app, tmp_path):
    d = tmp_path / "runs" / "busy"
    Trainer.create(RunConfig(task="quadratic", run_dir=str(d))).close()
    lock = RunLock(d)  # as another process would hold it
    try:
        at = app(run_dir=str(d))
        assert not at.exception
        assert any("RunLockedError" in e and "in use by" in e for e in errors(at)), errors(at)
        # the sidebar still offers a way out: a new run
        at.text_input(key="new_name").input("fresh")
        at.button(key="btn_new_run").click().run()
        assert not at.exception and runtime.live_trainer() is not None
        at.selectbox(key="open_name").set_value("busy")
        at.button(key="btn_open_run").click().run()
        assert any("RunLockedError" in e and "in use by" in e for e in errors(at)), errors(at)
        assert runtime.live_trainer().status().run.run_dir.endswith("fresh")
    finally:
        lock.release()
