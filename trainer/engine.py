"""The trainer: one model, one background thread, commands applied between optimizer steps."""
from __future__ import annotations

import collections
import inspect
import json
import math
import random
import threading
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import state as ckpt
from .commands import Command, Result
from .config import RunConfig
from .data import Batches, all_batches
from .hparams import HParamError, HParams, decayed_lr, to_dict, validate
from .journal import Journal
from .tasks import Task, load_task

THREAD_NAME = "panda-trainer"


class Diverged(RuntimeError):
    pass


class RunExistsError(RuntimeError):
    pass


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device: {name} requested but CUDA is not available")
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


class Trainer:
    """Trains one model in a named daemon thread. Every control method returns a Command whose
    `wait()` gives a Result: "applied at step N" or "rejected: reason"."""

    def __init__(self, config: RunConfig, hparams: dict[str, Any] | None = None, *, task: Task | None = None):
        self.cfg = config
        self.run_dir = Path(config.run_dir)
        self.device = resolve_device(config.device)
        self.step, self.samples, self.train_time = 0, 0, 0.0
        self.lr_set_epoch = 0
        self.best_val: float | None = None
        self.last_val: float | None = None
        self.branch, self.last_checkpoint = 0, None
        self.state = "ready"  # ready | running | paused | error | stopped | done | closed
        self.error: str | None = None
        self.view: dict[str, Any] = {}  # latest derived data for the UI (evaluation, decision-boundary grid)
        self._pending: list[tuple] = []  # per-step records not yet read back from the device
        self._last_loss: float | None = None
        self._sps = 0.0
        self._window = [0, 0.0]  # samples since the last read-back and when it was, for samples/s
        self._written: tuple | None = None  # the (hparams, lr) last written into param_groups
        self._cmds: collections.deque[Command] = collections.deque()
        self._cond = threading.Condition()
        self._ring: collections.OrderedDict[int, dict] = collections.OrderedDict()
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
            raise self._build_error

    def _build(self, hparams: dict[str, Any] | None, task: Task | None) -> None:
        cfg = self.cfg
        if cfg.deterministic and self.device.type == "cpu":
            torch.use_deterministic_algorithms(True)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)  # OpenMP keeps this per thread: it binds the training thread
        random.seed(cfg.seed)
        np.random.seed(cfg.seed)
        torch.manual_seed(cfg.seed)
        self.task = task or load_task(cfg.task, seed=cfg.seed)
        self.model = self.task.model.to(self.device)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self._buffers = [b for b in self.model.buffers()]
        self._buffer_backup = [b.clone() for b in self._buffers]
        self.n_train = len(self.task.train_data)
        self.hp = validate(HParams(), {**self.task.defaults, **(hparams or {})},
                           dataset_size=self.n_train, nesterov=cfg.nesterov)
        # On CUDA the divergence guard must not sync every step: fused optimizers skip a step
        # whose found_inf flag is set on the device, and losses are read back in batches.
        # Fused kernels are used on the CPU too: they are faster there as well.
        self.optimizer = build_optimizer(cfg, self.params, self.hp, fused=True)
        self.sync_free = self.device.type == "cuda" and bool(self.optimizer.defaults.get("fused"))
        self.batches = Batches(self.task.train_data, cfg.seed, self.device)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "checkpoints").mkdir(exist_ok=True)
        self.journal = Journal(self.run_dir / "journal.sqlite")
        self._next_ckpt = 1 + max([c["id"] for c in self.journal.checkpoints(include_deleted=True)] or [0])
        self.journal.start_writer()

    def _main(self, hparams, task) -> None:
        try:
            self._build(hparams, task)
        except BaseException as e:
            self._build_error = e
            return
        finally:
            self._built.set()
        self._loop()

    # --- construction ---------------------------------------------------------------------------
    @classmethod
    def create(cls, config: RunConfig, hparams: dict[str, Any] | None = None) -> "Trainer":
        """A new run in config.run_dir (which must not hold a run already)."""
        if (Path(config.run_dir) / "journal.sqlite").exists():
            raise RunExistsError(f"run directory {config.run_dir} already holds a run; resume it instead")
        t = cls(config, hparams)
        t.journal.set_meta("config", config.to_dict())
        t.journal.set_meta("branch", 0)
        t.journal.add_branch(0, None, 0, "start", None)
        t.journal.event(0, 0, "create", f"new run: task {config.task}, optimizer {config.optimizer}",
                        {"hparams": t.hp_dict()})
        t.journal.flush()
        return t

    @classmethod
    def open(cls, run_dir: str | Path, checkpoint: int | None = None, hparams: dict | None = None,
             skip_batches: int = 0, **overrides) -> "Trainer":
        """Reopen a run after a restart: its latest checkpoint on the current branch, or `checkpoint`."""
        path = Path(run_dir) / "journal.sqlite"
        if not path.exists():
            raise FileNotFoundError(f"run directory {run_dir} holds no run (no journal.sqlite)")
        meta = Journal(path).meta()
        cfg = RunConfig.from_dict({**meta["config"], "run_dir": str(run_dir), **overrides})
        t = cls(cfg)
        t.branch = int(meta.get("branch", 0))
        t.journal.set_meta("config", cfg.to_dict())
        if checkpoint is None:
            mine = [c for c in t.journal.checkpoints() if c["branch"] == t.branch]
            if not mine and t.journal.last_step(t.branch) == 0:
                return t  # it never trained: the fresh state is exactly where it was
            if not mine:
                t.close()
                raise ckpt.CheckpointError(f"run {run_dir}: branch {t.branch} has no checkpoint to resume from")
            checkpoint = mine[-1]["id"]
        res = t.submit("restore", checkpoint=checkpoint, hparams=hparams or {}, skip_batches=skip_batches,
                       reason="resume").wait()
        if not res.ok:
            t.close()
            raise ckpt.CheckpointError(res.message)
        return t

    # --- commands (any thread) ------------------------------------------------------------------
    def submit(self, kind: str, **args) -> Command:
        cmd = Command(kind, args)
        with self._cond:
            if not self._thread.is_alive():
                cmd.finish(Result(False, self.step, "the trainer is closed"))
                return cmd
            self._cmds.append(cmd)
            self._cond.notify_all()
        return cmd

    def start(self) -> Command:
        return self.submit("start")

    def pause(self) -> Command:
        return self.submit("pause")

    def resume(self) -> Command:
        return self.submit("resume")

    def stop(self) -> Command:
        return self.submit("stop")

    def set_hparams(self, **changes) -> Command:
        return self.submit("set_hparams", changes=changes)

    def save_checkpoint(self, label: str | None = None) -> Command:
        return self.submit("save", label=label)

    def restore(self, checkpoint: int, hparams: dict | None = None, skip_batches: int = 0) -> Command:
        return self.submit("restore", checkpoint=checkpoint, hparams=hparams or {}, skip_batches=skip_batches)

    def set_max_steps(self, max_steps: int) -> Command:
        return self.submit("set_max_steps", max_steps=max_steps)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until training is not running (done, paused, stopped, error); False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: self.state != "running" and not self._cmds, timeout)

    def close(self) -> None:
        """Stop training (final checkpoint), end the thread and flush the journal. Idempotent."""
        if self._thread.is_alive():
            self.submit("close").wait(None)
            self._thread.join()
        if self._build_error is None:
            self.journal.close()

    # --- the training loop ----------------------------------------------------------------------
    def _loop(self) -> None:
        while self._take_commands():
            if self.cfg.max_steps and self.step >= self.cfg.max_steps:
                self._finish("done", f"reached the step limit {self.cfg.max_steps}")
                continue
            try:
                self._train_step()
            except Diverged as e:
                self._fail(str(e))
            except Exception as e:  # a crashing user model pauses the run; it never kills the thread
                self._fail(f"{type(e).__name__}: {e}", traceback.format_exc(limit=-4))

    def _train_step(self) -> None:
        hp, model, opt = self.hp, self.model, self.optimizer
        t0 = time.perf_counter()
        lr = decayed_lr(hp, self.batches.epoch - self.lr_set_epoch)
        if self._written is None or hp is not self._written[0] or lr != self._written[1]:
            # nanoGPT's way: the live values go into param_groups (every change makes a new HParams)
            self._write_param_groups(hp, lr)
        pos = self.batches.position()
        if self._buffers:  # BatchNorm's running stats change in forward; keep them to undo a bad step
            torch._foreach_copy_(self._buffer_backup, self._buffers)
        try:
            (x, y), epoch_ended = self.batches.next(hp.batch_size)
            loss = self.task.loss(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            grads = [p.grad for p in self.params if p.grad is not None]
            # get_total_norm's own checks cost more than the norm on small models; this is its core
            gnorm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads))) if grads else torch.zeros(())
            if hp.grad_clip:
                torch.nn.utils.clip_grads_with_norm_(self.params, hp.grad_clip, gnorm)
            loss, gnorm = self._guard(loss.detach(), gnorm.detach())
        except BaseException:  # undo the half step: same batch next time, buffers as they were
            self.batches.seek(pos)
            if self._buffers:
                torch._foreach_copy_(self._buffers, self._buffer_backup)
            opt.zero_grad(set_to_none=True)
            raise
        opt.step()
        self.step += 1
        n = len(y)
        self.samples += n
        dt = time.perf_counter() - t0
        self.train_time += dt
        self._window[0] += n
        progress = self.batches.epoch + self.batches.offset / self.n_train  # fractional epoch, for the x-axis
        self._pending.append((self.branch, self.step, progress, loss, lr, hp.momentum, hp.weight_decay,
                              hp.batch_size, gnorm, n / dt if dt > 0 else 0.0, time.time()))
        if self.step % self.cfg.log_every == 0:
            self._readback()
            if self.state != "running":  # the deferred guard found a bad step: no eval or checkpoint now
                return
        if epoch_ended and self.cfg.eval_at_epoch_end or self.cfg.eval_every and self.step % self.cfg.eval_every == 0:
            self._evaluate()
        if self.cfg.ckpt_every and self.step % self.cfg.ckpt_every == 0:
            self._checkpoint("auto")

    def _guard(self, loss: torch.Tensor, gnorm: torch.Tensor):
        """A non-finite loss or gradient must never be applied.

        On the CPU reading two scalars costs nothing: raise Diverged before the step. On CUDA there is
        no sync: the fused optimizer skips the step whose found_inf flag is set, BatchNorm buffers keep
        their backup, and the read-back reports it. Returns (loss, gnorm), as floats on the CPU path.
        """
        if self.sync_free:
            finite = torch.isfinite(loss) & torch.isfinite(gnorm)
            self.optimizer.found_inf = (~finite).float()
            for b, k in zip(self._buffers, self._buffer_backup):
                b.copy_(torch.where(finite, b, k))
            return loss, gnorm
        loss_v, gnorm_v = loss.item(), gnorm.item()
        if not (math.isfinite(loss_v) and math.isfinite(gnorm_v)):
            raise Diverged(f"non-finite {'loss' if not math.isfinite(loss_v) else 'gradient norm'} at step "
                           f"{self.step + 1} (loss {loss_v}, grad norm {gnorm_v}); the step was not applied")
        return loss_v, gnorm_v

    def _write_param_groups(self, hp: HParams, lr: float) -> None:
        for g in self.optimizer.param_groups:
            g["lr"], g["weight_decay"] = lr, hp.weight_decay
            if "betas" in g:
                g["betas"] = (hp.momentum, g["betas"][1])
            else:
                g["momentum"] = hp.momentum
        self._written = (hp, lr)

    def _readback(self) -> None:
        """Move buffered step records to the journal; one device sync per batch of steps."""
        if not self._pending:
            return
        rows, self._pending = self._pending, []
        if self.sync_free:
            vals = torch.stack([torch.stack([r[3], r[8]]) for r in rows]).tolist()
            rows = [r[:3] + (v[0],) + r[4:8] + (v[1],) + r[9:] for r, v in zip(rows, vals)]
            bad = next((r for r in rows if not (math.isfinite(r[3]) and math.isfinite(r[8]))), None)
            if bad is not None:  # its row stays (loss NULL): the step counter moved, the weights did not
                self._fail(f"non-finite loss or gradient at step {bad[1]} (loss {bad[3]}, grad norm {bad[8]}); "
                           "that step was skipped on the device")
        if rows:
            self._last_loss = rows[-1][3]
            now = time.perf_counter()
            if now - self._window[1] >= 0.5:  # wall-clock throughput over half a second or more
                self._sps = self._window[0] / (now - self._window[1])
                self._window = [0, now]
        self.journal.log_steps(rows)

    @torch.no_grad()
    def _evaluate(self) -> None:
        """Validation in eval mode, so BatchNorm uses its running averages; train mode after."""
        was_training = self.model.training
        self.model.eval()
        try:
            out = {}
            for prefix, ds, limit in (("val", self.task.val_data, None), ("train", self.task.train_data, 2048)):
                if ds is None:
                    continue
                tot, sums = 0, collections.defaultdict(float)
                for x, y in all_batches(ds, 512, self.device, limit):
                    o = self.model(x)
                    n = len(y)
                    tot += n
                    sums["loss"] += float(self.task.loss(o, y)) * n
                    for name, fn in self.task.metrics.items():
                        sums[name] += float(fn(o, y)) * n
                out.update({f"{prefix}_{k}": v / tot for k, v in sums.items()})
            if self.task.grid is not None:
                self.view["grid"] = {"step": self.step, **self.task.grid(self.model, self.device)}
        finally:
            self.model.train(was_training)
        self.last_val = out.get("val_loss")
        if self.last_val is not None and (self.best_val is None or self.last_val < self.best_val):
            self.best_val = self.last_val
        self.view["eval"] = {"step": self.step, **out}
        extra = {k: v for k, v in out.items() if k not in ("val_loss", "val_acc", "train_loss", "train_acc")}
        self.journal.log_eval((self.branch, self.step, self.batches.epoch, out.get("val_loss"), out.get("val_acc"),
                               out.get("train_loss"), out.get("train_acc"), json.dumps(extra) if extra else None,
                               time.time()))

    # --- commands, applied by the training thread between steps -------------------------------
    def _take_commands(self) -> bool:
        """Apply queued commands; block unless running. False once the trainer is closed."""
        with self._cond:
            while True:
                if self._cmds:
                    while self._cmds:
                        cmd = self._cmds.popleft()
                        cmd.finish(self._apply(cmd))
                    self._cond.notify_all()
                if self.state == "running":
                    return True
                self._cond.notify_all()  # for wait(): training has come to rest
                if self.state == "closed":
                    return False
                self._cond.wait()

    def _apply(self, cmd: Command) -> Result:
        fn = getattr(self, f"_cmd_{cmd.kind}", None)
        if fn is None:
            return Result(False, self.step, f"unknown command {cmd.kind!r}")
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
        if self.state != "running":
            return Result(False, self.step, f"not running ({self.state})")
        self._readback()
        self.state = "paused"
        self._event("pause", f"paused after step {self.step}")
        return Result(True, self.step + 1)

    def _cmd_start(self) -> Result:
        if self.state not in ("ready", "stopped", "done"):
            return Result(False, self.step, f"already started ({self.state}); use resume or stop")
        if self.cfg.max_steps and self.step >= self.cfg.max_steps:
            return Result(False, self.step, f"the step limit {self.cfg.max_steps} is reached; raise it first")
        self.state, self.error = "running", None
        self._window = [0, time.perf_counter()]
        self._event("start", f"training started at step {self.step + 1}")
        return Result(True, self.step + 1)

    def _cmd_close(self) -> Result:
        if self.state in ("running", "paused", "error"):
            self._finish("stopped", f"stopped at step {self.step} (closing)")
        self._readback()
        self.state = "closed"
        return Result(True, self.step)

    def _cmd_resume(self) -> Result:
        if self.state not in ("paused", "error"):
            return Result(False, self.step, f"not paused ({self.state})")
        self.state, self.error = "running", None
        self._window = [0, time.perf_counter()]
        self._event("resume", f"resumed at step {self.step + 1}")
        return Result(True, self.step + 1)

    def _cmd_stop(self) -> Result:
        if self.state not in ("running", "paused", "error"):
            return Result(False, self.step, f"not started ({self.state})")
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
        self._change_hparams(new, set_lr="lr" in changes)
        return Result(True, self.step + 1)

    def _change_hparams(self, new: HParams, set_lr: bool) -> None:
        old = self.hp
        if set_lr:
            self.lr_set_epoch = self.batches.epoch  # the lr the user sets is alpha0 from this step on
        self.hp = new
        for k, v in to_dict(new).items():
            if v != getattr(old, k):
                self._event("hparams", f"{k} {_fmt(getattr(old, k))} → {_fmt(v)}",
                            {"field": k, "old": getattr(old, k), "new": v, "at_step": self.step + 1})

    def _cmd_save(self, label: str | None = None) -> Result:
        if self.state == "error":
            return Result(False, self.step, "the run is in an error state; no checkpoint is taken from it")
        if label is not None and (not isinstance(label, str) or len(label) > 200):
            return Result(False, self.step, "label: must be text of at most 200 characters")
        cid = self._checkpoint("manual", label or None)
        return Result(True, self.step, value=cid)

    def _cmd_restore(self, checkpoint: int, hparams: dict, skip_batches: int = 0, reason: str = "restore") -> Result:
        res = self._restore(checkpoint, hparams, skip_batches, reason)
        if res.ok and self.state == "error":
            self.state, self.error = "paused", None
        return res

    def _restore(self, cid: Any, changes: dict, skip: int, reason: str) -> Result:
        # Everything is checked before anything changes; a failed load rolls back to where we were.
        if isinstance(cid, bool) or not isinstance(cid, int):
            return Result(False, self.step, f"checkpoint: expected an integer id, got {cid!r}")
        if isinstance(skip, bool) or not isinstance(skip, int) or skip < 0:
            return Result(False, self.step, f"skip_batches: must be an integer >= 0, got {skip!r}")
        rows = [c for c in self.journal.checkpoints(include_deleted=True) if c["id"] == cid]
        if not rows and cid not in self._ring:
            return Result(False, self.step, f"checkpoint {cid}: no such checkpoint")
        try:
            snap = self._ring.get(cid) or ckpt.load_file(self._checkpoint_path(rows[0]["path"]))
            base = validate(HParams(), snap["hparams"], dataset_size=self.n_train, nesterov=self.cfg.nesterov)
            new = validate(base, changes or {}, dataset_size=self.n_train, nesterov=self.cfg.nesterov)
        except (ckpt.CheckpointError, HParamError) as e:
            return Result(False, self.step, str(e))
        self._readback()
        here = ckpt.capture(self)
        self._written = None  # the loaded param_groups hold the checkpoint's settings: ours are written anew
        try:
            ckpt.restore(self, snap)
        except Exception as e:
            ckpt.restore(self, here)
            return Result(False, self.step, f"checkpoint {cid}: does not fit this run ({type(e).__name__}: {e})")
        old_branch, fork_step = self.branch, self.step
        ck_branch = snap["lineage"]["branch"]
        self.journal.flush()  # the abandoned path's last rows must be in the journal to compare
        if ck_branch != old_branch or self.journal.last_step(old_branch) > fork_step:
            self.branch = 1 + max(b["id"] for b in self.journal.branches())
            self.journal.add_branch(self.branch, ck_branch, fork_step, reason, cid)
            self.journal.set_meta("branch", self.branch)
        self.last_checkpoint = cid
        self.view.clear()  # the picture and metrics of the abandoned path no longer describe the model
        self._event("restore", f"{reason} from checkpoint {cid} (step {fork_step}, branch {ck_branch})"
                    + (f" onto new branch {self.branch}" if self.branch != old_branch else ""),
                    {"checkpoint": cid, "old_branch": old_branch, "branch": self.branch, "fork_step": fork_step})
        self._change_hparams(new, set_lr="lr" in (changes or {}))
        if skip:
            self.batches.skip(skip, self.hp.batch_size)
            self._event("skip", f"skipped the next {skip} batches")
        return Result(True, self.step + 1, value=self.branch)

    # --- checkpoints ----------------------------------------------------------------------------
    def _checkpoint_path(self, rel: str) -> Path:
        """A checkpoint file named in the journal; it must lie inside this run's directory."""
        root = self.run_dir.resolve()
        path = (root / rel).resolve()
        if root not in path.parents:
            raise ckpt.CheckpointError(f"checkpoint path {rel!r} leaves the run directory")
        return path

    def _checkpoint(self, kind: str, label: str | None = None) -> int:
        self._readback()
        snap = ckpt.capture(self)
        cid, self._next_ckpt = self._next_ckpt, self._next_ckpt + 1
        self._ring[cid] = snap
        while len(self._ring) > self.cfg.ring_size:
            self._ring.popitem(last=False)
        rel = f"checkpoints/ckpt_{cid:06d}_step{self.step}.pt"
        row = (cid, self.step, self.batches.epoch, self.branch, rel, time.time(), self._last_loss,
               self.last_val, json.dumps(self.hp_dict()), label, kind, snap["lineage"]["parent_checkpoint"])
        self.last_checkpoint = cid
        self._event("checkpoint", f"checkpoint {cid} saved at step {self.step}" + (f" ({label})" if label else ""),
                    {"checkpoint": cid, "kind": kind, "label": label})

        def write() -> None:  # on the journal's writer thread: file first, then its index row
            ckpt.save_file(snap, self.run_dir / rel)
            self.journal.add_checkpoint(row)
            self._retain()

        self.journal.submit(write)
        return cid

    def _retain(self) -> None:
        """Keep the last K automatic checkpoints, every manual or labelled one, and the best by val loss."""
        autos = [c for c in self.journal.checkpoints() if c["kind"] in ("auto", "final") and not c["label"]]
        vals = [c for c in self.journal.checkpoints() if c["val_loss"] is not None]
        best = min(vals, key=lambda c: c["val_loss"])["id"] if vals else None
        for c in autos[:-self.cfg.keep_last or None] if self.cfg.keep_last else autos:
            if c["id"] != best:
                (self.run_dir / c["path"]).unlink(missing_ok=True)
                self.journal.mark_deleted(c["id"])

    def _finish(self, state: str, message: str) -> None:
        """End the run: a final checkpoint unless this state is an error or already checkpointed."""
        if self.state != "error" and self.step > 0 and not self._checkpointed_here():
            self._checkpoint("final")
        self.state = state
        self._event(state, message)

    def _checkpointed_here(self) -> bool:
        if self.last_checkpoint is None:
            return False
        snap = self._ring.get(self.last_checkpoint)
        return snap is not None and snap["counters"]["step"] == self.step and snap["lineage"]["branch"] == self.branch

    def _fail(self, message: str, detail: str | None = None) -> None:
        self.state, self.error = "error", message
        self._event("error", message, {"traceback": detail} if detail else None)

    def _event(self, kind: str, message: str, data: Any = None) -> None:
        self.journal.event(self.step, self.branch, kind, message, data)

    # --- plain data for readers -----------------------------------------------------------------
    def hp_dict(self) -> dict[str, Any]:
        return to_dict(self.hp)

    def set_hp_dict(self, d: dict[str, Any]) -> None:
        self.hp = validate(HParams(), d, dataset_size=self.n_train, nesterov=self.cfg.nesterov)

    def status(self) -> dict[str, Any]:
        """A snapshot for the UI; cheap, safe from any thread."""
        steps_per_epoch = math.ceil(self.n_train / self.hp.batch_size)
        return {
            "state": self.state, "error": self.error, "step": self.step, "epoch": self.batches.epoch,
            "epoch_progress": self.batches.offset / self.n_train, "steps_per_epoch": steps_per_epoch,
            "branch": self.branch, "hparams": self.hp_dict(), "loss": self._last_loss,
            "samples_per_s": self._sps, "max_steps": self.cfg.max_steps, "device": str(self.device),
            "task": self.cfg.task, "optimizer": self.cfg.optimizer, "run_dir": str(self.run_dir),
            "last_checkpoint": self.last_checkpoint, "eval": self.view.get("eval"),
            "effective_lr": decayed_lr(self.hp, self.batches.epoch - self.lr_set_epoch),
        }


def _fmt(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)

