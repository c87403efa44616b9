"""Restore-and-continue is bit-identical to never having left (CPU, deterministic settings).

Reference: a straight run with no checkpoint restored, compared tensor for tensor with accelerate's
test_can_resume_training in mind: straight through vs save, reload, continue.
"""
import subprocess
import sys

import pytest

from conftest import PLUGINS, ROOT, assert_same_state, run_to
from trainer import snapshot as ckpt

TASKS = {  # task -> (k, extra steps on the abandoned path, optimizer, hparams)
    "spirals": (60, 25, "sgd", {"lr_decay": "inverse-time", "decay_rate": 0.5}),
    "digits": (50, 20, "adam", {"lr": 0.01, "weight_decay": 1e-4}),
    "quadratic": (40, 15, "sgd", {"momentum": 0.5}),
    f"{PLUGINS / 'noisy.py'}:make": (40, 17, "adamw", {"grad_clip": 0.5}),
    "charlm": (20, 8, "adamw", {"lr": 1e-3}),
}
IDS = ["spirals", "digits", "quadratic", "plugin-all-rngs", "charlm"]


def straight(make, task, opt, hp, steps):
    ref = make("straight", hp, task=task, optimizer=opt, eval_every=20)
    run_to(ref, steps)
    return ref._capture()


@pytest.mark.parametrize("from_disk", [False, True], ids=["ring", "disk"])
@pytest.mark.parametrize("task", TASKS, ids=IDS)
def test_restore_then_continue_same_hparams(make, task, from_disk):
    k, j, opt, hp = TASKS[task]
    expected = straight(make, task, opt, hp, 2 * k)
    t = make("restored", hp, task=task, optimizer=opt, eval_every=20)
    run_to(t, k)
    cid = t.save_checkpoint("k").wait().value
    run_to(t, k + j)
    if from_disk:
        t.journal.flush()
        t.store._ring.clear()
    assert t.restore(cid).wait().ok
    assert t.step == k
    run_to(t, 2 * k)
    assert_same_state(t._capture(), expected)


@pytest.mark.parametrize("task", TASKS, ids=IDS)
def test_detour_with_other_lr_then_restore(make, task):
    k, j, opt, hp = TASKS[task]
    expected = straight(make, task, opt, hp, 2 * k)
    t = make("detour", hp, task=task, optimizer=opt, eval_every=20)
    run_to(t, k)
    cid = t.save_checkpoint().wait().value
    lr = t.hp.lr
    assert t.set_hparams(lr=lr * 7, momentum=0.3).wait().ok
    run_to(t, k + j)
    assert t.restore(cid).wait().ok  # the checkpoint's own hyperparameters come back
    assert t.hp.lr == lr
    run_to(t, 2 * k)
    assert_same_state(t._capture(), expected)


@pytest.mark.parametrize("task", TASKS, ids=IDS)
def test_resume_in_new_process(make, task, tmp_path):
    k, _, opt, hp = TASKS[task]
    expected = straight(make, task, opt, hp, 2 * k)
    t = make("first", hp, task=task, optimizer=opt, eval_every=20)
    run_to(t, k)  # the run stops at its limit with a final checkpoint
    t.close()
    run_dir = tmp_path / "first"
    out = subprocess.run([sys.executable, "-m", "trainer", "resume", "--run-dir", str(run_dir),
                          "--max-steps", str(2 * k)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    rows = subprocess.run([sys.executable, "-m", "trainer", "checkpoints", "--run-dir", str(run_dir), "--json"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    import json
    final = [c for c in json.loads(rows.stdout) if c["step"] == 2 * k]
    assert final, rows.stdout
    assert_same_state(ckpt.load_file(final[-1]["path"]), expected)


PAIRS = [(task, opt) for task in ("spirals", "digits", "quadratic") for opt in ("sgd", "adam", "adamw")]


@pytest.mark.parametrize("task,opt", PAIRS, ids=[f"{t}-{o}" for t, o in PAIRS])
def test_a_ring_snapshot_restores_exactly_any_number_of_times(make, task, opt):
    """Bug: Optimizer.load_state_dict kept the snapshot's tensors, so the steps after a first restore
    wrote into the snapshot and a second restore of it was not exact."""
    hp = {"momentum": 0.9} if task == "quadratic" else {}
    expected = straight(make, task, opt, hp, 20)
    t = make("twice", hp, task=task, optimizer=opt, eval_every=20, ckpt_every=0)
    run_to(t, 10)
    cid = t.save_checkpoint().wait().value
    run_to(t, 20)
    assert t.restore(cid).wait().ok
    run_to(t, 15)
    assert t.restore(cid).wait().ok  # the same in-memory snapshot, a second time
    run_to(t, 20)
    assert_same_state(t._capture(), expected)
