"""The CPU step's fast paths: the gradients in one flat buffer, and SGD's fused kernel called directly.

On a small model the step's bookkeeping is a large share of it. Two PyTorch costs go:

- zero_grad's Python and _foreach_norm's per-tensor kernels (the CPU has no fused foreach): about
  40 µs of a 600 µs spirals step. With every gradient a view into one buffer, zeroing is one op and
  the total norm one op; autograd accumulates into an existing .grad in place, so backward writes
  straight into the buffer.
- Optimizer.step's Python around the fused SGD kernel (grouping by device and dtype, profiler
  hooks): about 35 µs of the 50 µs an SGD step takes. `fused_sgd_step` makes the same kernel call
  with the same arguments, so the result is the same bit for bit.

PyTorch's semantics are kept: a parameter that got no gradient this step has .grad None when the
optimizer steps (it skips it, as after zero_grad(set_to_none=True)), found by a post-accumulate hook
that records which parameters backward reached. Not for CUDA: there autograd's in-place add is one
kernel launch per parameter, where a stolen gradient costs none, and foreach kernels are fused.
"""
from __future__ import annotations

import torch
from torch.optim.optimizer import _global_optimizer_post_hooks, _global_optimizer_pre_hooks


class FlatGrads:
    def __init__(self, params: list[torch.nn.Parameter]):
        self.params = params
        self.flat = torch.zeros(sum(p.numel() for p in params), dtype=params[0].dtype)
        self.views, o = [], 0
        for p in params:
            self.views.append(self.flat[o:o + p.numel()].view(p.shape))
            o += p.numel()
        self._reached: set = set()  # distinct: a parameter reached twice (reentrant checkpointing) counts once
        self._handles = [p.register_post_accumulate_grad_hook(self._reached.add) for p in params]
        self._attached = False

    @staticmethod
    def fits(params: list[torch.nn.Parameter]) -> bool:
        """Dense contiguous CPU parameters of one floating dtype (a view then has the parameter's layout)."""
        return bool(params) and len({p.dtype for p in params}) == 1 and all(
            p.device.type == "cpu" and p.layout == torch.strided and p.is_contiguous() and p.is_floating_point()
            for p in params)

    def zero(self) -> None:
        """Zero every gradient (before a backward, or to drop one never applied)."""
        if not self._attached:  # first use, or a parameter without a gradient last step
            for p, v in zip(self.params, self.views):
                p.grad = v
            self._attached = True
        self.flat.zero_()
        self._reached.clear()

    @property
    def complete(self) -> bool:
        """Whether backward reached every parameter (so every .grad is its view)."""
        return self._attached

    def norm(self) -> torch.Tensor:
        """The total 2-norm of this step's gradients; a parameter backward did not reach gets .grad
        None (its slot in the buffer is zero, so the norm is unchanged)."""
        if len(self._reached) != len(self.params):
            for p in self.params:
                if p not in self._reached:  # (tensors hash by identity)
                    p.grad = None
            self._attached = False
        # (a backward with create_graph, or a user's hook that swaps .grad, would leave stale views:
        # the trainer does neither)
        return torch.linalg.vector_norm(self.flat)

    def close(self) -> None:
        """Remove the hooks and hand the parameters their gradients back as plain tensors."""
        for h in self._handles:
            h.remove()
        for p in self.params:
            if p.grad is not None:
                p.grad = p.grad.clone()


def fused_sgd_step(optimizer: torch.optim.Optimizer, flat: FlatGrads) -> bool:
    """Step a fused, single-group SGD with its kernel; False (nothing done) where Optimizer.step must
    run: another optimizer (a subclass too), step hooks, a parameter without a gradient or without a
    momentum buffer, a found_inf flag or a grad scale."""
    groups = optimizer.param_groups
    if (type(optimizer) is not torch.optim.SGD or len(groups) != 1 or not flat.complete
            or getattr(optimizer, "found_inf", None) is not None or getattr(optimizer, "grad_scale", None) is not None
            or optimizer._optimizer_step_pre_hooks or optimizer._optimizer_step_post_hooks
            or _global_optimizer_pre_hooks or _global_optimizer_post_hooks):  # step hooks: Optimizer.step runs them
        return False
    g = groups[0]
    if not g["fused"] or g["differentiable"] or not isinstance(g["lr"], float) or len(g["params"]) != len(flat.params):
        return False
    bufs = []
    if g["momentum"] != 0:
        state = optimizer.state
        for p in flat.params:
            b = state[p].get("momentum_buffer") if p in state else None
            if b is None:
                return False
            bufs.append(b)
    with torch.no_grad():
        torch._fused_sgd_(flat.params, flat.views, bufs, weight_decay=g["weight_decay"], momentum=g["momentum"],
                          lr=g["lr"], dampening=g["dampening"], nesterov=g["nesterov"], maximize=g["maximize"],
                          is_first_step=False, grad_scale=None, found_inf=None)
    return True
