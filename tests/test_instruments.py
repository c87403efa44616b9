"""Per-layer instruments against numbers computed here by hand, on both of their code paths: the NumPy
views the CPU uses, and the torch path CUDA uses (taken on the CPU when the parameters cannot be viewed
as one NumPy buffer), which reads every statistic back in one copy."""
import math

import pytest
import torch
from torch import nn

from trainer.instruments import Instruments


def layer_norm(ts) -> float:
    return math.sqrt(sum(float(t.double().pow(2).sum()) for t in ts))


@pytest.mark.parametrize("numpy_path", [True, False], ids=["numpy", "torch"])
def test_layer_rows_equal_a_reference(numpy_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3), nn.Tanh())
    if not numpy_path:  # a transposed weight: no flat NumPy view, so the torch path
        model[2].weight = nn.Parameter(model[2].weight.detach().t().contiguous().t())
    params = list(model.parameters())
    ins = Instruments(model, params, torch.device("cpu"), every=1, ratio_every=1)
    assert ins.numpy == numpy_path
    opt = torch.optim.SGD(params, lr=0.5)
    x = torch.randn(32, 4) * 3
    ins.before()
    ins.arm()
    acts = {}
    hooks = [m.register_forward_hook(lambda m, i, o, k=k: acts.__setitem__(k, o.detach().clone()))
             for k, m in ((1, model[1]), (3, model[3]))]
    model(x).pow(2).mean().backward()
    for h in hooks:
        h.remove()
    ins.disarm()
    old = [p.detach().clone() for p in params]
    opt.step()
    ratio = ins.after()
    rows = {r.layer: r for r in ins.layer_rows(0, 1, ratio)}

    new = [p.detach() for p in params]
    delta = [a - b for a, b in zip(new, old)]
    whole = rows["(model)"]
    assert whole.grad_norm == pytest.approx(layer_norm(p.grad for p in params), rel=1e-6)
    assert whole.weight_norm == pytest.approx(layer_norm(new), rel=1e-6)
    assert whole.update_ratio == pytest.approx(layer_norm(delta) / layer_norm(new), rel=1e-5)
    for i in (0, 2):
        r, ps = rows[f"{i} Linear"], [model[i].weight, model[i].bias]
        d = delta[i:i + 2]  # params: w0 b0 w2 b2
        assert r.grad_norm == pytest.approx(layer_norm(p.grad for p in ps), rel=1e-6)
        assert r.weight_norm == pytest.approx(layer_norm(ps), rel=1e-6)
        assert r.update_ratio == pytest.approx(layer_norm(d) / layer_norm(ps), rel=1e-5)
    relu, tanh = rows["1 ReLU"], rows["3 Tanh"]
    for r, a in ((relu, acts[1]), (tanh, acts[3])):
        assert r.act_mean == pytest.approx(float(a.mean()), rel=1e-6)
        assert r.act_std == pytest.approx(float(a.std()), rel=1e-6)
    assert relu.act_dead == pytest.approx(float((acts[1].amax(0) <= 0).float().mean())) and relu.act_sat is None
    assert tanh.act_sat == pytest.approx(float((acts[3].abs() > 0.99).float().mean())) and tanh.act_dead is None
