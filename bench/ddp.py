"""Panda's data-parallel overhead against a bare DDP loop, and what a live command costs under DDP.

Each measurement is a fresh `torchrun --standalone` job on this machine (gloo on CPU, NCCL on CUDA):

- bare: the loop a user writes with torch.nn.parallel.DistributedDataParallel (one process: the plain
  loop, as bench/overhead.py's): each rank takes its
  slice of the same global batch (one seeded permutation), forward, backward (DDP all-reduces the
  gradients), the fused optimizer's step. No journal, no checkpoints, no guard.
- panda: `Trainer` under torchrun (rank 0 serves the run, rank 1 follows): the journal, automatic
  checkpoints every 200 steps, instruments, the guard, the sentinel; evaluation off, as in
  bench/overhead.py, since the bare loop evaluates nothing.

Both time `--steps` steps after 200 warm-up steps. Jobs alternate, and each side reports its median,
because this machine is shared and noisy. Also measured, in the panda job: how long a live command
takes from submit to "applied" (it rides the next step's all-reduce, then one sync round), against
the same in one process. The last line is the summary.

    python bench/ddp.py [--task spirals] [--nproc 2] [--steps 2000] [--repeats 3] [--json FILE]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

WARM = 200


def bare(task_name: str, steps: int) -> dict:
    import torch
    import torch.distributed as dist

    from trainer import RunConfig, load_task
    from trainer.engine import build_optimizer, resolve_device
    from trainer.hparams import HParams, validate

    from trainer.dist import launched

    device = resolve_device("auto")
    torch.manual_seed(0)
    task = load_task(task_name, seed=0)
    model = task.model.to(device)
    ddp, rank, world = model, 0, 1  # one process: the plain loop
    if launched():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        rank, world = dist.get_rank(), dist.get_world_size()
        ids = [device.index] if device.type == "cuda" else None
        ddp = torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)
    barrier = dist.barrier if launched() else (lambda: None)
    hp = validate(HParams(), task.defaults)
    opt = build_optimizer(RunConfig(), model.parameters(), hp, fused=True)
    x, y = (t.to(device) for t in task.train_data.tensors)
    n, bs = len(x), hp.batch_size
    g = torch.Generator().manual_seed(0)
    perm, pos = torch.randperm(n, generator=g).to(device), 0
    t0 = 0.0
    for i in range(WARM + steps):
        if i == WARM:
            barrier()
            t0 = time.perf_counter()
        idx = perm[pos:pos + bs]
        pos += bs
        if pos >= n:
            perm, pos = torch.randperm(n, generator=g).to(device), 0
        m = len(idx)
        mine = idx[rank * m // world:(rank + 1) * m // world]
        loss = task.loss(ddp(x[mine]), y[mine])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    loss.item()
    barrier()
    rate = steps / (time.perf_counter() - t0)
    if launched():
        dist.destroy_process_group()
    return {"steps_per_s": rate}


def panda(task_name: str, steps: int, commands: int) -> dict | None:
    from overhead import timed_steps
    from trainer import RunConfig, Trainer
    from trainer.dist import launched

    if launched() and int(os.environ["RANK"]) > 0:
        Trainer.follow().join()
        return None
    root = tempfile.mkdtemp()
    cfg = RunConfig(task=task_name, run_dir=os.path.join(root, "run"), max_steps=WARM, eval_every=0,
                    eval_at_epoch_end=False)
    t = Trainer.create(cfg)
    rate = timed_steps(t, WARM, steps)
    assert t.status().step == WARM + steps, t.status()
    # a live command's latency while training: submit -> applied (the result comes back)
    t.set_max_steps(0).wait()
    t.start().wait()
    lat = []
    lr = t.status().hparams.lr
    for i in range(commands):
        time.sleep(0.05)
        c0 = time.perf_counter()
        r = t.set_hparams(lr=lr * (1.0 + 1e-3 * (i % 2))).wait()
        lat.append(time.perf_counter() - c0)
        assert r.ok, r.message
    t.close()
    return {"steps_per_s": rate, "command_ms": 1e3 * statistics.median(lat)}


def job(kind: str, task: str, nproc: int, steps: int, commands: int) -> dict:
    args = [os.path.abspath(__file__), "--worker", kind, "--task", task, "--steps", str(steps),
            "--commands", str(commands)]
    if nproc > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc), *args]
    else:
        cmd = [sys.executable, *args]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1800)
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("{")]
    if r.returncode or not lines:
        raise RuntimeError(f"{kind} x{nproc} failed ({r.returncode}):\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}")
    return json.loads(lines[0])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", default="spirals")
    p.add_argument("--nproc", type=int, default=2)
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--commands", type=int, default=20)
    p.add_argument("--json")
    p.add_argument("--worker", choices=("bare", "panda"), help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        out = bare(a.task, a.steps) if a.worker == "bare" else panda(a.task, a.steps, a.commands)
        if out is not None and int(os.environ.get("RANK", "0")) == 0:
            print(json.dumps(out), flush=True)
        sys.stderr.flush()
        os._exit(0)  # as trainer/__main__.py: gloo's teardown at interpreter exit aborts now and then

    import torch

    where = f"{torch.cuda.get_device_name()}" if torch.cuda.is_available() else f"CPU, {os.cpu_count()} cores"
    print(f"# {a.task}, {a.steps} steps after {WARM} warm-up, {a.repeats} alternating repeats; {where}, "
          f"torch {torch.__version__}")
    res: dict[str, list[dict]] = {}
    for i in range(a.repeats):
        order = [("bare", a.nproc), ("panda", a.nproc), ("bare", 1), ("panda", 1)]
        for kind, n in (order if i % 2 == 0 else order[::-1]):
            r = job(kind, a.task, n, a.steps, a.commands)
            res.setdefault(f"{kind} x{n}", []).append(r)
            print(f"{kind:5s} x{n}: {r['steps_per_s']:8.1f} steps/s"
                  + (f", command {r['command_ms']:.1f} ms" if "command_ms" in r else ""), flush=True)
    med = {k: statistics.median(r["steps_per_s"] for r in v) for k, v in res.items()}
    cmd = {k: statistics.median(r["command_ms"] for r in v) for k, v in res.items() if k.startswith("panda")}
    n = a.nproc
    ratio = med[f"panda x{n}"] / med[f"bare x{n}"]
    print("\n| job | steps/s (median) |\n|---|---|")
    for k, v in med.items():
        print(f"| {k} | {v:,.1f} |")
    summary = {"task": a.task, "nproc": n, "steps_per_s": med, "command_ms": cmd, "panda_over_bare_ddp": ratio,
               "panda_over_bare_1": med["panda x1"] / med["bare x1"], "where": where}
    if a.json:
        Path(a.json).write_text(json.dumps(summary, indent=2))
    print(f"ddp: panda/bare DDP x{n} = {ratio:.3f} (target >= 0.97); one process {summary['panda_over_bare_1']:.3f}; "
          f"x{n} vs x1: panda {med[f'panda x{n}'] / med['panda x1']:.2f}, bare {med[f'bare x{n}'] / med['bare x1']:.2f}; "
          f"live command {cmd[f'panda x{n}']:.1f} ms x{n} vs {cmd['panda x1']:.1f} ms x1")


if __name__ == "__main__":
    main()
