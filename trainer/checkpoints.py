"""CheckpointStore: the one owner of a run's checkpoints.

It allocates ids (only the process holding the run lock makes a store), keeps the in-memory ring,
writes files, applies retention and checks that every path it reads from the journal stays inside
the run directory. Its writes are ordered so a kill at any instant leaves a consistent run: the steps
a checkpoint covers are committed, then its file is written (atomically), then its row. Deletion is
the mirror: the row is marked deleted first, then the file goes. Leftovers of a killed write (temp
files, a file whose row never committed) are removed when the store opens.
"""
from __future__ import annotations

import collections
import json
import threading
import time
from pathlib import Path

from . import snapshot
from .journal import CheckpointRow, Journal
from .snapshot import CheckpointError


def contained(run_dir: Path | str, rel: str) -> Path:
    """A path named in the journal, resolved; it must lie inside the run directory."""
    root = Path(run_dir).resolve()
    if not isinstance(rel, str) or not rel:
        raise CheckpointError(f"checkpoint path {rel!r} is not a relative path")
    path = (root / rel).resolve()
    if root not in path.parents:
        raise CheckpointError(f"checkpoint path {rel!r} leaves the run directory")
    return path


class CheckpointStore:
    def __init__(self, run_dir: Path, journal: Journal, ring_size: int, keep_last: int):
        self.run_dir, self.journal = Path(run_dir), journal
        self.ring_size, self.keep_last = ring_size, keep_last
        self._ring: collections.OrderedDict[int, dict] = collections.OrderedDict()
        self._lock = threading.Lock()  # the ring: the training thread adds, retention on the writer removes
        (self.run_dir / "checkpoints").mkdir(exist_ok=True)
        rows = journal.checkpoints(include_deleted=True)
        self._next = 1 + max([c["id"] for c in rows] or [0])
        self._sweep({c["path"] for c in rows if not c["deleted"]})

    def _sweep(self, listed: set[str]) -> None:
        for f in (self.run_dir / "checkpoints").iterdir():
            rel = f"checkpoints/{f.name}"
            if f.is_file() and (f.name.endswith(".tmp") or rel not in listed):
                f.unlink(missing_ok=True)

    def save(self, snap: dict, *, step: int, epoch: int, branch: int, train_loss: float | None,
             val_loss: float | None, kind: str, label: str | None) -> int:
        """Keep `snap` (a fresh capture, owned by the store from now on) in the ring and queue its file
        and row; returns the new checkpoint id."""
        cid, self._next = self._next, self._next + 1
        with self._lock:
            self._ring[cid] = snap
            while len(self._ring) > self.ring_size:
                self._ring.popitem(last=False)
        rel = f"checkpoints/ckpt_{cid:06d}_step{step}.pt"
        row = CheckpointRow(cid, step, epoch, branch, rel, time.time(), train_loss, val_loss,
                            json.dumps(snap["hparams"]), label, kind, snap["lineage"]["parent_checkpoint"])
        message = f"checkpoint {cid} saved at step {step}" + (f" ({label})" if label else "")
        event = Journal.event_row(step, branch, "checkpoint", message,
                                  {"checkpoint": cid, "kind": kind, "label": label})

        def write(journal: Journal) -> None:  # on the writer thread, after the steps before it committed
            snapshot.save_file(snap, self.run_dir / rel)
            journal.transaction([(f"INSERT INTO checkpoints VALUES ({','.join('?' * 12)}, 0)", tuple(row)),
                                 ("INSERT INTO events (wall, step, branch, kind, message, data) "
                                  "VALUES (?, ?, ?, ?, ?, ?)", event)])

        self.journal.submit(write)  # a failed job is retried whole: it has committed nothing
        self.journal.submit(self._retain)
        self.journal.wait_for_jobs(most=2)  # each pending job holds a full copy of the state in memory
        return cid

    def load(self, cid: int) -> dict:
        """A checkpoint's snapshot, from the ring or from its file (the caller's restore copies it)."""
        with self._lock:
            if cid in self._ring:
                return self._ring[cid]
        rows = [c for c in self.journal.checkpoints() if c["id"] == cid]
        if not rows:
            raise CheckpointError(f"checkpoint {cid}: no such checkpoint")
        return snapshot.load_file(contained(self.run_dir, rows[0]["path"]))

    def _retain(self, journal: Journal) -> None:
        """Keep the last K automatic checkpoints, every manual or labelled one, and the best by val loss."""
        rows = journal.checkpoints()
        autos = [c for c in rows if c["kind"] in ("auto", "final") and not c["label"]]
        vals = [c for c in rows if c["val_loss"] is not None]
        best = min(vals, key=lambda c: c["val_loss"])["id"] if vals else None
        for c in autos[:-self.keep_last or None] if self.keep_last else autos:
            if c["id"] == best:
                continue
            try:
                path = contained(self.run_dir, c["path"])
            except CheckpointError as e:  # a tampered row: retired, and nothing outside the run is touched
                path = None
                journal.event(c["step"], c["branch"], "error", f"checkpoint {c['id']}: {e}; no file was deleted")
            journal.transaction([("UPDATE checkpoints SET deleted = 1 WHERE id = ?", (c["id"],))])
            with self._lock:
                self._ring.pop(c["id"], None)
            if path is not None:
                path.unlink(missing_ok=True)
