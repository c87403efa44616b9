"""Commands while training runs: live hyperparameters, pause/resume, branches, skip-batches, NaN guard."""
import threading
import time

import torch

from conftest import PLUGINS, assert_same_state, run_to
from trainer import THREAD_NAME
from trainer.data import Batches


def wait_step(t, n, timeout=60):
    end = time.time() + timeout
    while t.step < n:
        assert time.time() < end, f"stuck at step {t.step} ({t.state}, {t.error})"
        time.sleep(0.005)


def test_live_lr_change_takes_effect_at_the_next_step(make):
    t = make(max_steps=100_000)
    assert t.start().wait().ok
    wait_step(t, 30)
    r = t.set_hparams(lr=0.0123, momentum=0.5).wait()
    assert r.ok and str(r) == f"applied at step {r.step}"
    wait_step(t, r.step + 20)
    t.pause().wait()
    t.journal.flush()
    rows = {m["step"]: m for m in t.journal.metrics(0)}
    assert rows[r.step]["lr"] == 0.0123 and rows[r.step]["momentum"] == 0.5
    assert rows[r.step - 1]["lr"] == 0.1 and rows[r.step - 1]["momentum"] == 0.9
    ev = [e for e in t.journal.events() if e["kind"] == "hparams"]
    assert [e["message"] for e in ev] == ["lr 0.1 → 0.0123", "momentum 0.9 → 0.5"]


def test_the_training_thread_is_named_and_unique(make):
    t = make()
    named = [th for th in threading.enumerate() if th.name == THREAD_NAME and getattr(th, "trainer", None) is t]
    assert len(named) == 1


def test_rejected_change_names_the_field_and_changes_nothing(make):
    t = make(max_steps=50)
    before = t.hp
    for bad, field in [({"lr": float("nan")}, "lr"), ({"momentum": 1.0}, "momentum"),
                       ({"batch_size": 10_000}, "batch_size"), ({"lr": "0.1"}, "lr"), ({"lrr": 0.1}, "lrr")]:
        r = t.set_hparams(**bad).wait()
        assert not r.ok and str(r).startswith(f"rejected: {field}")
    assert t.hp == before
    assert not [e for e in t.journal.events() if e["kind"] == "hparams"]


def test_pause_holds_the_step_and_resume_continues(make):
    t = make(max_steps=100_000)
    t.start().wait()
    wait_step(t, 20)
    assert t.pause().wait().ok
    held = t.step
    time.sleep(0.3)
    assert t.step == held and t.state == "paused"
    assert t.resume().wait().ok
    wait_step(t, held + 20)
    assert t.stop().wait().ok
    t.journal.flush()
    kinds = [e["kind"] for e in t.journal.events()]
    assert kinds.index("pause") < kinds.index("resume") < kinds.index("stopped")


def test_commands_from_many_threads_all_get_a_result(make):
    t = make(max_steps=100_000)
    t.start().wait()
    results = []

    def nudge(i):
        results.append(t.set_hparams(lr=0.01 * (i + 1)).wait())

    threads = [threading.Thread(target=nudge, args=(i,)) for i in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert all(r.ok for r in results) and len(results) == 8
    t.pause().wait()
    assert t.hp.lr in [0.01 * (i + 1) for i in range(8)]


def test_restore_records_a_branch_and_keeps_the_abandoned_path(make):
    t = make()
    run_to(t, 40)
    cid = t.save_checkpoint("good").wait().value
    run_to(t, 70)
    r = t.restore(cid, hparams={"lr": 0.02}).wait()
    assert r.ok and r.value == 1
    assert t.hp.lr == 0.02  # given with the restore: applied after loading, never overridden
    run_to(t, 90)
    t.journal.flush()
    b = {x["id"]: x for x in t.journal.branches()}
    assert b[1]["parent"] == 0 and b[1]["fork_step"] == 40 and b[1]["reason"] == "restore"
    lineage = t.journal.metrics(1)
    assert [m["step"] for m in lineage] == list(range(1, 91))
    assert {m["branch"] for m in lineage if m["step"] <= 40} == {0}
    assert lineage[45]["lr"] == 0.02
    abandoned = t.journal.other_branches(1)
    assert [m["step"] for m in abandoned[0]["steps"]] == list(range(41, 71))
    msgs = [e["message"] for e in t.journal.events() if e["kind"] in ("restore", "hparams")]
    assert any("onto new branch 1" in m for m in msgs) and "lr 0.1 → 0.02" in msgs


def test_skip_batches_after_restore_moves_the_data_position(make):
    t = make(max_steps=0)
    run_to(t, 30)
    cid = t.save_checkpoint().wait().value
    run_to(t, 35)
    assert t.restore(cid, skip_batches=7).wait().ok
    ref = Batches(t.task.train_data, t.cfg.seed, t.device)  # an independent cursor, advanced 30 + 7 batches
    for _ in range(37):
        ref.next(t.hp.batch_size)
    assert (t.batches.epoch, t.batches.offset) == (ref.epoch, ref.offset)
    (x, _), _ = t.batches.next(t.hp.batch_size)
    (rx, _), _ = ref.next(t.hp.batch_size)
    assert torch.equal(x, rx)
    t.journal.flush()
    assert any(e["kind"] == "skip" for e in t.journal.events())


def test_nan_loss_is_never_applied_and_pauses_with_an_error(make):
    # The CPU guard pauses at the bad step itself; on CUDA the sync-free guard skips it on the device
    # and pauses at the next read-back (test_sync_free_guard_used_on_cuda_skips_the_bad_step).
    t = make(task=f"{PLUGINS / 'nan_at.py'}:make", ckpt_every=10, device="cpu", sentinel="pause")
    run_to(t, 36)
    good = t._capture()
    pos = t.batches.position()
    assert t.set_max_steps(1000).wait().ok
    t.start().wait()
    assert t.wait(30)
    assert t.state == "error" and t.step == 36 and "non-finite loss at step 37" in t.error
    assert t._thread.is_alive()
    now = t._capture()
    good["data"] = now["data"]
    assert_same_state(now, good)  # the NaN step was not applied
    assert t.batches.position() != pos  # and its batch is used up: on these weights it would fail again
    assert not t.save_checkpoint().wait().ok  # no checkpoint from the error state
    t.journal.flush()
    assert max(c["step"] for c in t.journal.checkpoints()) <= 36
    assert any(e["kind"] == "error" and "step 37" in e["message"] for e in t.journal.events())
    # and the user can go on: restore the last good checkpoint and resume
    last = t.journal.checkpoints()[-1]["id"]
    assert t.restore(last).wait().ok and t.state == "paused"
    run_to(t, 60)
    assert t.state == "done"


def test_exception_in_user_forward_pauses_and_the_trainer_stays_usable(make):
    t = make(task=f"{PLUGINS / 'broken.py'}:forward_error", ckpt_every=2, eval_every=0)
    run_to(t, 4)
    t.start().wait() if t.state != "running" else None
    assert t.set_max_steps(20).wait().ok
    t.start().wait()
    assert t.wait(30)
    assert t.state == "error" and "ValueError: shapes do not match in my layer" in t.error
    assert t.resume().wait().ok  # the 5th call was the only bad one
    assert t.wait(30) and t.state == "done" and t.step == 20


def test_checkpoint_optimizer_settings_never_override_the_users(make):
    """OPT-175B's logbook: a reload silently brought back the checkpoint's optimizer settings."""
    t = make(ckpt_every=0)
    run_to(t, 20)
    cid = t.save_checkpoint().wait().value  # saved with lr 0.1, momentum 0.9
    assert t.set_hparams(lr=0.05).wait().ok
    run_to(t, 30)
    assert t.restore(cid, hparams={"lr": 0.02, "momentum": 0.5}).wait().ok
    run_to(t, 31)
    t.journal.flush()
    row = t.journal.metrics(t.branch, since_step=20)[0]
    assert (row["step"], row["lr"], row["momentum"]) == (21, 0.02, 0.5)
    g = t.optimizer.param_groups[0]
    assert g["lr"] == 0.02 and g["momentum"] == 0.5
    # the same values as now, given again with a restore of an lr-0.1 checkpoint: still 0.02, not 0.1
    assert t.restore(cid, hparams={"lr": 0.02, "momentum": 0.5}).wait().ok
    run_to(t, 21)
    assert t.optimizer.param_groups[0]["lr"] == 0.02 and t.optimizer.param_groups[0]["momentum"] == 0.5
    # and without overrides the checkpoint's own values come back, in param_groups too
    assert t.set_hparams(lr=0.3).wait().ok
    run_to(t, 35)
    assert t.restore(cid).wait().ok
    run_to(t, 21)
    assert t.optimizer.param_groups[0]["lr"] == 0.1


def test_sync_free_guard_used_on_cuda_skips_the_bad_step(make):
    """On CUDA the guard may not sync every step: the fused optimizer skips the step whose found_inf
    flag is set, and the read-back (every log_every steps) pauses the run. Exercised here on the CPU."""
    t = make(task=f"{PLUGINS / 'nan_at.py'}:make", ckpt_every=0, eval_every=0, eval_at_epoch_end=False, log_every=10,
             sentinel="pause")
    t.sync_free = True
    run_to(t, 36)
    assert t.set_max_steps(1000).wait().ok
    t.start().wait()
    assert t.wait(30) and t.state == "error" and "step 37" in t.error
    assert 37 <= t.step <= 46  # detected at the next read-back, not later
    assert all(torch.isfinite(p).all() for p in t.model.parameters())
    t.journal.flush()
    rows = t.journal.metrics(0)
    assert [m["step"] for m in rows] == list(range(1, t.step + 1))
    assert rows[36]["loss"] is None and all(m["loss"] is not None for m in rows[:36] + rows[37:])
    # reference: an exact run that skips batch 37 with the restore option, then goes as far
    ref = make("ref", task=f"{PLUGINS / 'nan_at.py'}:make", ckpt_every=0, eval_every=0, eval_at_epoch_end=False)
    run_to(ref, 36)
    cid = ref.save_checkpoint().wait().value
    assert ref.restore(cid, skip_batches=1).wait().ok
    ref.model.calls = 37  # its 37th forward (the NaN one) was skipped with the batch
    run_to(ref, 36 + (t.step - 37))
    assert torch.equal(ref.model.lin.weight, t.model.lin.weight) and torch.equal(ref.model.lin.bias, t.model.lin.bias)


def test_the_published_status_shows_an_error_at_once(make):
    t = make(task=f"{PLUGINS / 'nan_at.py'}:make", ckpt_every=0, device="cpu", sentinel="pause")  # pauses at 36
    assert t.set_max_steps(100).wait().ok
    t.start().wait()
    assert t.wait(30)
    st = t.status()
    assert st.state == "error" and "step 37" in st.error and "pause" not in st.accepts and st.step == 36


def test_wait_covers_a_command_taken_but_not_yet_applied(make, monkeypatch):
    """wait() used to return while a start was off the queue but not applied: the CLI then exited 0."""
    from trainer import Trainer
    real = Trainer._cmd_start

    def slow_start(self):
        time.sleep(0.3)
        return real(self)

    monkeypatch.setattr(Trainer, "_cmd_start", slow_start)
    t = make(max_steps=0)
    t.start()
    time.sleep(0.05)  # the command is being applied now
    assert not t.wait(0.1)  # neither at rest nor answered yet
    assert t.wait(5) is False and t.status().state == "running"
