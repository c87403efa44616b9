"""Data parallel across `torchrun` processes: the one collective per step, and the sync rounds.

Every rank holds a replica and steps in lockstep. A step's gradients, BatchNorm buffers, loss and
control words travel in one flat all-reduce, so the non-finite check and "rank 0 has commands"
cost no extra collective. Rank 0 owns the run (lock, journal, checkpoints, command endpoint); the
others follow it. When a sync is due, all ranks meet for a round: gather (each rank's RNG state,
step, weights digest and error), then broadcast (rank 0's orders: its state, and a snapshot when
the weights jumped). A collective that fails names the rank that is gone (PeerLost).
"""
from __future__ import annotations

import datetime
import hashlib
import os
import socket
import time
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

# A paused run keeps its followers waiting in a collective; it may rest for days.
TIMEOUT = datetime.timedelta(days=30)
GONE_S = 2.0  # how long a failed collective waits to see which peer's process ended
CMD, ABORT = 0, 1  # control words at the end of the flat buffer (then per-rank compute seconds and memory)


class PeerLost(RuntimeError):
    """A collective failed: a rank died or its connection broke."""


class Aborted(RuntimeError):
    """Another rank (or this one) gave up the step under way: every rank undoes it and syncs."""


def launched() -> bool:
    """Whether this process was started by torchrun (or another launcher) as one of several ranks."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


@dataclass
class Peer:
    rank: int
    pid: int
    host: str


class Group:
    """This process's place in the job, and the collectives the engine uses."""

    def __init__(self):
        # Objects (orders, RNG states) go over gloo; CUDA tensors (the step's all-reduce) over NCCL.
        backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"
        if not dist.is_initialized():
            dist.init_process_group(backend, timeout=TIMEOUT)
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        self.lost: str | None = None
        me = Peer(self.rank, os.getpid(), socket.gethostname())
        peers: list[Any] = [None] * self.world
        dist.all_gather_object(peers, me)
        self.peers: list[Peer] = peers

    # --- the step's collective ----------------------------------------------------------------
    def reduce(self, flat: torch.Tensor) -> torch.Tensor:
        """Sum `flat` over ranks, in place."""
        self._call(dist.all_reduce, flat)
        return flat

    # --- sync rounds ----------------------------------------------------------------------------
    def gather(self, info: dict) -> list[dict] | None:
        """Every rank's info on rank 0 (None elsewhere)."""
        out = [None] * self.world if self.rank == 0 else None
        self._call(dist.gather_object, info, out, dst=0)
        return out

    def broadcast(self, order: dict | None) -> dict:
        """Rank 0's order on every rank."""
        box = [order]
        self._call(dist.broadcast_object_list, box, src=0)
        return box[0]

    def _call(self, fn, *args, **kw):
        if self.lost:
            raise PeerLost(self.lost)
        try:
            return fn(*args, **kw)
        except RuntimeError as e:  # gloo and NCCL raise DistBackendError (a RuntimeError) on a dead peer
            self.lost = self._who_is_gone(e)
            raise PeerLost(self.lost) from e

    def _who_is_gone(self, e: BaseException) -> str:
        here = socket.gethostname()
        deadline = time.monotonic() + GONE_S  # a killed process closes its sockets before it is a zombie
        while True:
            gone = [p for p in self.peers if p.rank != self.rank and p.host == here and not _alive(p.pid)]
            if gone:
                return ", ".join(f"rank {p.rank} (pid {p.pid})" for p in gone) + " died"
            if time.monotonic() > deadline:
                return f"a collective failed ({type(e).__name__}: {str(e)[:300]})"
            time.sleep(0.05)

    def close(self) -> None:
        if dist.is_initialized():
            try:
                dist.destroy_process_group()
            except Exception:  # a broken group may fail to tear down; the process ends anyway
                pass


def _alive(pid: int) -> bool:
    """A running process (a zombie, killed and not yet reaped by torchrun, counts as dead)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True


def digest(model: torch.nn.Module) -> str:
    """The replica's weights and buffers, bit for bit (replicas must agree)."""
    h = hashlib.blake2b(digest_size=16)
    for k, v in model.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().cpu().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
