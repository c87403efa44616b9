"""Instruments: what the babysitting checklists watch (CS231n, Karpathy's recipe, the OPT and BLOOM
logbooks), at a cost the step does not notice.

- The update ratio ||dtheta|| / ||theta|| (about 1e-3 is healthy), exact, every `ratio_every` steps.
  On the CPU it comes from NumPy views of the parameters: a concatenation before the update, and
  after it a concatenation, a subtraction and two dot products (about 10 us on spirals alone, where
  two torch foreach norms cost 60, but 35-50 us inside a training step: 3-4 % of a tiny model's
  step, so it is measured every 10th step by default). On CUDA it is three foreach passes over the
  weights and stays a device tensor until the read-back, like the loss: every step, that is memory
  bandwidth a GPU-sized model notices, so CUDA measures every 10th step too.
- Every `every` steps: per layer, the gradient norm (before clipping), the update/weight ratio and
  the weight norm; and per activation layer the mean, std and the fraction of dead (never positive
  in the batch) or saturated units, from forward hooks registered for that one step.
- `nonfinite()`: the names of parameters, buffers and optimizer state that hold NaN or inf.
"""
from __future__ import annotations

import math
import resource
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

DEAD = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Mish)  # a unit never > 0: dead
SATURATING = {nn.Tanh: (-0.99, 0.99), nn.Hardtanh: (-0.99, 0.99), nn.Sigmoid: (0.01, 0.99),
              nn.ReLU6: (-1.0, 5.94)}  # outside (lo, hi): saturated
ACTIVATIONS = (*DEAD, nn.Softplus, *SATURATING)


class LayerRow(NamedTuple):
    branch: int
    step: int
    idx: int  # the layer's position in the model; -1 for the whole model
    layer: str  # "0 Linear", "2 ReLU", or "(model)"
    grad_norm: float | None
    update_ratio: float | None
    weight_norm: float | None
    act_mean: float | None
    act_std: float | None
    act_dead: float | None
    act_sat: float | None
    memory: float | None  # the whole-model row only: bytes (CUDA max allocated, else peak RSS)


def memory_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


class Instruments:
    def __init__(self, model: nn.Module, params: list[torch.Tensor], device: torch.device, every: int,
                 ratio_every: int = 0):
        self.model, self.params, self.device, self.every = model, params, device, every
        self.ratio_every = ratio_every or 10
        named = {id(p): n for n, p in model.named_parameters()}
        mods = dict(model.named_modules())
        self.layers: list[str] = []
        self.param_layer: list[int] = []
        for p in params:
            owner = named.get(id(p), "?").rpartition(".")[0]
            label = f"{owner or '(root)'} {type(mods.get(owner, model)).__name__}"
            if label not in self.layers:
                self.layers.append(label)
            self.param_layer.append(self.layers.index(label))
        self.acts = [(n, m) for n, m in model.named_modules() if isinstance(m, ACTIVATIONS)]
        if not self.acts:  # activations applied functionally: look at the parameterised layers' outputs
            self.acts = [(n, m) for n, m in model.named_modules() if n and not list(m.children())
                         and any(True for _ in m.parameters(recurse=False))]
        self.order = {n: i for i, n in enumerate(mods)}
        dtypes = {p.dtype for p in params}
        self.numpy = bool(device.type == "cpu" and len(dtypes) == 1 and dtypes <= {torch.float32, torch.float64}
                          and all(p.is_contiguous() for p in params) and params)
        if self.numpy:
            self.views = [p.detach().numpy().reshape(-1) for p in params]
            n = sum(v.size for v in self.views)
            self.last, self.delta = np.empty(n, self.views[0].dtype), np.empty(n, self.views[0].dtype)
            sizes = np.array([v.size for v in self.views])
            self.offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]])
            self.nonempty = sizes > 0
        else:
            self.last_t = [p.detach().clone() for p in params]
        self.reset()
        self._hooks: list = []
        self._acts: dict[str, tuple] = {}

    def is_due(self, step: int) -> bool:
        """Whether `step` is a per-layer instrument step."""
        return bool(self.every) and step % self.every == 0

    def measures(self, step: int, due: bool) -> bool:
        """Whether `step` measures the update ratio (every instrument step does)."""
        return due or step % self.ratio_every == 0

    def before(self) -> None:
        """Before a measured update: unless every step is measured (then the last one left the
        weights in `last`), take them now."""
        if self.ratio_every != 1:
            self.reset()

    # --- per step ---------------------------------------------------------------------------------
    def reset(self) -> None:
        """The parameters changed other than by an update (a restore): measure from here."""
        if self.numpy:
            np.concatenate(self.views, out=self.last)
        elif self.params:
            torch._foreach_copy_(self.last_t, [p.detach() for p in self.params])

    def after(self):
        """||dtheta|| / ||theta|| of the update just applied: a float on the CPU, a device tensor on CUDA."""
        if not self.params:
            return 0.0
        if self.numpy:
            np.concatenate(self.views, out=self.delta)  # theta now
            np.subtract(self.delta, self.last, out=self.last)  # dtheta
            self.last, self.delta = self.delta, self.last
            # einsum, not `@`: NumPy's OpenBLAS runs a dot this long on its own thread pool, whose
            # spinning workers then take the cores from the training step (7 % of digits, paired).
            d, w = float(np.einsum("i,i->", self.delta, self.delta)), float(np.einsum("i,i->", self.last, self.last))
            return math.sqrt(d) / math.sqrt(w) if w > 0 else math.sqrt(d)  # all-zero weights: the step itself
        cur = [p.detach() for p in self.params]
        delta = torch._foreach_sub(cur, self.last_t)
        torch._foreach_copy_(self.last_t, cur)
        self._delta_t = delta
        dn = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(delta)))
        wn = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(cur)))
        return dn / wn

    # --- on instrument steps ----------------------------------------------------------------------
    def arm(self) -> None:
        """Hooks for this step's forward only: they record activation statistics as device tensors."""
        self._acts = {}
        for name, m in self.acts:
            self._hooks.append(m.register_forward_hook(self._hook(f"{name} {type(m).__name__}", m)))

    def _hook(self, label: str, m: nn.Module):
        def record(_m, _inp, out):
            if not isinstance(out, torch.Tensor) or not out.is_floating_point() or out.numel() == 0:
                return
            a = out.detach().float()
            units = a.transpose(0, 1).reshape(a.shape[1], -1) if a.dim() > 1 else a.reshape(1, -1)
            dead = (units.amax(1) <= 0).float().mean() if isinstance(m, DEAD) else None
            lim = next((v for k, v in SATURATING.items() if isinstance(m, k)), None)
            sat = ((a < lim[0]) | (a > lim[1])).float().mean() if lim else None
            self._acts[label] = (a.mean(), a.std() if a.numel() > 1 else a.new_zeros(()), dead, sat)
        return record

    def disarm(self) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks = []

    def layer_rows(self, branch: int, step: int, ratio) -> list[LayerRow]:
        """Per-layer statistics after the update of an instrument step (call before the next zero_grad).
        `ratio` is after()'s value. Every number that lives on the device comes back in one copy: one
        sync per instrument step on CUDA, not one per layer and statistic."""
        acts, self._acts = self._acts, {}
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params]
        parts = [torch.stack(torch._foreach_norm(grads))] if grads else []
        if not self.numpy and self.params:
            parts += [torch.stack(torch._foreach_norm(self._delta_t)), torch.stack(torch._foreach_norm(self.last_t))]
        stats = [v for four in acts.values() for v in four if v is not None]
        if isinstance(ratio, torch.Tensor):
            stats.append(ratio)
        if stats:
            parts.append(torch.stack([v.reshape(()).float() for v in stats]))
        flat = torch.cat([v.double() for v in parts]).cpu().numpy() if parts else np.zeros(0)
        n = len(grads)
        sq = lambda xs: np.bincount(self.param_layer, weights=np.square(xs), minlength=len(self.layers))  # noqa: E731
        g = sq(flat[:n])
        if self.numpy:
            d, w = np.zeros(len(self.params)), np.zeros(len(self.params))
            ne = self.nonempty
            d[ne] = np.add.reduceat(np.square(self.delta, dtype=np.float64), self.offsets[ne])
            w[ne] = np.add.reduceat(np.square(self.last, dtype=np.float64), self.offsets[ne])
            d, w = sq(np.sqrt(d)), sq(np.sqrt(w))
            rest = iter(flat[n:].tolist())
        else:
            m = len(self.params)
            d, w = sq(flat[n:n + m]), sq(flat[n + m:n + 2 * m])
            rest = iter(flat[n + 2 * m:].tolist())
        by_label = {}
        for i, label in enumerate(self.layers):
            by_label[label] = dict(grad_norm=_f(math.sqrt(g[i])), weight_norm=_f(math.sqrt(w[i])),
                                   update_ratio=_f(math.sqrt(d[i]) / math.sqrt(w[i])) if w[i] > 0 else None)
        for label, four in acts.items():
            mean, std, dead, sat = (None if v is None else next(rest) for v in four)
            by_label.setdefault(label, {}).update(act_mean=_f(mean), act_std=_f(std), act_dead=dead, act_sat=sat)
        if isinstance(ratio, torch.Tensor):
            ratio = next(rest)
        rows = [LayerRow(branch, step, -1, "(model)", _f(math.sqrt(g.sum())), _f(ratio), _f(math.sqrt(w.sum())),
                         None, None, None, None, float(memory_bytes(self.device)))]
        for label, v in sorted(by_label.items(), key=lambda kv: self.order.get(kv[0].rpartition(" ")[0], 0)):
            name = label.rpartition(" ")[0]
            rows.append(LayerRow(branch, step, self.order.get(name, 0), label, v.get("grad_norm"),
                                 v.get("update_ratio"), v.get("weight_norm"), v.get("act_mean"), v.get("act_std"),
                                 v.get("act_dead"), v.get("act_sat"), None))
        return rows


def _f(v: float) -> float | None:
    return v if math.isfinite(v) else None


def state_tensors(model: nn.Module, optimizer: torch.optim.Optimizer) -> list[tuple[str, torch.Tensor]]:
    """Every floating-point tensor a checkpoint would hold: parameters, buffers, optimizer state."""
    out = [(f"model {n}", t) for n, t in model.state_dict().items() if t.is_floating_point()]
    names = {id(p): n for n, p in model.named_parameters()}
    for p, st in optimizer.state.items():
        for k, v in st.items():
            if isinstance(v, torch.Tensor) and v.is_floating_point() and v.numel():
                out.append((f"optimizer {k} of {names.get(id(p), '?')}", v))
    return out


class Health:
    """Finds NaN or inf in the parameters, buffers and optimizer state: one foreach max-norm over the
    list, which is rebuilt only when the optimizer's state changes shape (its first step, a restore)."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer):
        self.model, self.optimizer = model, optimizer
        self._named: list[tuple[str, torch.Tensor]] | None = None
        self._key = None

    def invalidate(self) -> None:
        self._named = None

    def flag(self) -> torch.Tensor | None:
        """A device scalar, 1.0 while every tensor is finite: read back with other values in one sync."""
        named = self._tensors()
        if not named:
            return None
        peaks = torch._foreach_norm([t for _, t in named], float("inf"))
        if not self._uniform:  # one dtype and device for stack
            peaks = [m.float().to(peaks[0].device) for m in peaks]
        return torch.isfinite(torch.stack(peaks)).all().float()

    def _tensors(self) -> list[tuple[str, torch.Tensor]]:
        key = (id(self.optimizer.state), len(self.optimizer.state))
        if self._named is None or key != self._key:
            self._named = [(n, t) for n, t in state_tensors(self.model, self.optimizer) if t.numel()]
            self._key = key
            self._uniform = len({(t.dtype, t.device) for _, t in self._named}) <= 1
        return self._named

    def bad(self) -> list[str]:
        """Names of the tensors that hold NaN or inf; [] when all is finite (one device sync)."""
        if not self._tensors():
            return []
        peaks = torch._foreach_norm([t for _, t in self._named], float("inf"))
        try:
            ok = torch.isfinite(torch.stack(peaks))
        except RuntimeError:  # mixed dtypes or devices
            ok = torch.isfinite(torch.stack([m.float().to(peaks[0].device) for m in peaks]))
        if bool(ok.all()):
            return []
        return [n for (n, _), good in zip(self._named, ok.tolist()) if not good]
