"""One owner per piece of state: one writer per run directory, a status that is a value, commands
that never block each other or get lost, paths from the journal that never leave the run."""
import subprocess
import sys
import threading
import time

import pytest
import torch

from conftest import ROOT, run_to
from trainer import RunLockedError, Trainer
from trainer.commands import ACCEPTS


def test_a_second_trainer_on_a_run_directory_is_refused_naming_the_owner(make, tmp_path):
    t = make("owned", ckpt_every=10)
    run_to(t, 20)
    with pytest.raises(RunLockedError, match=r"in use by process \d+ on "):
        Trainer.open(tmp_path / "owned")
    code = f"from trainer import Trainer; Trainer.open({str(tmp_path / 'owned')!r})"
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "RunLockedError" in r.stderr and "in use by process" in r.stderr
    r = subprocess.run([sys.executable, "-m", "trainer", "resume", "--run-dir", str(tmp_path / "owned"),
                        "--max-steps", "40"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "in use by process" in r.stderr
    assert [c["id"] for c in t.reader().checkpoints()] == [1, 2]  # nothing allocated or overwritten
    t.close()
    Trainer.open(tmp_path / "owned").close()  # released with the trainer


def test_a_new_run_built_while_another_rests_leaves_its_random_streams_alone(make, tmp_path):
    """Building a run reseeds the global RNGs; a run at rest takes its own back before it works."""
    from conftest import PLUGINS
    task = f"{PLUGINS / 'noisy.py'}:make"
    ref = make("ref", task=task, ckpt_every=0, eval_every=0)
    run_to(ref, 30)
    expected = ref.store.load(ref.save_checkpoint().wait().value)
    t = make("old", task=task, ckpt_every=0, eval_every=0)
    run_to(t, 15)
    other = make("new", task="spirals", seed=7)  # reseeds python, numpy and torch in this process
    torch.rand(100)
    run_to(t, 30)
    got = t.store.load(t.save_checkpoint().wait().value)
    for k in ("python", "numpy"):
        assert got["rng"][k] == expected["rng"][k]
    assert torch.equal(got["rng"]["torch"], expected["rng"]["torch"])
    assert all(torch.equal(a, b) for a, b in zip(got["model"].values(), expected["model"].values()))
    other.close()


def test_status_is_an_immutable_value_swapped_whole(make):
    t = make(ckpt_every=10, max_steps=0)
    st = t.status()
    with pytest.raises(Exception):
        st.step = 5
    with pytest.raises(TypeError):
        st.eval["x"] = 1 if st.eval is not None else (_ for _ in ()).throw(TypeError())
    assert t.start().wait().ok
    seen, stop = [], threading.Event()

    def read():
        while not stop.is_set():
            s = t.status()
            seen.append((s.step, s.epoch, s.effective_lr, s.state, s.version))

    readers = [threading.Thread(target=read) for _ in range(2)]
    for r in readers:
        r.start()
    for cid_step in range(3):
        time.sleep(0.1)
        rows = t.reader().checkpoints()
        if rows:
            t.restore(rows[0]["id"]).wait()
    stop.set()
    for r in readers:
        r.join()
    t.pause().wait()
    assert seen and all(s[1] >= 0 and s[2] > 0 for s in seen)
    by_version = {}
    for s in seen:  # one version is one value: never two readings of a version that differ
        assert by_version.setdefault(s[4], s) == s
    assert st.state == "ready" and st.step == 0  # the old value did not change under us


def test_the_state_table_drives_the_guards(make):
    t = make(max_steps=0)
    assert t.status().accepts == ACCEPTS["ready"]
    r = t.pause().wait()
    assert not r.ok and "not possible while the run is ready" in r.message
    assert t.start().wait().ok and t.status().accepts == ACCEPTS["running"]
    assert not t.start().wait().ok
    t.pause().wait()
    assert t.status().accepts == ACCEPTS["paused"]


def test_a_slow_command_never_blocks_other_senders(make, monkeypatch):
    t = make(max_steps=0, ckpt_every=0)
    run_to(t, 5)
    release = threading.Event()
    real = Trainer._cmd_set_max_steps

    def slow(self, max_steps):
        release.wait(10)
        return real(self, max_steps)

    monkeypatch.setattr(Trainer, "_cmd_set_max_steps", slow)
    first = t.set_max_steps(100)
    time.sleep(0.1)
    t0 = time.perf_counter()
    second = t.submit("set_hparams", changes={"lr": 0.05})  # must not wait for the slow one
    assert time.perf_counter() - t0 < 0.05
    assert t.status() is not None
    release.set()
    assert first.wait().ok and second.wait().ok


def test_skip_batches_is_bounded_by_an_epoch(make):
    t = make(ckpt_every=10)
    run_to(t, 10)
    most = t.batches.batches_per_epoch(t.status().hparams.batch_size)
    t0 = time.perf_counter()
    r = t.restore(1, skip_batches=10 ** 12).wait()
    assert time.perf_counter() - t0 < 5
    assert not r.ok and f"from 0 to {most}" in r.message and t.status().step == 10
    assert not t.skip(most + 1).wait().ok
    assert t.skip(most).wait().ok and t.status().epoch == 1


def test_commands_around_close_are_answered_and_concurrent_closes_return(make):
    for i in range(5):
        t = make(f"c{i}", max_steps=0, ckpt_every=0)
        t.start().wait()
        cmds, closers = [], [threading.Thread(target=t.close) for _ in range(3)]

        def spam():
            for _ in range(200):
                cmds.append(t.set_hparams(lr=0.05))

        sender = threading.Thread(target=spam)
        sender.start()
        for c in closers:
            c.start()
        sender.join()
        for c in closers:
            c.join(30)
            assert not c.is_alive(), "a concurrent close() never returned"
        for c in cmds:
            c.wait(5)  # every command is answered, applied or rejected
        assert not t.set_hparams(lr=0.01).wait(1).ok


def test_submit_accepts_only_the_public_commands(make):
    t = make()
    for kind in ("close", "open", "_cmd_close", "__init__", 123):
        r = t.submit(kind).wait(1)
        assert not r.ok and "unknown command" in r.message
    assert t.status().state == "ready" and t._thread.is_alive()
    r = t.submit("restore", checkpoint=1, reason="x" * 10_000).wait()
    assert not r.ok and "bad arguments" in r.message  # no free text beyond the bounded label


def test_paths_from_the_journal_never_leave_the_run(make, tmp_path):
    """Retention used to delete run_dir / path for any row; the download served any file a row named."""
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    t = make("r", ckpt_every=10, keep_last=1, eval_every=0)
    run_to(t, 10)
    t.journal.flush()
    t.journal._wcon.execute("UPDATE checkpoints SET path = ? WHERE id = 1", ("../victim.txt",))
    run_to(t, 40)
    t.journal.flush()
    assert victim.read_text() == "keep me"
    assert any("leaves the run directory" in e["message"] for e in t.reader().events(kinds=("error",)))
    live = t.reader().checkpoints()[-1]["id"]
    t.journal._wcon.execute("UPDATE checkpoints SET path = ? WHERE id = ?", (str(victim), live))
    with pytest.raises(Exception, match="leaves the run directory"):
        t.reader().checkpoint_file(live)
    t.store._ring.clear()
    r = t.restore(live).wait()
    assert not r.ok and "leaves the run directory" in r.message
