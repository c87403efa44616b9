"""Trainer overhead against a bare PyTorch loop: same model, data, batch size and step count.

The trainer runs with its thread, journal and automatic checkpoints at the default cadence (no UI,
no evaluation, since the bare loop does none). Each run is a fresh process (OpenMP thread teams left
by one run slow down the next), runs are interleaved, and each side reports its median, because the
machines here are shared and noisy. The last line is the summary.

    python bench/overhead.py [--tasks spirals digits] [--steps 3000] [--repeats 5] [--pairs 20] [--device auto]
                             [--precision fp32|bf16|fp16] [--quick] [--json FILE]

Tasks are built-ins or plugin specs, e.g. bench/tasks.py:wide_mlp, the GPU-sized MLP. --precision
applies to both sides: the bare loop then does what a hand-written AMP loop does (autocast around
forward and loss; for fp16 a GradScaler, whose step is sync-free with the fused optimizer kinds).
--quick measures only the bare loop and the trainer and skips the instruments' paired and in-run
timings (bench/gpu_check.py uses it to stay within its time budget).

The cost of the instruments (the update ratio, per-layer statistics every 50 steps) is a few
percent, below this machine's run-to-run noise (the same run varies by 20 % here, and two identical
trainers paired in one process by 5-10 %). So besides the interleaved processes and a paired run
(two trainers in one process, instruments on and off, alternating chunks of 500 steps, one CPU
thread each so the two OpenMP teams do not fight; the median of the per-pair ratios), the share of
the training step spent in the instruments' own code is timed inside one run: numerator and
denominator see the same machine at the same moment.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from trainer import RunConfig, Trainer, load_task  # noqa: E402
from trainer.config import BUILTIN_TASKS  # noqa: E402
from trainer.engine import AMP_DTYPES, build_optimizer, resolve_device  # noqa: E402
from trainer.hparams import HParams, validate  # noqa: E402


KINDS = {
    "bare": "bare loop (PyTorch defaults)",
    "fused": "bare loop, fused optimizer",
    "same-work": "bare loop, fused optimizer + per-step grad norm and NaN check",
}
TRAINER_KINDS = {
    "no-instruments": "trainer, instruments off (no update ratio, no layer stats)",
    "trainer": "trainer (thread, journal, checkpoints every 200, instruments)",
}
QUICK = ("bare", "trainer")


def label(spec: str) -> str:
    """A task's name in the tables: a built-in spec as it is, a plugin by its function's name."""
    return spec if spec.partition(":")[0] in BUILTIN_TASKS else spec.rpartition(":")[2]


def bare_loop(task_name: str, steps: int, device: torch.device, kind: str = "bare", seed: int = 0,
              precision: str = "fp32") -> float:
    """The loop a user would write by hand: shuffle each epoch, slice, forward, backward, step.

    "bare" uses PyTorch's default optimizer kernel, what a hand-written loop gets. "fused" uses the
    kernel the trainer uses. "same-work" also does the trainer's per-step computation (gradient norm,
    loss read-back, finiteness check), so trainer / same-work isolates the thread, journal and
    checkpoint machinery. bf16 and fp16 wrap forward and loss in autocast; fp16 adds a GradScaler.
    """
    torch.manual_seed(seed)
    task = load_task(task_name, seed=seed)
    model = task.model.to(device)
    params = list(model.parameters())
    hp = validate(HParams(), task.defaults)
    opt = build_optimizer(RunConfig(), params, hp, fused=kind != "bare")
    x, y = (t.to(device) for t in task.train_data.tensors)
    n, bs = len(x), hp.batch_size
    g = torch.Generator().manual_seed(seed)
    # The permutation lives on the device, as the trainer's does: a per-step copy of the indices to
    # CUDA would be a blocking copy, a sync each step that the baseline should not pay.
    perm, pos = torch.randperm(n, generator=g).to(device), 0
    dtype = AMP_DTYPES[precision]
    # fp32 gets no context at all: entering even a disabled autocast costs a few µs a step
    amp = torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()
    # fp16 only: even a disabled GradScaler's calls would cost the fp32 baseline a few µs a step
    scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        idx = perm[pos:pos + bs]
        pos += bs
        if pos >= n:
            perm, pos = torch.randperm(n, generator=g).to(device), 0
        with amp:
            loss = task.loss(model(x[idx]), y[idx])
        opt.zero_grad(set_to_none=True)
        (loss if scaler is None else scaler.scale(loss)).backward()
        if kind == "same-work":
            if scaler is not None:
                scaler.unscale_(opt)
            norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm([p.grad for p in params])))
            if not (math.isfinite(loss.item()) and math.isfinite(norm.item())):
                raise FloatingPointError("diverged")
        if scaler is None:
            opt.step()
        else:
            scaler.step(opt)
            scaler.update()
    loss.item()  # wait for the device
    return steps / (time.perf_counter() - t0)


def timed_steps(t: Trainer, warm: int, steps: int) -> float:
    """Train t to step `warm` untimed, then time the next `steps` (final checkpoint included): steps/s."""
    t.set_max_steps(warm).wait()
    t.start().wait()
    t.wait()
    t.set_max_steps(warm + steps).wait()
    t0 = time.perf_counter()
    t.start()
    t.wait()
    return steps / (time.perf_counter() - t0)


def trainer_run(task_name: str, steps: int, device: str, root: str, seed: int = 0, warm: int = 200,
                instruments: bool = True, precision: str = "fp32") -> float:
    """Train `warm` steps (allocator, kernels, lazy imports), then time the next `steps` on the same thread.
    instruments=False turns off the per-step update ratio and the per-layer instruments (the sentinel
    still judges the loss and gradient norm, which the guard reads anyway)."""
    cfg = RunConfig(task=task_name, run_dir=tempfile.mkdtemp(dir=root), max_steps=warm, seed=seed,
                    device=device, eval_every=0, eval_at_epoch_end=False, instruments=instruments,
                    instrument_every=50 if instruments else 0, precision=precision)
    t = Trainer.create(cfg)
    rate = timed_steps(t, warm, steps)
    st = t.status()
    assert st.step == warm + steps and st.state == "done", (st.step, st.state, st.error)
    t.close()
    return rate


def instruments_ab(task_name: str, pairs: int, device: str, root: str, chunk: int = 500,
                   precision: str = "fp32") -> tuple[float, float, float]:
    """(median steps/s on, off, median of the per-pair ratios on/off), trained in alternating chunks."""
    def make(on: bool) -> Trainer:
        cfg = RunConfig(task=task_name, run_dir=tempfile.mkdtemp(dir=root), max_steps=200, device=device, threads=1,
                        eval_every=0, eval_at_epoch_end=False, instruments=on, instrument_every=50 if on else 0,
                        precision=precision)
        t = Trainer.create(cfg)
        t.start().wait()
        t.wait()
        return t

    runs = {True: make(True), False: make(False)}
    rates: dict[bool, list[float]] = {True: [], False: []}
    try:
        for i in range(pairs):
            for on in ((True, False) if i % 2 else (False, True)):
                t = runs[on]
                t.set_max_steps(t.status().step + chunk).wait()
                t0 = time.perf_counter()
                t.start()
                t.wait()
                rates[on].append(chunk / (time.perf_counter() - t0))
    finally:
        for t in runs.values():
            t.close()
    ratio = statistics.median(a / b for a, b in zip(rates[True], rates[False]))
    return statistics.median(rates[True]), statistics.median(rates[False]), ratio


def instruments_share(task_name: str, steps: int, device: str, root: str, precision: str = "fp32") -> tuple[float, float]:
    """(µs per step spent in the instruments' code, µs per training step), timed inside one run."""
    from trainer import engine, instruments, sentinel

    spent = {"in": 0.0, "step": 0.0}
    patched = []

    def timed(cls, name, key):
        f = getattr(cls, name)

        def g(*a, **k):
            t0 = time.perf_counter()
            try:
                return f(*a, **k)
            finally:
                spent[key] += time.perf_counter() - t0
        setattr(cls, name, g)
        patched.append((cls, name, f))

    for name in ("before", "after", "arm", "disarm", "layer_rows"):
        timed(instruments.Instruments, name, "in")
    timed(sentinel.Sentinel, "judge_update", "in")
    timed(engine.Trainer, "_train_step", "step")
    try:
        cfg = RunConfig(task=task_name, run_dir=tempfile.mkdtemp(dir=root), max_steps=200, device=device,
                        eval_every=0, eval_at_epoch_end=False, precision=precision)
        t = Trainer.create(cfg)
        t.start().wait()
        t.wait()
        spent.update({"in": 0.0, "step": 0.0})
        t.set_max_steps(200 + steps).wait()
        t.start().wait()
        t.wait()
        t.close()
    finally:
        for cls, name, f in patched:
            setattr(cls, name, f)
    return spent["in"] / steps * 1e6, spent["step"] / steps * 1e6


def one(kind: str, name: str, steps: int, device: str, precision: str, warm: int) -> float:
    """Run one measurement in a fresh process; returns steps/s."""
    out = subprocess.run([sys.executable, __file__, "--one", kind, "--tasks", name, "--steps", str(steps),
                          "--device", device, "--precision", precision, "--warm", str(warm)],
                         capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(f"{kind} on {name} ({precision}) failed:\n{out.stderr[-3000:]}")
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", nargs="+", default=["spirals", "digits"],
                    help="built-ins or plugin specs, e.g. bench/tasks.py:wide_mlp (default: spirals digits)")
    ap.add_argument("--steps", type=int, default=3000, help="timed steps per measurement (default: 3000)")
    ap.add_argument("--repeats", type=int, default=5, help="interleaved processes per kind (default: 5)")
    ap.add_argument("--pairs", type=int, default=20, help="chunks per side of the paired instruments on/off run")
    ap.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    ap.add_argument("--precision", choices=tuple(AMP_DTYPES), default="fp32", help="both sides (default: fp32)")
    ap.add_argument("--warm", type=int, default=200, help="untimed steps before the timed ones (default: 200)")
    ap.add_argument("--quick", action="store_true", help="only the bare loop and the trainer; no paired or "
                                                         "in-run instruments timings")
    ap.add_argument("--json", help="also write the medians and every run's steps/s to this file")
    ap.add_argument("--one", choices=(*KINDS, *TRAINER_KINDS), help=argparse.SUPPRESS)
    a = ap.parse_args()
    device = resolve_device(a.device)
    torch.use_deterministic_algorithms(device.type == "cpu")  # as the trainer runs on the CPU
    if a.one:
        with tempfile.TemporaryDirectory() as root:
            if a.one in KINDS:
                bare_loop(a.tasks[0], a.warm, device, a.one, precision=a.precision)  # allocator, kernels, lazy imports
                print(bare_loop(a.tasks[0], a.steps, device, a.one, precision=a.precision))
            else:
                print(trainer_run(a.tasks[0], a.steps, str(device), root, warm=a.warm,
                                  instruments=a.one == "trainer", precision=a.precision))
        return
    print(f"device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}, {a.precision}, "
          f"{a.steps} steps x {a.repeats} interleaved repeats, one process each")
    labels = {name: label(name) for name in a.tasks}
    width = max(8, *map(len, labels.values()))
    kinds = QUICK if a.quick else (*KINDS, *TRAINER_KINDS)
    ratios, paired, share, report = {}, {}, {}, {}
    for name in a.tasks:
        lab = labels[name]
        runs = {k: [] for k in kinds}
        for _ in range(a.repeats):
            for kind in runs:
                runs[kind].append(one(kind, name, a.steps, str(device), a.precision, a.warm))
        med = {k: statistics.median(v) for k, v in runs.items()}
        ratios[lab] = {"trainer/bare": med["trainer"] / med["bare"]}
        if not a.quick:
            ratios[lab] |= {"trainer/same-work": med["trainer"] / med["same-work"],
                            "instruments on/off": med["trainer"] / med["no-instruments"]}
        report[lab] = {"spec": name, "steps_per_s": med, "runs": runs, **ratios[lab]}
        for k in kinds:
            print(f"{lab:{width}s} {({**KINDS, **TRAINER_KINDS})[k]:64s} {med[k]:7.0f} steps/s   "
                  f"ratio to bare {med[k] / med['bare']:.3f}")
        if a.quick:
            continue
        with tempfile.TemporaryDirectory() as root:
            on, off, paired[lab] = instruments_ab(name, a.pairs, str(device), root, precision=a.precision)
            share[lab] = instruments_share(name, a.steps, str(device), root, precision=a.precision)
        report[lab] |= {"paired on/off": paired[lab], "instruments share": share[lab][0] / share[lab][1]}
        print(f"{lab:{width}s} paired, 1 thread, {a.pairs} x 500 steps each: instruments on {on:.0f}, off {off:.0f} "
              f"steps/s; median pair ratio {paired[lab]:.3f}")
        print(f"{lab:{width}s} timed inside one run: instruments {share[lab][0]:.1f} µs of a {share[lab][1]:.0f} µs "
              f"step = {share[lab][0] / share[lab][1]:.1%}")
    if a.json:
        Path(a.json).write_text(json.dumps({"device": str(device), "torch": torch.__version__, "precision": a.precision,
                                            "steps": a.steps, "repeats": a.repeats, "tasks": report}, indent=1))
    line = "summary: trainer/bare steps/s ratio " + ", ".join(f"{k} {v['trainer/bare']:.3f}" for k, v in ratios.items())
    if not a.quick:
        line += ("; trainer/same-work " + ", ".join(f"{k} {v['trainer/same-work']:.3f}" for k, v in ratios.items())
                 + "; instruments on/off " + ", ".join(f"{k} {v['instruments on/off']:.3f}" for k, v in ratios.items())
                 + " (paired: " + ", ".join(f"{k} {v:.3f}" for k, v in paired.items()) + "); instruments' share of "
                 "the step timed in one run: " + ", ".join(f"{k} {v[0] / v[1]:.1%}" for k, v in share.items()))
    print(line + f" on {device}, {a.precision} (targets: trainer/bare >= 0.97, on CUDA >= 0.90 for spirals"
          + ("" if a.quick else "; instruments <= 3 %") + ")")


if __name__ == "__main__":
    main()
