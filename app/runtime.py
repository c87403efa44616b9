"""One trainer per Streamlit server: found by its thread's name, created under one lock, closed at exit.

Streamlit's file watcher re-imports edited modules and "Clear cache" wipes st.cache_resource, so
neither a module global nor the cache can own the training thread. The thread itself is the
registry: a live thread named trainer.THREAD_NAME carries its trainer.
"""
from __future__ import annotations

import atexit
import os
import re
import threading
import time
from pathlib import Path

from trainer import THREAD_NAME, RunConfig, Trainer

# Kept on the threading module, which is never re-imported, so every copy of this module shares it.
_LOCK: threading.RLock = threading.__dict__.setdefault("_panda_trainer_lock", threading.RLock())
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def runs_root() -> Path:
    return Path(os.environ.get("PANDA_RUNS", "runs"))


def live_trainer() -> Trainer | None:
    for th in threading.enumerate():
        t = getattr(th, "trainer", None)
        if th.name == THREAD_NAME and th.is_alive() and t is not None and t.status().state != "closed":
            return t
    return None


def run_dir_for(name: str, root: Path | None = None) -> Path:
    """runs/<name>, for a name that cannot leave the runs folder."""
    root = (root or runs_root()).resolve()
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise ValueError("run name: 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit")
    path = (root / name).resolve()
    if path.parent != root:
        raise ValueError(f"run name {name!r} leaves the runs folder")
    return path


def list_runs(root: Path | None = None) -> list[str]:
    root = root or runs_root()
    if not root.is_dir():
        return []
    runs = [p for p in root.iterdir() if (p / "journal.sqlite").is_file()]
    return [p.name for p in sorted(runs, key=lambda p: p.stat().st_mtime, reverse=True)]


def default_name(task: str) -> str:
    stem = re.sub(r"[^A-Za-z0-9]+", "-", task.rsplit("/", 1)[-1]).strip("-")[:40] or "run"
    return f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}"


def _close_at_exit() -> None:
    t = live_trainer()
    if t is not None:
        t.close()  # final checkpoint and journal flush when the server shuts down


def _swap(make) -> Trainer:
    """Pause the current run, build the new one, then close the old one.

    Building a run seeds the global RNGs and competes for the CPU, so a run still training would be
    disturbed; paused, it keeps its own RNG streams aside. If building fails (bad input), the old run
    resumes and goes on as before.
    """
    with _LOCK:
        old = live_trainer()
        was_running = old is not None and old.status().state == "running"
        if was_running:
            old.pause().wait(30)
        try:
            new = make()
        except BaseException:
            if was_running:
                old.resume().wait(30)
            raise
        if old is not None and old is not new:
            old.close()
        if not threading.__dict__.get("_panda_atexit"):
            atexit.register(_close_at_exit)
            threading._panda_atexit = True
        return new


def current(task: str = "spirals", run_dir: str | None = None) -> Trainer:
    """The live trainer, or one made ready (not training) for `run_dir` / a new run of `task`."""
    with _LOCK:
        t = live_trainer()
        if t is not None:
            return t
        if run_dir and (Path(run_dir) / "journal.sqlite").exists():
            return open_run(Path(run_dir))
        return new_run(RunConfig(task=task, run_dir=str(run_dir or run_dir_for(default_name(task)))))


def new_run(config: RunConfig, hparams: dict | None = None) -> Trainer:
    return _swap(lambda: Trainer.create(config, hparams))


def open_run(run_dir: Path) -> Trainer:
    t = live_trainer()
    if t is not None and Path(t.status().run.run_dir).resolve() == Path(run_dir).resolve():
        return t
    return _swap(lambda: Trainer.open(run_dir))
