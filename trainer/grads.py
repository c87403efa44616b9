"""FlatGrads: on the CPU, every gradient is a view into one flat buffer.

The step then zeroes the gradients with one op and takes their total norm with one op, where
PyTorch's per-tensor loops (zero_grad's Python, _foreach_norm's per-tensor kernels on the CPU, stack)
cost about 40 µs of a 600 µs spirals step. Autograd accumulates into an existing .grad in place, so
backward writes straight into the buffer.

PyTorch's semantics are kept: a parameter that got no gradient this step has .grad None when the
optimizer steps (it skips it, as after zero_grad(set_to_none=True)), found by a post-accumulate hook
that records which parameters backward reached. Not for CUDA: there autograd's in-place add is one
kernel launch per parameter, where the stolen gradient costs none, and foreach kernels are fused.
"""
from __future__ import annotations

import torch


class FlatGrads:
    def __init__(self, params: list[torch.nn.Parameter]):
        self.params = params
        self.flat = torch.zeros(sum(p.numel() for p in params), dtype=params[0].dtype)
        self.views, o = [], 0
        for p in params:
            self.views.append(self.flat[o:o + p.numel()].view(p.shape))
            o += p.numel()
        self._reached: list = []
        self._handles = [p.register_post_accumulate_grad_hook(self._reached.append) for p in params]
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

    def norm(self) -> torch.Tensor:
        """The total 2-norm of this step's gradients; a parameter backward did not reach gets .grad
        None (its slot in the buffer is zero, so the norm is unchanged)."""
        if len(self._reached) != len(self.params):
            reached = {id(p) for p in self._reached}
            for p in self.params:
                if id(p) not in reached:
                    p.grad = None
            self._attached = False
        return torch.linalg.vector_norm(self.flat)

    def close(self) -> None:
        """Remove the hooks and hand the parameters their gradients back as plain tensors."""
        for h in self._handles:
            h.remove()
        for p in self.params:
            if p.grad is not None:
                p.grad = p.grad.clone()
