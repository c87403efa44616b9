import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
PLUGINS = Path(__file__).resolve().parent / "plugins"
sys.path.insert(0, str(ROOT))

from trainer import RunConfig, Trainer  # noqa: E402


def run_to(t, step: int, timeout: float = 120) -> None:
    """Train until the global step `step` (the trainer stops there), and wait for it: a Trainer, or a
    RunClient of a trainer process (then until the final checkpoint's row is in the journal)."""
    assert t.set_max_steps(step).wait().ok
    if t.status().state != "running":
        r = (t.resume() if t.status().state in ("paused", "error") else t.start()).wait()
        assert r.ok or t.status().step == step, r
    if not isinstance(t, Trainer):
        deadline = time.monotonic() + timeout
        while not (t.status().state != "running" and t.status().step == step
                   and any((c["branch"], c["step"]) == (t.status().branch, step) for c in t.reader().checkpoints())):
            assert time.monotonic() < deadline, f"training did not come to rest at {step}: {t.status()}"
            time.sleep(0.05)
        return
    assert t.wait(timeout), "training did not come to rest"
    assert t.step == step, (t.step, t.state, t.error)
    t.journal.flush()  # its final checkpoint's row too: readers see the run as it came to rest


def ends_checkpointed(reader) -> bool:
    """A stopped run's newest checkpoint is at its last step: 'final', or 'auto' when one fell on that very step."""
    ck, row = reader.checkpoints()[-1], reader.last_row(reader.checkpoints()[-1]["branch"])
    return ck["kind"] in ("final", "auto") and ck["step"] == row["step"]


def assert_same_state(a: dict, b: dict) -> None:
    """Bit-identical model and optimizer state (a and b are state.capture() dicts or loaded files)."""
    ma, mb = a["model"], b["model"]
    assert ma.keys() == mb.keys()
    for k in ma:
        assert torch.equal(ma[k], mb[k]), f"model.{k} differs"
    oa, ob = a["optimizer"]["state"], b["optimizer"]["state"]
    assert oa.keys() == ob.keys()
    for i in oa:
        for k in oa[i]:
            va, vb = oa[i][k], ob[i][k]
            assert (torch.equal(va, vb) if isinstance(va, torch.Tensor) else va == vb), f"optimizer {i}.{k} differs"
    assert a["counters"]["step"] == b["counters"]["step"]
    assert {k: a["data"][k] for k in ("epoch", "offset")} == {k: b["data"][k] for k in ("epoch", "offset")}


@pytest.fixture
def make(tmp_path):
    """make(name, **config) -> a new Trainer in tmp_path/name; closed after the test."""
    made = []

    def _make(name="run", hparams=None, **cfg):
        cfg.setdefault("task", "spirals")
        t = Trainer.create(RunConfig(run_dir=str(tmp_path / name), **cfg), hparams)
        made.append(t)
        return t

    yield _make
    for t in made:
        t.close()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.when == "call":
        item.rep_call = rep  # lets fixtures keep a screenshot when the test failed


def kill_trainers(root: Path) -> None:
    """kill -9 every trainer process that holds a run under `root` (they outlive the servers that
    started them, by design): its pid is in the run's lock file."""
    import json
    import os
    import signal

    from trainer.client import is_live

    for lock in Path(root).glob("**/lock"):
        if is_live(lock.parent):
            try:
                pid = json.loads(lock.read_text())["pid"]
                if pid != os.getpid():  # never this test process (an in-process Trainer's run)
                    os.kill(pid, signal.SIGKILL)
            except (OSError, ValueError, KeyError):
                pass


def descendants(pid: int) -> list[int]:
    """Every process under `pid` (torchrun starts its ranks in process groups of their own)."""
    try:
        kids = [int(k) for t in Path(f"/proc/{pid}/task").iterdir() for k in (t / "children").read_text().split()]
    except OSError:
        return []
    return [d for k in kids for d in (k, *descendants(k))]


def broken_journal(d: Path, content: bytes | None) -> Path:
    """A run directory whose journal.sqlite is `content` (empty, garbage), or a directory when None."""
    d.mkdir()
    if content is None:
        (d / "journal.sqlite").mkdir()
    else:
        (d / "journal.sqlite").write_bytes(content)
    return d
