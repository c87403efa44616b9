"""Reopening a run continues from the newest state on its branch's lineage; a rejected resume
changes nothing; a run killed before its first checkpoint starts again from step 0, saying so."""
import json
import signal
import sqlite3
import subprocess
import sys
import time

from conftest import ROOT, assert_same_state, run_to
from trainer import Reader, Trainer
from trainer import snapshot as ckpt


def cli(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "trainer", *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


def test_reopen_after_a_rollback_continues_from_the_rollback(make, tmp_path):
    """Repro A: train to 60 (checkpoints every 20), restore step 40, close, open: step 40, not 0."""
    t = make("a", ckpt_every=20, eval_every=0)
    run_to(t, 60)
    step40 = [c for c in t.reader().checkpoints() if c["step"] == 40][0]["id"]
    assert t.restore(step40).wait().ok
    expected = t._capture()
    branch = t.status().branch
    t.close()
    again = Trainer.open(tmp_path / "a")
    try:
        st = again.status()
        assert (st.step, st.branch) == (40, branch)
        assert_same_state(again._capture(), expected)
        events = [e["kind"] for e in again.reader().events()]
        assert events.count("restore") == 1 and events[-1] == "open"  # opening is not a rollback
    finally:
        again.close()


def test_reopen_keeps_changes_made_after_the_last_checkpoint(make, tmp_path):
    t = make("b", ckpt_every=0)
    run_to(t, 30)
    assert t.set_hparams(lr=0.02).wait().ok
    expected = t._capture()
    t.close()
    again = Trainer.open(tmp_path / "b")
    try:
        assert again.status().hparams.lr == 0.02
        assert_same_state(again._capture(), expected)
    finally:
        again.close()


def test_a_rejected_resume_changes_nothing(tmp_path):
    """Repro B: a resume rejected for its step limit used to commit a branch and its config."""
    d = tmp_path / "b"
    assert cli("run", "--task", "quadratic", "--run-dir", d, "--max-steps", 300, "--ckpt-every", 100).returncode == 0
    before = {t: sqlite3.connect(d / "journal.sqlite").execute(f"SELECT * FROM {t}").fetchall()
              for t in ("meta", "branches", "checkpoints")}
    r = cli("resume", "--run-dir", d, "--from", 2, "--max-steps", 150)
    assert r.returncode == 2 and "step limit 150" in r.stderr
    after = {t: sqlite3.connect(d / "journal.sqlite").execute(f"SELECT * FROM {t}").fetchall() for t in before}
    assert after == before
    r = cli("resume", "--run-dir", d, "--max-steps", 400)
    assert r.returncode == 0, r.stderr
    assert "resumed at step 300" in r.stderr
    rows = json.loads(cli("checkpoints", "--run-dir", d, "--json").stdout)
    assert rows[-1]["step"] == 400 and rows[-1]["branch"] == 0


def test_a_run_killed_before_its_first_checkpoint_starts_again_from_step_0(make, tmp_path):
    d = tmp_path / "early"
    p = subprocess.Popen([sys.executable, "-m", "trainer", "run", "--task", "spirals", "--run-dir", str(d),
                          "--max-steps", "100000000", "--ckpt-every", "0", "--eval-every", "0"], cwd=ROOT,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while True:
            assert time.time() < deadline and p.poll() is None, "the run did not get going"
            try:
                if Reader(d).last_step(0) >= 50:
                    break
            except Exception:
                pass
            time.sleep(0.1)
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait(30)
    assert not Reader(d).checkpoints()
    r = cli("resume", "--run-dir", d, "--max-steps", 40)
    assert r.returncode == 0, r.stderr
    assert "from step 0 (no checkpoint" in r.stderr
    reader = Reader(d)
    rows = reader.checkpoints()
    assert rows[-1]["step"] == 40
    assert reader.branches()[-1]["fork_step"] == 0  # the killed path stays, as an abandoned branch
    ref = make("ref", task="spirals", eval_every=0)
    run_to(ref, 40)
    assert_same_state(ckpt.load_file(reader.checkpoint_file(rows[-1]["id"])), ref._capture())


def test_setting_the_same_lr_again_restarts_its_decay_and_survives_a_reopen(make, tmp_path):
    """Setting lr to its current value makes it alpha0 again (the decay restarts): that changes the
    state, so closing must checkpoint it. Found by test_model_based: the reopened run had the old
    schedule epoch, and decayed differently from a run that never closed."""
    t = make("s", ckpt_every=0, eval_every=0, eval_at_epoch_end=False,
             hparams={"lr_decay": "inverse-time", "decay_rate": 1.0})
    run_to(t, 2 * t.status().steps_per_epoch + 1)  # epoch 2: the lr has decayed to 0.1 / 3
    decayed = t.status().effective_lr
    assert t.set_hparams(lr=0.1).wait().ok
    assert t.status().effective_lr == 0.1 > decayed
    expected = t._capture()
    t.close()
    again = Trainer.open(tmp_path / "s")
    try:
        assert again.status().effective_lr == 0.1
        assert again._capture()["schedule"] == expected["schedule"]
    finally:
        again.close()
