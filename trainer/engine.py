"""The trainer: one model, one background thread, commands applied between optimizer steps.

The training thread owns the run: the model, optimizer, data position, counters and the journal's
write side. Other threads send commands (data) and read the Status it publishes, or the journal.
"""
from __future__ import annotations

import collections
import contextlib
import dataclasses
import inspect
import json
import math
import os
import random
import shutil
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import dist, probe, snapshot
from .checkpoints import CheckpointStore
from .commands import ACCEPTS, KINDS, MAX_TEXT, Command, Controls, Result
from .config import ConfigError, RunConfig
from .data import Batches, all_batches
from .dist import Aborted, Group, PeerLost
from .cpu_step import FlatGrads, fused_sgd_step
from .probe import Plan, ProbeError
from .hparams import HParamError, HParams, decayed_lr, to_dict, validate
from .instruments import Health, Instruments, memory_bytes
from .journal import EvalRow, Journal, JournalError, Reader, StepRow
from .runlock import RunLock
from .sentinel import MAX_ROLLBACKS, MAX_STREAK, Anomaly, Sentinel, action, recovery_plan
from .snapshot import CheckpointError
from .status import Grid, RunInfo, Status, frozen_array, frozen_map
from .tasks import Task, load_task

THREAD_NAME = "panda-trainer"
PUBLISH_S = 0.05  # a running step loop publishes its Status at most this often
READBACK_S = 0.1  # step rows reach the journal's queue at least this often (plus its flush interval)
MAX_SHOWN = 2000  # characters of a task's shown text (a generated sample) kept per evaluation
HEALTH_EVERY = 50  # steps between the CPU's whole-state NaN/inf check and explosion check (and before checkpoints)
AMP_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
MAX_OVERFLOWS = 40  # fp16 steps in a row the scaler may skip: 65536 / 2^40 is below fp16's smallest number


class _Quiet:
    """A follower's journal: rank 0 writes the run's; a follower's records go nowhere."""
    error = None

    def __getattr__(self, name):
        return lambda *a, **k: None


class Diverged(RuntimeError):
    pass


class RunExistsError(RuntimeError):
    pass


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device: {name} requested but CUDA is not available")
    if name == "cuda" and dist.launched():  # torchrun: one device per local rank
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device(name)


def build_optimizer(cfg: RunConfig, params, hp: HParams, fused: bool = False) -> torch.optim.Optimizer:
    """The run's optimizer; fused kernels when asked and the parameters allow them."""
    params = list(params)
    extra = {"fused": True} if fused else {}
    try:
        if cfg.optimizer == "sgd":
            return torch.optim.SGD(params, lr=hp.lr, momentum=hp.momentum, weight_decay=hp.weight_decay,
                                   nesterov=cfg.nesterov, **extra)
        cls = torch.optim.Adam if cfg.optimizer == "adam" else torch.optim.AdamW
        return cls(params, lr=hp.lr, betas=(hp.momentum, 0.999), weight_decay=hp.weight_decay, **extra)
    except RuntimeError:
        if not fused:
            raise
        return build_optimizer(cfg, params, hp, fused=False)  # e.g. a parameter type fused kernels lack


def resume_point(reader: Reader, branch: int, checkpoint: int | None = None) -> dict | None:
    """The checkpoint a resume starts from: `checkpoint`, or the newest on `branch`'s lineage
    (None: no checkpoint there, the run restarts from step 0). Raises CheckpointError if unknown."""
    if checkpoint is not None:
        mine = [c for c in reader.checkpoints() if c["id"] == checkpoint]
        if not mine:
            raise CheckpointError(f"checkpoint {checkpoint}: no such checkpoint")
        return mine[0]
    return reader.resume_point(branch)


class Trainer(Controls):
    """Trains one model in a named daemon thread. Every control method returns a Command whose
    `wait()` gives a Result: "applied at step N" or "rejected: reason". Read `status()` and
    `reader()`; everything else is the training thread's."""

    def __init__(self, config: RunConfig, hparams: dict[str, Any] | None = None, *, task: Task | None = None,
                 _new: bool = False, _follower: bool = False):
        self.cfg = config
        self.run_dir = Path(config.run_dir)
        # Under torchrun, rank 0 owns the run; the other ranks follow it and never touch its directory.
        self.follower = _follower
        self.group: Group | None = None
        self._sync_due = True  # every rank meets rank 0 before its next step (a sync round)
        self._jumped = True  # the weights changed under rank 0's hand: the next orders carry a snapshot
        self._jump_ranks: list | None = None  # the other ranks' RNG states that go with that snapshot
        self._peer_rngs: list | None = None  # the other ranks' RNG states now, as far as rank 0 knows
        self._in_round = False
        self._local_error: str | None = None
        self._rank_acc = None  # DDP: per-rank busy seconds and memory since the last read-back
        self.ranks: tuple = ()
        created = False
        if _follower:
            self.device, self._lock = torch.device("cpu"), None
        else:
            self.device = resolve_device(config.device)
            if self.run_dir.exists() and not self.run_dir.is_dir():
                raise RunExistsError(f"run directory {self.run_dir} is a file, not a directory")
            created = not self.run_dir.exists()
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self._lock = RunLock(self.run_dir)  # before anything is read or written there
            if _new and (self.run_dir / "journal.sqlite").exists():
                self._lock.release()
                raise RunExistsError(f"run directory {config.run_dir} already holds a run; resume it instead")
        self.step, self.samples, self.train_time = 0, 0, 0.0
        self.lr_set_epoch = 0
        self.best_val: float | None = None
        self.last_val: float | None = None
        self.branch, self.last_checkpoint = 0, None
        # (branch, step) of the state last checkpointed; a fresh build is step 0, made again from the seed
        self._ckpt_at: tuple[int, int] | None = (0, 0)
        self.state = "ready"  # one of commands.STATES
        self.error: str | None = None
        self._eval: dict | None = None
        self._grid: Grid | None = None
        self._pending: list[StepRow] = []  # per-step records not yet read back from the device
        self._last_loss: float | None = None
        self._last_scale: float | None = None  # fp16: the loss scale at the last read-back
        self._sps = 0.0
        self._published_at = 0.0
        self._window = [0, 0.0]  # samples since the last read-back and when it was, for samples/s
        self._last_readback = 0.0
        self._written: tuple | None = None  # the (hparams, lr) last written into param_groups
        self._rng_parked: dict | None = None
        self._plan: Plan | None = None  # the probe or range test under way (state "probing")
        self._kept: tuple | None = None  # what a probe puts back that no snapshot holds
        self._main_status: Status | None = None  # the Status published while a probe works
        self.anomaly: Anomaly | None = None  # what paused the run, while it is paused on it
        self.skipped = 0  # updates the sentinel dropped
        self._sound_at = 0  # the last step whose whole state was checked finite
        self._cmds: collections.deque[Command] = collections.deque()
        self._cond = threading.Condition()
        self._accepting = True
        self._applying = False  # commands taken off the queue and not yet answered
        self._shut = threading.Lock()
        self._status: Status | None = None
        self._version = 0
        # All torch work happens on this one thread, from building the model on: OpenMP gives each
        # thread that runs parallel ops its own team, and two teams on few cores slow training 4x.
        self._built = threading.Event()
        self._build_error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, args=(hparams, task), name=THREAD_NAME, daemon=True)
        self._thread.trainer = self  # the dashboard finds its trainer by thread name
        self._thread.start()
        self._built.wait()
        if self._build_error is not None:
            self._thread.join()
            if self._lock is not None:
                self._lock.release()
            if created:  # bad input leaves nothing behind
                shutil.rmtree(self.run_dir, ignore_errors=True)
            raise self._build_error

    def _build(self, hparams: dict[str, Any] | None, task: Task | None) -> None:
        if dist.launched():
            self._join_group()
        cfg = self.cfg
        if cfg.deterministic and self.device.type == "cpu":
            torch.use_deterministic_algorithms(True)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)  # OpenMP keeps this per thread: it binds the training thread
        random.seed(cfg.seed)
        np.random.seed(cfg.seed)
        torch.manual_seed(cfg.seed)
        self.task = task or load_task(cfg.task, seed=cfg.seed)
        if self.follower:  # its own streams (dropout); its model is rank 0's from the first sync on
            torch.manual_seed(cfg.seed * 1_000_003 + self.group.rank)
            random.seed(cfg.seed * 1_000_003 + self.group.rank)
        self.model = self.task.model.to(self.device)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self._buffers = [b for b in self.model.buffers()]
        self._buffer_backup = [b.clone() for b in self._buffers]
        self._found, self._one = torch.zeros((), device=self.device), torch.ones((), device=self.device)
        self.n_train = len(self.task.train_data)
        self.hp = validate(HParams(), {**self.task.defaults, **(hparams or {})},
                           dataset_size=self.n_train, nesterov=cfg.nesterov)
        err = None if self.follower else self._fits_world(self.hp)  # (a follower takes rank 0's)
        if err:
            raise HParamError("batch_size", err.removeprefix("batch_size: "))
        # On CUDA the divergence guard must not sync every step: fused optimizers skip a step
        # whose found_inf flag is set on the device, and losses are read back in batches.
        # Fused kernels are used on the CPU too: they are faster there as well.
        self.optimizer = build_optimizer(cfg, self.params, self.hp, fused=True)
        self.sync_free = self.device.type == "cuda" and bool(self.optimizer.defaults.get("fused"))
        # (under DDP the step's all-reduce packs the gradients its own way)
        self._flat = FlatGrads(self.params) if self.group is None and FlatGrads.fits(self.params) else None
        self.amp_dtype = AMP_DTYPES[cfg.precision]
        # fp16 needs loss scaling; with a fused optimizer the scaler's step does not sync either
        self.scaler = torch.amp.GradScaler(self.device.type) if cfg.precision == "fp16" else None
        self.overflows = 0  # fp16 steps the scaler skipped (gradients overflowed at its scale)
        self._overflow_streak = 0
        self.compile_s = 0.0  # seconds the training forward spent compiling (cfg.compile)
        # Training steps run the compiled module; evaluation, instrumented steps and checkpoints use
        # the plain one (same parameters): no recompiles for eval mode or hooks, plain state_dict keys.
        self.forward = torch.compile(self.model) if cfg.compile else self.model
        self.batches = Batches(self.task.train_data, cfg.seed, self.device)
        self.sentinel = Sentinel(cfg.sentinel_window, cfg.sentinel_sigma)
        self.instruments = (Instruments(self.model, self.params, self.device, cfg.instrument_every, cfg.ratio_every)
                            if cfg.instruments else None)
        self.health = Health(self.model, self.optimizer)
        if self.follower:
            self.journal, self.store = _Quiet(), None
        else:
            self.journal = Journal(self.run_dir / "journal.sqlite")
            self.store = CheckpointStore(self.run_dir, self.journal, cfg.ring_size, cfg.keep_last)
        self._part = (self.group.rank, self.group.world) if self.group is not None else None
        if self.group is not None:
            self._float_buffers = [b for b in self._buffers if b.is_floating_point()]
            self._numel = sum(p.numel() for p in self.params) + sum(b.numel() for b in self._float_buffers) + 1
        self.info = RunInfo(run_dir=str(self.run_dir), task=cfg.task, task_name=self.task.name,
                            optimizer=cfg.optimizer, nesterov=cfg.nesterov, device=str(self.device),
                            precision=cfg.precision, compiled=cfg.compile,
                            n_train=self.n_train, ckpt_every=cfg.ckpt_every, metrics=tuple(self.task.metrics),
                            has_grid=self.task.grid is not None, points=_points(self.task),
                            classes=_classes(self.task, self.model, self.device),
                            world_size=self.group.world if self.group else 1,
                            backend=("nccl" if self.device.type == "cuda" else "gloo") if self.group else None)
        self.journal.start_writer()
        self._publish()

    def _main(self, hparams, task) -> None:
        try:
            self._build(hparams, task)
        except BaseException as e:
            self._build_error = e
            if getattr(self, "_flat", None) is not None:  # the hooks must not outlive a failed build
                self._flat.close()
            return
        finally:
            self._built.set()
        try:
            self._follow() if self.follower else self._loop()
        finally:
            if self._flat is not None:
                self._flat.close()
            with self._cond:  # nothing sent from now on is lost: it is answered at once
                self._accepting = False
                self._reject_queued("the trainer is closed")
                self._cond.notify_all()
            if self.group is not None:
                self.group.close()

    # --- construction ---------------------------------------------------------------------------
    @classmethod
    def create(cls, config: RunConfig, hparams: dict[str, Any] | None = None, *, task: Task | None = None) -> "Trainer":
        """A new run in config.run_dir (which must not hold a run already)."""
        t = cls(config, hparams, task=task, _new=True)
        t.journal.set_meta("config", config.to_dict())
        t.journal.set_meta("run_info", t._run_info())
        t.journal.set_meta("branch", 0)
        t.journal.add_branch(0, None, 0, "start", None)
        t.journal.event(0, 0, "create", f"new run: task {config.task}, optimizer {config.optimizer}",
                        {"hparams": to_dict(t.hp)})
        t._announce_group()
        t.journal.flush()
        return t

    @classmethod
    def open(cls, run_dir: str | Path, checkpoint: int | None = None, hparams: dict | None = None,
             skip_batches: int = 0, **overrides) -> "Trainer":
        """Reopen a run: from `checkpoint`, or the newest state on its current branch's lineage.

        With no checkpoint there (a run killed before its first one), it restarts from step 0.
        Nothing is written to the run unless the whole reopening succeeds.
        """
        reader = Reader(run_dir)
        meta = reader.meta()
        cfg = RunConfig.from_dict({**meta["config"], "run_dir": str(run_dir), **overrides})
        t = cls(cfg)
        try:
            res = t._submit("open", dict(branch=int(meta.get("branch", 0)), checkpoint=checkpoint,
                                         hparams=hparams or {}, skip=skip_batches,
                                         config_changed=cfg.to_dict() != meta["config"])).wait(None)
        except BaseException:
            t.close()
            raise
        if not res.ok:
            t.close()
            raise CheckpointError(res.message)
        return t

    @classmethod
    def follow(cls) -> "Trainer":
        """A rank > 0 of a torchrun job: it takes rank 0's settings and orders and trains its slice of
        every batch. It ends when rank 0 closes the run (or is lost)."""
        return cls(RunConfig(), _follower=True)

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the training thread to end (a follower: rank 0 closed the run); False on timeout."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _join_group(self) -> None:
        """torchrun: join the job. Rank 0's settings are everyone's (a follower was given none)."""
        self.group = Group()
        if (self.group.rank > 0) != self.follower:
            raise RuntimeError(f"rank {self.group.rank}: rank 0 serves the run (Trainer.create/open), the other "
                               "ranks follow it (Trainer.follow)")
        cfg = self.group.broadcast(None if self.follower else self.cfg.to_dict())
        if self.follower:
            self.cfg = RunConfig.from_dict(cfg)
            self.device = resolve_device(self.cfg.device)
        if self.cfg.precision == "fp16":
            raise ConfigError("precision fp16 is not available in a data-parallel run yet (each rank's loss "
                              "scaler would judge overflow on its own gradients): use fp32 or bf16")
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)

    def _fits_world(self, hp: HParams) -> str | None:
        """A global batch splits evenly across the ranks, or it is refused (raised at build)."""
        if self.group is None:
            return None
        w, rest = self.group.world, self.n_train % hp.batch_size
        if hp.batch_size % w:
            return (f"batch_size: {hp.batch_size} does not split across {w} ranks; the batch size is the global "
                    f"batch, so it must be a multiple of {w}")
        if 1 < rest < w:  # (a lone last sample joins the batch before it)
            return (f"batch_size: each epoch would end with a batch of {rest} samples, fewer than the {w} ranks; "
                    f"pick one that leaves none or at least {w} of the {self.n_train:,}")
        return None

    def _run_info(self) -> dict:
        """What a reader shows of a run no process serves (client.offline_status)."""
        return {k: v for k, v in dataclasses.asdict(self.info).items() if k != "points"} | {
            "steps_per_epoch": self.batches.batches_per_epoch(self.hp.batch_size)}

    # --- the public API (any thread) --------------------------------------------------------------
    def status(self) -> Status:
        """The latest published Status: an immutable value, swapped in whole by the training thread."""
        return self._status

    def reader(self) -> Reader:
        """A read-only view of this run's journal (what the dashboard and the CLI read)."""
        return Reader(self.run_dir)

    def submit(self, kind: str, **args) -> Command:
        """Queue a command (one of commands.KINDS); it is applied between two optimizer steps."""
        if kind not in KINDS:
            cmd = Command(str(kind)[:MAX_TEXT], args)
            cmd.finish(Result(False, self.step, f"unknown command {str(kind)[:MAX_TEXT]!r}; "
                                                f"known: {', '.join(KINDS)}"))
            return cmd
        return self._submit(kind, args)

    def _submit(self, kind: str, args: dict) -> Command:
        cmd = Command(kind, args)
        with self._cond:
            if not self._accepting:
                cmd.finish(Result(False, self.step, "the trainer is closed"))
                return cmd
            self._cmds.append(cmd)
            self._cond.notify_all()
        return cmd

    def wait(self, timeout: float | None = None) -> bool:
        """Block until training is not running (done, paused, stopped, error); False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: self.state not in ("running", "probing") and not self._cmds
                                       and not self._applying, timeout)

    def close(self) -> None:
        """Stop training (final checkpoint), end the thread, commit the journal and release the run.

        Idempotent and safe from several threads at once. Raises JournalError if the last writes fail.
        """
        if self.follower:  # it ends when rank 0 closes the run
            self._thread.join()
            return
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._submit("close", {}).wait(None)  # answered at once when another close came first
            self._thread.join()
        with self._shut:
            if self._build_error is None and self._lock is not None:
                try:
                    self.journal.close()
                finally:
                    self._lock.release()
                    self._lock = None

    # --- the training loop ----------------------------------------------------------------------
    def _loop(self) -> None:
        while self._take_commands():
            if self._plan is not None:
                try:
                    self._probe_tick()
                except Exception as e:  # a side run's crash ends the probe; the main run is put back
                    self._end_probe(error=f"{type(e).__name__}: {e}")
                continue
            try:
                if self.cfg.max_steps and self.step >= self.cfg.max_steps:
                    self._finish("done", f"reached the step limit {self.cfg.max_steps}")
                    self._publish()
                    continue
                self._train_step()
            except Aborted:  # another rank gave the step up: it was undone here too; meet at a sync
                self._sync_due = True
            except PeerLost as e:
                self._lose(e)
            except Diverged as e:  # (every rank finds the same state unsound)
                self._fail(str(e))
                self._sync_due = True
            except Exception as e:  # a crashing user model pauses the run; it never kills the thread
                self._fail(f"{type(e).__name__}: {e}", traceback.format_exc(limit=-4))

    def _train_step(self) -> None:
        hp, model, ins = self.hp, self.model, self.instruments
        t0 = self._t_step = time.perf_counter()
        lr = decayed_lr(hp, self.batches.epoch - self.lr_set_epoch, self.step + 1)
        if self._written is None or hp is not self._written[0] or lr != self._written[1]:
            # nanoGPT's way: the live values go into param_groups (every change makes a new HParams)
            self._write_param_groups(hp, lr)
        pos = self.batches.position()
        due = ins is not None and ins.is_due(self.step + 1)
        if self._buffers:  # BatchNorm's running stats change in forward; keep them to undo a bad step
            torch._foreach_copy_(self._buffer_backup, self._buffers)
        try:
            (x, y), epoch_ended = self.batches.next(hp.batch_size, self._part)
            n = self.batches.size  # the global batch
            if self._part is not None:  # this rank's slice of it, weighted by its share
                self._share = len(y) / n
            if due:
                ins.arm()  # activation hooks for this forward only
            try:
                loss = self._loss(model if due else self.forward, x, y)
            finally:
                if due:
                    ins.disarm()
            loss, gnorm = self._backward(loss, hp.grad_clip)
            loss, gnorm = self._guard(loss, gnorm.detach())
            # fp16: a finite loss with overflowed gradients is the scaler's business (it skips the step
            # and lowers its scale), not an anomaly; a non-finite loss is the sentinel's, as in fp32
            overflow = self.scaler is not None and not self.sync_free and math.isfinite(loss) and not math.isfinite(gnorm)
            anomaly = None if self.sync_free or overflow else self.sentinel.judge(self.step + 1, loss, gnorm)
        except BaseException:  # undo the half step: same batch next time, buffers as they were
            self.batches.seek(pos)
            self._undo_forward()
            raise
        if overflow:
            anomaly = self._overflowed(self.step + 1)
        elif self.scaler is not None and not self.sync_free:  # (on CUDA the read-back counts them)
            self._overflow_streak = 0
        if anomaly is not None:
            act = action(self.cfg.sentinel, anomaly)
            if act != "warn":  # never applied; its batch is used up (on these weights it would spike again)
                self._undo_forward()
                self._react(anomaly, act)
                return
            self._react(anomaly, act)
            self.sentinel.observe_loss(loss)
        measured = ins is not None and ins.measures(self.step + 1, due)
        if measured:
            ins.before()
        scale = self._step(on_device=self.sync_free)
        ratio = ins.after() if measured else None
        if isinstance(ratio, torch.Tensor) and not self.sync_free:  # CUDA without a fused optimizer: judged now
            ratio = ratio.item()
        self.step += 1
        self.samples += n
        dt = time.perf_counter() - t0
        self.train_time += dt
        self._window[0] += n
        progress = self.batches.epoch + self.batches.offset / self.n_train  # fractional epoch, for the x-axis
        self._pending.append(StepRow(self.branch, self.step, progress, loss, lr, hp.momentum, hp.weight_decay,
                                     hp.batch_size, gnorm, n / dt if dt > 0 else 0.0, time.time(), ratio, scale))
        if due and not self.follower:
            self.journal.log_layers(ins.layer_rows(self.branch, self.step, ratio))
        if ratio is not None and not self.sync_free:  # on CUDA the read-back judges the rows, no sync per step
            later = self.sentinel.judge_update(self.step, ratio)
            if later is not None and self._react(later, action(self.cfg.sentinel, later)):
                return
        if self.step % HEALTH_EVERY == 0 and not self.sync_free:  # on steps, not time: decisions replay exactly
            if self._check_health():
                return
        # (under DDP on CUDA the read-back judges steps: every rank must do it at the same steps)
        if self.step % self.cfg.log_every == 0 or t0 - self._last_readback >= READBACK_S and not (
                self.group is not None and self.sync_free):
            self._readback()
            if self.state != "running":  # the guard or a failed write stopped the run: no eval or checkpoint
                self._publish()
                return
            if t0 - self._published_at >= PUBLISH_S:  # readers poll at most every 0.1 s: fresher is waste
                self._publish()
        if self.follower:  # rank 0 evaluates and reports
            pass
        elif epoch_ended and self.cfg.eval_at_epoch_end or self.cfg.eval_every and self.step % self.cfg.eval_every == 0:
            self._evaluate()
        if self.cfg.ckpt_every and self.step % self.cfg.ckpt_every == 0:
            if self.step % HEALTH_EVERY and self._check_health():  # a checkpoint must be sound: look first
                return
            self._checkpoint("auto")

    def _backward(self, loss: torch.Tensor, clip: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Gradients of `loss`, their total norm before clipping, then clipping to `clip` (0: none).
        Returns (the loss, detached, the norm). Under DDP both are the global batch's, summed over the
        ranks. Training steps and a probe's side runs share it: the same math, bit for bit."""
        self._zero_grads()
        if self.group is not None:
            loss = loss * self._share
        if self.scaler is None:
            loss.backward()
        else:  # the norm, the clip and the guard see true gradients (the documented AMP recipe)
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
        loss = loss.detach()
        if self.group is not None:
            loss = self._reduce(loss)
        if self._flat is not None:
            gnorm = self._flat.norm()
        else:
            grads = [p.grad for p in self.params if p.grad is not None]
            # get_total_norm's own checks cost more than the norm on small models; this is its core
            gnorm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads))) if grads else torch.zeros(())
        if clip:
            torch.nn.utils.clip_grads_with_norm_(self.params, clip, gnorm)
        return loss, gnorm

    def _loss(self, model, x, y) -> torch.Tensor:
        if model is self.model and self.amp_dtype is None:  # the plain fp32 step pays for nothing below
            return self.task.loss(model(x), y)
        graphs = _graphs() if model is not self.model else None
        t0 = time.perf_counter()
        with self._autocast():
            loss = self.task.loss(model(x), y)
        if graphs is not None and _graphs() != graphs:  # this call compiled: the first step, or a new shape
            self.compile_s += time.perf_counter() - t0
            self._event("compile", f"torch.compile: {_graphs()} graph(s), {self.compile_s:.1f} s compiling so far",
                        {"seconds": self.compile_s, "graphs": _graphs()})
        return loss

    def _autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def _step(self, on_device: bool = False) -> Any:
        """The optimizer step (through the scaler under fp16). Returns the loss scale it used: a
        float, or with `on_device` a device tensor until the read-back; None without a scaler."""
        if self.scaler is None:
            if self._flat is None or not fused_sgd_step(self.optimizer, self._flat):
                self.optimizer.step()
            self.optimizer.found_inf = None  # this step's flag: a later step (a side run's) must not read it
            return None
        scale = self.scaler._get_scale_async()  # update() changes it in place
        scale = scale.clone() if on_device else scale.item()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return scale

    def _overflowed(self, step: int) -> Anomaly | None:
        """Count an fp16 step the scaler skipped. Overflow at every scale down to fp16's smallest is no
        longer the scaler's to fix: the gradients themselves are not finite, and the run pauses
        (rolls back under the rollback policy); the weights are untouched."""
        self.overflows += 1
        self._overflow_streak += 1
        if self._overflow_streak < MAX_OVERFLOWS:
            return None
        self._overflow_streak = 0
        return Anomaly("overflow", step, step - MAX_OVERFLOWS + 1, "grad_norm", math.inf, None,
                       f"fp16 gradients overflowed {MAX_OVERFLOWS} steps in a row, down to loss scale "
                       f"{self.scaler.get_scale():.3g}: they are not finite at any scale")

    def _undo_forward(self) -> None:
        if self._buffers:
            torch._foreach_copy_(self._buffers, self._buffer_backup)
        self._drop_grads()

    def _zero_grads(self) -> None:
        if self._flat is not None:
            self._flat.zero()
        else:
            self.optimizer.zero_grad(set_to_none=True)

    def _drop_grads(self) -> None:
        self._zero_grads()
        if self.scaler is not None:  # forget the unscale_ of a step never taken; the scale stays as it was
            self.scaler._per_optimizer_states.clear()

    def _guard(self, loss: torch.Tensor, gnorm: torch.Tensor):
        """A non-finite loss or gradient must never be applied.

        On the CPU reading two scalars costs nothing: the sentinel judges them before the step. On
        CUDA there is no sync: the fused optimizer skips the step whose found_inf flag is set,
        BatchNorm buffers keep their backup, and the read-back judges the rows. Returns (loss, gnorm),
        as floats on the CPU path.
        """
        if self.sync_free:
            if self.scaler is None:  # one fused kernel sets the flag (and multiplies both by 1, exactly)
                self._found.zero_()
                torch._amp_foreach_non_finite_check_and_unscale_([loss, gnorm], self._found, self._one)
                self.optimizer.found_inf = self._found
                finite = self._found == 0 if self._buffers else None
            else:  # the scaler's step sets found_inf from the gradients (a non-finite loss has them too)
                finite = torch.isfinite(loss)
            for b, k in zip(self._buffers, self._buffer_backup):
                torch.where(finite, b, k, out=b)  # one kernel a buffer
            return loss, gnorm
        return loss.item(), gnorm.item()

    # --- the sentinel's decisions -----------------------------------------------------------------
    def _check_health(self) -> bool:
        """A sustained explosion, or NaN/inf anywhere in the state. True when training stops or
        moved (a pause or a rollback)."""
        a = self.sentinel.check_explosion(self.step) or self._broken()
        return a is not None and self._react(a, action(self.cfg.sentinel, a))

    def _broken(self) -> Anomaly | None:
        bad = self.health.bad()
        if not bad:
            self._sound_at = self.step
            return None
        return Anomaly("broken", self.step, self._sound_at + 1, "state", math.inf, None,
                       f"non-finite values after step {self.step} in {', '.join(bad[:3])}"
                       + (f" and {len(bad) - 3} more tensors" if len(bad) > 3 else ""), sound=False)

    def _react(self, a: Anomaly, act: str) -> bool:
        """Carry out the policy's decision about an anomaly, and record it. True unless the step
        that raised it goes on as usual (warn)."""
        start = min(self.sentinel.episode(a.step), a.start)
        if act == "skip" and self.sentinel.streak > MAX_STREAK:
            a = dataclasses.replace(a, sound=False, message=f"{a.message}; {MAX_STREAK} steps in a row were "
                                                             "anomalous, so skipping does not help")
            act = "rollback"
        data = {**a.to_dict(), "start": start, "action": act, "policy": self.cfg.sentinel}
        if act != "warn":
            self._sync_due = True  # every rank decides this alike (same values, same sentinel): all meet next
        if act == "rollback" and self.follower:  # rank 0 restores, and sends the weights at the sync
            self.state = "error"
            return True
        if act == "warn":
            if self.sentinel.streak == 1:  # one marker per run of anomalous steps
                self.journal.event(a.step, self.branch, "anomaly", a.message, data)
            return False
        if act == "skip":
            self.skipped += 1
            self._ckpt_at = None  # the data position moved past the skipped batch
            self.journal.event(a.step, self.branch, "skip_step",
                               f"update {a.step} not applied, its batch skipped: {a.message}", data)
        elif act == "rollback":
            self._rollback(a, start, data)
        else:
            self._pause_on(a, start, data)
        return True

    def _pause_on(self, a: Anomaly, start: int, data: dict, why: str = "") -> None:
        self.anomaly = dataclasses.replace(a, start=start)
        advice = ("The weights are still sound: change a hyperparameter and Resume, or Recover."
                  if a.sound else "The weights are not sound any more: Recover restores the last good checkpoint.")
        self.state, self.error = "error", f"{a.message}{why}. {advice}"
        self.journal.event(a.step, self.branch, "error", self.error, data)
        self._publish()

    def _rollback(self, a: Anomaly, start: int, data: dict) -> None:
        """PaLM's recipe: the newest checkpoint from before the anomaly, its batches up to the anomaly
        skipped, lr x rollback_lr_factor; one recorded event and a new branch."""
        if self.sentinel.rollbacks >= MAX_ROLLBACKS:
            return self._pause_on(a, start, data, f"; {MAX_ROLLBACKS} automatic rollbacks did not help")
        self.journal.flush()
        plan = recovery_plan(self.journal, self.branch, start, self.cfg.rollback_lr_factor,
                             most_skip=self.batches.batches_per_epoch(self.hp.batch_size))
        if plan is None:
            return self._pause_on(a, start, data, f"; no checkpoint before step {start} to roll back to")
        rollbacks = self.sentinel.rollbacks
        res = self._restore(plan["checkpoint"], {"lr": plan["lr"]} if plan["lr"] else {}, plan["skip_batches"],
                            "rollback", anomaly={**data, "plan": plan})
        if not res.ok:
            return self._pause_on(a, start, data, f"; the rollback failed: {res.message}")
        self.sentinel.rollbacks = rollbacks + 1
        self._publish()

    def _write_param_groups(self, hp: HParams, lr: float) -> None:
        for g in self.optimizer.param_groups:
            g["lr"], g["weight_decay"] = lr, hp.weight_decay
            if "betas" in g:
                g["betas"] = (hp.momentum, g["betas"][1])
            else:
                g["momentum"] = hp.momentum
        if hp.momentum and "betas" not in self.optimizer.defaults and (
                self.scaler is not None or self.sync_free or self._flat is not None):
            self._zero_momentum_buffers()
        self._written = (hp, lr)

    def _zero_momentum_buffers(self) -> None:
        """Fused SGD given found_inf on its first momentum step skips the update but keeps the buffers
        it allocated with torch.empty_like: garbage that the next step multiplies in. And once some
        parameters have buffers, a parameter reached for the first time later (an unused branch) makes
        fused SGD raise (a None among the buffers). Zeros give the same first step bit for bit
        (0.9 * 0 + g == g), survive a skipped one, and let the CPU's direct fused call run from step 1."""
        for p in self.params:
            st = self.optimizer.state[p]
            if st.get("momentum_buffer") is None:
                st["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)

    def _readback(self) -> None:
        """Move buffered step records to the journal; one device sync per batch of steps."""
        self._last_readback = time.perf_counter()
        if self.journal.error and self.state != "error":  # a failed write stops the run, visibly
            self._fail(f"{self.journal.error}; the run is paused and nothing written is lost yet "
                       "(rows are kept and retried). Free disk space or fix the run directory, then Resume.")
        if not self._pending:
            return
        rows, self._pending = self._pending, []
        if self.sync_free:
            rows = self._judge(rows)
            if not rows:
                return
        self._last_loss = rows[-1].loss
        self._last_scale = rows[-1].loss_scale
        now = time.perf_counter()
        if now - self._window[1] >= 0.5:  # wall-clock throughput over half a second or more
            self._sps = self._window[0] / (now - self._window[1])
            self._window = [0, now]
            if self.group is not None:
                self._rank_rates()
        self.journal.log_steps(rows)

    def _judge(self, rows: list[StepRow]) -> list[StepRow]:
        """The CUDA read-back: one sync for the batch of rows and the state check, then the sentinel
        judges them in order. A non-finite step was already skipped on the device (found_inf); any
        other anomaly was applied, so skip cannot undo it: it is recorded, or pauses or rolls back."""
        zero = torch.zeros((), device=self.device)
        flag = self.health.flag()  # whole-state NaN/inf, in the same sync
        def opt(v):
            return zero if v is None else torch.as_tensor(v).float()
        per_row = [v for r in rows for v in (r.loss.float(), r.grad_norm.float(), opt(r.update_ratio), opt(r.loss_scale))]
        *vals, sound = torch.stack([*per_row, (zero + 1 if flag is None else flag).float().reshape(())]).tolist()
        vals = [vals[i:i + 4] for i in range(0, len(vals), 4)]
        sound = sound == 1.0
        rows = [r._replace(loss=v[0], grad_norm=v[1], update_ratio=v[2] if r.update_ratio is not None else None,
                           loss_scale=v[3] if r.loss_scale is not None else None)
                for r, v in zip(rows, vals)]
        for r in rows:
            if self.scaler is not None and math.isfinite(r.loss) and not math.isfinite(r.grad_norm):
                a = self._overflowed(r.step)  # the scaler skipped it and lowered its scale: not an anomaly
                if a is None:
                    continue
                self.journal.log_steps(rows)
                self._react(a, action(self.cfg.sentinel, a))
                return []
            if self.scaler is not None:
                self._overflow_streak = 0
            a = self.sentinel.check_step(r.step, r.loss, r.grad_norm)
            if a is None:
                self.sentinel.accept_step(r.loss, r.grad_norm)
                self.sentinel.observe_loss(r.loss)
                a = self.sentinel.check_update(r.step, r.update_ratio) if r.update_ratio is not None else None
            if a is None:
                self.sentinel.calm()
                continue
            act = action(self.cfg.sentinel, a)
            if act == "warn" or a.kind != "nonfinite" and act == "skip":  # applied already: recorded
                self._react(a, "warn")
                continue
            if a.kind == "nonfinite" and act == "skip":  # the device skipped it already
                self.sentinel.episode(r.step)
                self.skipped += 1
                self.journal.event(r.step, self.branch, "skip_step", f"step {r.step} not applied: {a.message}",
                                   {**a.to_dict(), "action": "skip", "policy": self.cfg.sentinel})
                continue
            self.journal.log_steps(rows)
            self._react(a, act)
            return []
        later = self._broken() if not sound else self.sentinel.check_explosion(self.step)
        if later is not None:
            self.journal.log_steps(rows)
            self._react(later, action(self.cfg.sentinel, later))
            return []
        return rows

    @torch.no_grad()
    def _evaluate(self) -> None:
        """Validation in eval mode, so BatchNorm uses its running averages; train mode after."""
        was_training = self.model.training
        self.model.eval()
        try:
            out = {}
            # the train loss on as many items as the val set has (at most 2048): a like-for-like gap, and
            # an evaluation of charlm that costs seconds less
            most = min(2048, len(self.task.val_data)) if self.task.val_data is not None else 2048
            for prefix, ds, limit in (("val", self.task.val_data, None), ("train", self.task.train_data, most)):
                if ds is not None:
                    out.update({f"{prefix}_{k}": v for k, v in self._means(ds, limit, self.task.metrics).items()})
            if self.task.grid is not None:
                g = self.task.grid(self.model, self.device)
                self._grid = Grid(self.step, tuple(g["axis"]), frozen_array(g["probs"]))
            if self.task.show is not None:
                out.update(_shown(self.task.show(self.model, self.device)))
        finally:
            self.model.train(was_training)
        self.last_val = out.get("val_loss")
        if self.last_val is not None and (self.best_val is None or self.last_val < self.best_val):
            self.best_val = self.last_val
        self._eval = {"step": self.step, **out}
        extra = {k: v for k, v in out.items() if k not in ("val_loss", "val_acc", "train_loss", "train_acc")}
        self.journal.log_eval(EvalRow(self.branch, self.step, self.batches.epoch, out.get("val_loss"),
                                      out.get("val_acc"), out.get("train_loss"), out.get("train_acc"),
                                      json.dumps(extra) if extra else None, time.time()))

    def _publish(self) -> None:
        """Swap in a new Status: the only thing other threads read of the run's live state."""
        hp = self.hp
        self._version += 1
        self._published_at = time.perf_counter()
        if self.follower and self._status is not None:  # nobody reads a follower's
            return
        if self._plan is not None:  # the main run as it was when the probe began, and the probe's progress
            self._status = dataclasses.replace(self._main_status, state="probing", accepts=ACCEPTS["probing"],
                                               version=self._version, probe=self._probe_status())
            return
        self._status = Status(
            state=self.state, error=self.error, step=self.step, epoch=self.batches.epoch,
            epoch_progress=self.batches.offset / self.n_train,
            steps_per_epoch=self.batches.batches_per_epoch(hp.batch_size), branch=self.branch, hparams=hp,
            effective_lr=decayed_lr(hp, self.batches.epoch - self.lr_set_epoch, self.step + 1), loss=self._last_loss,
            samples_per_s=self._sps, max_steps=self.cfg.max_steps, last_checkpoint=self.last_checkpoint,
            eval=frozen_map(self._eval), grid=self._grid, accepts=ACCEPTS[self.state], run=self.info,
            version=self._version, anomaly=frozen_map(self.anomaly.to_dict() if self.anomaly else None),
            sentinel=frozen_map({"policy": self.cfg.sentinel, "window": self.cfg.sentinel_window,
                                 "sigma": self.cfg.sentinel_sigma, "lr_factor": self.cfg.rollback_lr_factor}),
            skipped=self.skipped, memory=memory_bytes(self.device), probe=None, loss_scale=self._last_scale,
            overflows=self.overflows, compile_s=self.compile_s, ranks=self.ranks)

    # --- commands, applied by the training thread between steps -------------------------------
    def _take_commands(self) -> bool:
        """Apply queued commands; block unless running. False once the trainer is closed.

        The lock is held only to take commands off the queue, never while they are applied.
        """
        ddp = self.group is not None and not self.group.lost
        if self.state in ("running", "probing") and not (self._sync_due if ddp else self._cmds):  # the fast path
            return True
        if ddp and not self._sync_due:  # the followers are inside a step's all-reduce: free them first
            ddp = self._collective(self._release)
        while True:
            with self._cond:
                cmds = list(self._cmds)
                self._cmds.clear()
                self._applying = bool(cmds)
            results = []
            ddp = ddp and self._collective(self._meet)  # a sync round: what every rank holds, before commands
            if cmds:
                self._unpark_rng()
                self._in_round = ddp  # checkpoints take the other ranks' RNG states from this round
                try:
                    results = [self._apply(cmd) for cmd in cmds]
                finally:
                    self._in_round = False
                try:  # a command's result is given once what it did is in the journal
                    self.journal.flush()
                except JournalError as e:
                    if self.state not in ("error", "closed"):
                        self._fail(str(e))
                self._publish()
            if ddp:  # every rank leaves the round with rank 0's state (and weights, when they jumped)
                ddp = self._collective(self._send_orders)
            for cmd, res in zip(cmds, results):
                cmd.finish(res)
            with self._cond:
                self._applying = False
                if self._cmds:
                    continue
                if self.state in ("running", "probing"):
                    self._unpark_rng()
                    return True
                self._cond.notify_all()  # for wait(): training has come to rest
                if self.state == "closed":
                    return False
                self._park_rng()
                self._cond.wait()

    def _park_rng(self) -> None:
        # Other work in this process (building another run) may reseed the global RNGs while this
        # run rests; it takes its own streams back before it works again.
        if self._rng_parked is None:
            self._rng_parked = snapshot.rng_state()

    def _unpark_rng(self) -> None:
        if self._rng_parked is not None:
            snapshot.set_rng_state(self._rng_parked)
            self._rng_parked = None

    def _reject_queued(self, why: str) -> None:
        while self._cmds:
            self._cmds.popleft().finish(Result(False, self.step, why))

    def _apply(self, cmd: Command) -> Result:
        if cmd.kind not in ("open", "close") and cmd.kind not in ACCEPTS[self.state]:
            return Result(False, self.step, f"{cmd.kind}: not possible while the run is {self.state}; "
                                            f"possible: {', '.join(sorted(ACCEPTS[self.state])) or 'nothing'}")
        fn = getattr(self, f"_cmd_{cmd.kind}")
        try:
            inspect.signature(fn).bind(**cmd.args)
        except TypeError as e:
            return Result(False, self.step, f"bad arguments for {cmd.kind}: {e}")
        try:
            return fn(**cmd.args)
        except Exception as e:  # a command must never take the training thread down
            self._event("error", f"{cmd.kind} failed: {type(e).__name__}: {e}", {"traceback": traceback.format_exc()})
            return Result(False, self.step, f"{cmd.kind} failed: {type(e).__name__}: {e}")

    def _cmd_pause(self) -> Result:
        self._readback()
        self.state = "paused"
        self._event("pause", f"paused after step {self.step}")
        return Result(True, self.step + 1)

    def _cmd_start(self) -> Result:
        if self.cfg.max_steps and self.step >= self.cfg.max_steps:
            return Result(False, self.step, f"the step limit {self.cfg.max_steps} is reached; raise it first")
        return self._run("start", f"training started at step {self.step + 1}")

    def _cmd_resume(self) -> Result:
        if self.journal.error:
            return Result(False, self.step, f"{self.journal.error} (still failing; fix the disk, then Resume)")
        if self.anomaly is not None and not self.anomaly.sound and self.health.bad():
            return Result(False, self.step, "the weights hold NaN or inf, so training cannot go on from them: "
                                            "Recover (restore a checkpoint from before the anomaly) instead")
        self.sentinel.human_acted(False)
        return self._run("resume", f"resumed at step {self.step + 1}")

    def _run(self, kind: str, message: str) -> Result:
        self.state, self.error, self.anomaly = "running", None, None
        self._window = [0, time.perf_counter()]
        self._event(kind, message)
        return Result(True, self.step + 1)

    def _cmd_close(self) -> Result:
        if self._plan is not None:
            self._end_probe(cancelled=True)
        self._final_checkpoint()  # so a reopened run continues exactly where it was closed
        self._readback()
        self._event("close", f"closed at step {self.step}")
        self.state = "closed"
        with self._cond:  # from here on every command is answered at once
            self._accepting = False
            self._reject_queued("the trainer is closed")
        return Result(True, self.step)

    def _cmd_stop(self) -> Result:
        if self.group is not None and self.group.lost:  # the job is over: its error stays the run's last word
            return Result(True, self.step)
        self._finish("stopped", f"stopped at step {self.step}")
        return Result(True, self.step)

    def _cmd_set_max_steps(self, max_steps: int) -> Result:
        if isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 0:
            return Result(False, self.step, f"max_steps: must be an integer >= 0 (0 = no limit), got {max_steps!r}")
        self.cfg = self.cfg.replace(max_steps=max_steps)
        self.journal.set_meta("config", self.cfg.to_dict())
        self._event("limit", f"step limit set to {max_steps or 'none'}")
        return Result(True, self.step + 1)

    def _cmd_set_hparams(self, changes: dict) -> Result:
        try:
            new = validate(self.hp, changes, dataset_size=self.n_train, nesterov=self.cfg.nesterov)
        except HParamError as e:
            return Result(False, self.step, str(e))
        if self._fits_world(new):
            return Result(False, self.step, self._fits_world(new))
        changed = new != self.hp or "lr" in changes
        self._change_hparams(new, set_lr="lr" in changes)
        self.sentinel.human_acted(changed)
        return Result(True, self.step + 1)

    def _cmd_set_sentinel(self, policy: str | None = None, window: int | None = None,
                          sigma: float | None = None) -> Result:
        """The sentinel's policy and statistics, live (stored in the run's config)."""
        kw = {k: v for k, v in (("sentinel", policy), ("sentinel_window", window), ("sentinel_sigma", sigma))
              if v is not None}
        try:
            cfg = self.cfg.replace(**kw)
        except (ConfigError, TypeError) as e:
            return Result(False, self.step, str(e))
        self.cfg = cfg
        self.sentinel.configure(cfg.sentinel_window, float(cfg.sentinel_sigma))
        self.journal.set_meta("config", cfg.to_dict())
        self._event("sentinel", f"sentinel: {cfg.sentinel}, {cfg.sentinel_sigma:g} sigma over {cfg.sentinel_window} "
                                "steps", {"policy": cfg.sentinel, "window": cfg.sentinel_window,
                                          "sigma": cfg.sentinel_sigma})
        return Result(True, self.step + 1)

    def _change_hparams(self, new: HParams, set_lr: bool) -> None:
        old = self.hp
        if set_lr and self.lr_set_epoch != self.batches.epoch:
            self.lr_set_epoch = self.batches.epoch  # the lr the user sets is alpha0 from this step on,
            self._ckpt_at = None                    # even the same lr: its decay starts again
        self.hp = new
        if new != old:
            self._ckpt_at = None  # the live state now differs from the last checkpoint's
        for k, v in to_dict(new).items():
            if v != getattr(old, k):
                self._event("hparams", f"{k} {_fmt(getattr(old, k))} → {_fmt(v)}",
                            {"field": k, "old": getattr(old, k), "new": v, "at_step": self.step + 1})

    def _cmd_skip(self, batches: int) -> Result:
        err = self._check_skip(batches)
        if err:
            return Result(False, self.step, err)
        self.batches.skip(batches, self.hp.batch_size)
        self._ckpt_at = None
        self._event("skip", f"skipped the next {batches} batches")
        return Result(True, self.step + 1)

    def _check_skip(self, k: Any, batch_size: int | None = None) -> str | None:
        # Skipping is for stepping over the few batches around a loss spike (PaLM skipped 200-500);
        # more than an epoch's worth means nothing and would take a long time.
        most = self.batches.batches_per_epoch(batch_size or self.hp.batch_size)
        if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k <= most:
            return f"skip_batches: must be an integer from 0 to {most} (one epoch of batches), got {k!r}"
        return None

    def _cmd_save(self, label: str | None = None) -> Result:
        if label is not None and (not isinstance(label, str) or len(label) > MAX_TEXT):
            return Result(False, self.step, f"label: must be text of at most {MAX_TEXT} characters")
        cid = self._checkpoint("manual", label or None)
        return Result(True, self.step, value=cid)

    def _cmd_restore(self, checkpoint: int, hparams: dict | None = None, skip_batches: int = 0) -> Result:
        res = self._restore(checkpoint, hparams or {}, skip_batches, "restore")
        if res.ok:
            self.sentinel.human_acted(True)
        if res.ok and self.state == "error":
            self.state, self.error = "paused", None
        return res

    def _cmd_open(self, branch: int, checkpoint: int | None, hparams: dict, skip: int, config_changed: bool) -> Result:
        """Reopen after a restart (Trainer.open): state from the checkpoint, then the journal's records."""
        self.branch = branch
        try:
            row = resume_point(self.journal, branch, checkpoint)
        except CheckpointError as e:
            return Result(False, self.step, str(e))
        if row is not None:
            res = self._restore(row["id"], hparams, skip, "resume")
        else:  # killed before its first checkpoint: the fresh state is step 0 of this run
            res = self._restore(None, hparams, skip, "restart")
        if res.ok and config_changed:
            self.journal.set_meta("config", self.cfg.to_dict())
        if res.ok:
            self.journal.set_meta("run_info", self._run_info())
            self._announce_group()
        return res

    def _restore(self, cid: Any, changes: dict, skip: Any, reason: str, anomaly: dict | None = None) -> Result:
        """Load a checkpoint (None: the state this trainer was built in, step 0) and continue from it.

        Everything is checked before anything changes; a failed load rolls back to where we were.
        """
        if cid is not None and (isinstance(cid, bool) or not isinstance(cid, int)):
            return Result(False, self.step, f"checkpoint: expected an integer id, got {cid!r}")
        if isinstance(skip, bool) or not isinstance(skip, int) or skip < 0:
            return Result(False, self.step, f"skip_batches: must be an integer >= 0, got {skip!r}")
        try:
            snap = self.store.load(cid) if cid is not None else self._capture()
            base = validate(HParams(), snap["hparams"], dataset_size=self.n_train, nesterov=self.cfg.nesterov)
            new = validate(base, changes, dataset_size=self.n_train, nesterov=self.cfg.nesterov)
        except (CheckpointError, HParamError) as e:
            return Result(False, self.step, str(e))
        err = self._check_skip(skip, new.batch_size) or self._fits_world(new)
        if err:
            return Result(False, self.step, err)
        self._readback()
        here = self._capture()
        self._written = None  # the loaded param_groups hold the checkpoint's settings: ours are written anew
        try:
            self._load(snap)
        except Exception as e:
            self._load(here)
            return Result(False, self.step, f"checkpoint {cid}: does not fit this run ({type(e).__name__}: {e})")
        old_branch, fork_step = self.branch, self.step
        ck_branch = snap["lineage"]["branch"] if cid is not None else old_branch
        self.journal.flush()  # the abandoned path's last rows must be in the journal to compare
        on_mine = self.journal.on_lineage(ck_branch, fork_step, self.journal.lineage(old_branch))
        if not on_mine or self.journal.last_step(old_branch) > fork_step:  # keep the path we leave
            self.branch = 1 + max(b["id"] for b in self.journal.branches())
            self.journal.add_branch(self.branch, ck_branch, fork_step, reason, cid)
            self.journal.set_meta("branch", self.branch)
        self._ckpt_at = (self.branch, self.step)
        self.last_checkpoint = cid
        self._eval, self._grid = None, None  # the abandoned path's picture no longer describes the model
        where = f"checkpoint {cid} (step {fork_step}, branch {ck_branch})" if cid is not None else "step 0"
        if reason == "rollback":  # the sentinel's: one event says what, why and where to
            ck = snap["counters"]["step"]
            self._event("rollback", f"rollback after the anomaly at step {anomaly['step']}: checkpoint {cid} "
                                    f"(step {ck}), skipping {skip} batches, lr {_fmt(new.lr)}"
                                    + (f", onto new branch {self.branch}" if self.branch != old_branch else ""),
                        {**anomaly, "checkpoint": cid, "old_branch": old_branch, "branch": self.branch,
                         "fork_step": fork_step, "skip_batches": skip})
        elif reason == "restore":  # a rollback: drawn as a marker
            self._event("restore", f"restore from {where}" + (f" onto new branch {self.branch}"
                                                                 if self.branch != old_branch else ""),
                        {"checkpoint": cid, "old_branch": old_branch, "branch": self.branch, "fork_step": fork_step})
        else:  # reopening is not a rollback
            self._event("open", f"reopened at {where}" + ("; no checkpoint was saved before the run stopped, so it "
                                                          "starts again from step 0" if cid is None else "")
                        + (f", on new branch {self.branch}" if self.branch != old_branch else ""),
                        {"checkpoint": cid, "branch": self.branch})
        self._change_hparams(new, set_lr="lr" in changes)
        if skip:
            self.batches.skip(skip, self.hp.batch_size)
            self._ckpt_at = None
            if reason != "rollback":
                self._event("skip", f"skipped the next {skip} batches")
        return Result(True, self.step + 1, message=where, value=self.branch)

    # --- probes: short side runs from the live state (trainer/probe.py plans and scores them) ------
    def _cmd_probe(self, samples: int = 6, steps: int = 200, lr_range: Any = None, momentum_range: Any = None,
                   seed: int | None = None) -> Result:
        """k side runs of n steps from this state, lr log-uniform in lr_range (default: lr / 10 to
        lr x 10), momentum as 1 - 10^r in momentum_range if given; then back here, exactly."""
        try:
            lrs, moms = probe.check_plan(samples, steps, lr_range or (self.hp.lr / 10, self.hp.lr * 10),
                                         momentum_range)
            if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
                raise ProbeError(f"seed: expected an integer, got {seed!r}")
        except ProbeError as e:
            return Result(False, self.step, str(e))
        if moms is not None and self.cfg.nesterov and moms[0] == 0:
            return Result(False, self.step, "momentum_range: must be above 0 with Nesterov")
        settings = probe.sample(samples, lrs, moms, self.cfg.seed * 1_000_003 + self.step if seed is None else seed)
        return self._begin_probe("probe", settings, steps, lrs, moms)

    def _cmd_lr_find(self, lo: float = 1e-7, hi: float = 10.0, steps: int = 100) -> Result:
        """The LR range test: one side run whose lr grows exponentially from lo to hi over `steps`
        steps, stopped early once the loss exceeds 4x its minimum; then back here, exactly."""
        try:
            lrs, _ = probe.check_plan(1, steps, (lo, hi), None)
        except ProbeError as e:
            return Result(False, self.step, str(e))
        return self._begin_probe("lr_find", [{}], steps, lrs, None)

    def _cmd_cancel(self) -> Result:
        self._end_probe(cancelled=True)
        return Result(True, self.step + 1)

    def _begin_probe(self, kind: str, settings: list[dict], steps: int, lrs: tuple, moms: tuple | None) -> Result:
        if self.group is not None:
            return Result(False, self.step, f"{kind}: not available in a data-parallel run yet; resume the run in one "
                                            "process to probe it")
        self._readback()
        if self.state == "error":  # the read-back judged a step (CUDA) and stopped the run: no probe from there
            return Result(False, self.step, f"{kind}: not possible: {self.error}")
        self.journal.flush()
        self._publish()
        self._main_status = self._status
        self._kept = (self.branch, self.state, self._ckpt_at, self._eval, self._grid, self._last_loss, self.skipped)
        self._plan = Plan(kind, settings, steps, self.step, self.branch, self.state, self._capture(), lrs, moms,
                          time.monotonic())
        self.state = "probing"
        return Result(True, self.step + 1, value={"kind": kind, "settings": settings, "steps": steps})

    def _probe_tick(self) -> None:
        """One step of the side run under way (it starts from the base snapshot on its own branch)."""
        p = self._plan
        if p.branch is None:
            self._load(p.base)
            self._written = None
            p.branch = 1 + max(b["id"] for b in self.journal.branches())
            self.branch = p.branch
            self.journal.add_branch(p.branch, p.main_branch, p.start_step, p.kind, None)
            self.journal.flush()
            changes = p.settings[p.index]
            if changes:  # as set_hparams would set them on the main run: Adopt then follows this curve
                if "lr" in changes:
                    self.lr_set_epoch = self.batches.epoch
                self.hp = validate(self.hp, changes, dataset_size=self.n_train, nesterov=self.cfg.nesterov)
            p.losses, p.lrs, p.done_steps = [], [], 0
        lr = (probe.range_lr(p.done_steps, p.steps, *p.lr_range) if p.kind == "lr_find"
              else decayed_lr(self.hp, self.batches.epoch - self.lr_set_epoch, self.step + 1))
        loss = self._side_step(lr)
        p.losses.append(loss)
        p.lrs.append(lr)
        p.done_steps += 1
        if not math.isfinite(loss) or p.done_steps == p.steps or p.kind == "lr_find" and probe.diverged(p.losses, p.steps):
            self._end_side_run(not math.isfinite(loss))
        elif time.perf_counter() - self._last_readback >= READBACK_S:
            self._last_readback = time.perf_counter()
            self.journal.log_steps(self._pending)
            self._pending = []
            self._publish()

    def _side_step(self, lr: float) -> float:
        """The math of _train_step (same ops, same order), with no sentinel, instruments, evaluation
        or checkpoint: a side run that adopts its settings on the main run draws the same curve."""
        hp = self.hp
        if self._written is None or hp is not self._written[0] or lr != self._written[1]:
            self._write_param_groups(hp, lr)
        t0 = time.perf_counter()
        (x, y), _ = self.batches.next(hp.batch_size)
        loss = self._loss(self.forward, x, y)
        loss, gnorm = self._backward(loss, hp.grad_clip)
        lv, gv = loss.item(), gnorm.item()
        overflow = self.scaler is not None and math.isfinite(lv)  # the scaler skips that step itself
        if not (math.isfinite(lv) and (math.isfinite(gv) or overflow)):
            self._drop_grads()
            return math.inf if math.isfinite(lv) else lv
        scale = self._step()
        self.step += 1
        dt = time.perf_counter() - t0
        self._pending.append(StepRow(self.branch, self.step, self.batches.epoch + self.batches.offset / self.n_train,
                                     lv, lr, hp.momentum, hp.weight_decay, hp.batch_size, gv,
                                     len(y) / dt if dt > 0 else 0.0, time.time(), None, scale))
        return lv

    def _end_side_run(self, diverged: bool) -> None:
        p = self._plan
        self.journal.log_steps(self._pending)
        self._pending = []
        val = None if diverged or p.kind == "lr_find" else self._val_loss()
        if val is not None:
            self.journal.log_eval(EvalRow(self.branch, self.step, self.batches.epoch, val, None, None, None, None,
                                          time.time()))
        finite = [v for v in p.losses if math.isfinite(v)]
        r = {**p.settings[p.index], "branch": p.branch, "steps": len(finite), "diverged": diverged,
             "score": _finite(probe.score(p.losses)) if p.kind == "probe" else None, "val_loss": val,
             "last_loss": finite[-1] if finite else None}
        if p.kind == "lr_find":
            r.update(probe.suggestions(p.lrs[:len(finite)], finite), stopped_early=len(p.losses) < p.steps)
        p.results.append(r)
        p.index, p.branch = p.index + 1, None
        if p.index == len(p.settings):
            self._end_probe()
        else:
            self._publish()

    def _end_probe(self, cancelled: bool = False, error: str | None = None) -> None:
        """Put the main run back exactly as it was, and record what the probe found."""
        p = self._plan
        if p is None:
            return
        self._pending = []
        self._load(p.base)
        self._written = None
        self.branch, self.state, self._ckpt_at, self._eval, self._grid, self._last_loss, self.skipped = self._kept
        self._plan, self._kept = None, None
        ranked = probe.rank(p.results) if p.kind == "probe" else p.results
        secs = time.monotonic() - p.started
        data = {"kind": p.kind, "start_step": p.start_step, "branch": p.main_branch, "steps": p.steps,
                "samples": len(p.settings), "lr_range": list(p.lr_range),
                "momentum_range": list(p.momentum_range) if p.momentum_range else None, "results": ranked,
                "cancelled": cancelled, "error": error, "seconds": secs}
        what = "probe" if p.kind == "probe" else "LR range test"
        if error:
            msg = f"{what} from step {p.start_step} failed: {error}"
        elif cancelled:
            msg = f"{what} from step {p.start_step} cancelled after {len(p.results)} of {len(p.settings)} side runs"
        elif p.kind == "probe":
            best = ranked[0]
            msg = (f"probe of {len(p.settings)} settings x {p.steps} steps from step {p.start_step}: best lr "
                   f"{best['lr']:.3g}" + (f", momentum {best['momentum']:.4g}" if "momentum" in best else "")
                   + f" (score {best['score']:.4g})")
        elif p.results[0]["min_div10"] is None:
            msg = (f"LR range test from step {p.start_step}: the loss did not fall by {probe.MIN_DROP:.0%} anywhere "
                   f"from lr {p.lr_range[0]:.3g} to {p.lr_range[1]:.3g}, so it suggests nothing (on a trained "
                   "model it can only rise: run it near the start, or probe around the current lr)")
        else:
            r = p.results[0]
            msg = (f"LR range test from step {p.start_step}: steepest descent at lr {_fmt3(r['steepest'])}, "
                   f"minimum / 10 at {_fmt3(r['min_div10'])}")
        self._event(p.kind, msg, data)
        self.journal.flush()  # the result is in the journal before anyone is told the probe ended
        self._publish()

    def _probe_status(self) -> dict:
        p = self._plan
        return frozen_map({"kind": p.kind, "index": p.index, "samples": len(p.settings), "step": p.done_steps,
                           "steps": p.steps, "progress": p.progress(), "eta_s": p.eta(time.monotonic()),
                           "start_step": p.start_step, "branch": p.branch,
                           "results": tuple(frozen_map(r) for r in p.results)})

    @torch.no_grad()
    def _val_loss(self) -> float | None:
        """The validation loss in eval mode (BatchNorm's running averages), as _evaluate computes it."""
        if self.task.val_data is None:
            return None
        was = self.model.training
        self.model.eval()
        try:
            return self._means(self.task.val_data, None, {})["loss"]
        finally:
            self.model.train(was)

    def _means(self, ds, limit: int | None, metrics: dict) -> dict[str, float]:
        """The loss and these metrics over ds (its first `limit` items), per item; the caller sets eval mode."""
        tot, sums = 0, collections.defaultdict(float)
        for x, y in all_batches(ds, 512, self.device, limit):
            with self._autocast():  # evaluated at the run's precision
                o = self.model(x)
                n = len(y)
                tot += n
                sums["loss"] += float(self.task.loss(o, y)) * n
                for name, fn in metrics.items():
                    sums[name] += float(fn(o, y)) * n
        return {k: v / tot for k, v in sums.items()}


    # --- data parallel (torchrun): rank 0 leads, the others follow ---------------------------------
    def _follow(self) -> None:
        """A follower's life: meet rank 0 at each sync round, take its orders, and step in lockstep
        until the next round is due (commands, a shared decision, or an aborted step)."""
        while True:
            try:
                self._meet()
                self._obey(self.group.broadcast(None))
            except PeerLost as e:
                return self._lose(e)
            if self.state == "closed":
                return
            while self.state == "running" and not self._sync_due:
                if self.cfg.max_steps and self.step >= self.cfg.max_steps:  # as rank 0's loop does
                    self._finish("done", f"reached the step limit {self.cfg.max_steps}")
                    break
                try:
                    self._train_step()
                except Aborted:
                    self._sync_due = True
                except PeerLost as e:
                    return self._lose(e)
                except Diverged as e:
                    self._fail(str(e))
                    self._sync_due = True
                except Exception as e:  # told to rank 0 at the sync; the others are freed from their step
                    self._local_error = f"{type(e).__name__}: {e}"
                    if not self._sync_due:
                        if not self._collective(self._release):
                            return
                        self._sync_due = True

    def _announce_group(self) -> None:
        if self.group is not None:
            g = self.group
            self._event("ddp", f"data parallel: {g.world} ranks ({self.info.backend}), batch {self.hp.batch_size} "
                               f"split {self.hp.batch_size // g.world} per rank",
                        {"world": g.world, "backend": self.info.backend, "peers": [vars(p) for p in g.peers]})

    def _collective(self, fn) -> bool:
        """Run one of the sync collectives; False (and the run ends, failed) when a rank is lost."""
        try:
            fn()
            return True
        except PeerLost as e:
            self._lose(e)
            return False

    def _reduce(self, loss: torch.Tensor) -> torch.Tensor:
        """The step's one collective: every gradient (already weighted by this rank's share of the
        global batch), the float buffers, the loss and the control words, summed in one flat buffer.
        A NaN on any rank reaches every rank, so all skip or pause together. Returns the global loss;
        raises Aborted when a rank gave the step up."""
        g, ctl = self.group, self._control()
        grads = []
        for p in self.params:
            if p.grad is None:  # an unused parameter: zeros keep every rank's buffer the same shape
                p.grad = torch.zeros_like(p)
            grads.append(p.grad)
        flat = torch.cat([t.reshape(-1).float() for t in grads] + [b.reshape(-1).float() for b in self._float_buffers]
                         + [loss.reshape(1).float(), ctl])  # fp32 throughout: every rank's buffer alike
        g.reduce(flat)
        tail = flat[self._numel:].tolist()  # the control words decide before the update (on CUDA: one sync)
        if tail[dist.ABORT]:
            raise Aborted("a rank gave up this step")
        self._sync_due = tail[dist.CMD] > 0
        self._account(tail[2:])
        o = 0
        for t in grads:
            t.copy_(flat[o:o + t.numel()].view(t.shape))
            o += t.numel()
        for b in self._float_buffers:  # each rank's running statistics, averaged: the replicas stay equal
            b.copy_((flat[o:o + b.numel()] / g.world).view(b.shape))
            o += b.numel()
        return flat[o]

    def _control(self, abort: bool = False) -> torch.Tensor:
        """[rank 0 has commands, abort, each rank's busy seconds this step, each rank's memory]."""
        w, r = self.group.world, self.group.rank
        v = [0.0] * (2 + 2 * w)
        v[dist.CMD] = float(r == 0 and bool(self._cmds))
        v[dist.ABORT] = float(abort)
        v[2 + r] = time.perf_counter() - self._t_step if not abort else 0.0
        v[2 + w + r] = float(memory_bytes(self.device))
        return torch.tensor(v, device=self.device)

    def _release(self) -> None:
        """Join the all-reduce the other ranks wait in with an abort: every rank undoes its step and
        comes to the sync (this rank stopped on its own: an error, a failed write)."""
        flat = torch.cat([torch.zeros(self._numel, device=self.device), self._control(abort=True)])
        self.group.reduce(flat)

    def _account(self, tail: list[float]) -> None:
        w = self.group.world
        if self._rank_acc is None:
            self._rank_acc = [0, [0.0] * w, [0.0] * w, time.perf_counter()]  # steps, busy s, memory, since
        acc = self._rank_acc
        acc[0] += 1
        acc[1] = [a + b for a, b in zip(acc[1], tail[:w])]
        acc[2] = tail[w:2 * w]

    def _rank_rates(self) -> None:
        """Per-rank samples/s (of its own busy time, so a slow rank shows) and memory, from the steps
        since the last call; rank 0 publishes them."""
        acc = self._rank_acc
        if self.follower or acc is None or acc[0] == 0:
            return
        w, wall = self.group.world, time.perf_counter() - acc[3]
        per_step = self.hp.batch_size / w
        self.ranks = tuple(frozen_map({"rank": r, "samples_per_s": acc[0] * per_step / b if b > 0 else 0.0,
                                       "busy": min(1.0, b / wall) if wall > 0 else 0.0, "memory": int(m)})
                           for r, (b, m) in enumerate(zip(acc[1], acc[2])))
        self._rank_acc = None

    def _meet(self) -> None:
        """A sync round's first half: rank 0 gathers each rank's step, RNG state, weights digest and
        error, and checks that the replicas agree (unless rank 0's weights just jumped)."""
        info = {"step": self.step, "rng": snapshot.rng_state(), "error": self._local_error,
                "digest": dist.digest(self.model) if self.follower or not self._jumped else None}
        infos = self.group.gather(info)
        self._local_error = None
        if self.follower:
            return
        self._peer_rngs = [i["rng"] for i in infos[1:]]
        for r, i in enumerate(infos[1:], 1):
            why = (f"rank {r} failed: {i['error']}" if i["error"] else
                   None if self._jumped else  # (a rollback moved rank 0; the orders move the others)
                   f"rank {r} is at step {i['step']}, rank 0 at {self.step}" if i["step"] != self.step else
                   f"rank {r}'s weights differ from rank 0's after step {self.step}"
                   if info["digest"] is not None and i["digest"] != info["digest"] else None)
            if why:
                self._jumped = True  # the next orders carry rank 0's weights: Resume starts the replicas equal
                if self.state not in ("error", "closed"):
                    self._fail(why + "; the run is paused on every rank")
                else:
                    self._event("replicas", why)

    def _send_orders(self) -> None:
        """A sync round's second half: rank 0's state to every rank, with its weights when they jumped."""
        hp = to_dict(self.hp)
        o = {"state": self.state, "error": self.error, "step": self.step, "samples": self.samples,
             "train_time": self.train_time, "branch": self.branch, "ckpt_at": self._ckpt_at, "hp": hp,
             "lr_set_epoch": self.lr_set_epoch, "data": self.batches.state(), "cfg": self.cfg.to_dict(),
             "sentinel": self.sentinel.state_dict(), "skipped": self.skipped, "sound_at": self._sound_at,
             "last_checkpoint": self.last_checkpoint}
        if self._jumped:
            o["snapshot"] = {**self._capture(), "ranks": self._jump_ranks}
        self.group.broadcast(o)
        self._jumped, self._jump_ranks, self._sync_due = False, None, False

    def _obey(self, o: dict) -> None:
        """A follower takes rank 0's orders: its weights when sent, then every field decisions read."""
        if "snapshot" in o:
            snap = o["snapshot"]
            self._load(snap)
            ranks, r = snap.get("ranks"), self.group.rank
            if ranks and len(ranks) == self.group.world - 1:
                snapshot.set_rng_state(ranks[r - 1])
            else:  # a snapshot from another world size (or none yet): fresh streams for this rank
                torch.manual_seed(self.cfg.seed * 1_000_003 + r + 7919 * int(snap["counters"]["step"]))
        cfg = RunConfig.from_dict(o["cfg"])
        if cfg != self.cfg:
            self.cfg = cfg
            self.sentinel.configure(cfg.sentinel_window, float(cfg.sentinel_sigma))
        self.sentinel.load_state_dict(o["sentinel"])
        self.hp = validate(HParams(), o["hp"], dataset_size=self.n_train, nesterov=cfg.nesterov)
        self.lr_set_epoch = int(o["lr_set_epoch"])
        if self.batches.state()["epoch"] != o["data"]["epoch"] or self.batches.position()[1:] != (
                o["data"]["offset"], o["data"]["batch_index"]):
            self.batches.load_state(o["data"])
        self.step, self.samples, self.train_time = o["step"], o["samples"], o["train_time"]
        self.branch, self._ckpt_at, self.skipped = o["branch"], o["ckpt_at"], o["skipped"]
        self._sound_at, self.last_checkpoint = o["sound_at"], o["last_checkpoint"]
        self.state, self.error = o["state"], o["error"]
        self._written, self._sync_due, self._local_error = None, False, None
        self.health.invalidate()

    def _lose(self, e: PeerLost) -> None:
        """A rank is gone: the job cannot step any more. Rank 0 records it and fails the run (Resume
        works from the last checkpoint, on one process or a new torchrun); a follower ends."""
        if self.follower:
            print(f"rank {self.group.rank}: {e}; this rank ends", file=sys.stderr)
            self.state = "closed"
            return
        msg = (f"{e}: the data-parallel job ended at step {self.step}. Resume the run from its last checkpoint "
               "(in one process, or torchrun again)")
        self.state, self.error = "error", msg
        self._event("rank_lost", msg, {"world": self.group.world, "peers": [vars(p) for p in self.group.peers]})
        try:
            self.journal.flush()  # torchrun ends this process soon after a rank dies
        except JournalError:
            pass
        self._publish()

    # --- checkpoints ----------------------------------------------------------------------------
    def _capture(self) -> dict:
        extra = {} if self.scaler is None else {"scaler": self.scaler.state_dict()}  # its scale and growth count
        if self.group is not None and not self.follower and self._peer_rngs is not None:
            extra["ranks"] = self._peer_rngs  # the other ranks' RNG states (data positions are all rank 0's)
        return snapshot.capture(
            self.model, self.optimizer, self.batches,
            schedule={"lr_set_epoch": self.lr_set_epoch},
            counters={"step": self.step, "samples": self.samples, "train_time": self.train_time,
                      "best_val": self.best_val, "last_val": self.last_val, "overflows": self.overflows},
            hparams=to_dict(self.hp), lineage={"branch": self.branch, "parent_checkpoint": self.last_checkpoint},
            sentinel=self.sentinel.state_dict(), **extra)

    def _load(self, s: dict) -> None:
        """The mirror of _capture()."""
        if self.scaler is not None and "scaler" not in s:  # checked before anything changes
            raise CheckpointError("this checkpoint has no loss-scaler state: it was not saved by an fp16 run")
        snapshot.restore(self.model, self.optimizer, self.batches, s)
        self.lr_set_epoch = int(s["schedule"]["lr_set_epoch"])
        c = s["counters"]
        self.step, self.samples, self.train_time = int(c["step"]), int(c["samples"]), float(c["train_time"])
        self.best_val, self.last_val = c["best_val"], c["last_val"]
        self.overflows = int(c.get("overflows", 0))
        if self.scaler is not None:
            self.scaler._per_optimizer_states.clear()
            self.scaler.load_state_dict(s["scaler"])
        self.hp = validate(HParams(), s["hparams"], dataset_size=self.n_train, nesterov=self.cfg.nesterov)
        self.last_checkpoint = s["lineage"]["parent_checkpoint"]
        if "sentinel" in s:  # skip decisions depend on it: a restored run decides as the original did
            self.sentinel.load_state_dict(s["sentinel"])
        else:  # a checkpoint from before the sentinel: its windows fill again
            self.sentinel = Sentinel(self.cfg.sentinel_window, self.cfg.sentinel_sigma)
        self.health.invalidate()
        if self.instruments is not None:
            self.instruments.reset()
        self.anomaly = None
        self._sound_at = self.step
        if self.group is not None and not self.follower:  # the followers get these weights at the next sync
            ranks = s.get("ranks")
            self._jumped = True
            self._jump_ranks = self._peer_rngs = ranks if ranks and len(ranks) == self.group.world - 1 else None

    def _checkpoint(self, kind: str, label: str | None = None) -> int | None:
        self._readback()
        bad = self.health.bad()
        if bad:  # a checkpoint is a place to come back to: never one with NaN or inf in it
            raise Diverged(f"no checkpoint saved at step {self.step}: non-finite values in {', '.join(bad[:3])}")
        if self.group is not None and not self._in_round:  # every rank is here: gather their RNG states now
            self._meet()
            if self.state == "error":  # the replicas disagree: no checkpoint of either
                return None
        if self.follower:
            self._ckpt_at = (self.branch, self.step)
            return None
        cid = self.store.save(self._capture(), step=self.step, epoch=self.batches.epoch, branch=self.branch,
                              train_loss=self._last_loss, val_loss=self.last_val, kind=kind, label=label)
        self.last_checkpoint, self._ckpt_at = cid, (self.branch, self.step)
        return cid

    def _finish(self, state: str, message: str) -> None:
        """End the run: a final checkpoint unless this state is an error or already checkpointed."""
        self._sync_due = True  # every rank ends alike at the step limit
        self._final_checkpoint()
        self.state = state
        self._event(state, message)

    def _final_checkpoint(self) -> None:
        if self.state != "error" and self._ckpt_at != (self.branch, self.step):
            try:
                self._checkpoint("final")
            except Diverged as e:
                self._event("error", str(e))

    def _fail(self, message: str, detail: str | None = None) -> None:
        self.state, self.error = "error", message
        self._event("error", message, {"traceback": detail} if detail else None)
        self._publish()

    def _event(self, kind: str, message: str, data: Any = None) -> None:
        self.journal.event(self.step, self.branch, kind, message, data)


def _graphs() -> int:
    """Graphs torch.compile has made in this process (dynamo's own counter)."""
    return torch._dynamo.utils.counters["stats"]["unique_graphs"]


def _points(task: Task, n: int = 600):
    """A fixed sample of a 2-D task's training points, for drawing under its decision boundary."""
    data = task.train_data
    if task.grid is None or not hasattr(data, "tensors"):
        return None
    x, y = data.tensors
    idx = torch.linspace(0, len(x) - 1, min(n, len(x))).long()
    return frozen_array(x[idx].numpy()), frozen_array(y[idx].numpy())


@torch.no_grad()
def _classes(task: Task, model: torch.nn.Module, device: torch.device) -> int | None:
    """A softmax classifier's class count: the width of its output for integer targets. One forward
    of two samples in eval mode (BatchNorm's running stats untouched); None for anything else."""
    if "acc" not in task.metrics:
        return None
    was = model.training
    try:
        x, y = next(iter(all_batches(task.train_data, 2, device, 2)))
        model.eval()
        out = model(x)
    except Exception:  # the training loop reports a crashing model properly; this is only a caption
        return None
    finally:
        model.train(was)
    if not isinstance(out, torch.Tensor) or y.is_floating_point() or out.dim() != 2 or out.shape[-1] < 2:
        return None
    return int(out.shape[-1])


def _shown(values: Any) -> dict[str, float | str]:
    """A task's show() values as the journal stores them: numbers as floats, text cut to MAX_SHOWN."""
    if not isinstance(values, dict):
        raise TypeError(f"task.show must return a dict, got {type(values).__name__}")
    out: dict[str, float | str] = {}
    for k, v in values.items():
        if isinstance(v, torch.Tensor):
            v = v.item()
        out[str(k)[:MAX_TEXT]] = v[:MAX_SHOWN] if isinstance(v, str) else float(v)
    return out


def _finite(v: float) -> float | None:
    return v if math.isfinite(v) else None  # JSON has no inf: a diverged side run scores None


def _fmt3(v: float | None) -> str:
    return "-" if v is None else f"{v:.3g}"


def _fmt(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)
