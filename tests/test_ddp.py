"""Data parallel under torchrun (gloo, 2 CPU processes): rank 0 owns the run, the other rank follows,
and the run is what one process computes (same data order), exactly reproducible against itself."""
import contextlib
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from conftest import ROOT, descendants
from test_ctl import attach, wait_for
from trainer import Reader
from trainer.client import offline_status

pytestmark = pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                                reason="torch.distributed with gloo")

TASK = str(ROOT / "tests" / "plugins" / "ddp_task.py") + ":make"
DROPOUT = str(ROOT / "tests" / "plugins" / "ddp_task.py") + ":make_dropout"


def torchrun(*args):
    """2 CPU ranks over gloo (a new run is told --device cpu; a resume keeps its run's device)."""
    cpu = ("--device", "cpu") if args[0] == "run" else ()
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
            "-m", "trainer", *map(str, args), *cpu]


def run(cmd, env=None, timeout=240):
    r = subprocess.run(list(map(str, cmd)), cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                       env={**os.environ, **(env or {})})
    return r


def ok(cmd, **kw):
    r = run(cmd, **kw)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r


@contextlib.contextmanager
def job(tmp_path, *args, env=None):
    """A torchrun job in the background, killed (whole process group) on the way out."""
    log = open(tmp_path / f"job-{time.monotonic_ns()}.log", "w")
    p = subprocess.Popen(torchrun(*args), cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                         env={**os.environ, **(env or {})}, start_new_session=True)
    try:
        yield p
    finally:
        ranks = descendants(p.pid)  # torchrun starts its workers in their own process groups
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
        for pid in ranks:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        p.wait(60)
        log.close()


def losses(d, branch=None) -> dict[int, float]:
    r = Reader(d)
    b = r.meta()["branch"] if branch is None else branch
    return {row["step"]: row["loss"] for row in r.metrics(b)}


def events(d, kind=None):
    return [e for e in Reader(d).events() if kind is None or e["kind"] == kind]


def final_weights(d) -> dict:
    r = Reader(d)
    ck = max(r.checkpoints(), key=lambda c: (c["step"], c["id"]))
    return torch.load(r.checkpoint_file(ck["id"]), weights_only=True)["model"]


def test_two_ranks_train_what_one_process_trains(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    ok([sys.executable, "-m", "trainer", "run", "--task", TASK, "--run-dir", one, "--max-steps", 150, "--device", "cpu"])
    ok(torchrun("run", "--task", TASK, "--run-dir", two, "--max-steps", 150))
    a, b = losses(one), losses(two)
    assert sorted(a) == sorted(b) == list(range(1, 151))
    # the same global batches from the one seeded permutation: equal up to the order of float sums
    np.testing.assert_allclose([b[s] for s in a], [a[s] for s in a], rtol=1e-5, atol=1e-6)
    wa, wb = final_weights(one), final_weights(two)
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], rtol=1e-4, atol=1e-5)
    ddp = events(two, "ddp")
    assert ddp and ddp[0]["data"]["world"] == 2 and ddp[0]["data"]["backend"] == "gloo"
    assert Reader(two).meta()["run_info"]["world_size"] == 2
    assert not events(two, "replicas") and not events(two, "error")


def test_resume_and_restore_are_bit_exact_across_ranks(tmp_path):
    """Dropout draws from each rank's own RNG: an exact resume needs every rank's state back."""
    straight, cut = tmp_path / "straight", tmp_path / "cut"
    common = ("--task", DROPOUT, "--ckpt-every", 80)
    ok(torchrun("run", *common, "--run-dir", straight, "--max-steps", 240))
    ok(torchrun("run", *common, "--run-dir", cut, "--max-steps", 160))
    ok(torchrun("resume", "--run-dir", cut, "--max-steps", 240))
    a, b = losses(straight), losses(cut)
    assert [b[s] for s in range(161, 241)] == [a[s] for s in range(161, 241)]
    for k, v in final_weights(straight).items():
        assert torch.equal(final_weights(cut)[k], v), k
    # restore an earlier checkpoint (another branch) and run on: the straight run's steps again
    at80 = [c["id"] for c in Reader(cut).checkpoints() if c["step"] == 80][0]
    ok(torchrun("resume", "--run-dir", cut, "--from", at80, "--max-steps", 240))
    c = losses(cut)
    assert Reader(cut).meta()["branch"] != 0
    assert [c[s] for s in range(81, 241)] == [a[s] for s in range(81, 241)]
    assert not events(cut, "replicas") and not events(cut, "error")


def test_ctl_steers_both_ranks_at_the_same_step(tmp_path):
    """An lr change, a pause and a live restore from the in-memory ring, through the one endpoint;
    rank 0 checks at every sync that rank 1 holds the same step and the same weights."""
    d, ref = tmp_path / "run", tmp_path / "ref"
    with job(tmp_path, "run", "--task", DROPOUT, "--run-dir", d, "--max-steps", 10 ** 6, "--ckpt-every", 80,
             "--keep-serving") as p:
        c = attach(d, p)
        wait_for(lambda: c.status().step >= 100, what="step 100")
        r = c.set_hparams(lr=0.05).wait()
        assert r.ok, r.message
        wait_for(lambda: c.status().step >= r.step + 100, what="100 steps at the new lr")
        assert c.pause().wait().ok
        st = c.status()
        assert st.state == "paused" and st.run.world_size == 2 and len(st.ranks) == 2
        assert all(x["samples_per_s"] > 0 for x in st.ranks)
        rows = losses(d)
        lrs = {row["step"]: row["lr"] for row in Reader(d).metrics(st.branch)}
        assert lrs[r.step - 1] == 0.2 and lrs[r.step] == 0.05
        probe = c.submit("probe", samples=2, steps=10).wait()
        assert not probe.ok and "data-parallel" in probe.message
        bad = c.set_hparams(batch_size=63).wait()
        assert not bad.ok and "multiple of 2" in bad.message
        at80 = [k["id"] for k in Reader(d).checkpoints() if k["step"] == 80][0]
        assert c.restore(at80).wait().ok
        limit = c.submit("set_max_steps", max_steps=240).wait()
        assert limit.ok
        assert c.resume().wait().ok
        wait_for(lambda: c.status().state == "done", what="the restored branch to reach 240")
        branch = c.status().branch
        assert c.stop().wait().ok
        p.wait(60)
    ok(torchrun("run", "--task", DROPOUT, "--run-dir", ref, "--max-steps", 240, "--ckpt-every", 80))
    a, b = losses(ref), losses(d, branch)
    assert [b[s] for s in range(81, 241)] == [a[s] for s in range(81, 241)]
    assert max(rows) > r.step + 99
    assert not events(d, "replicas") and not [e for e in events(d, "error")]


def test_a_nan_on_one_rank_pauses_both_before_any_update(tmp_path):
    d = tmp_path / "run"
    env = {"PANDA_NAN_RANK": "1", "PANDA_NAN_CALL": "40"}
    with job(tmp_path, "run", "--task", TASK, "--run-dir", d, "--max-steps", 120, "--sentinel", "pause",
             "--keep-serving", env=env) as p:
        c = attach(d, p)
        wait_for(lambda: c.status().state == "error", what="the pause")
        st = c.status()
        assert st.step == 39 and ("non-finite" in st.error.lower() or "nan" in st.error.lower()), st.error
        assert c.resume().wait().ok  # rank 1's weights were never touched: the run goes on, replicas equal
        wait_for(lambda: c.status().state == "done", what="the run to end")
        assert c.stop().wait().ok
        p.wait(60)
    assert not events(d, "replicas")
    assert all(torch.isfinite(v).all() for v in final_weights(d).values() if v.is_floating_point())
    errors = events(d, "error")
    assert len(errors) == 1 and errors[0]["step"] == 40
    assert sorted(losses(d)) == list(range(1, 121))  # step 40 was taken again, on the next batch


def test_a_killed_rank_ends_the_job_with_an_event_and_the_run_resumes(tmp_path):
    d = tmp_path / "run"
    with job(tmp_path, "run", "--task", TASK, "--run-dir", d, "--max-steps", 10 ** 6, "--ckpt-every", 100) as p:
        c = attach(d, p)
        wait_for(lambda: c.status().step >= 250, what="step 250")
        peers = events(d, "ddp")[0]["data"]["peers"]
        pid = [x["pid"] for x in peers if x["rank"] == 1][0]
        os.kill(pid, signal.SIGKILL)
        p.wait(90)
        assert p.returncode != 0
    lost = events(d, "rank_lost")
    assert lost and f"rank 1 (pid {pid}) died" in lost[0]["message"], events(d)[-5:]
    st = offline_status(d)  # what the dashboard shows of the ended job, with Resume
    assert st.state == "idle" and f"rank 1 (pid {pid}) died" in st.error and st.run.world_size == 2
    last_ckpt = max(k["step"] for k in Reader(d).checkpoints())
    r = ok([sys.executable, "-m", "trainer", "resume", "--run-dir", d, "--max-steps", last_ckpt + 50])
    assert f"resumed at step {last_ckpt}" in r.stderr
    assert max(losses(d)) == last_ckpt + 50


def test_a_batch_that_does_not_split_is_refused(tmp_path):
    r = run(torchrun("run", "--task", TASK, "--run-dir", tmp_path / "run", "--batch-size", 63, "--max-steps", 10))
    assert r.returncode != 0
    assert "does not split across 2 ranks" in r.stdout + r.stderr


def test_two_ranks_are_torch_ddp_bit_for_bit(tmp_path):
    """spirals has BatchNorm: each rank normalises its own slice, as under torch's DistributedDataParallel
    (no SyncBatchNorm). Panda's flat all-reduce of weighted gradients gives DDP's averaged ones exactly."""
    d = tmp_path / "run"
    ok(torchrun("run", "--task", "spirals", "--run-dir", d, "--max-steps", 100))
    r = ok([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
            ROOT / "tests" / "ddp_reference.py", "spirals", 100])
    ref = json.loads([ln for ln in r.stdout.splitlines() if ln.startswith("[")][0])
    mine = losses(d)
    assert [mine[s] for s in range(1, 101)] == ref  # 100 steps cross an epoch end (47 batches)


def test_the_sentinels_rollback_is_exact_across_ranks(tmp_path):
    """A NaN on rank 1 under the rollback policy: rank 0 restores the checkpoint before it (lr x 0.5,
    the batches up to the anomaly skipped) and sends it to rank 1. The new branch is, bit for bit, a
    resume from that checkpoint with the same settings."""
    a, b = tmp_path / "a", tmp_path / "b"
    common = ("--task", DROPOUT, "--ckpt-every", 50)
    ok(torchrun("run", *common, "--run-dir", a, "--sentinel", "rollback", "--max-steps", 200),
       env={"PANDA_NAN_RANK": "1", "PANDA_NAN_CALL": "120"})
    rb = events(a, "rollback")
    assert len(rb) == 1, events(a)
    plan = rb[0]["data"]["plan"]
    ck = [c for c in Reader(a).checkpoints() if c["id"] == plan["checkpoint"]][0]
    assert ck["step"] == 100 and plan["skip_batches"] > 0
    ok(torchrun("run", *common, "--run-dir", b, "--max-steps", ck["step"]))
    at = [c["id"] for c in Reader(b).checkpoints() if c["step"] == ck["step"]][0]
    ok(torchrun("resume", "--run-dir", b, "--from", at, "--lr", plan["lr"], "--skip-batches", plan["skip_batches"],
                "--max-steps", 200))
    x, y = losses(a), losses(b)
    assert [x[s] for s in range(101, 201)] == [y[s] for s in range(101, 201)]
    assert not events(a, "replicas") and not events(b, "replicas")


def test_a_crash_on_one_rank_pauses_the_job_naming_it_and_resume_goes_on(tmp_path):
    """Rank 1's model raises: it frees rank 0 from the step's all-reduce (abort), every rank undoes
    the step, and rank 0 fails the run with rank 1's error; Resume sends rank 0's weights to all."""
    d = tmp_path / "run"
    env = {"PANDA_RAISE_RANK": "1", "PANDA_RAISE_CALL": "30"}
    with job(tmp_path, "run", "--task", TASK, "--run-dir", d, "--max-steps", 100, "--keep-serving", env=env) as p:
        c = attach(d, p)
        wait_for(lambda: c.status().state == "error", what="the failed step")
        st = c.status()
        assert st.step == 29 and "rank 1 failed: RuntimeError: planted crash on rank 1" in st.error, st.error
        assert c.resume().wait().ok
        wait_for(lambda: c.status().state == "done", what="the run to end")
        assert c.stop().wait().ok
        p.wait(60)
    assert sorted(losses(d)) == list(range(1, 101)) and not events(d, "replicas")
