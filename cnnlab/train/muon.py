"""Muon (Keller Jordan, 2024; the optimizer of airbench94_muon.py, KellerJordan/cifar10-airbench): each conv
filter takes a step of fixed size along its orthogonalised momentum, every other parameter a plain SGD step.

For a conv filter (a 4-d weight): the nesterov momentum of its gradient, flattened to (out, in * kh * kw), is
orthogonalised by a Newton-Schulz iteration (singular values pushed towards 1), the filter is rescaled to norm
sqrt(out) (which makes weight decay moot for it), and it moves by `lr` times that. Everything else (biases,
BatchNorm, linear layers) takes SGD with `sgd_momentum` (nesterov) and `weight_decay` at its group's lr, so the
trainer's `param_groups` rules (lr_scale, weight_decay_scale) give those their own settings.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Annotated, Any, Literal

import torch
from annotated_types import Ge, Le
from torch import Tensor

from cnnlab.types import Fraction, NonNegFloat, PosFloat

# The quintic iteration's coefficients, chosen to raise small singular values fast rather than to converge
# exactly: they end up spread around 1 (about 0.5-1.5), which trains as well as an exact orthogonalisation.
NEWTON_SCHULZ = (3.4445, -4.7750, 2.0315)


NS_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}  # bf16: airbench94_muon's; fp32: exact on any CPU


def orthogonalise(g: Tensor, steps: int = 3, eps: float = 1e-7, dtype: torch.dtype = torch.float32) -> Tensor:
    """About U V^T of the 2-d `g = U S V^T`, by `steps` quintic Newton-Schulz iterations in `dtype`."""
    a, b, c = NEWTON_SCHULZ
    x = g.to(dtype)
    x = x / (x.norm() + eps)  # all singular values <= 1
    wide = x.size(0) <= x.size(1)
    if not wide:
        x = x.T
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x if wide else x.T


class Muon(torch.optim.Optimizer):
    def __init__(self, params: Iterable[Tensor] | Iterable[dict[str, Any]], /, lr: PosFloat = 0.24,
                 momentum: Fraction = 0.6, nesterov: bool = True, weight_decay: NonNegFloat = 0.0,
                 sgd_momentum: Fraction = 0.85, ns_steps: Annotated[int, Ge(1), Le(100)] = 3,
                 ns_dtype: Literal["fp32", "bf16"] = "fp32") -> None:
        super().__init__(params, dict(lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay,
                                      sgd_momentum=sgd_momentum, ns_steps=ns_steps))
        self.ns_dtype = NS_DTYPES[ns_dtype]

    @torch.no_grad()
    def step(self, closure: Any = None) -> None:
        if closure is not None:
            raise ValueError("Muon takes no closure")
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.ndim == 4:
                    self._filter_step(p, group)
                else:
                    self._sgd_step(p, group)

    def _filter_step(self, p: Tensor, group: dict[str, Any]) -> None:
        update = self._momentum(p, p.grad, group["momentum"], group["nesterov"])
        p.mul_(len(p) ** 0.5 / p.norm())
        p.add_(orthogonalise(update.reshape(len(p), -1), group["ns_steps"], dtype=self.ns_dtype).view_as(p)
               .to(p.dtype), alpha=-group["lr"])

    def _sgd_step(self, p: Tensor, group: dict[str, Any]) -> None:
        grad = p.grad.add(p, alpha=group["weight_decay"]) if group["weight_decay"] else p.grad
        p.add_(self._momentum(p, grad, group["sgd_momentum"], True), alpha=-group["lr"])

    def _momentum(self, p: Tensor, grad: Tensor, momentum: float, nesterov: bool) -> Tensor:
        state = self.state[p]
        if "momentum_buffer" not in state:  # the first step starts it at the gradient, as torch's SGD does
            state["momentum_buffer"] = grad.clone()
        else:
            state["momentum_buffer"].mul_(momentum).add_(grad)
        buf = state["momentum_buffer"]
        return grad.add(buf, alpha=momentum) if nesterov else buf
