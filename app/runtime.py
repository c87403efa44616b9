"""Trainer processes for the dashboard: list the runs, start trainers, attach to them.

Each run is trained by its own process, `python -m trainer run|resume --keep-serving`, started in a
new session (its own process group), so it outlives this server and never shares its GIL. The
dashboard reaches it only through trainer.client.RunClient (status, submit, the journal). A run no
process serves is shown as its journal left it (`Detached`), and resuming it starts a new process.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict
from pathlib import Path

from trainer import Reader, Result, RunConfig, Status
from trainer.client import NoTrainerError, RunClient, is_live, last_heartbeat, offline_status, run_state
from trainer.commands import Command, Controls
from trainer.hparams import HParamError, field_specs, validate
from trainer.config import task_config

ROOT = Path(__file__).resolve().parent.parent  # where `python -m trainer` is importable
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
START_TIMEOUT = 120.0  # seconds for a trainer process to import torch, build its task and serve

# Kept on the threading module, which is never re-imported, so a reloaded copy of this module shares
# them: the processes this server started (for their exit codes) and one client per run.
_LOCK: threading.RLock = threading.__dict__.setdefault("_panda_runtime_lock", threading.RLock())
_PROCS: dict[str, subprocess.Popen] = threading.__dict__.setdefault("_panda_procs", {})
_HANDLES: dict[str, RunClient] = threading.__dict__.setdefault("_panda_handles", {})
# Changes made to a run no process serves, given to the trainer process that Resume starts.
_PENDING: dict[str, dict] = threading.__dict__.setdefault("_panda_pending", {})


class StartError(RuntimeError):
    """A trainer process could not start the run; the message is its own error line."""


def runs_root() -> Path:
    return Path(os.environ.get("PANDA_RUNS", "runs"))


def run_dir_for(name: str, root: Path | None = None) -> Path:
    """runs/<name>, for a name that cannot leave the runs folder."""
    root = (root or runs_root()).resolve()
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise ValueError("run name: 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit")
    path = (root / name).resolve()
    if path.parent != root:
        raise ValueError(f"run name {name!r} leaves the runs folder")
    return path


def list_runs(root: Path | None = None) -> list[tuple[str, str]]:
    """(name, "live" | "idle" | "finished") for each run in the runs folder, newest first."""
    root = root or runs_root()
    if not root.is_dir():
        return []
    runs = sorted((p for p in root.iterdir() if (p / "journal.sqlite").is_file()),
                  key=lambda p: p.stat().st_mtime, reverse=True)
    out = []
    for p in runs:
        with contextlib.suppress(Exception):  # a broken journal is not listed
            out.append((p.name, run_state(p)))
    return out


def world_size(run_dir: Path) -> int:
    """Ranks of the torchrun job that trains (or trained) the run; 1 for one process."""
    with contextlib.suppress(Exception):
        r = Reader(run_dir)
        try:
            return int((r.meta().get("run_info") or {}).get("world_size", 1))
        finally:
            r.close()
    return 1


def default_name(task: str) -> str:
    stem = re.sub(r"[^A-Za-z0-9]+", "-", task.rsplit("/", 1)[-1]).strip("-")[:40] or "run"
    return f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}"


def log_path(run_dir: Path) -> Path:
    """Where a trainer process started here writes its output: beside the run, never inside it (the
    run directory is written by its trainer alone, and a failed start must leave no run behind)."""
    return Path(run_dir).parent / ".logs" / f"{Path(run_dir).name}.log"


# --- one handle per run: the live trainer's client, or the run as its journal left it ---------------
def handle(run_dir: Path | str) -> RunClient | Detached:
    """The run's client while a process serves it; otherwise a Detached view that resumes it."""
    key = str(Path(run_dir).resolve())
    with _LOCK:
        c = _HANDLES.get(key)
        if is_live(key):
            if c is None:
                try:
                    c = _HANDLES[key] = RunClient(key)
                except NoTrainerError:  # held, not served: a trainer starting or closing
                    return Detached(key, busy=True)
            return c
        if c is not None:
            c.close()
            del _HANDLES[key]
        return Detached(key)


def status(run_dir: Path | str) -> Status:
    """The run's Status: from its trainer, or from its journal when no process serves it (also when the
    process died or began to close between two calls)."""
    h = handle(run_dir)
    try:
        return h.status()
    except (NoTrainerError, ConnectionError):
        return handle(run_dir).status()


class Detached(Controls):
    """A run no process trains, with the controls that make sense for it: Resume and Restore start a
    trainer process; hyperparameter changes and a new step limit are kept here and given to it.

    Its Status has state "idle" (resumable), "finished" (at its step limit) or "busy" (a process holds
    the run without serving it: starting or closing; it accepts nothing then)."""

    def __init__(self, run_dir: str, busy: bool = False):
        self.run_dir = run_dir
        self.busy = busy
        self._pending = _PENDING.setdefault(run_dir, {"hp": {}, "max_steps": None})

    @property
    def _hp(self) -> dict:
        return self._pending["hp"]

    @property
    def _max_steps(self) -> int | None:
        return self._pending["max_steps"]

    def status(self) -> Status:
        s = offline_status(self.run_dir)
        hp = s.hparams.__class__(**{**asdict(s.hparams), **self._hp})
        limit = s.max_steps if self._max_steps is None else self._max_steps
        accepts = set() if self.busy else {"resume", "restore", "set_hparams", "set_max_steps"}
        return Status(**{**{f: getattr(s, f) for f in s.__dataclass_fields__}, "hparams": hp, "max_steps": limit,
                         "accepts": frozenset(accepts), "state": "busy" if self.busy else s.state})

    def reader(self):
        from trainer import Reader
        return Reader(self.run_dir)

    def submit(self, kind: str, **args) -> Command:
        cmd = Command(kind, args)
        step = offline_status(self.run_dir).step
        try:
            if self.busy:
                res = Result(False, step, "a trainer process is starting or closing for this run; try again shortly")
            elif kind == "set_hparams":
                self._hp.update(self._validated(args.get("changes") or {}))
                res = Result(True, step, "kept for the next trainer process (Resume)")
            elif kind == "set_max_steps":
                n = args.get("max_steps")
                if isinstance(n, bool) or not isinstance(n, int) or n < 0:
                    raise ValueError(f"max_steps: must be an integer >= 0, got {n!r}")
                self._pending["max_steps"] = n
                res = Result(True, step, "kept for the next trainer process (Resume)")
            elif kind in ("resume", "start"):
                res = self._start(step, [])
            elif kind == "restore":
                hp = self._validated(args.get("hparams") or {})
                cid, skip = args.get("checkpoint"), args.get("skip_batches", 0) or 0
                if isinstance(cid, bool) or not isinstance(cid, int):
                    raise ValueError(f"checkpoint: expected a checkpoint id, got {cid!r}")
                self._hp.update(hp)
                res = self._start(step, ["--from", str(cid), "--skip-batches", str(skip)], cid=cid)
            else:
                res = Result(False, step, f"no trainer process serves this run: {kind} needs one (Resume first)")
        except (HParamError, ValueError, StartError) as e:
            res = Result(False, step, str(e))
        cmd.finish(res)
        return cmd

    def _validated(self, changes: dict) -> dict:
        s = self.status()
        hp = validate(s.hparams, changes, dataset_size=s.run.n_train or None, nesterov=s.run.nesterov)
        return {k: getattr(hp, k) for k in changes}

    def _start(self, step: int, extra: list[str], cid: int | None = None) -> Result:
        s = self.status()
        if s.max_steps and s.step >= s.max_steps and not extra:
            return Result(False, step, f"the run is at its step limit {s.max_steps}: raise the step limit first")
        args = ["resume", "--run-dir", self.run_dir, *extra, *hparam_flags(self._hp)]
        if self._max_steps is not None:
            args += ["--max-steps", str(self._max_steps)]
        c = spawn(args, Path(self.run_dir))
        _PENDING.pop(self.run_dir, None)
        st = c.status()
        how = f"from checkpoint {cid}" if cid is not None else (
            f"from checkpoint {st.last_checkpoint}" if st.last_checkpoint is not None else "from step 0")
        return Result(True, st.step, f"a new trainer process resumed the run {how}")


def hparam_flags(hp: dict) -> list[str]:
    known = {f.name for f in field_specs()}
    return [x for k, v in hp.items() if k in known for x in (f"--{k.replace('_', '-')}", str(v))]


# --- trainer processes ----------------------------------------------------------------------------
def spawn(args: list[str], run_dir: Path, timeout: float = START_TIMEOUT) -> RunClient:
    """Start `python -m trainer <args> --keep-serving` for run_dir in its own session, and attach to it
    once it serves. Raises StartError with the process's own error if it exits first."""
    log = log_path(run_dir)
    log.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    with open(log, "ab") as out:
        out.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} python -m trainer {' '.join(args)}\n".encode())
        out.flush()
        proc = subprocess.Popen([sys.executable, "-m", "trainer", *args, "--keep-serving"], stdin=subprocess.DEVNULL,
                                stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    key = str(Path(run_dir).resolve())
    with _LOCK:
        _PROCS[key] = proc
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise StartError(_error_line(log) or f"the trainer process ended at start ({_exit(proc.returncode)})")
        if is_live(key):
            try:
                c = RunClient(key)
            except NoTrainerError:
                c = None
            if c is not None:
                with _LOCK:
                    old = _HANDLES.get(key)
                    _HANDLES[key] = c
                if isinstance(old, RunClient):
                    old.close()
                return c
        if time.monotonic() > deadline:
            proc.kill()
            raise StartError(f"the trainer process did not serve the run within {timeout:.0f} s (see {log})")
        time.sleep(0.1)


def create(config: RunConfig, hparams: dict | None = None) -> RunClient:
    """A new run in its own trainer process, ready (not training) until Start."""
    args = ["run", "--no-start", "--run-dir", config.run_dir, "--task", config.task,
            "--config", json.dumps({k: v for k, v in config.to_dict().items() if k not in ("run_dir", "task")}),
            *hparam_flags(hparams or {})]
    return spawn(args, Path(config.run_dir))


def open_ready(run_dir: Path) -> RunClient:
    """Resume an idle run in a new trainer process, ready (not training) until Start."""
    return spawn(["resume", "--no-start", "--run-dir", str(run_dir)], run_dir)


def how_it_ended(run_dir: Path | str) -> str | None:
    """Why no process serves the run, when its last one did not close it: "the trainer process ended
    (signal 9, SIGKILL)". None when it closed the run cleanly (or nothing is known)."""
    key = str(Path(run_dir).resolve())
    if is_live(key):
        return None
    proc = _PROCS.get(key)
    rc = proc.poll() if proc is not None else None
    beat = last_heartbeat(key)  # a clean close removes it: one left behind means the process died
    if beat is None and (rc is None or rc == 0):
        return None
    what = f"the trainer process (pid {beat['pid']})" if beat else "the trainer process"
    how = f" ({_exit(rc)})" if rc not in (None, 0) else ""
    if beat:
        at = time.strftime("%H:%M:%S", time.localtime(beat["updated"]))
        return f"{what} ended{how} without closing the run; its last heartbeat was at {at}, step {beat['step']:,}"
    return f"{what} ended{how}" + (f": {line}" if (line := _error_line(log_path(Path(key)))) else "")


def _exit(rc: int) -> str:
    if rc < 0:
        with contextlib.suppress(ValueError):
            return f"signal {-rc}, {signal.Signals(-rc).name}"
        return f"signal {-rc}"
    return f"exit code {rc}"


def _error_line(log: Path) -> str | None:
    """The last `error: ...` line a trainer process wrote, without the prefix."""
    try:
        lines = log.read_text(errors="replace").splitlines()[-200:]
    except OSError:
        return None
    for line in reversed(lines):
        if line.startswith("--- "):
            return None  # an earlier process's output
        if line.startswith("error: "):
            return line[len("error: "):]
    return None


def _liveliness(name: str) -> tuple:
    """Training runs first, then the most recently started trainer."""
    beat = last_heartbeat(run_dir_for(name)) or {}
    return beat.get("state") == "running", beat.get("started", 0.0)


def pick_run(args: dict) -> Path:
    """The run a new session shows: the one named on the command line (created with --task when it
    holds no run yet), else a live run (one training first), else the newest run, else a new run of --task."""
    task = args.get("task", "spirals")
    with _LOCK:  # two sessions opening at once create one default run, not two
        if args.get("run_dir"):
            d = Path(args["run_dir"]).resolve()
            if not (d / "journal.sqlite").exists() and not is_live(d):
                create(RunConfig(**{**task_config(task), "task": task, "run_dir": str(d)}))
            return d
        runs = list_runs()
        live = sorted((n for n, state in runs if state == "live"), key=_liveliness, reverse=True)
        if live or runs:
            return run_dir_for((live or [n for n, _ in runs])[0])
        d = run_dir_for(default_name(task))
        create(RunConfig(**{**task_config(task), "task": task, "run_dir": str(d)}))
        return d
