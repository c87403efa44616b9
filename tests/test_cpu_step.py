"""The CPU step's fast paths (trainer/cpu_step.py: the flat gradient buffer, SGD's fused kernel called
directly) against a hand-written PyTorch loop: the same
weights bit for bit, with parameters some steps do not reach and one no step reaches, and the
journaled gradient norm equal to torch's total norm of the gradients."""

import pytest
import torch

from trainer import RunConfig, cpu_step, engine
from trainer.data import Batches
from trainer.engine import build_optimizer
from trainer.hparams import HParams, decayed_lr, validate
from trainer.tasks import load_task

from conftest import PLUGINS

STEPS = 60
WARMUP = 20  # the lr changes every step until then


def reference(spec: str, nesterov: bool, seed: int = 0):
    """What a user writes: zero_grad(set_to_none=True), backward, step, on the trainer's batches."""
    torch.manual_seed(seed)
    task = load_task(spec, seed=seed)
    model, params = task.model, list(task.model.parameters())
    hp = validate(HParams(), {**task.defaults, "warmup": WARMUP}, dataset_size=len(task.train_data))
    opt = build_optimizer(RunConfig(task=spec, nesterov=nesterov), params, hp, fused=True)
    batches = Batches(task.train_data, seed, torch.device("cpu"))
    norms, spare_used = [], []
    for step in range(1, STEPS + 1):
        opt.param_groups[0]["lr"] = decayed_lr(hp, 0, step)
        (x, y), _ = batches.next(hp.batch_size)
        loss = task.loss(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        spare_used.append(model.spare.weight.grad is not None)
        norms.append(float(torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])))
        opt.step()
    return model, norms, spare_used


@pytest.mark.parametrize("plugin, nesterov", [("make", False), ("make_dense", False), ("make_dense", True)])
def test_the_fast_step_trains_as_a_hand_written_loop(make, monkeypatch, plugin, nesterov):
    """With gaps, some steps leave parameters without a gradient (Optimizer.step must skip them);
    dense, every step takes the direct fused SGD call. Both equal the hand-written loop bit for bit."""
    spec = f"{PLUGINS / 'unused.py'}:{plugin}"
    fast = []
    monkeypatch.setattr(engine, "fused_sgd_step", lambda *a: fast.append(cpu_step.fused_sgd_step(*a)) or fast[-1])
    t = make(task=spec, hparams={"warmup": WARMUP}, nesterov=nesterov, max_steps=STEPS, threads=1, eval_every=0,
             eval_at_epoch_end=False)
    assert t._flat is not None  # the CPU path under test
    t.start().wait()
    assert t.wait(60) and t.status().step == STEPS
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the trainer's thread
    try:
        ref, norms, spare_used = reference(spec, nesterov)
    finally:
        torch.set_num_threads(threads)
    mine = dict(t.model.named_parameters())
    for name, p in ref.named_parameters():
        assert torch.equal(mine[name], p), name
    if plugin == "make":
        assert 0 < sum(spare_used) < STEPS  # the spare head sat some steps out
        assert torch.equal(mine["never"], torch.ones(4))  # no gradient ever: not even weight decay moved it
        assert not any(fast)
    else:
        assert fast.count(True) == STEPS - 1  # all but the first, which creates the momentum buffers
    t.journal.flush()
    rows = t.reader().query("SELECT step, grad_norm FROM steps WHERE branch = 0 ORDER BY step")
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    for r, n in zip(rows, norms):
        assert r["grad_norm"] == pytest.approx(n, rel=1e-6)


def test_closing_hands_the_gradients_back(make):
    t = make(task=f"{PLUGINS / 'unused.py'}:make", max_steps=5, eval_every=0, eval_at_epoch_end=False)
    t.start().wait()
    t.wait(60)
    params = list(t.model.parameters())
    t.close()
    for p in params:
        assert not p._post_accumulate_grad_hooks  # nothing of the run is left on the user's model
        assert p.grad is None or p.grad._base is None
