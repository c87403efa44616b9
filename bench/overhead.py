"""Trainer overhead against a bare PyTorch loop: same model, data, batch size and step count.

The trainer runs with its thread, journal and automatic checkpoints at the default cadence (no UI,
no evaluation, since the bare loop does none). Each run is a fresh process (OpenMP thread teams left
by one run slow down the next), runs are interleaved, and each side reports its median, because the
machines here are shared and noisy. The last line is the summary.

    python bench/overhead.py [--tasks spirals digits] [--steps 3000] [--repeats 5] [--pairs 20] [--device auto]

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
from trainer.engine import build_optimizer, resolve_device  # noqa: E402
from trainer.hparams import HParams, validate  # noqa: E402


KINDS = {
    "bare": "bare loop (PyTorch defaults)",
    "fused": "bare loop, fused optimizer",
    "same-work": "bare loop, fused optimizer + per-step grad norm and NaN check",
}


def bare_loop(task_name: str, steps: int, device: torch.device, kind: str = "bare", seed: int = 0) -> float:
    """The loop a user would write by hand: shuffle each epoch, slice, forward, backward, step.

    "bare" uses PyTorch's default optimizer kernel, what a hand-written loop gets. "fused" uses the
    kernel the trainer uses. "same-work" also does the trainer's per-step computation (gradient norm,
    loss read-back, finiteness check), so trainer / same-work isolates the thread, journal and
    checkpoint machinery.
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
    perm, pos = torch.randperm(n, generator=g), 0
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        idx = perm[pos:pos + bs].to(device)
        pos += bs
        if pos >= n:
            perm, pos = torch.randperm(n, generator=g), 0
        loss = task.loss(model(x[idx]), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if kind == "same-work":
            norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm([p.grad for p in params])))
            if not (math.isfinite(loss.item()) and math.isfinite(norm.item())):
                raise FloatingPointError("diverged")
        opt.step()
    loss.item()  # wait for the device
    return steps / (time.perf_counter() - t0)


def trainer_run(task_name: str, steps: int, device: str, root: str, seed: int = 0, warm: int = 200,
                instruments: bool = True) -> float:
    """Train `warm` steps (allocator, kernels, lazy imports), then time the next `steps` on the same thread.
    instruments=False turns off the per-step update ratio and the per-layer instruments (the sentinel
    still judges the loss and gradient norm, which the guard reads anyway)."""
    cfg = RunConfig(task=task_name, run_dir=tempfile.mkdtemp(dir=root), max_steps=warm, seed=seed,
                    device=device, eval_every=0, eval_at_epoch_end=False, instruments=instruments,
                    instrument_every=50 if instruments else 0)
    t = Trainer.create(cfg)
    t.start().wait()
    t.wait()
    t.set_max_steps(warm + steps).wait()
    t0 = time.perf_counter()
    t.start()
    t.wait()
    rate = steps / (time.perf_counter() - t0)
    st = t.status()
    assert st.step == warm + steps and st.state == "done", (st.step, st.state, st.error)
    t.close()
    return rate


def instruments_ab(task_name: str, pairs: int, device: str, root: str, chunk: int = 500) -> tuple[float, float, float]:
    """(median steps/s on, off, median of the per-pair ratios on/off), trained in alternating chunks."""
    def make(on: bool) -> Trainer:
        cfg = RunConfig(task=task_name, run_dir=tempfile.mkdtemp(dir=root), max_steps=200, device=device, threads=1,
                        eval_every=0, eval_at_epoch_end=False, instruments=on, instrument_every=50 if on else 0)
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


def instruments_share(task_name: str, steps: int, device: str, root: str) -> tuple[float, float]:
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
                        eval_every=0, eval_at_epoch_end=False)
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


def one(kind: str, name: str, steps: int, device: str) -> float:
    """Run one measurement in a fresh process; returns steps/s."""
    out = subprocess.run([sys.executable, __file__, "--one", kind, "--tasks", name, "--steps", str(steps),
                          "--device", device], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", nargs="+", default=["spirals", "digits"])
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--pairs", type=int, default=20, help="chunks per side of the paired instruments on/off run")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--one", choices=(*KINDS, "trainer", "no-instruments"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    device = resolve_device(a.device)
    torch.use_deterministic_algorithms(device.type == "cpu")  # as the trainer runs on the CPU
    if a.one:
        with tempfile.TemporaryDirectory() as root:
            warm = 200  # allocator, kernels, lazy imports
            if a.one in KINDS:
                bare_loop(a.tasks[0], warm, device, a.one)
                print(bare_loop(a.tasks[0], a.steps, device, a.one))
            else:
                print(trainer_run(a.tasks[0], a.steps, str(device), root, warm=warm,
                                  instruments=a.one == "trainer"))
        return
    print(f"device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"{a.steps} steps x {a.repeats} interleaved repeats, one process each")
    ratios, paired, share = {}, {}, {}
    for name in a.tasks:
        runs = {k: [] for k in (*KINDS, "no-instruments", "trainer")}
        for _ in range(a.repeats):
            for kind in runs:
                runs[kind].append(one(kind, name, a.steps, str(device)))
        med = {k: statistics.median(v) for k, v in runs.items()}
        ratios[name] = (med["trainer"] / med["bare"], med["trainer"] / med["same-work"],
                        med["trainer"] / med["no-instruments"])
        for k, label in {**KINDS, "no-instruments": "trainer, instruments off (no update ratio, no layer stats)",
                         "trainer": "trainer (thread, journal, checkpoints every 200, instruments)"}.items():
            print(f"{name:8s} {label:64s} {med[k]:7.0f} steps/s   ratio to bare {med[k] / med['bare']:.3f}")
        with tempfile.TemporaryDirectory() as root:
            on, off, paired[name] = instruments_ab(name, a.pairs, str(device), root)
            share[name] = instruments_share(name, a.steps, str(device), root)
        print(f"{name:8s} paired, 1 thread, {a.pairs} x 500 steps each: instruments on {on:.0f}, off {off:.0f} "
              f"steps/s; median pair ratio {paired[name]:.3f}")
        print(f"{name:8s} timed inside one run: instruments {share[name][0]:.1f} µs of a {share[name][1]:.0f} µs "
              f"step = {share[name][0] / share[name][1]:.1%}")
    print("summary: trainer/bare steps/s ratio " + ", ".join(f"{k} {v[0]:.3f}" for k, v in ratios.items())
          + "; trainer/same-work " + ", ".join(f"{k} {v[1]:.3f}" for k, v in ratios.items())
          + "; instruments on/off " + ", ".join(f"{k} {v[2]:.3f}" for k, v in ratios.items())
          + " (paired: " + ", ".join(f"{k} {v:.3f}" for k, v in paired.items()) + "); instruments' share of the "
          "step timed in one run: " + ", ".join(f"{k} {v[0] / v[1]:.1%}" for k, v in share.items())
          + f" on {device} (targets: trainer/bare >= 0.97, instruments <= 3 %)")


if __name__ == "__main__":
    main()
