"""Trainer overhead against a bare PyTorch loop: same model, data, batch size and step count.

The trainer runs with its thread, journal and automatic checkpoints at the default cadence (no UI,
no evaluation, since the bare loop does none). Each run is a fresh process (OpenMP thread teams left
by one run slow down the next), runs are interleaved, and each side reports its median, because the
machines here are shared and noisy. The last line is the summary.

    python bench/overhead.py [--tasks spirals digits] [--steps 3000] [--repeats 5] [--device auto]
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


def trainer_run(task_name: str, steps: int, device: str, root: str, seed: int = 0, warm: int = 200) -> float:
    """Train `warm` steps (allocator, kernels, lazy imports), then time the next `steps` on the same thread."""
    cfg = RunConfig(task=task_name, run_dir=tempfile.mkdtemp(dir=root), max_steps=warm, seed=seed,
                    device=device, eval_every=0, eval_at_epoch_end=False)
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
    ap.add_argument("--device", default="auto")
    ap.add_argument("--one", choices=(*KINDS, "trainer"), help=argparse.SUPPRESS)
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
                print(trainer_run(a.tasks[0], a.steps, str(device), root, warm=warm))
        return
    print(f"device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"{a.steps} steps x {a.repeats} interleaved repeats, one process each")
    ratios = {}
    for name in a.tasks:
        runs = {k: [] for k in (*KINDS, "trainer")}
        for _ in range(a.repeats):
            for kind in runs:
                runs[kind].append(one(kind, name, a.steps, str(device)))
        med = {k: statistics.median(v) for k, v in runs.items()}
        ratios[name] = (med["trainer"] / med["bare"], med["trainer"] / med["same-work"])
        for k, label in {**KINDS, "trainer": "trainer (thread, journal, checkpoints every 200)"}.items():
            print(f"{name:8s} {label:64s} {med[k]:7.0f} steps/s   ratio to bare {med[k] / med['bare']:.3f}")
    print("summary: trainer/bare steps/s ratio " + ", ".join(f"{k} {v[0]:.3f}" for k, v in ratios.items())
          + "; trainer/same-work " + ", ".join(f"{k} {v[1]:.3f}" for k, v in ratios.items())
          + f" on {device} (target >= 0.97)")


if __name__ == "__main__":
    main()
