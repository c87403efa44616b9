"""The divergence sentinel in the engine: skip, rollback and pause on real runs, never a non-finite
checkpoint, and decisions that replay exactly after a restore."""
import sys

import pytest
import torch

from conftest import PLUGINS, ROOT, assert_same_state, run_to
from trainer import Trainer
from trainer.sentinel import recovery_plan
from trainer.snapshot import load_file

sys.path.insert(0, str(ROOT / "bench"))
import divergence  # noqa: E402  (the matrix's own case runner)

SPIKE = f"{PLUGINS / 'spike_at.py'}:make"  # a poisoned sample x 10^4 at steps 37, 216, ...
QUIET = dict(ckpt_every=0, eval_every=0, eval_at_epoch_end=False, device="cpu")


def events(t, kind):
    t.journal.flush()
    return [e for e in t.journal.events() if e["kind"] == kind]


def test_skip_step_equals_a_run_that_never_saw_the_batch(make):
    a = make("a", task=SPIKE, **QUIET)  # the default policy: skip
    run_to(a, 100)
    skips = events(a, "skip_step")
    assert [e["step"] for e in skips] == [37] and a.status().skipped == 1
    assert skips[0]["data"]["series"] == "loss" and skips[0]["data"]["z"] > 6
    b = make("b", task=SPIKE, sentinel="warn", **QUIET)  # never shown the batch: skipped before it came
    run_to(b, 36)
    assert b.skip(1).wait().ok
    run_to(b, 100)
    assert not events(b, "anomaly")
    assert_same_state(a._capture(), b._capture())  # weights, BatchNorm stats, optimizer, data position
    c = make("c", task=SPIKE, sentinel="warn", **QUIET)  # the control: applying the spike changes the run
    run_to(c, 100)
    assert [e["step"] for e in events(c, "anomaly")][0] == 37  # (and its aftermath)
    assert not torch.equal(a.model.body[0].weight, c.model.body[0].weight)


def test_a_restored_run_decides_as_the_original_did(make, tmp_path):
    """The sentinel's windows travel in checkpoints: reopened at step 30, the run still judges step 37
    against the 36 steps before it, so it skips it exactly as the run that never stopped."""
    a = make("a", task=SPIKE, **QUIET)
    run_to(a, 60)
    b = make("b", task=SPIKE, **QUIET)
    run_to(b, 30)
    b.close()
    b2 = Trainer.open(tmp_path / "b")
    try:
        run_to(b2, 60)
        assert [e["step"] for e in events(b2, "skip_step")] == [37]
        assert_same_state(a._capture(), b2._capture())
    finally:
        b2.close()


def test_the_rollback_policy_restores_the_last_good_checkpoint_on_a_new_branch(make):
    t = make(sentinel="rollback", ckpt_every=100, eval_every=0, device="cpu")
    run_to(t, 300)
    before = [r["loss"] for r in t.journal.metrics(0, since_step=250)]
    assert t.set_hparams(lr=1000.0).wait().ok
    run_to(t, 420)
    (rb,) = events(t, "rollback")
    d = rb["data"]
    assert d["checkpoint"] == max(c["id"] for c in t.journal.checkpoints() if c["step"] == 300)
    assert d["fork_step"] == 300 and d["start"] > 300 and d["skip_batches"] == d["start"] - 300 and d["plan"]["lr"] == 0.05
    assert "rollback after the anomaly" in rb["message"]
    branch = [b for b in t.journal.branches() if b["reason"] == "rollback"]
    assert branch and branch[0]["from_checkpoint"] == d["checkpoint"] and t.branch == branch[0]["id"]
    assert t.hp.lr == 0.05 and t.state == "done"
    after = [r["loss"] for r in t.journal.metrics(t.branch, since_step=370)]
    assert sorted(after)[len(after) // 2] < 1.5 * sorted(before)[len(before) // 2] + 0.02


@pytest.mark.parametrize("task,change", [("spirals", {"lr": 1e6}), ("quadratic", {"lr": 1e300}),
                                         ("digits", {"weight_decay": 1e6})])
def test_no_checkpoint_ever_holds_a_non_finite_tensor(make, task, change):
    """lr 10^6 on spirals used to leave BatchNorm's running_var inf in checkpoints of a run that never paused."""
    t = make(task=task, sentinel="warn", ckpt_every=5, eval_every=0, device="cpu")
    run_to(t, 100)
    assert t.set_hparams(**change).wait().ok
    assert t.set_max_steps(200).wait().ok
    t.start().wait()
    assert t.wait(60)
    assert t.state == "error" and t.status().anomaly is not None  # warn still never trains on NaN/inf
    assert not t.save_checkpoint().wait().ok
    t.journal.flush()
    for c in t.journal.checkpoints():
        s = load_file(t.journal.checkpoint_file(c["id"]))
        for k, v in s["model"].items():
            assert not v.is_floating_point() or torch.isfinite(v).all(), (c["id"], k)


def test_a_pause_offers_recover_to_the_checkpoint_before_the_anomaly(make):
    t = make(sentinel="pause", ckpt_every=100, eval_every=0, device="cpu")
    run_to(t, 300)
    assert t.set_hparams(lr=1000.0).wait().ok
    assert t.set_max_steps(400).wait().ok
    t.start().wait()
    assert t.wait(60) and t.state == "error"
    st = t.status()
    assert st.anomaly["kind"] == "spike" and st.anomaly["start"] > 300 and "Recover" in st.error
    plan = recovery_plan(t.journal, t.branch, st.anomaly["start"])
    assert plan["step"] == 300 and plan["lr"] == 0.05 and plan["skip_batches"] == st.anomaly["start"] - 300
    assert t.restore(plan["checkpoint"], {"lr": plan["lr"]}, plan["skip_batches"]).wait().ok
    assert t.status().anomaly is None and t.state == "paused"
    run_to(t, 400)
    assert not events(t, "rollback")


def test_a_sentinel_policy_change_is_live_validated_and_recorded(make):
    t = make()
    assert t.set_sentinel(policy="rollback", window=64, sigma=5.0).wait().ok
    assert dict(t.status().sentinel) == {"policy": "rollback", "window": 64, "sigma": 5.0, "lr_factor": 0.5}
    bad = t.set_sentinel(policy="panic").wait()
    assert not bad.ok and "sentinel: must be one of warn, pause, skip, rollback" in bad.message
    assert not t.set_sentinel(window=2).wait().ok and t.status().sentinel["window"] == 64
    assert [e["data"]["policy"] for e in events(t, "sentinel")] == ["rollback"]
    assert t.journal.meta()["config"]["sentinel"] == "rollback"


@pytest.mark.parametrize("task,opt,case", [("spirals", "adam", "lr 1e3"), ("digits", "sgd", "lr 1e6"),
                                           ("quadratic", "adamw", "NaN"), ("spike plugin", "sgd", "wd 1e6")])
@pytest.mark.parametrize("policy", ["skip", "pause"])
def test_divergence_matrix_cells(tmp_path, task, opt, case, policy):
    """A few cells of bench/divergence.py's matrix (the README reports all of it)."""
    r = divergence.run_case(task, opt, case, policy, tmp_path, steps=200, after=150)
    assert r["finite_checkpoints"], r
    assert r["anomalies"] > 0, r
    assert r["recovered"], r


def test_on_the_sync_free_path_a_nan_step_is_skipped_on_the_device_and_the_run_goes_on(make):
    """The CUDA path, exercised on the CPU: the fused optimizer skips the NaN step (found_inf) and the
    read-back records the skip; under the default policy the run carries on to its limit."""
    t = make(task=f"{PLUGINS / 'nan_at.py'}:make", **QUIET)
    t.sync_free = True
    run_to(t, 80)
    assert t.state == "done" and [e["step"] for e in events(t, "skip_step")] == [37]
    assert all(torch.isfinite(p).all() for p in t.model.parameters())
    rows = t.journal.metrics(0)
    assert rows[36]["loss"] is None
    assert [r["step"] for r in rows if r["update_ratio"] is not None] == list(range(10, 81, 10))  # CPU: every 10th


def test_on_the_sync_free_path_the_skip_flag_belongs_to_its_step(make):
    """The device flag that skipped the NaN step is that step's: a probe's side run starting right
    after it trains (its first step changes the weights), not skipped by a stale flag."""
    t = make(task=f"{PLUGINS / 'nan_at.py'}:make", **QUIET)
    t.sync_free = True
    run_to(t, 37)  # the 37th step is the NaN one: skipped on the device, the last step taken
    before = [p.detach().clone() for p in t.model.parameters()]
    x, y = (v[:32] for v in t.task.train_data.tensors)
    t.task.loss(t.model(x), y).backward()
    t.optimizer.step()  # what a side run's step does with the trainer's optimizer
    t.optimizer.zero_grad()
    assert any(not torch.equal(a, p) for a, p in zip(before, t.model.parameters()))


@pytest.mark.parametrize("sync_free", [False, True], ids=["cpu-path", "sync-free-path"])
def test_a_skipped_nan_step_leaves_batchnorm_as_a_run_that_never_saw_the_batch(make, sync_free):
    """The NaN forward wrote NaN into BatchNorm's running stats before the guard saw it: the skipped
    step puts them back (on the device, without a sync, on the CUDA path), so the run equals one that
    skipped the batch, buffers included."""
    task = f"{PLUGINS / 'nan_at.py'}:make_bn"
    t = make("t", task=task, **QUIET)
    t.sync_free = sync_free
    run_to(t, 60)
    assert t.status().skipped == 1
    ref = make("ref", task=task, **QUIET)
    run_to(ref, 36)
    assert ref.restore(ref.save_checkpoint().wait().value, skip_batches=1).wait().ok
    ref.model.calls = 37  # its NaN forward went with the batch
    run_to(ref, 59 if sync_free else 60)  # the sync-free path counts the skipped step as a step
    mine, theirs = t.model.state_dict(), ref.model.state_dict()
    assert set(mine) == set(theirs) and {"bn.running_mean", "bn.num_batches_tracked"} <= set(mine)
    for k in mine:
        assert torch.equal(mine[k], theirs[k]), k


@pytest.mark.parametrize("ratio_every", [1, 10])
def test_the_update_ratio_is_the_norm_of_the_step_over_the_norm_of_the_weights(make, ratio_every):
    t = make(ratio_every=ratio_every, **QUIET)
    for at in (19, 29):
        run_to(t, at)
        before = torch.cat([p.detach().flatten().double() for p in t.model.parameters()])
        run_to(t, at + 1)
        after = torch.cat([p.detach().flatten().double() for p in t.model.parameters()])
        want = float((after - before).norm() / after.norm())
        row = t.journal.metrics(0, since_step=at)[0]
        if ratio_every == 1 or (at + 1) % ratio_every == 0:
            assert row["update_ratio"] == pytest.approx(want, rel=1e-5)
        else:
            assert row["update_ratio"] is None


def test_diagnose_and_ctl_sentinel_from_the_command_line(tmp_path):
    import json
    import subprocess

    d = tmp_path / "run"
    run = [sys.executable, "-m", "trainer"]
    subprocess.run(run + ["run", "--task", "spirals", "--run-dir", str(d), "--max-steps", "120", "--sentinel",
                          "rollback", "--instrument-every", "20"], cwd=ROOT, check=True, capture_output=True)
    out = subprocess.run(run + ["diagnose", "--run-dir", str(d)], cwd=ROOT, check=True, capture_output=True,
                         text=True).stdout
    assert "update/weight" in out and "layers at step 120:" in out and "0 Linear" in out and "advice:" in out
    js = json.loads(subprocess.run(run + ["diagnose", "--run-dir", str(d), "--json"], cwd=ROOT, check=True,
                                   capture_output=True, text=True).stdout)
    assert js["step"] == 120 and js["layers_step"] == 120 and js["advice"] == []
    assert {r["layer"] for r in js["layers"]} >= {"(model)", "0 Linear", "2 ReLU"}
    r = Trainer.open(d)
    try:
        assert r.status().sentinel["policy"] == "rollback"  # kept in the run's config
    finally:
        r.close()
    bad = subprocess.run(run + ["ctl", "--run-dir", str(d), "sentinel"], cwd=ROOT, capture_output=True, text=True)
    assert bad.returncode == 2 and "give --policy, --window or --sigma" in bad.stderr


def test_on_the_sync_free_path_the_read_back_finds_non_finite_weights(make):
    """The CUDA read-back folds the whole-state check into its one sync; lr 10^6 under warn must still
    pause there, and leave no checkpoint with inf in it. Exercised on the CPU."""
    t = make(sentinel="warn", ckpt_every=5, eval_every=0, device="cpu")
    t.sync_free = True
    run_to(t, 100)
    assert t.set_hparams(lr=1e6).wait().ok and t.set_max_steps(300).wait().ok
    t.start().wait()
    assert t.wait(60) and t.state == "error" and not t.status().anomaly["sound"]
    t.journal.flush()
    for c in t.journal.checkpoints():
        s = load_file(t.journal.checkpoint_file(c["id"]))
        assert all(torch.isfinite(v).all() for v in s["model"].values() if v.is_floating_point()), c["id"]
