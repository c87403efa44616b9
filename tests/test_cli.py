"""The headless CLI, and the journal surviving kill -9 of a training process."""
import csv
import json
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from conftest import ROOT, broken_journal
from trainer import snapshot as ckpt


def cli(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "trainer", *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


def test_run_checkpoints_export_and_resume(tmp_path):
    d = tmp_path / "demo"
    r = cli("run", "--task", "quadratic", "--run-dir", d, "--max-steps", 300, "--ckpt-every", 100)
    assert r.returncode == 0, r.stderr
    assert "step/s" in r.stderr and "loss=" in r.stderr  # the progress bar
    rows = json.loads(cli("checkpoints", "--run-dir", d, "--json").stdout)
    assert [c["step"] for c in rows] == [100, 200, 300]
    for c in rows:
        assert {"id", "step", "epoch", "branch", "path", "train_loss", "val_loss", "hparams", "label"} <= set(c)
        assert ckpt.load_file(c["path"])["counters"]["step"] == c["step"]  # path opens from here
    table = cli("checkpoints", "--run-dir", d).stdout
    assert "ckpt_" in table and len(table.strip().splitlines()) == 4
    r = cli("resume", "--run-dir", d, "--from", rows[0]["id"], "--max-steps", 250, "--lr", 0.02)
    assert r.returncode == 0, r.stderr
    rows = json.loads(cli("checkpoints", "--run-dir", d, "--json").stdout)
    assert rows[-1]["step"] == 250 and rows[-1]["branch"] == 1 and rows[-1]["hparams"]["lr"] == 0.02
    out = tmp_path / "m.csv"
    assert cli("export", "--run-dir", d, "--format", "csv", "--out", out).returncode == 0
    data = list(csv.DictReader(open(out)))
    assert [int(x["step"]) for x in data] == list(range(1, 251))
    assert {x["branch"] for x in data[100:]} == {"1"} and float(data[-1]["lr"]) == 0.02
    assert cli("export", "--run-dir", d, "--format", "parquet", "--out", tmp_path / "m.parquet").returncode == 0


@pytest.mark.parametrize("args,words", [
    (["run", "--lr", "-1"], "lr: must be > 0"),
    (["run", "--task", "nope"], "expected a built-in"),
    (["run", "--optimizer", "rmsprop"], "invalid choice"),
    (["run", "--batch-size", "0"], "batch_size"),
    (["run", "--momentum", "abc"], "invalid float value"),
    (["resume", "--run-dir", "/nonexistent/run"], "holds no run"),
    (["checkpoints", "--run-dir", "/nonexistent/run"], "holds no run"),
    (["launch"], "invalid choice"),
])
def test_bad_arguments_exit_nonzero_with_one_line(args, words, tmp_path):
    if args[0] == "run":
        args = args + ["--run-dir", str(tmp_path / "r")]
    r = cli(*args)
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and words in lines[0], r.stderr
    assert not (tmp_path / "r").exists()


def test_run_refuses_to_overwrite_a_run(tmp_path):
    d = tmp_path / "x"
    assert cli("run", "--task", "quadratic", "--run-dir", d, "--max-steps", 5).returncode == 0
    r = cli("run", "--task", "quadratic", "--run-dir", d, "--max-steps", 5)
    assert r.returncode == 2 and "already holds a run" in r.stderr


def test_journal_and_checkpoints_survive_kill_9(tmp_path):
    d = tmp_path / "crash"
    p = subprocess.Popen([sys.executable, "-m", "trainer", "run", "--task", "spirals", "--run-dir", str(d),
                          "--max-steps", "100000000", "--ckpt-every", "300"], cwd=ROOT,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    db = d / "journal.sqlite"
    try:
        deadline = time.time() + 120
        while True:
            assert time.time() < deadline and p.poll() is None, "the run did not get going"
            if db.exists():
                con = sqlite3.connect(db)
                try:
                    n_ckpt = con.execute("SELECT COUNT(*) FROM checkpoints").fetchone()[0]
                    seen = con.execute("SELECT COALESCE(MAX(step), 0) FROM steps").fetchone()[0]
                except sqlite3.OperationalError:
                    n_ckpt = seen = 0
                con.close()
                if n_ckpt >= 2 and seen >= 300:
                    break
            time.sleep(0.1)
        time.sleep(1.2)
        killed_at = time.time()
        p.send_signal(signal.SIGKILL)
        p.wait(30)
    finally:
        if p.poll() is None:
            p.kill()
    con = sqlite3.connect(db)
    last, last_wall = con.execute("SELECT MAX(step), MAX(wall) FROM steps").fetchone()
    assert last > seen  # everything flushed before the kill is there, and it kept flushing
    assert killed_at - last_wall < 1.5  # at most about a second lost
    assert con.execute("SELECT COUNT(*) FROM steps").fetchone()[0] == last  # no holes
    ck = con.execute("SELECT id, step, path FROM checkpoints WHERE deleted = 0 ORDER BY id DESC").fetchall()
    con.close()
    latest = ckpt.load_file(d / ck[0][2])  # the latest complete checkpoint loads
    assert latest["counters"]["step"] == ck[0][1]
    # and the run goes on from it; a lost tail after the checkpoint becomes an abandoned branch
    step = ck[0][1]
    r = cli("resume", "--run-dir", d, "--max-steps", step + 30)
    assert r.returncode == 0, r.stderr
    con = sqlite3.connect(db)
    branch = 1 if last > step else 0
    assert con.execute("SELECT MAX(step) FROM steps WHERE branch = ?", (branch,)).fetchone()[0] == step + 30
    if branch:
        assert con.execute("SELECT parent, fork_step, reason FROM branches WHERE id = 1").fetchone() == (0, step, "resume")


def _one_line(r, words):
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and words in lines[0], (r.returncode, r.stderr)


@pytest.mark.parametrize("content", [b"", b"garbage" * 200, None], ids=["empty", "corrupt", "directory"])
@pytest.mark.parametrize("command", ["checkpoints", "export", "resume"])
def test_a_broken_journal_is_one_line_and_exit_2(tmp_path, content, command):
    d = broken_journal(tmp_path / "bad", content)
    extra = ["--out", str(tmp_path / "m.csv")] if command == "export" else []
    _one_line(cli(command, "--run-dir", d, *extra), "journal")


@pytest.mark.parametrize("command", ["run", "resume", "checkpoints"])
def test_a_run_dir_that_is_a_file_is_one_line(tmp_path, command):
    f = tmp_path / "file"
    f.write_text("x")
    _one_line(cli(command, "--run-dir", f), "is a file")
    assert f.read_text() == "x"


def test_export_to_a_directory_is_one_line(tmp_path):
    d = tmp_path / "r"
    assert cli("run", "--task", "quadratic", "--run-dir", d, "--max-steps", 5).returncode == 0
    _one_line(cli("export", "--run-dir", d, "--out", tmp_path), "is a directory")


@pytest.mark.parametrize("fn", ["interrupted", "exits", "huge", "no_parameters", "bad_lr"])
def test_a_misbehaving_plugin_is_one_line(tmp_path, fn):
    r = cli("run", "--task", f"{ROOT / 'tests' / 'plugins' / 'broken.py'}:{fn}", "--run-dir", tmp_path / "p")
    _one_line(r, "broken.py")
    assert not (tmp_path / "p").exists()


def test_a_non_task_callable_is_refused_not_called(tmp_path):
    _one_line(cli("run", "--task", "os:abort", "--run-dir", tmp_path / "p"), "os:abort")


def test_the_engine_runs_where_only_torch_is_installed(tmp_path):
    """A GPU box may have torch and nothing of ours: without tqdm (or streamlit) `run` trains all
    the same, with no progress bar."""
    import os

    hide = tmp_path / "hide"
    for name in ("tqdm", "streamlit", "plotly"):
        (hide / name).mkdir(parents=True)
        (hide / name / "__init__.py").write_text(f"raise ImportError('no {name} here')\n")
    env = {**os.environ, "PYTHONPATH": str(hide)}
    r = subprocess.run([sys.executable, "-m", "trainer", "run", "--task", "quadratic", "--run-dir", tmp_path / "r",
                        "--max-steps", "50"], cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr
    rows = json.loads(cli("checkpoints", "--run-dir", tmp_path / "r", "--json").stdout)
    assert rows[-1]["step"] == 50
