"""A run is served by the process that trains it: commands in, status out, over a Unix socket.

run_dir/control.sock and its key run_dir/control.key are 0600, so only the local user can connect, and
multiprocessing's HMAC challenge proves the key. Messages are JSON (never pickle), one reply per
request, many requests per connection, one daemon thread per connection. The server only calls the
trainer's public API, status() and submit(): a command goes straight into the trainer's queue and
takes effect at the next optimizer step; the training loop does nothing per step for it.

Requests and replies (every reply has "ok"; a failed one has "error" instead of the rest):
  {"op": "ping"}                                   -> {"pid", "server"}
  {"op": "status", "server", "grid_since"}         -> {"server", "status": Status.to_dict(), "grid_seq",
                                                       "grid": {step, axis, probs} if it changed since
                                                       grid_since or "server" is not ours, "points"
                                                       for such a new client or when asked ("points": true)}
  {"op": "submit", "kind", "args": {}, "timeout"}  -> {"id", "result": Result.to_dict() or None if not
                                                       applied within timeout seconds}
  {"op": "wait", "id", "timeout"}                  -> {"result"}, or "timeout": true
Arrays (probs, points) travel as {"dtype", "shape", "data": base64 of the raw bytes}: encode_array().

run_dir/heartbeat.json, rewritten about once a second, says who serves the run and when its step
counter last moved. The process holds the run lock, so a socket, key or heartbeat found at start was
left by a dead process, and is removed.
"""
from __future__ import annotations

import base64
import collections
import contextlib
import itertools
import json
import math
import os
import secrets
import socket
import threading
import time
from collections.abc import Iterator
from multiprocessing.connection import AuthenticationError, Connection, answer_challenge, deliver_challenge
from pathlib import Path
from typing import Any

import numpy as np

SOCKET, KEY, HEARTBEAT = "control.sock", "control.key", "heartbeat.json"
HEARTBEAT_S = 1.0
MAX_REQUEST = 1 << 20  # bytes; requests are small JSON objects
MAX_PENDING = 256  # commands not yet applied when submitted, kept for a later "wait"


@contextlib.contextmanager
def socket_address(run_dir: Path | str) -> Iterator[str]:
    """The path to bind or connect to. A Unix socket path holds at most 107 bytes, so a deep run
    directory is reached through /proc/self/fd (Linux), which keeps the path short."""
    path = os.path.abspath(os.path.join(run_dir, SOCKET))
    if len(os.fsencode(path)) < 100:
        yield path
        return
    fd = os.open(run_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        yield f"/proc/self/fd/{fd}/{SOCKET}"
    finally:
        os.close(fd)


def encode_array(a: np.ndarray) -> dict:
    # Raw bytes in base64: JSON lists of a 60x60x3 grid cost ~7 ms of the trainer's GIL, this ~0.05 ms.
    a = np.ascontiguousarray(a)
    return {"dtype": a.dtype.str, "shape": list(a.shape), "data": base64.b64encode(a.tobytes()).decode()}


def decode_array(d: dict) -> np.ndarray:
    """The mirror of encode_array(): a read-only array."""
    return np.frombuffer(base64.b64decode(d["data"]), dtype=np.dtype(d["dtype"])).reshape(d["shape"])


class BadRequest(ValueError):
    pass


class RunServer:
    """Serves `trainer`'s run on run_dir/control.sock from start() to stop(). Start it while the
    trainer holds the run lock (after Trainer.create/open) and stop it before closing the trainer."""

    def __init__(self, trainer, heartbeat_s: float = HEARTBEAT_S):
        self.trainer = trainer
        self.run_dir = Path(trainer.status().run.run_dir)
        self.heartbeat_s = heartbeat_s
        self.token = secrets.token_hex(8)  # this server, so a client knows its cached grid is ours
        self.started = time.time()
        self._key = b""
        self._sock: socket.socket | None = None
        self._conns: dict[socket.socket, threading.Thread] = {}  # open connections and their threads
        self._lock = threading.Lock()
        self._halt = threading.Event()
        self._threads: list[threading.Thread] = []
        self._pending: collections.OrderedDict[int, Any] = collections.OrderedDict()
        self._ids = itertools.count(1)
        self._grid: tuple[Any, int, dict | None] = (None, 0, None)  # (Grid object, its number, encoded)
        self._points: dict | None = None

    # --- life -----------------------------------------------------------------------------------
    def start(self) -> RunServer:
        self._remove_files()  # we hold the run lock: whatever is there was left by a dead process
        self._key = secrets.token_bytes(32)
        fd = os.open(self.run_dir / KEY, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(self._key)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)  # the socket is born 0600: no window in which others could connect
        try:
            with socket_address(self.run_dir) as address:
                sock.bind(address)
        except BaseException:
            sock.close()
            self._remove_files()
            raise
        finally:
            os.umask(old)
        sock.listen(16)
        self._sock = sock
        self._write_heartbeat(self.trainer.status().step, time.time())
        for target, name in ((self._accept_loop, "panda-control"), (self._heartbeat_loop, "panda-heartbeat")):
            th = threading.Thread(target=target, name=name, daemon=True)
            th.start()
            self._threads.append(th)
        return self

    def stop(self) -> None:
        """Stop serving: no new connections, open ones closed, socket, key and heartbeat removed. Idempotent."""
        with self._lock:
            sock, self._sock = self._sock, None
            conns = dict(self._conns)
        if sock is None:
            return
        self._halt.set()
        (self.run_dir / SOCKET).unlink(missing_ok=True)  # first, so nobody new connects
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)  # wakes the thread blocked in accept()
        sock.close()
        for s in conns:
            with contextlib.suppress(OSError):
                # Reading ends, writing does not: a reply being made (the result of the `stop` that
                # ended the run, say) still goes out, then its thread sees the end and exits.
                s.shutdown(socket.SHUT_RD)
        deadline = time.monotonic() + 5
        for th in [*self._threads, *conns.values()]:
            th.join(max(0.0, deadline - time.monotonic()))
        self._remove_files()

    def _remove_files(self) -> None:
        for name in (SOCKET, KEY, HEARTBEAT, HEARTBEAT + ".tmp"):
            (self.run_dir / name).unlink(missing_ok=True)

    # --- connections ----------------------------------------------------------------------------
    def _accept_loop(self) -> None:
        while not self._halt.is_set():
            try:
                s, _ = self._sock.accept()
            except (OSError, AttributeError):  # stop() shut the socket, or out of descriptors
                if self._halt.wait(0.1):
                    return
                continue
            # The handshake runs on the connection's own thread: a client stalled in it blocks only itself.
            threading.Thread(target=self._serve, args=(s,), name="panda-control-conn", daemon=True).start()

    def _serve(self, s: socket.socket) -> None:
        with self._lock:
            if self._sock is None:  # stop() ran meanwhile
                s.close()
                return
            self._conns[s] = threading.current_thread()
        conn = None
        try:
            conn = Connection(os.dup(s.fileno()))
            deliver_challenge(conn, self._key)
            answer_challenge(conn, self._key)
            while True:
                conn.send_bytes(self.reply(conn.recv_bytes(MAX_REQUEST)))
        except (OSError, EOFError, AuthenticationError):
            pass  # the client left, sent the wrong key, or an oversized message; the others go on
        finally:
            if conn is not None:
                conn.close()
            with self._lock:
                self._conns.pop(s, None)
            s.close()

    def reply(self, raw: bytes) -> bytes:
        """One request's reply, as JSON bytes. Nothing a client sends can take the server down."""
        try:
            req = json.loads(raw)
        except (ValueError, RecursionError) as e:
            return _dump({"ok": False, "error": f"bad request: not JSON ({str(e)[:200]})"})
        try:
            if not isinstance(req, dict):
                raise BadRequest("a request is a JSON object with an \"op\"")
            op = req.get("op")
            handler = {"ping": self._ping, "status": self._status, "submit": self._submit,
                       "wait": self._wait}.get(op) if isinstance(op, str) else None
            if handler is None:
                raise BadRequest(f"unknown op {str(op)[:50]!r}; known: ping, status, submit, wait")
            return _dump({"ok": True, **handler(req)})
        except TimeoutError as e:
            return _dump({"ok": False, "timeout": True, "error": str(e)})
        except BadRequest as e:
            return _dump({"ok": False, "error": str(e)})
        except Exception as e:  # e.g. arguments the trainer's submit() cannot take
            return _dump({"ok": False, "error": f"{type(e).__name__}: {str(e)[:200]}"})

    # --- requests -------------------------------------------------------------------------------
    def _ping(self, req: dict) -> dict:
        return {"pid": os.getpid(), "server": self.token}

    def _status(self, req: dict) -> dict:
        st = self.trainer.status()
        out = {"server": self.token, "status": st.to_dict()}
        seq, grid = self._grid_of(st.grid)
        out["grid_seq"] = seq
        new_client = req.get("server") != self.token  # its cache, if any, is another server's
        if seq is not None and (new_client or req.get("grid_since") != seq):
            out["grid"] = grid
        if new_client or req.get("points"):
            if self._points is None and st.run.points is not None:
                x, y = st.run.points
                self._points = {"x": encode_array(x), "y": encode_array(y)}
            out["points"] = self._points
        return out

    def _grid_of(self, g) -> tuple[int | None, dict | None]:
        """The grid's number (it grows with every new Grid) and its encoding, made once per grid."""
        if g is None:
            return None, None
        with self._lock:
            obj, seq, enc = self._grid
            if g is not obj:
                seq += 1
                enc = {"step": g.step, "axis": list(g.axis), "probs": encode_array(g.probs)}
                self._grid = (g, seq, enc)
            return seq, enc

    def _submit(self, req: dict) -> dict:
        kind, args = req.get("kind"), req.get("args", {})
        if not isinstance(kind, str):
            raise BadRequest("submit: \"kind\" must be a command name")
        if not isinstance(args, dict):
            raise BadRequest("submit: \"args\" must be a JSON object")
        timeout = _timeout(req.get("timeout", 0))
        cmd = self.trainer.submit(kind, **args)
        if _finished(cmd, timeout):
            return {"id": None, "result": cmd.result.to_dict()}
        with self._lock:
            cid = next(self._ids)
            self._pending[cid] = cmd
            while len(self._pending) > MAX_PENDING:
                self._pending.popitem(last=False)
        return {"id": cid, "result": None}

    def _wait(self, req: dict) -> dict:
        cid, timeout = req.get("id"), _timeout(req.get("timeout"))
        with self._lock:
            cmd = self._pending.get(cid) if isinstance(cid, int) else None
        if cmd is None:
            raise BadRequest(f"wait: no pending command with id {str(cid)[:50]}")
        cmd.wait(timeout)  # raises TimeoutError
        with self._lock:
            self._pending.pop(cid, None)
        return {"result": cmd.result.to_dict()}

    # --- heartbeat ------------------------------------------------------------------------------
    def _heartbeat_loop(self) -> None:
        last_step, moved = self.trainer.status().step, time.time()
        while not self._halt.wait(self.heartbeat_s):
            step = self.trainer.status().step
            if step != last_step:
                last_step, moved = step, time.time()
            self._write_heartbeat(step, moved)

    def _write_heartbeat(self, step: int, moved: float) -> None:
        st = self.trainer.status()
        beat = {"pid": os.getpid(), "host": socket.gethostname(), "started": self.started, "step": step,
                "state": st.state, "last_step_wall": moved, "updated": time.time()}
        tmp = self.run_dir / (HEARTBEAT + ".tmp")
        try:
            tmp.write_text(json.dumps(beat))
            os.replace(tmp, self.run_dir / HEARTBEAT)  # readers never see half a file
        except OSError:
            pass  # a full disk stops the journal, visibly; a missed beat only looks older


def _dump(reply: dict) -> bytes:
    return json.dumps(reply, default=str).encode()


def _timeout(t: Any) -> float | None:
    if t is None:
        return None
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or t < 0:
        raise BadRequest(f"timeout: must be a number of seconds >= 0 or null, got {str(t)[:50]}")
    return float(t)


def _finished(cmd, timeout: float | None) -> bool:
    try:
        cmd.wait(timeout)
        return True
    except TimeoutError:
        return False
