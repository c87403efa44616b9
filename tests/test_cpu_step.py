"""The CPU step's fast paths (trainer/cpu_step.py: the flat gradient buffer, SGD's fused kernel called
directly) against a hand-written PyTorch loop: the same weights bit for bit, with parameters some
steps do not reach and one no step reaches, and the journaled gradient norm equal to torch's total
norm of the gradients."""

import pytest
import torch
from torch.utils.checkpoint import checkpoint

from trainer import RunConfig, cpu_step, engine
from trainer.data import Batches
from trainer.engine import build_optimizer
from trainer.hparams import HParams, decayed_lr, validate
from trainer.tasks import load_task

from conftest import PLUGINS

STEPS = 60
WARMUP = 20  # the lr changes every step until then


def reference(spec: str, nesterov: bool, hparams: dict | None = None, fused: bool = True, seed: int = 0):
    """What a user writes: zero_grad(set_to_none=True), backward, step, on the trainer's batches."""
    torch.manual_seed(seed)
    task = load_task(spec, seed=seed)
    model, params = task.model, list(task.model.parameters())
    hp = validate(HParams(), {**task.defaults, "warmup": WARMUP, **(hparams or {})}, dataset_size=len(task.train_data))
    opt = build_optimizer(RunConfig(task=spec, nesterov=nesterov), params, hp, fused=fused)
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


def train(make, monkeypatch, spec: str, nesterov: bool = False, hparams: dict | None = None):
    """The trainer's run of `spec`, and whether each step took the direct fused call."""
    fast = []
    monkeypatch.setattr(engine, "fused_sgd_step", lambda *a: fast.append(cpu_step.fused_sgd_step(*a)) or fast[-1])
    t = make(task=spec, hparams={"warmup": WARMUP, **(hparams or {})}, nesterov=nesterov, max_steps=STEPS,
             threads=1, eval_every=0, eval_at_epoch_end=False)
    assert t._flat is not None  # the CPU path under test
    t.start().wait()
    assert t.wait(60) and t.status().step == STEPS, t.status().error
    return t, fast


def one_thread(f, *a, **k):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the trainer's thread
    try:
        return f(*a, **k)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("plugin, nesterov, hparams", [("make", False, {}), ("make_gaps", False, {}),
                                                       ("make_dense", False, {}), ("make_dense", True, {}),
                                                       ("make_dense", False, {"momentum": 0.0})])
def test_the_fast_step_trains_as_a_hand_written_loop(make, monkeypatch, plugin, nesterov, hparams):
    """With gaps, some steps leave parameters without a gradient (Optimizer.step must skip them);
    dense, every step takes the direct fused SGD call. Both equal the hand-written loop bit for bit."""
    spec = f"{PLUGINS / 'unused.py'}:{plugin}"
    t, fast = train(make, monkeypatch, spec, nesterov, hparams)
    ref, norms, spare_used = one_thread(reference, spec, nesterov, hparams)
    mine = dict(t.model.named_parameters())
    for name, p in ref.named_parameters():
        assert torch.equal(mine[name], p), name
    if plugin == "make":  # "never" is never reached: every step goes through Optimizer.step
        assert 0 < sum(spare_used) < STEPS  # the spare head sat some steps out
        assert torch.equal(mine["never"], torch.ones(4))  # no gradient ever: not even weight decay moved it
        assert not any(fast)
    elif plugin == "make_gaps":  # the direct call exactly on the steps that reached every parameter
        assert fast == spare_used
    else:
        assert fast == [True] * STEPS  # momentum buffers are made before the first step
    t.journal.flush()
    rows = t.reader().query("SELECT step, grad_norm FROM steps WHERE branch = 0 ORDER BY step")
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    for r, n in zip(rows, norms):
        assert r["grad_norm"] == pytest.approx(n, rel=1e-6)


def test_a_parameter_first_reached_after_the_first_step_trains(make, monkeypatch):
    """torch's fused SGD raises when some parameters have momentum buffers and others none (the spare
    head is first used at step 3); the trainer gives every parameter a zero buffer before step 1, the
    same first step bit for bit. The reference is torch's per-tensor SGD, which takes that case."""
    spec = f"{PLUGINS / 'unused.py'}:make_late"
    t, fast = train(make, monkeypatch, spec)
    ref, _, spare_used = one_thread(reference, spec, False, fused=False)
    assert not spare_used[0] and any(spare_used)
    mine = dict(t.model.named_parameters())
    for name, p in ref.named_parameters():
        torch.testing.assert_close(mine[name], p, rtol=1e-5, atol=1e-6)
    assert fast == spare_used


def test_closing_hands_the_gradients_back(make):
    t = make(task=f"{PLUGINS / 'unused.py'}:make", max_steps=5, eval_every=0, eval_at_epoch_end=False)
    t.start().wait()
    t.wait(60)
    params = list(t.model.parameters())
    t.close()
    for p in params:
        assert not p._post_accumulate_grad_hooks  # nothing of the run is left on the user's model
        assert p.grad is None or p.grad._base is None


def test_a_parameter_reached_twice_does_not_hide_one_never_reached():
    """Reentrant checkpointing runs a layer's backward twice: its parameters are reached twice,
    which must not count for a layer backward never reached."""
    torch.manual_seed(0)
    used, unused = torch.nn.Linear(3, 3), torch.nn.Linear(3, 3)
    flat = cpu_step.FlatGrads([*used.parameters(), *unused.parameters()])
    flat.zero()
    x = torch.randn(4, 3, requires_grad=True)
    out = checkpoint(used, checkpoint(used, x, use_reentrant=True), use_reentrant=True)
    out.sum().backward()
    flat.norm()
    assert not flat.complete
    assert used.weight.grad is not None and unused.weight.grad is None and unused.bias.grad is None
    flat.close()
