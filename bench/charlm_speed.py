"""charlm's default size through the Trainer against a bare nanoGPT-style loop of the same model.

Both run in this one process, in alternating chunks (the machines here are shared and noisy, so each
pair sees the machine at the same moment), and each side reports its median. The trainer runs with
its thread, journal, automatic checkpoints every 200 steps and instruments, no evaluation (the bare
loop does none); the bare loop does what nanoGPT's train.py does per step: warm-up lr written into
param_groups, forward, backward, gradient clipping, fused AdamW. One evaluation's cost is timed
apart, since it decides how often a run can afford one. The last line is the summary.

    python bench/charlm_speed.py [--pairs 4] [--chunk 120] [--task charlm] [--threads 0]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from trainer import RunConfig, Trainer, load_task  # noqa: E402
from trainer.data import all_batches  # noqa: E402
from trainer.hparams import HParams, decayed_lr, validate  # noqa: E402


class Bare:
    """The loop a user would write by hand, one chunk of steps at a time."""

    def __init__(self, task_name: str, seed: int = 0):
        self.task = load_task(task_name, seed=seed)
        self.model = self.task.model
        self.hp = hp = validate(HParams(), self.task.defaults)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=hp.lr, betas=(hp.momentum, 0.999),
                                     weight_decay=hp.weight_decay, fused=True)
        self.x, self.y = self.task.train_data.tensors
        self.g = torch.Generator().manual_seed(seed)
        self.perm, self.pos, self.step = torch.randperm(len(self.x), generator=self.g), 0, 0

    def run(self, steps: int) -> float:
        t0 = time.perf_counter()
        bs = self.hp.batch_size
        for _ in range(steps):
            self.step += 1
            for group in self.opt.param_groups:
                group["lr"] = decayed_lr(self.hp, 0, self.step)
            idx = self.perm[self.pos:self.pos + bs]
            self.pos += bs
            if self.pos >= len(self.x):
                self.perm, self.pos = torch.randperm(len(self.x), generator=self.g), 0
            loss = self.task.loss(self.model(self.x[idx]), self.y[idx])
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.hp.grad_clip)
            self.opt.step()
        loss.item()
        return steps / (time.perf_counter() - t0)


def trainer_chunk(t: Trainer, steps: int) -> float:
    t.set_max_steps(t.status().step + steps).wait()
    t0 = time.perf_counter()
    t.start()
    t.wait()
    rate = steps / (time.perf_counter() - t0)
    assert t.status().state == "done", (t.status().state, t.status().error)
    return rate


@torch.no_grad()
def evaluation_s(task) -> tuple[float, float]:
    """(seconds of the engine's evaluation pass, seconds of show()), in eval mode."""
    model, cpu = task.model.eval(), torch.device("cpu")
    t0 = time.perf_counter()
    most = min(2048, len(task.val_data))
    for ds, limit in ((task.val_data, None), (task.train_data, most)):  # as Trainer._evaluate reads them
        for x, y in all_batches(ds, 512, cpu, limit):
            out = model(x)
            for fn in (task.loss, *task.metrics.values()):
                float(fn(out, y))
    t1 = time.perf_counter()
    task.show(model, cpu)
    model.train()
    return t1 - t0, time.perf_counter() - t1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", default="charlm")
    ap.add_argument("--pairs", type=int, default=4, help="chunks per side, alternating")
    ap.add_argument("--chunk", type=int, default=120, help="steps per chunk")
    ap.add_argument("--warm", type=int, default=30, help="steps each side runs before timing")
    ap.add_argument("--threads", type=int, default=0, help="CPU threads of each side; 0 = PyTorch's default")
    a = ap.parse_args()
    torch.use_deterministic_algorithms(True)  # as the trainer runs on the CPU
    if a.threads:
        torch.set_num_threads(a.threads)
    print(f"{a.task} on cpu, torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"{a.pairs} x {a.chunk} steps per side after {a.warm} warm-up steps")
    bare = Bare(a.task)
    with tempfile.TemporaryDirectory() as root:
        cfg = RunConfig(task=a.task, optimizer="adamw", run_dir=root + "/run", eval_every=0, eval_at_epoch_end=False,
                        threads=a.threads)
        t = Trainer.create(cfg)
        try:
            trainer_chunk(t, a.warm)
            bare.run(a.warm)
            rates: dict[str, list[float]] = {"bare": [], "trainer": []}
            for i in range(a.pairs):
                for side in (("bare", "trainer") if i % 2 else ("trainer", "bare")):
                    rates[side].append(bare.run(a.chunk) if side == "bare" else trainer_chunk(t, a.chunk))
        finally:
            t.close()
    med = {k: statistics.median(v) for k, v in rates.items()}
    ratio = statistics.median(tr / b for tr, b in zip(rates["trainer"], rates["bare"]))
    for k, v in rates.items():
        print(f"{k:8s} {med[k]:6.1f} steps/s   chunks: " + " ".join(f"{r:.1f}" for r in v))
    ev, show = min(evaluation_s(bare.task), evaluation_s(bare.task))  # the first may still fault in memory
    print(f"one evaluation: {ev:.2f} s (the val set and as many train windows) + {show:.2f} s show() "
          f"= the time of {(ev + show) * med['trainer']:.0f} training steps")
    print(f"summary: {a.task} trainer {med['trainer']:.1f} steps/s, bare loop {med['bare']:.1f} steps/s, "
          f"trainer/bare {ratio:.3f} (median of {a.pairs} pairs); an evaluation costs "
          f"{(ev + show) * med['trainer']:.0f} steps")


if __name__ == "__main__":
    main()
