"""Headless CLI: `python -m trainer run|resume|ctl|probe|lr-find|checkpoints|export|diagnose`."""
from __future__ import annotations

import argparse
import csv
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

from .config import OPTIMIZERS, PRECISIONS, TASK_HELP, ConfigError, RunConfig, task_config
from .sentinel import POLICIES
from .hparams import HParamError, field_specs
from .journal import JournalError, Reader
from .probe import ProbeError, parse_range
from .runlock import RunLockedError

# The engine, tasks and snapshots import torch (~2 s): only the commands that train or read
# checkpoints import them, so `ctl` stays quick.


class CliError(Exception):
    pass


def _hparam_args(p: argparse.ArgumentParser) -> None:
    """One flag per HParams field (--lr, --batch-size, ...), typed and described by the field itself."""
    g = p.add_argument_group("hyperparameters (default: the task's own)")
    for f in field_specs():
        kw = {"choices": f.choices} if f.choices else {"type": int if f.kind == "int" else float}
        g.add_argument(f"--{f.name.replace('_', '-')}", dest=f.name, help=f.help, **kw)


def _hparams(a: argparse.Namespace) -> dict:
    return {f.name: getattr(a, f.name) for f in field_specs() if getattr(a, f.name) is not None}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one clear line, not usage plus error
        self.exit(2, f"error: {self.prog}: {message} (see --help)\n")


def parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m trainer", description="Panda's headless trainer.")
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="start a new run; its process serves it to `ctl` and the dashboard")
    r.add_argument("--task", default="spirals", help="; ".join(f"{k}: {v}" for k, v in TASK_HELP.items())
                   + "; or your own, module:function or file.py:function (default: spirals)")
    r.add_argument("--run-dir", help="run directory (default: runs/<task>-<time>)")
    r.add_argument("--max-steps", type=int, default=2000, help="global step to stop at (default: 2000)")
    r.add_argument("--optimizer", choices=OPTIMIZERS,
                   help="default: the task's own (charlm: adamw), else sgd")
    r.add_argument("--nesterov", action="store_true", help="Nesterov momentum (SGD)")
    r.add_argument("--seed", type=int, default=0, help="default: 0")
    r.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    r.add_argument("--ckpt-every", type=int, default=200, help="steps between checkpoints (default: 200)")
    r.add_argument("--eval-every", type=int, help="steps between evaluations (default: 100; charlm: 250)")
    r.add_argument("--sentinel", choices=POLICIES, default="skip",
                   help="what an anomaly (spike, NaN, explosion) does; live with `ctl sentinel` (default: skip)")
    r.add_argument("--instrument-every", type=int, default=50,
                   help="steps between per-layer instruments and activation stats, 0 = off (default: 50)")
    r.add_argument("--precision", choices=PRECISIONS, default="fp32",
                   help="fp32, bf16 (autocast) or fp16 (autocast + loss scaling) (default: fp32)")
    r.add_argument("--compile", action="store_true", help="torch.compile the model (its compile time is reported)")
    r.add_argument("--config", type=json.loads, default={}, metavar="JSON",
                   help="more RunConfig settings as a JSON object, e.g. '{\"keep_last\": 10}' (wins over flags)")
    _serve_args(r)
    _hparam_args(r)
    s = sub.add_parser("resume", help="continue a run from its latest checkpoint or another one, served like run")
    s.add_argument("--run-dir", required=True)
    s.add_argument("--from", dest="from_", type=int, help="checkpoint id (default: latest of current branch)")
    s.add_argument("--max-steps", type=int, help="global step to stop at")
    s.add_argument("--skip-batches", type=int, default=0, help="skip the next K batches after restoring")
    s.add_argument("--device", help="override the run's device")
    _serve_args(s)
    _hparam_args(s)
    c = sub.add_parser("checkpoints", help="list a run's checkpoints")
    c.add_argument("--run-dir", required=True)
    c.add_argument("--json", action="store_true", help="print a JSON list")
    e = sub.add_parser("export", help="export the current lineage's metrics")
    e.add_argument("--run-dir", required=True)
    e.add_argument("--format", choices=("csv", "parquet"), default="csv")
    e.add_argument("--out", required=True)
    d = sub.add_parser("diagnose", help="the latest instrument readings and the advice they support")
    d.add_argument("--run-dir", required=True)
    d.add_argument("--json", action="store_true", help="print JSON")
    pr = sub.add_parser("probe", help="k short side runs from the run's state, lr (and momentum) sampled on a "
                                      "log scale; the run continues exactly as if it had not probed")
    pr.add_argument("--run-dir", required=True)
    pr.add_argument("--lr-range", metavar="LO:HI", help="default: the run's lr / 10 to lr x 10")
    pr.add_argument("--momentum-range", metavar="LO:HI",
                    help="also sample momentum (beta1 for Adam) as 1 - 10^r in this range, e.g. 0.8:0.999")
    pr.add_argument("--samples", type=int, default=6, help="side runs (default: 6)")
    pr.add_argument("--steps", type=int, default=200, help="steps of each side run (default: 200)")
    pr.add_argument("--seed", type=int, help="the sampler's seed (default: from the run's seed and step)")
    _probe_args(pr)
    lf = sub.add_parser("lr-find", help="the LR range test from the run's state: lr grows exponentially until the "
                                        "loss exceeds 4x its minimum; the run continues exactly")
    lf.add_argument("--run-dir", required=True)
    lf.add_argument("--lo", type=float, default=1e-7, help="first lr (default: 1e-7)")
    lf.add_argument("--hi", type=float, default=10.0, help="last lr (default: 10)")
    lf.add_argument("--steps", type=int, default=100, help="steps (default: 100)")
    _probe_args(lf)
    _ctl_parser(sub)
    return p


def _probe_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds to wait for it (default: 3600)")


def _serve_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-start", action="store_true",
                   help="serve the run ready, and wait for `ctl start` (or the dashboard's Start)")
    p.add_argument("--keep-serving", action="store_true",
                   help="after the run ends at its step limit or on an error, keep serving it until `ctl stop` "
                        "(the dashboard starts its trainers so)")


def _ctl_parser(sub) -> None:
    # --run-dir, --json and --timeout go before or after the action: `ctl --run-dir D status --json`.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--run-dir", default=argparse.SUPPRESS, help="the run directory of a live trainer")
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print JSON")
    common.add_argument("--timeout", type=float, default=argparse.SUPPRESS,
                        help="seconds to wait for the command's result (default: 30)")
    c = sub.add_parser("ctl", parents=[common], help="control a live run: status, pause, set --lr ...",
                       description="Control the process that trains a run. Exit 0: applied; 1: rejected; "
                                   "2: bad arguments or no live trainer; 3: no result within --timeout.")
    acts = c.add_subparsers(dest="action", required=True)
    acts.add_parser("status", parents=[common], help="state, step, epoch, branch, lr, loss, last checkpoint")
    for name, what in (("start", "start a run that is ready (see run --no-start)"),
                       ("pause", "pause after the current step"), ("resume", "resume a paused run"),
                       ("stop", "stop the run (final checkpoint); its process exits")):
        acts.add_parser(name, parents=[common], help=what)
    a = acts.add_parser("save", parents=[common], help="save a checkpoint now")
    a.add_argument("--label", help="a label for the checkpoint")
    a = acts.add_parser("restore", parents=[common], help="continue from checkpoint ID (a new branch)")
    a.add_argument("checkpoint", type=int, metavar="ID", help="checkpoint id (see `checkpoints`)")
    a.add_argument("--skip-batches", type=int, default=0, help="skip the next K batches after restoring")
    _hparam_args(a)
    a = acts.add_parser("set", parents=[common], help="change hyperparameters from the next step on")
    _hparam_args(a)
    a = acts.add_parser("limit", parents=[common], help="set the step limit (0 = none)")
    a.add_argument("max_steps", type=int, metavar="N")
    a = acts.add_parser("skip", parents=[common], help="skip the next K batches")
    a.add_argument("batches", type=int, metavar="K")
    a = acts.add_parser("sentinel", parents=[common], help="the divergence sentinel's policy and statistics")
    a.add_argument("--policy", choices=POLICIES, help="warn | pause | skip | rollback")
    a.add_argument("--window", type=int, help="trailing steps of its statistics")
    a.add_argument("--sigma", type=float, help="standard deviations above the mean that count as a spike")


def _train(t, a) -> None:
    """Serve the run (trainer/server.py), start it unless --no-start, and show its progress until it
    ends; the server stops and the trainer closes on every path, the server first, while the run lock
    is still held."""
    server = None
    try:
        server = _serve(t)
        if not a.no_start:
            r = t.start().wait()
            if not r.ok:
                raise CliError(r.message)
        err = _progress(t, a.keep_serving)
    finally:
        if server is not None:
            server.stop()
        t.close()  # raises JournalError if the last writes fail
    if err:
        raise CliError(f"training error: {err}")


def _serve(t):
    from .server import RunServer

    try:
        return RunServer(t).start()
    except OSError as e:  # e.g. a file system without Unix sockets: train as before, unreachable
        print(f"warning: run {t.status().run.run_dir} is not served ({e}); `ctl` and the dashboard "
              "cannot reach it, training goes on", file=sys.stderr)
        return None


# The states a served process waits in; with --keep-serving also the ends a user can go on from.
WAITING = ("ready", "paused")
KEPT = ("done", "error")


class _NoBar:
    """The part of tqdm's bar that _progress uses."""

    def __init__(self, total=None, initial=0, **_):
        self.total, self.n = total, initial

    def set_postfix(self, **_) -> None:
        pass

    def update(self, k: int) -> None:
        self.n += k

    def close(self) -> None:
        pass


def _progress(t, keep_serving: bool = False) -> str | None:
    """Train until the run ends, with a progress bar (steps/s, loss) on a terminal; return its error,
    if any. A run that is ready or paused keeps its process, serving, until it is started, resumed or
    stopped (with `keep_serving`, also a finished or failed one). Ctrl-C or SIGTERM stops cleanly (final
    checkpoint)."""
    try:
        from tqdm import tqdm
    except ImportError:  # the engine needs torch alone (a GPU box with nothing else): no bar there
        tqdm = _NoBar

    st = t.status()
    bar = tqdm(total=st.max_steps or None, initial=st.step, unit="step", dynamic_ncols=True, file=sys.stderr,
               disable=not sys.stderr.isatty())  # a log file gets the start and end lines only
    quit_ = threading.Event()
    first, began = st.step, time.monotonic()

    def show():
        st = t.status()
        if (st.max_steps or None) != bar.total:  # `ctl limit` moved it
            bar.total = st.max_steps or None
        bar.set_postfix(loss=f"{st.loss:.4g}" if st.loss is not None else "-", refresh=False)
        bar.update(st.step - bar.n)

    # The handler only sets a flag: submitting from a signal handler could wait on a lock its own
    # thread holds.
    signal.signal(signal.SIGTERM, lambda *_: quit_.set())
    waiting = WAITING + (KEPT if keep_serving else ())
    try:
        while not quit_.is_set():
            ended = t.wait(0.25)
            show()
            # A command (start, probe) may have set the run going again since wait() saw it at rest:
            # the state read after it decides, so the process never ends under a probe it just began.
            state = t.status().state
            if state in ("running", "probing"):
                continue
            if ended and state not in waiting:
                break
            if state in waiting:
                quit_.wait(0.25)
        if quit_.is_set():
            t.stop().wait()  # a running or paused run stops; a ready or finished one just ends
    except KeyboardInterrupt:
        t.stop().wait()
    finally:
        show()
        bar.close()
    st = t.status()
    rate = (st.step - first) / max(time.monotonic() - began, 1e-9)
    loss = f"{st.loss:.4g}" if st.loss is not None else "-"
    print(f"run {st.run.run_dir}: {st.state} at step {st.step} ({rate:,.0f} step/s, loss={loss})", file=sys.stderr)
    return st.error


def _cmd_run(a) -> None:
    from .engine import Trainer

    run_dir = a.run_dir or f"runs/{a.task.replace('/', '_').replace(':', '_')}-{time.strftime('%Y%m%d-%H%M%S')}"
    if not isinstance(a.config, dict):
        raise CliError("--config: give a JSON object of RunConfig settings")
    flags = dict(task=a.task, run_dir=run_dir, optimizer=a.optimizer, nesterov=a.nesterov, seed=a.seed,
                 device=a.device, max_steps=a.max_steps, ckpt_every=a.ckpt_every, eval_every=a.eval_every,
                 sentinel=a.sentinel, instrument_every=a.instrument_every, precision=a.precision, compile=a.compile)
    given = {k: v for k, v in flags.items() if v is not None}
    cfg = RunConfig.from_dict({**task_config(a.task), **given, **a.config})
    run_dir = cfg.run_dir
    t = Trainer.create(cfg, _hparams(a))
    print(f"run {run_dir}: task {cfg.task} on {t.status().run.device}", file=sys.stderr)
    _train(t, a)


def _cmd_resume(a) -> None:
    from .engine import Trainer, resume_point

    # Checked before the run is opened, so a rejected resume changes nothing in it.
    reader = _reader(a.run_dir)
    meta = reader.meta()
    row = resume_point(reader, int(meta.get("branch", 0)), a.from_)
    limit = a.max_steps if a.max_steps is not None else meta["config"].get("max_steps", 0)
    at = row["step"] if row else 0
    if limit and at >= limit:
        raise CliError(f"the run would resume at step {at}, at or past the step limit {limit}: "
                       "give a larger --max-steps")
    over = {k: v for k, v in (("max_steps", a.max_steps), ("device", a.device)) if v is not None}
    t = Trainer.open(a.run_dir, checkpoint=a.from_, hparams=_hparams(a), skip_batches=a.skip_batches, **over)
    st = t.status()
    how = f"from checkpoint {row['id']}" if row else "from step 0 (no checkpoint was saved before it stopped)"
    print(f"run {a.run_dir}: resumed at step {st.step} {how}, on branch {st.branch}", file=sys.stderr)
    _train(t, a)


def _rank() -> int:
    """This process's rank in a torchrun job (0 without one)."""
    return int(os.environ.get("RANK", "0")) if int(os.environ.get("WORLD_SIZE", "1")) > 1 else 0


def _cmd_follow() -> int:
    """A rank > 0 of `torchrun ... -m trainer run|resume`: rank 0 serves the run; this rank trains its
    slice of each batch, as rank 0 orders, until rank 0 closes the run."""
    from .engine import Trainer

    # Ctrl-C or torchrun's SIGTERM reaches every rank: rank 0 stops the run (final checkpoint, which
    # gathers this rank's RNG state) and closes it, and this rank ends with it. If rank 0 dies instead,
    # this rank's next collective fails and it ends.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    t = Trainer.follow()
    t.join()
    return 1 if t.group is None or t.group.lost else 0


def _cmd_ctl(a) -> int:
    """One command to the process that trains a run; exit 0 applied, 1 rejected, 2 no trainer, 3 no answer."""
    from .client import NoTrainerError, RunClient

    # Not set_defaults: the flags' actions are shared with every action's parser (parents=[common]).
    a.run_dir, a.json, a.timeout = getattr(a, "run_dir", None), getattr(a, "json", False), getattr(a, "timeout", 30.0)
    if a.run_dir is None:
        return _fail("ctl: --run-dir is required")
    args = _ctl_command(a)
    if isinstance(args, str):
        return _fail(args)
    kind, kw = args
    try:
        with RunClient(a.run_dir) as c:
            if kind == "status":
                st = c.status()
            else:
                r = c.submit(kind, **kw).wait(a.timeout)
    except TimeoutError as e:
        print(f"error: {e}; it may still be applied (see `ctl status`)", file=sys.stderr)
        return 3
    except (NoTrainerError, ConnectionError, ValueError, OSError) as e:
        return _fail(str(e))
    if kind == "status":
        print(json.dumps(st.to_dict(), indent=1) if a.json else _describe_status(st))
        return 0
    print(json.dumps(r.to_dict()) if a.json else _describe_result(kind, r))
    return 0 if r.ok else 1


def _ctl_command(a) -> tuple[str, dict] | str:
    """(kind, args) for the action, or what is wrong with the arguments."""
    if a.action == "set":
        if not _hparams(a):
            return "ctl set: give at least one hyperparameter, e.g. --lr 0.05 (see ctl set --help)"
        return "set_hparams", {"changes": _hparams(a)}
    if a.action == "save":
        return "save", {"label": a.label}
    if a.action == "restore":
        return "restore", {"checkpoint": a.checkpoint, "hparams": _hparams(a), "skip_batches": a.skip_batches}
    if a.action == "limit":
        return "set_max_steps", {"max_steps": a.max_steps}
    if a.action == "skip":
        return "skip", {"batches": a.batches}
    if a.action == "sentinel":
        kw = {"policy": a.policy, "window": a.window, "sigma": a.sigma}
        if all(v is None for v in kw.values()):
            return "ctl sentinel: give --policy, --window or --sigma (see ctl sentinel --help)"
        return "set_sentinel", kw
    return a.action, {}  # status, pause, resume, stop


def _describe_result(kind: str, r) -> str:
    if r.ok and kind == "save":
        return f"{r}: checkpoint {r.value}"
    if r.ok and kind == "restore":
        return f"{r}: from {r.message}, on branch {r.value}"
    return str(r)


def _describe_status(st) -> str:
    lines = [f"{st.state} at step {st.step}" + (f" of {st.max_steps}" if st.max_steps else "")
             + f" · epoch {st.epoch} ({st.epoch_progress:.0%}) · branch {st.branch}",
             f"lr {st.hparams.lr:g} (effective {st.effective_lr:.4g}) · loss "
             + (f"{st.loss:.4g}" if st.loss is not None else "-") + f" · {st.samples_per_s:,.0f} samples/s",
             "last checkpoint " + (str(st.last_checkpoint) if st.last_checkpoint is not None else "none")]
    if st.eval:
        lines.append("last eval at step " + ", ".join(
            [str(st.eval["step"])] + [f"{k} {v:.4g}" for k, v in st.eval.items() if k != "step"]))
    if st.error:
        lines.append(f"error: {st.error}")
    return "\n".join(lines)


def _cmd_probe(a) -> int:
    """A probe or range test: through the live trainer's command channel, or on an idle run opened
    here (and closed after). Exit 0 done, 1 rejected or failed, 2 bad arguments or no run."""
    kind = "probe" if a.cmd == "probe" else "lr_find"
    try:
        args = ({"samples": a.samples, "steps": a.steps, "seed": a.seed,
                 "lr_range": parse_range(a.lr_range, "--lr-range") if a.lr_range else None,
                 "momentum_range": parse_range(a.momentum_range, "--momentum-range") if a.momentum_range else None}
                if kind == "probe" else {"lo": a.lo, "hi": a.hi, "steps": a.steps})
    except ProbeError as e:
        return _fail(str(e))
    reader = _reader(a.run_dir)
    seen = max((e["id"] for e in reader.events(kinds=(kind,), newest_first=True, limit=1)), default=0)
    from .client import NoTrainerError, RunClient, is_live

    if is_live(a.run_dir):
        try:
            with RunClient(a.run_dir) as c:
                r = c.submit(kind, **args).wait(30)
                if r.ok:
                    _wait_probe(c, a.timeout)
        except (NoTrainerError, ConnectionError, OSError) as e:
            return _fail(str(e))
    else:
        from .engine import Trainer

        t = Trainer.open(a.run_dir)
        try:
            r = t.submit(kind, **args).wait(30)
            if r.ok:
                _wait_probe(t, a.timeout)
        finally:
            t.close()
    if not r.ok:
        print(json.dumps(r.to_dict()) if a.json else str(r))
        return 1
    found = [e for e in _reader(a.run_dir).events(since_id=seen, kinds=(kind,))]
    if not found:
        return _fail(f"the {kind} left no result in the journal")
    data = found[-1]["data"]
    print(json.dumps(data, indent=1) if a.json else _describe_probe(found[-1]["message"], data))
    return 1 if data["error"] or data["cancelled"] else 0


def _wait_probe(t, timeout: float) -> None:
    deadline, shown = time.monotonic() + timeout, -1
    while (s := t.status()).state == "probing":
        if time.monotonic() > deadline:
            t.cancel().wait(30)
            raise CliError(f"no result within --timeout {timeout:g} s: cancelled")
        p = s.probe
        if p and sys.stderr.isatty() and int(100 * p["progress"]) != shown:
            shown = int(100 * p["progress"])
            eta = f", about {p['eta_s']:.0f} s left" if p["eta_s"] is not None else ""
            print(f"\r{p['kind']}: side run {p['index'] + 1} of {p['samples']}, {shown}%{eta}   ",
                  end="", file=sys.stderr, flush=True)
        time.sleep(0.2)
    if shown >= 0:
        print(file=sys.stderr)


def _describe_probe(message: str, d: dict) -> str:
    g = lambda v, spec=".4g": format(v, spec) if v is not None else "-"  # noqa: E731
    lines = [message]
    if d["kind"] == "probe":
        lines.append(f"  {'rank':>4} {'lr':>10} {'momentum':>9} {'score':>10} {'val loss':>10} {'branch':>6}")
        for i, r in enumerate(d["results"], 1):
            lines.append(f"  {i:>4} {g(r['lr']):>10} {g(r.get('momentum')):>9} "
                         f"{g(r['score']) if not r['diverged'] else 'diverged':>10} {g(r['val_loss']):>10} "
                         f"{r['branch']:>6}")
        lines.append("score: mean training loss over the last 20 % of each side run's steps (lower is better)")
    else:
        r = d["results"][0] if d["results"] else {}
        lines.append(f"  steepest descent: lr {g(r.get('steepest'), '.3g')} · minimum / 10: "
                     f"lr {g(r.get('min_div10'), '.3g')} · {r.get('steps', 0)} steps"
                     + (", stopped early (loss above 4x its minimum)" if r.get("stopped_early") else ""))
    return "\n".join(lines)


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def _checkpoint_rows(run_dir: str) -> list[dict]:
    from .snapshot import CheckpointError

    j = _reader(run_dir)
    rows = []
    for c in j.checkpoints():
        try:
            path = str(j.checkpoint_file(c["id"]))
        except CheckpointError as e:  # a tampered row is listed, never followed
            path = f"(refused: {e})"
        rows.append({"id": c["id"], "step": c["step"], "epoch": c["epoch"], "branch": c["branch"], "path": path, "train_loss": c["train_loss"],
                     "val_loss": c["val_loss"], "hparams": c["hparams"], "label": c["label"],
                     "kind": c["kind"], "parent": c["parent"], "time": c["wall"]})
    return rows


def _reader(run_dir: str) -> Reader:
    if Path(run_dir).exists() and not Path(run_dir).is_dir():
        raise CliError(f"--run-dir {run_dir} is a file, not a run directory")
    return Reader(run_dir)


def _cmd_checkpoints(a) -> None:
    rows = _checkpoint_rows(a.run_dir)
    if a.json:
        print(json.dumps(rows, indent=1))
        return
    print(f"{'id':>4} {'step':>7} {'epoch':>5} {'branch':>6} {'train':>9} {'val':>9}  {'lr':>9}  label / path")
    for r in rows:
        f = lambda v: f"{v:9.4g}" if v is not None else f"{'-':>9}"
        print(f"{r['id']:>4} {r['step']:>7} {r['epoch']:>5} {r['branch']:>6} {f(r['train_loss'])} {f(r['val_loss'])}"
              f"  {r['hparams'].get('lr', 0):9.3g}  {r['label'] or ''} {r['path']}")


def _cmd_export(a) -> None:
    if Path(a.out).is_dir():
        raise CliError(f"--out {a.out} is a directory; give a file name")
    j = _reader(a.run_dir)
    branch = int(j.meta().get("branch", 0))
    rows = j.export_rows(branch)
    if a.format == "csv":
        with open(a.out, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["step"])
            w.writeheader()
            w.writerows(rows)
    else:
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError:
            raise CliError("parquet export needs pyarrow: pip install pyarrow") from None
        pq.write_table(pa.Table.from_pylist(rows), a.out)
    print(f"wrote {len(rows)} rows to {a.out}", file=sys.stderr)


def _cmd_diagnose(a) -> None:
    from .advice import advise, summary

    j = _reader(a.run_dir)
    meta = j.meta()
    branch = int(meta.get("branch", 0))
    classes = (meta.get("run_info") or {}).get("classes")
    s, tips = summary(j, branch), advise(j, branch, classes)
    if a.json:
        print(json.dumps({**s, "advice": [t.__dict__ for t in tips]}, indent=1))
        return
    g = lambda v, spec=".3g": format(v, spec) if v is not None else "-"  # noqa: E731
    print(f"step {s['step'] or 0} · loss {g(s['loss'])} (median of 50: {g(s['loss_median_50'])}) · grad norm "
          f"{g(s['grad_norm'])} · update/weight {g(s['update_ratio'], '.2e')} (median of 50: "
          f"{g(s['update_ratio_median_50'], '.2e')}; healthy ~1e-3)")
    if s["val_loss"] is not None:
        print(f"last eval: val loss {g(s['val_loss'])} · train loss {g(s['train_loss'])}")
    if s["layers"]:
        print(f"layers at step {s['layers_step']}:")
        print(f"  {'layer':24s} {'grad norm':>10} {'upd/weight':>10} {'weight':>9} {'act mean':>9} {'act std':>8} "
              f"{'dead':>6} {'sat':>6}")
        pct = lambda v: f"{v:.0%}" if v is not None else "-"  # noqa: E731
        for r in s["layers"]:
            print(f"  {r['layer'][:24]:24s} {g(r['grad_norm']):>10} {g(r['update_ratio'], '.2e'):>10} "
                  f"{g(r['weight_norm']):>9} {g(r['act_mean']):>9} {g(r['act_std']):>8} {pct(r['act_dead']):>6} "
                  f"{pct(r['act_sat']):>6}")
    print("advice:" if tips else "advice: none (nothing in the instruments looks off)")
    for t in tips:
        print(f"  [{t.severity}] {t.text}")


def main(argv: list[str] | None = None) -> int:
    a = parser().parse_args(argv)
    if a.cmd == "ctl":
        return _cmd_ctl(a)
    from .engine import RunExistsError
    from .snapshot import CheckpointError
    from .tasks import TaskError

    try:
        if a.cmd in ("run", "resume") and _rank() > 0:
            return _cmd_follow()
        if a.cmd in ("probe", "lr-find"):
            return _cmd_probe(a)
        {"run": _cmd_run, "resume": _cmd_resume, "checkpoints": _cmd_checkpoints, "export": _cmd_export,
         "diagnose": _cmd_diagnose}[a.cmd](a)
    except (CliError, ConfigError, HParamError, TaskError, CheckpointError, RunExistsError, RunLockedError,
            JournalError, OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
