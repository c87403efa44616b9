"""The Trainer's public API for a run trained by another process: status(), submit(), reader().

A run is live while a process holds its lock (trainer/runlock.py); that process serves it on
run_dir/control.sock (trainer/server.py). The kernel drops the lock when the process dies, so a
socket, key or heartbeat left behind is recognised as stale by trying the lock, never trusted.
"""
from __future__ import annotations

import fcntl
import json
import os
import threading
import time
from multiprocessing.connection import AuthenticationError, Client, Connection
from pathlib import Path
from typing import Any

from .commands import Controls, Result
from .hparams import HParams
from .journal import Reader
from .runlock import owner
from .server import HEARTBEAT, KEY, decode_array, socket_address
from .status import Grid, RunInfo, Status, frozen_map

# The events that set a run's state; "close" only says a process let go of it.
STATE_EVENTS = ("create", "open", "start", "resume", "pause", "stopped", "done", "error", "rank_lost")
MAX_IDLE = 4  # pooled connections kept open


class NoTrainerError(RuntimeError):
    """No live process trains the run (or it does not serve a control socket)."""


def is_live(run_dir: Path | str) -> bool:
    """True while a process holds the run lock: tried without blocking, and let go at once."""
    try:
        fd = os.open(Path(run_dir) / "lock", os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # drops our flock, if we took it
    return False


def run_state(run_dir: Path | str) -> str:
    """"live" (a process trains it), "finished" (it reached its step limit) or "idle" (resumable).
    Raises JournalError if run_dir holds no run."""
    if is_live(run_dir):
        return "live"
    reader = Reader(run_dir)
    try:
        return _ended_state(reader, reader.meta())
    finally:
        reader.close()


def _ended_state(reader: Reader, meta: dict) -> str:
    limit = int(meta["config"].get("max_steps", 0))
    row = reader.last_row(int(meta.get("branch", 0)))
    return "finished" if limit and row and row["step"] >= limit else "idle"


def offline_status(run_dir: Path | str) -> Status:
    """A run no process serves, as its journal left it: state "idle" (resumable) or "finished" (it
    reached its step limit), at its last journaled step. It accepts no commands (`accepts` is empty);
    resuming starts a trainer process (`python -m trainer resume`). Raises JournalError for no run."""
    reader = Reader(run_dir)
    try:
        meta = reader.meta()
        cfg, branch = meta["config"], int(meta.get("branch", 0))
        info = meta.get("run_info") or {}
        row = reader.last_row(branch)
        ckpt = reader.resume_point(branch)
        last = reader.query("SELECT * FROM evals WHERE branch = ? ORDER BY step DESC LIMIT 1", (branch,))
        ended = reader.events(kinds=STATE_EVENTS, limit=1, newest_first=True)
        state = _ended_state(reader, meta)
        created = reader.events(kinds=("create",), limit=1)
    finally:
        reader.close()
    hp = (ckpt or {}).get("hparams") or ((created[0]["data"] or {}).get("hparams") if created else None) or {}
    hp = HParams(**{k: v for k, v in hp.items() if k in HParams.__dataclass_fields__})
    ev = None
    if last:
        e = last[0]
        ev = {"step": e["step"], **{k: e[k] for k in ("val_loss", "val_acc", "train_loss", "train_acc")
                                    if e[k] is not None}, **json.loads(e["extra"] or "{}")}
    epoch = row["epoch"] if row else 0.0
    error = ended[0]["message"] if ended and ended[0]["kind"] in ("error", "rank_lost") else None
    run = RunInfo(run_dir=str(run_dir), task=cfg["task"], task_name=info.get("task_name", cfg["task"]),
                  optimizer=cfg.get("optimizer", "sgd"), nesterov=bool(cfg.get("nesterov")),
                  device=info.get("device", cfg.get("device", "auto")), n_train=int(info.get("n_train", 0)),
                  ckpt_every=int(cfg.get("ckpt_every", 0)), metrics=tuple(info.get("metrics", ())),
                  has_grid=False, points=None,  # the decision-boundary picture needs the live model
                  classes=info.get("classes"), precision=cfg.get("precision", "fp32"),
                  compiled=bool(cfg.get("compile")), world_size=int(info.get("world_size", 1)),
                  backend=info.get("backend"))
    return Status(state=state, error=error, step=row["step"] if row else 0, epoch=int(epoch),
                  epoch_progress=epoch - int(epoch), steps_per_epoch=int(info.get("steps_per_epoch", 0)),
                  branch=branch, hparams=hp, effective_lr=row["lr"] if row else hp.lr,
                  loss=row["loss"] if row else None, samples_per_s=0.0, max_steps=int(cfg.get("max_steps", 0)),
                  last_checkpoint=ckpt["id"] if ckpt else None, eval=frozen_map(ev), grid=None,
                  accepts=frozenset(), run=run, loss_scale=row.get("loss_scale") if row else None)


def last_heartbeat(run_dir: Path | str) -> dict | None:
    """The heartbeat a trainer process left: pid, host, started, step, state, last_step_wall, updated.
    A served run has one; one found beside no live trainer means that process died without closing."""
    try:
        return json.loads((Path(run_dir) / HEARTBEAT).read_text())
    except (OSError, ValueError):
        return None


def _no_trainer(run_dir: Path | str) -> NoTrainerError:
    if not (Path(run_dir) / "journal.sqlite").exists():
        return NoTrainerError(f"no live trainer for run {run_dir}: the directory holds no run")
    return NoTrainerError(f"no live trainer for run {run_dir}: resume it with "
                          f"`python -m trainer resume --run-dir {run_dir}`")


class RemoteCommand:
    """A command sent to a served run: wait() gives its Result, like commands.Command.wait()."""

    def __init__(self, client: RunClient, kind: str, cid: int | None, result: Result | None):
        self.kind, self._client, self._id, self.result = kind, client, cid, result
        self._lock = threading.Lock()  # the server answers one wait per command

    @property
    def done(self) -> bool:
        return self.result is not None

    def wait(self, timeout: float | None = 30.0) -> Result:
        """The Result; raises TimeoutError if it is not applied within `timeout` seconds."""
        with self._lock:
            if self.result is None:
                reply = self._client._call({"op": "wait", "id": self._id, "timeout": timeout})
                self.result = Result(**reply["result"])
            return self.result


class RunClient(Controls):
    """The Trainer's public API (status, reader, submit and its helpers) for the process that trains
    run_dir. Thread-safe: each call borrows a pooled connection. Raises NoTrainerError when no live
    process serves the run; with `wait`, keeps trying that many seconds first (a trainer starting up)."""

    def __init__(self, run_dir: Path | str, wait: float = 0.0):
        self.run_dir = Path(run_dir)
        self._lock = threading.Lock()
        self._idle: list[Connection] = []
        self._status_lock = threading.Lock()
        self._server: str | None = None  # the server our cache came from
        self._grid: Grid | None = None
        self._grid_seq: int | None = None
        self._points = None
        deadline = time.monotonic() + wait
        while True:
            try:
                self._call({"op": "ping"})
                return
            except NoTrainerError:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.1)

    # --- the Trainer's public API ---------------------------------------------------------------
    def status(self) -> Status:
        """The run's latest Status, rebuilt from the server's reply; the grid travels only when it changed."""
        with self._status_lock:  # one at a time, so an older reply never overwrites a newer grid
            r = self._call({"op": "status", "server": self._server, "grid_since": self._grid_seq})
            if "points" in r:
                p = r["points"]
                self._points = (decode_array(p["x"]), decode_array(p["y"])) if p else None
            if r["grid_seq"] is None:
                self._grid = None
            elif "grid" in r:
                g = r["grid"]
                self._grid = Grid(g["step"], tuple(g["axis"]), decode_array(g["probs"]))
            self._server, self._grid_seq = r["server"], r["grid_seq"]
            return _status(r["status"], self._grid, self._points)

    def reader(self) -> Reader:
        """A read-only view of the run's journal."""
        return Reader(self.run_dir)

    def submit(self, kind: str, **args) -> RemoteCommand:
        """Queue a command (commands.KINDS) in the trainer; wait() on the answer gives its Result."""
        r = self._call({"op": "submit", "kind": kind, "args": args, "timeout": 0}, retry=False)
        return RemoteCommand(self, kind, r["id"], Result(**r["result"]) if r["result"] else None)

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    def __enter__(self) -> RunClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- the wire -------------------------------------------------------------------------------
    def _call(self, req: dict, retry: bool = True) -> dict:
        """One request and its reply. A broken pooled connection (the server went away) is replaced
        once; a submit is resent only if it never left, so a command is never applied twice."""
        data = json.dumps(req).encode()
        for attempt in (0, 1):
            conn = self._take()
            try:
                conn.send_bytes(data)
            except OSError:
                conn.close()
                if attempt:
                    raise self._gone() from None
                continue
            try:
                reply = json.loads(conn.recv_bytes())
            except (OSError, EOFError) as e:
                conn.close()
                if attempt or not retry:
                    raise self._gone(e) from None
                continue
            self._give(conn)
            if reply.get("timeout"):
                raise TimeoutError(reply["error"])
            if not reply.get("ok"):
                raise ValueError(f"the trainer refused the request: {reply.get('error')}")
            return reply
        raise AssertionError("unreachable")

    def _gone(self, e: BaseException | None = None) -> Exception:
        if not is_live(self.run_dir):
            return _no_trainer(self.run_dir)
        return ConnectionError(f"lost the connection to the trainer of {self.run_dir}"
                               + (f" while waiting for its reply ({e})" if e else ""))

    def _take(self) -> Connection:
        with self._lock:
            if self._idle:
                return self._idle.pop()
        return self._connect()

    def _give(self, conn: Connection) -> None:
        with self._lock:
            if len(self._idle) < MAX_IDLE:
                self._idle.append(conn)
                return
        conn.close()

    def _connect(self) -> Connection:
        for attempt in (0, 1):
            if not is_live(self.run_dir):
                raise _no_trainer(self.run_dir)
            try:
                key = (self.run_dir / KEY).read_bytes()
                with socket_address(self.run_dir) as address:
                    return Client(address, family="AF_UNIX", authkey=key)
            except (FileNotFoundError, ConnectionRefusedError):
                err = NoTrainerError(f"run {self.run_dir} is held by {owner(self.run_dir)}, which serves no "
                                     "control socket (it is starting or closing, or trains in-process)")
            except AuthenticationError:  # a key read just before a new server replaced it
                err = NoTrainerError(f"run {self.run_dir}: the control key was refused")
        raise err


def _status(d: dict[str, Any], grid: Grid | None, points) -> Status:
    """A Status from Status.to_dict() plus the grid and points, which travel apart."""
    run = {**d["run"], "metrics": tuple(d["run"]["metrics"]), "points": points}
    plain = {k: v for k, v in d.items()
             if k not in ("hparams", "eval", "accepts", "run", "anomaly", "sentinel", "probe", "ranks")}
    return Status(**plain, hparams=HParams(**d["hparams"]), eval=frozen_map(d["eval"]), grid=grid,
                  ranks=tuple(frozen_map(r) for r in d.get("ranks", ())),
                  accepts=frozenset(d["accepts"]), run=RunInfo(**run), anomaly=frozen_map(d.get("anomaly")),
                  sentinel=frozen_map(d.get("sentinel")), probe=_probe(d.get("probe")))


def _probe(d: dict | None):
    return None if d is None else frozen_map({**d, "results": tuple(frozen_map(r) for r in d["results"])})

