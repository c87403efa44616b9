"""Mixed precision (bf16 autocast; fp16 autocast with a GradScaler) and torch.compile as run settings.

References: a straight run with no checkpoint restored (bit-exact, as in test_exactness), a run at
fp32 (the precision must change the math), the GradScaler's own state_dict, and the plain model's
state_dict keys."""
import subprocess
import sys

import pytest
import torch

from conftest import PLUGINS, ROOT, assert_same_state, run_to
from trainer import RunConfig, Trainer
from trainer import snapshot as ckpt
from trainer.config import ConfigError
from trainer.journal import Reader

LOUD = f"{PLUGINS / 'loud.py'}:make"
NAN = f"{PLUGINS / 'nan_at.py'}:make"
QUIET = dict(ckpt_every=0, eval_every=0, eval_at_epoch_end=False)
CASES = {"spirals-sgd": ("spirals", "sgd", {"momentum": 0.9}), "digits-adam": ("digits", "adam", {"lr": 0.01})}


def steps(t) -> list[dict]:
    return t.journal.metrics(t.branch)


def events(t, kind: str) -> list[dict]:
    t.journal.flush()
    return [e for e in t.journal.events() if e["kind"] == kind]


def same_scaler(a: dict, b: dict) -> None:
    assert a["scaler"] == b["scaler"]


@pytest.mark.parametrize("from_disk", [False, True], ids=["ring", "disk"])
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_amp_restore_then_continue_is_bit_exact(make, precision, case, from_disk):
    task, opt, hp = CASES[case]
    ref = make("straight", hp, task=task, optimizer=opt, precision=precision, eval_every=20)
    run_to(ref, 60)
    expected = ref._capture()
    fp32 = make("fp32", hp, task=task, optimizer=opt, eval_every=20)
    run_to(fp32, 60)
    assert any(not torch.equal(a, b) for a, b in zip(expected["model"].values(), fp32._capture()["model"].values())), \
        "autocast changed nothing: the precision was not applied"
    t = make("restored", hp, task=task, optimizer=opt, precision=precision, eval_every=20)
    run_to(t, 30)
    cid = t.save_checkpoint().wait().value
    assert t.set_hparams(lr=t.hp.lr * 5).wait().ok  # a detour that is abandoned
    run_to(t, 45)
    if from_disk:
        t.journal.flush()
        t.store._ring.clear()
    assert t.restore(cid).wait().ok
    run_to(t, 60)
    got = t._capture()
    assert_same_state(got, expected)
    if precision == "fp16":
        same_scaler(got, expected)
    else:
        assert "scaler" not in got


def test_fp16_resume_in_a_new_process_is_bit_exact(make, tmp_path):
    ref = make("straight", task=LOUD, precision="fp16", **QUIET)
    run_to(ref, 60)
    expected = ref._capture()
    assert expected["scaler"]["scale"] < 65536.0 and expected["counters"]["overflows"] > 0  # it did back off
    t = make("first", task=LOUD, precision="fp16", **QUIET)
    run_to(t, 30)
    t.close()
    run_dir = tmp_path / "first"
    out = subprocess.run([sys.executable, "-m", "trainer", "resume", "--run-dir", str(run_dir), "--max-steps", "60"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    reader = Reader(run_dir)
    final = [c for c in reader.checkpoints() if c["step"] == 60]
    assert final
    got = ckpt.load_file(reader.checkpoint_file(final[-1]["id"]))
    assert_same_state(got, expected)
    same_scaler(got, expected)
    assert got["counters"]["overflows"] == expected["counters"]["overflows"]


def test_the_grad_scaler_state_round_trips_through_a_checkpoint_file(make):
    t = make(task=LOUD, precision="fp16", **QUIET)
    run_to(t, 40)
    live = t.scaler.state_dict()
    assert live["scale"] < 65536.0 and live["_growth_tracker"] > 0  # moved away from a fresh scaler
    cid = t.save_checkpoint().wait().value
    t.journal.flush()
    on_disk = ckpt.load_file(t.reader().checkpoint_file(cid))
    assert on_disk["scaler"] == live
    run_to(t, 50)
    assert t.scaler.state_dict() != live
    t.store._ring.clear()
    assert t.restore(cid).wait().ok
    assert t.scaler.state_dict() == live


def test_fp16_overflows_are_the_scalers_business_not_anomalies(make):
    """The scaler skips the overflowed steps and halves its scale; the sentinel sees no anomaly, the
    journal has the scale of every step, and the run trains on."""
    t = make(task=LOUD, precision="fp16", **QUIET)
    run_to(t, 80)
    rows = steps(t)
    scales = [r["loss_scale"] for r in rows]
    assert scales[0] == 65536.0 and all(b in (a, a / 2) for a, b in zip(scales, scales[1:]))
    overflowed = sum(b == a / 2 for a, b in zip(scales, scales[1:]))
    assert t.status().overflows >= overflowed > 0
    assert not events(t, "skip_step") and not events(t, "anomaly") and t.skipped == 0
    assert t.state == "done" and rows[-1]["loss"] < rows[0]["loss"]
    assert t.status().loss_scale == scales[-1]


def test_an_fp32_run_leaves_no_loss_scale(make):
    t = make(**QUIET)
    run_to(t, 20)
    assert all(r["loss_scale"] is None for r in steps(t)) and t.status().loss_scale is None


@pytest.mark.parametrize("sync_free", [False, True], ids=["cpu-path", "sync-free-path"])
def test_under_fp16_a_nan_loss_is_still_the_sentinels(make, sync_free):
    """A NaN loss is a divergence, whatever the scale: the step is skipped and recorded once, the
    weights stay finite, and it is not counted as an overflow."""
    t = make(task=NAN, precision="fp16", **QUIET)
    t.sync_free = sync_free  # the CUDA path, exercised on the CPU
    run_to(t, 60)
    assert [e["step"] for e in events(t, "skip_step")] == [37]
    assert t.status().overflows == 0
    assert all(torch.isfinite(p).all() for p in t.model.parameters())
    assert t.state == "done"


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_the_probe_runs_at_the_runs_precision_and_puts_it_back(make, precision):
    t = make(task=LOUD if precision == "fp16" else "spirals", precision=precision, **QUIET)
    run_to(t, 20)
    before = t._capture()
    assert t.probe(samples=2, steps=15).wait().ok
    assert t.wait(120)
    assert t.status().state != "probing"
    after = t._capture()
    assert_same_state(after, before)
    if precision == "fp16":
        same_scaler(after, before)


def test_bad_precision_is_refused():
    with pytest.raises(ConfigError, match="precision"):
        RunConfig(precision="fp8")
    with pytest.raises(ConfigError, match="compile"):
        RunConfig(compile="yes")
    out = subprocess.run([sys.executable, "-m", "trainer", "run", "--precision", "half", "--run-dir", "/tmp/never"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "precision" in out.stderr


def test_compiled_training_checkpoints_a_plain_state_dict_that_loads_without_compile(make, tmp_path):
    t = make("compiled", compile=True, **QUIET)
    run_to(t, 30)
    assert t.compile_s > 0 and t.status().compile_s == t.compile_s
    assert events(t, "compile")
    rows = steps(t)
    assert rows[-1]["loss"] < rows[0]["loss"]
    cid = t.save_checkpoint().wait().value
    t.journal.flush()
    state = ckpt.load_file(t.reader().checkpoint_file(cid))
    assert not any("_orig_mod" in k for k in state["model"])
    t.close()
    plain = Trainer.open(tmp_path / "compiled", checkpoint=cid, compile=False)
    try:
        assert plain.cfg.compile is False and plain.step == 30
        assert_same_state(plain._capture(), state)
        run_to(plain, 40)
    finally:
        plain.close()


@pytest.mark.parametrize("sync_free", [False, True], ids=["cpu-path", "sync-free-path"])
def test_overflow_at_every_scale_pauses_the_run_with_the_weights_untouched(make, sync_free):
    """The scaler does not fight the guard, nor the guard the scaler: overflows are the scaler's until
    it has halved its scale MAX_OVERFLOWS times in a row; then the gradients are not finite at any
    scale and the run pauses, as the sentinel pauses on a divergence."""
    from trainer.engine import MAX_OVERFLOWS
    t = make(task=f"{PLUGINS / 'nan_grad.py'}:make", precision="fp16", **QUIET)
    t.sync_free = sync_free
    init = {k: v.clone() for k, v in t.model.state_dict().items()}
    assert t.set_max_steps(MAX_OVERFLOWS + 30).wait().ok
    assert t.start().wait().ok
    assert t.wait(60)
    s = t.status()
    assert s.state == "error" and s.anomaly["kind"] == "overflow", (s.state, s.error)
    assert s.overflows == MAX_OVERFLOWS and s.step == MAX_OVERFLOWS - (0 if sync_free else 1)
    assert "overflowed" in s.error and not events(t, "skip_step")
    for k, v in t.model.state_dict().items():
        assert torch.equal(v, init[k]), k
