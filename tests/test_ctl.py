"""A run served by the process that trains it (trainer/server.py), reached through RunClient and `ctl`."""
import contextlib
import json
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from multiprocessing.connection import AuthenticationError, Client

import numpy as np
import pytest

from conftest import ROOT, ends_checkpointed, run_to
from trainer import Reader, cli
from trainer.client import NoTrainerError, RunClient, run_state
from trainer.server import HEARTBEAT, KEY, MAX_REQUEST, SOCKET, RunServer, socket_address

HINT = "resume it with `python -m trainer resume --run-dir"


def proc(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "trainer", *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


def ctl(capsys, d, *args):
    """`python -m trainer ctl --run-dir d ...` in this process: (exit code, stdout, stderr)."""
    try:
        rc = cli.main(["ctl", "--run-dir", str(d), *map(str, args)])
    except SystemExit as e:  # argparse
        rc = e.code
    out, err = capsys.readouterr()
    return rc, out, err


@contextlib.contextmanager
def trainer_process(tmp_path, *args):
    """A `python -m trainer run|resume ...` child, killed on the way out whatever happens."""
    log = open(tmp_path / f"trainer-{time.monotonic_ns()}.log", "w")
    p = subprocess.Popen([sys.executable, "-m", "trainer", *map(str, args)], cwd=ROOT, stdout=log,
                         stderr=subprocess.STDOUT)
    try:
        yield p
    finally:
        if p.poll() is None:
            p.kill()
        p.wait(30)
        log.close()


def attach(d, p) -> RunClient:
    deadline = time.monotonic() + 180
    while True:
        assert p.poll() is None, f"the trainer exited with {p.returncode}"
        try:
            return RunClient(d, wait=1)
        except NoTrainerError:
            assert time.monotonic() < deadline, "the run was never served"


def wait_for(cond, timeout=60, what="condition"):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def step_row(d, step):
    rows = [r for r in Reader(d).metrics(Reader(d).meta()["branch"], since_step=step - 2) if r["step"] in (step - 1, step)]
    return rows if len(rows) == 2 else None


def test_a_cli_run_babysat_from_ctl(tmp_path, capsys):
    d = tmp_path / "run"
    with trainer_process(tmp_path, "run", "--task", "spirals", "--run-dir", d, "--max-steps", 10 ** 8) as p:
        attach(d, p).close()
        r = proc("ctl", "--run-dir", d, "set", "--lr", 0.05)  # end to end, process start included
        assert r.returncode == 0 and re.fullmatch(r"applied at step \d+\n", r.stdout), (r.stdout, r.stderr)
        at = int(r.stdout.split()[-1])
        wait_for(lambda: step_row(d, at), what=f"step {at} in the journal")
        before, row = step_row(d, at)
        assert (before["lr"], row["lr"]) == (0.1, 0.05)  # from exactly the step it said
        ev = Reader(d).events(kinds=("hparams",))[-1]["data"]
        assert (ev["field"], ev["new"], ev["at_step"]) == ("lr", 0.05, at)

        rc, out, _ = ctl(capsys, d, "resume")
        assert rc == 1 and out.startswith("rejected: resume: not possible while the run is running"), out
        rc, out, _ = ctl(capsys, d, "pause")
        assert rc == 0 and out.startswith("applied at step"), out
        rc, out, _ = ctl(capsys, d, "--json", "status")
        st = json.loads(out)
        assert rc == 0 and st["state"] == "paused" and st["hparams"]["lr"] == 0.05
        time.sleep(0.6)
        assert p.poll() is None  # a paused run keeps its process, serving
        rc, out, _ = ctl(capsys, d, "save", "--label", "mine", "--json")
        saved = json.loads(out)
        assert rc == 0 and saved["ok"] and saved["step"] == st["step"]
        cid = saved["value"]
        assert [c["label"] for c in Reader(d).checkpoints() if c["id"] == cid] == ["mine"]
        rc, out, _ = ctl(capsys, d, "restore", cid, "--lr", 0.02)
        assert rc == 0 and out.startswith(f"applied at step {st['step'] + 1}: from checkpoint {cid}"), out
        rc, out, _ = ctl(capsys, d, "status")
        assert rc == 0 and out.startswith(f"paused at step {st['step']} of {10 ** 8}") and "lr 0.02" in out, out
        assert f"last checkpoint {cid}" in out

        r = proc("resume", "--run-dir", d)  # a second trainer on a served run is refused
        assert r.returncode == 2 and f"in use by process {p.pid}" in r.stderr, r.stderr

        rc, out, _ = ctl(capsys, d, "resume")
        assert rc == 0 and out == f"applied at step {st['step'] + 1}\n", out
        wait_for(lambda: json.loads(ctl(capsys, d, "status", "--json")[1])["step"] > st["step"] + 5,
                 what="training to go on")
        rc, out, _ = ctl(capsys, d, "stop")
        assert rc == 0 and out.startswith("applied at step"), out
        assert p.wait(60) == 0
    assert not any((d / f).exists() for f in (SOCKET, KEY, HEARTBEAT))
    assert run_state(d) == "idle"
    assert ends_checkpointed(Reader(d))
    r = proc("ctl", "--run-dir", d, "status")
    assert r.returncode == 2 and HINT in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_no_trainer_and_bad_arguments_exit_2(tmp_path, capsys):
    d = tmp_path / "done"
    assert proc("run", "--task", "quadratic", "--run-dir", d, "--max-steps", 20).returncode == 0
    assert run_state(d) == "finished"  # it reached its limit, and its process exited
    rc, _, err = ctl(capsys, d, "pause")
    assert rc == 2 and HINT in err
    rc, _, err = ctl(capsys, tmp_path / "nothing", "status")
    assert rc == 2 and "holds no run" in err
    for args, words in ((["set"], "give at least one hyperparameter"),
                        (["restore", "abc"], "invalid int value"),
                        (["set", "--lr", "abc"], "invalid float value"),
                        (["launch"], "invalid choice")):
        rc, _, err = ctl(capsys, d, *args)
        assert rc == 2 and words in err and len(err.strip().splitlines()) == 1, err
    with pytest.raises(NoTrainerError, match=re.escape(HINT)):
        RunClient(d)


def test_kill_9_leaves_stale_files_that_are_recognised_and_resume_serves_again(tmp_path, capsys):
    d = tmp_path / "run"
    with trainer_process(tmp_path, "run", "--task", "spirals", "--run-dir", d, "--max-steps", 10 ** 8,
                         "--ckpt-every", 50) as p:
        c = attach(d, p)
        wait_for(lambda: c.status().last_checkpoint is not None, what="a checkpoint")
        wait_for(lambda: json.loads((d / HEARTBEAT).read_text())["step"] > 0, what="a heartbeat")
        assert json.loads((d / HEARTBEAT).read_text())["pid"] == p.pid
        old_key = (d / KEY).read_bytes()
        p.send_signal(signal.SIGKILL)
        p.wait(30)
    assert all((d / f).exists() for f in (SOCKET, KEY, HEARTBEAT))  # left behind by the dead process
    assert run_state(d) == "idle"
    with pytest.raises(NoTrainerError, match=re.escape(HINT)):
        c.status()  # the pooled connection is dead, and nobody holds the lock
    with pytest.raises(NoTrainerError, match=re.escape(HINT)):
        RunClient(d)
    rc, _, err = ctl(capsys, d, "status")
    assert rc == 2 and HINT in err

    with trainer_process(tmp_path, "resume", "--run-dir", d) as p2:
        c2 = attach(d, p2)
        assert run_state(d) == "live"
        wait_for(lambda: c2.status().state == "running", what="the resumed run")
        assert (d / KEY).read_bytes() != old_key
        wait_for(lambda: json.loads((d / HEARTBEAT).read_text())["pid"] == p2.pid, what="a fresh heartbeat")
        rc, out, _ = ctl(capsys, d, "status")
        assert rc == 0 and out.startswith("running at step"), out
        assert c.status().state == "running"  # the old client reconnects to the new trainer
        c.close()
        c2.close()
        p2.send_signal(signal.SIGTERM)  # still a clean stop with a final checkpoint
        assert p2.wait(60) == 0
    assert Reader(d).events(kinds=("stopped",))
    assert not any((d / f).exists() for f in (SOCKET, KEY, HEARTBEAT))


# --- in-process: a Trainer served by RunServer, reached from this same process --------------------
@pytest.fixture
def served(make):
    """(trainer, server): a spirals run trained to step 120 (so it has a grid), served."""
    t = make(eval_every=50)
    run_to(t, 120)
    srv = RunServer(t, heartbeat_s=0.1).start()
    yield t, srv
    srv.stop()


def raw(d, key=None):
    with socket_address(d) as address:
        return Client(address, family="AF_UNIX", authkey=key or (d / KEY).read_bytes())


def ask(conn, req) -> dict:
    conn.send_bytes(req if isinstance(req, bytes) else json.dumps(req).encode())
    return json.loads(conn.recv_bytes())


def test_socket_and_key_are_private_and_a_wrong_key_is_refused(served):
    _, srv = served
    d = srv.run_dir
    for f in (SOCKET, KEY):
        assert stat.S_IMODE(os.stat(d / f).st_mode) == 0o600, f
    assert stat.S_ISSOCK(os.stat(d / SOCKET).st_mode)
    with pytest.raises(AuthenticationError):
        raw(d, key=b"x" * 32)
    with RunClient(d) as c:  # and the server goes on
        assert c.status().step == 120
    srv.stop()
    assert not any((d / f).exists() for f in (SOCKET, KEY, HEARTBEAT))
    with pytest.raises(NoTrainerError, match="serves no control socket"):  # locked, not served
        RunClient(d)


def test_bad_requests_get_an_error_reply_and_the_server_goes_on(served):
    t, srv = served
    d = srv.run_dir
    silent = socket.socket(socket.AF_UNIX)  # stalls in the handshake: must not block anyone
    with socket_address(d) as address:
        silent.connect(address)
    conn = raw(d)
    for req, words in ((b"\xff not json", "not JSON"), (b"[1, 2]", "JSON object"), ({"op": "nope"}, "unknown op"),
                       ({"op": ["x"]}, "unknown op"), ({"op": "submit", "kind": "pause", "args": [1]}, "args"),
                       ({"op": "submit", "kind": 3}, "kind"), ({"op": "submit", "kind": "pause", "timeout": -1}, "timeout"),
                       ({"op": "submit", "kind": "save", "args": {"nope": 1}, "timeout": 10}, None),
                       ({"op": "wait", "id": 999}, "no pending command")):
        r = ask(conn, req)
        if words is None:  # reaches the trainer, which rejects it
            assert r["ok"] and not r["result"]["ok"] and "bad arguments" in r["result"]["message"], r
        else:
            assert not r["ok"] and words in r["error"], (req, r)
    r = ask(conn, {"op": "submit", "kind": "launch", "args": {}, "timeout": 5})
    assert r["ok"] and not r["result"]["ok"] and "unknown command" in r["result"]["message"]
    assert ask(conn, {"op": "ping"}) == {"ok": True, "pid": os.getpid(), "server": srv.token}
    with pytest.raises((EOFError, OSError)):  # too big: that connection is dropped, nothing else
        conn.send_bytes(b"x" * (MAX_REQUEST + 1))
        conn.recv_bytes()
    with RunClient(d) as c:
        assert c.set_hparams(lr=0.05).wait(10).ok
        assert c.status().hparams.lr == 0.05 == t.status().hparams.lr
        r = c.set_hparams(lr=-1).wait(10)
        assert not r.ok and "lr" in r.message
    silent.close()


def test_the_client_status_is_the_trainers_status(served, tmp_path):
    t, srv = served
    d = srv.run_dir
    with RunClient(d) as c:
        mine, theirs = c.status(), t.status()
        assert mine.to_dict() == theirs.to_dict()
        assert mine.hparams == theirs.hparams and mine.run.metrics == theirs.run.metrics
        assert mine.grid.step == theirs.grid.step == 100 and mine.grid.axis == theirs.grid.axis
        assert mine.grid.probs.dtype == theirs.grid.probs.dtype
        assert np.array_equal(mine.grid.probs, theirs.grid.probs)
        for a, b in zip(mine.run.points, theirs.run.points):
            assert a.dtype == b.dtype and np.array_equal(a, b) and not a.flags.writeable
        assert not mine.grid.probs.flags.writeable
        with pytest.raises(TypeError):
            mine.eval["val_loss"] = 0  # a read-only mapping, as in process
        assert c.status().grid is mine.grid  # unchanged: not sent again
        with raw(d) as conn:
            r = ask(conn, {"op": "status", "server": srv.token, "grid_since": c._grid_seq})
            assert "grid" not in r and "points" not in r
        cid = c.save_checkpoint("x").wait(10).value
        assert c.restore(cid).wait(10).ok
        assert c.status().grid is None and t.status().grid is None  # a restore drops the old picture
        # A new server (another process, for the client) makes the client refresh all it cached.
        srv.stop()
        srv2 = RunServer(t).start()
        try:
            assert c.set_max_steps(200).wait(10).ok
            assert c.start().wait(10).ok
            wait_for(lambda: c.status().state == "done", what="the run to finish")
            st = c.status()
            assert st.step == 200 and st.grid.step == 200 and np.array_equal(st.grid.probs, t.status().grid.probs)
        finally:
            srv2.stop()


def test_heartbeat(served):
    _, srv = served
    beat = json.loads((srv.run_dir / HEARTBEAT).read_text())
    assert beat["pid"] == os.getpid() and beat["host"] == socket.gethostname()
    assert beat["step"] == 120 and beat["state"] == "done" and time.time() - beat["updated"] < 5
    assert beat["started"] <= beat["last_step_wall"] <= beat["updated"]
    with RunClient(srv.run_dir) as c:
        assert c.set_max_steps(150).wait(10).ok and c.start().wait(10).ok
    wait_for(lambda: json.loads((srv.run_dir / HEARTBEAT).read_text())["step"] == 150, what="the heartbeat")
    moved = json.loads((srv.run_dir / HEARTBEAT).read_text())["last_step_wall"]
    assert moved > beat["last_step_wall"]


def test_a_reply_being_made_gets_out_before_the_server_stops(served):
    """The CLI stops its server as soon as a `stop` ends the run: that stop's Result must still arrive."""
    t, first = served
    first.stop()
    from trainer.commands import Command, Result

    class SlowTrainer:  # answers every command 0.5 s after it is sent
        def status(self):
            return t.status()

        def submit(self, kind, **args):
            cmd = Command(kind, args)
            threading.Timer(0.5, cmd.finish, (Result(True, 7),)).start()
            return cmd

    srv = RunServer(SlowTrainer()).start()
    try:
        with RunClient(srv.run_dir) as c:
            got = []
            th = threading.Thread(target=lambda: got.append(c.stop().wait(10)))
            th.start()
            time.sleep(0.2)  # its request is in, its reply is not made yet
            srv.stop()
            th.join(10)
            assert got == [Result(True, 7)]
    finally:
        srv.stop()


def test_ctl_and_the_client_import_no_torch():
    """Nothing on the ctl path imports torch but the package's __init__ (bypassed here): see the report
    on making trainer/__init__.py lazy, which takes `ctl status` from ~2.5 s to ~0.5 s."""
    code = ("import sys, types; pkg = types.ModuleType('trainer'); pkg.__path__ = ['trainer']; "
            "sys.modules['trainer'] = pkg\n"
            "import trainer.client, trainer.cli\n"
            "rc = trainer.cli.main(['ctl', '--run-dir', '/nonexistent/run', 'status'])\n"
            "assert rc == 2 and 'torch' not in sys.modules, (rc, [m for m in sys.modules if 'torch' in m][:3])\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr


def test_a_run_that_cannot_be_served_trains_with_a_warning(tmp_path):
    code = ("import sys; from trainer import cli, server\n"
            "def refuse(self): raise OSError(95, 'Operation not supported')\n"
            "server.RunServer.start = refuse\n"
            f"sys.exit(cli.main(['run', '--task', 'quadratic', '--run-dir', {str(tmp_path / 'r')!r}, "
            "'--max-steps', '30']))\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "is not served (" in r.stderr and "training goes on" in r.stderr, r.stderr
    assert run_state(tmp_path / "r") == "finished"


def test_a_deep_run_directory_is_served(make):
    """Unix socket paths hold at most 107 bytes; a deeper run directory is still served."""
    t = make("deep/" + "d" * 60 + "/" + "e" * 60)
    srv = RunServer(t).start()
    try:
        assert len(str(srv.run_dir / SOCKET)) > 107
        with RunClient(srv.run_dir) as c:
            assert c.set_hparams(lr=0.05).wait(10).ok and c.status().hparams.lr == 0.05
    finally:
        srv.stop()


def test_a_served_run_waits_ready_and_keeps_serving_after_its_end(tmp_path, capsys):
    """`run --no-start --keep-serving` (how the dashboard starts trainers): ready until `ctl start`,
    still served at its step limit (raise it and go on), and `ctl stop` ends the process."""
    d = tmp_path / "run"
    with trainer_process(tmp_path, "run", "--task", "quadratic", "--run-dir", d, "--max-steps", 30,
                         "--no-start", "--keep-serving") as p:
        c = attach(d, p)
        time.sleep(0.5)
        assert c.status().state == "ready" and c.status().step == 0
        assert ctl(capsys, d, "start")[0] == 0
        wait_for(lambda: c.status().state == "done", what="the step limit")
        time.sleep(0.5)
        assert p.poll() is None and run_state(d) == "live"  # kept serving
        assert ctl(capsys, d, "limit", 50)[0] == 0 and ctl(capsys, d, "start")[0] == 0
        wait_for(lambda: c.status().step == 50 and c.status().state == "done", what="the new limit")
        rc, out, _ = ctl(capsys, d, "stop")
        assert rc == 0, out
        assert p.wait(60) == 0
    assert run_state(d) == "finished" and Reader(d).last_step(0) == 50


def test_a_run_no_process_serves_is_read_from_its_journal(tmp_path, make):
    from trainer.client import offline_status

    t = make("off", task="spirals", ckpt_every=20, eval_every=10, max_steps=45)
    run_to(t, 45)
    live = t.status()
    t.close()
    s = offline_status(tmp_path / "off")
    assert (s.state, s.step, s.branch, s.hparams, s.max_steps) == ("finished", 45, 0, live.hparams, 45)
    assert s.accepts == frozenset() and s.last_checkpoint == live.last_checkpoint
    assert s.eval["step"] == live.eval["step"] and s.eval["val_loss"] == live.eval["val_loss"]
    assert (s.run.task_name, s.run.n_train, s.run.metrics) == (live.run.task_name, live.run.n_train, live.run.metrics)
    assert s.epoch + s.epoch_progress == pytest.approx(live.epoch + live.epoch_progress)
