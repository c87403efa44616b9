"""torch's own DistributedDataParallel loop on a task, as a reference for Panda's data parallel: the
same global batches (trainer.data.Batches), each rank's contiguous slice, the same fused optimizer.
Run under torchrun; rank 0 prints the global loss of each step as a JSON list.

    torchrun --standalone --nproc-per-node 2 tests/ddp_reference.py TASK STEPS
"""
import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from trainer import RunConfig, load_task  # noqa: E402
from trainer.data import Batches  # noqa: E402
from trainer.engine import build_optimizer  # noqa: E402
from trainer.hparams import HParams, validate  # noqa: E402


def main(task_name: str, steps: int) -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)  # as the trainer seeds before it builds the task
    task = load_task(task_name, seed=0)
    ddp = torch.nn.parallel.DistributedDataParallel(task.model)
    hp = validate(HParams(), task.defaults)
    opt = build_optimizer(RunConfig(), task.model.parameters(), hp, fused=True)
    batches = Batches(task.train_data, 0, torch.device("cpu"))
    out = []
    for _ in range(steps):
        (x, y), _ = batches.next(hp.batch_size)
        m = len(y)
        lo, hi = rank * m // world, (rank + 1) * m // world
        loss = task.loss(ddp(x[lo:hi]), y[lo:hi])  # DDP averages the ranks' gradients
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        total = loss.detach().clone()
        dist.all_reduce(total)
        out.append(total.item() / world)
    if rank == 0:
        print(json.dumps(out), flush=True)
    dist.destroy_process_group()
    os._exit(0)  # as trainer/__main__.py: gloo's teardown at interpreter exit aborts now and then


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
