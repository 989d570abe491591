"""PyTorch's optimizers as configs name them (conf/optim/): the keys each takes, typed and bounded; the trainer
supplies the parameters."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Annotated, Any

import torch
from annotated_types import Len

from cnnlab.types import Fraction, NonNegFloat, PosFloat

Params = Iterable[torch.Tensor] | Iterable[dict[str, Any]]
Betas = Annotated[list[Fraction], Len(2, 2)]


def sgd(params: Params, /, lr: PosFloat, momentum: Fraction = 0.0, dampening: Fraction = 0.0,
        nesterov: bool = False, weight_decay: NonNegFloat = 0.0) -> torch.optim.SGD:
    return torch.optim.SGD(params, lr=lr, momentum=momentum, dampening=dampening, nesterov=nesterov,
                           weight_decay=weight_decay)


def adam(params: Params, /, lr: PosFloat = 1e-3, betas: Betas = (0.9, 0.999), eps: PosFloat = 1e-8,
         weight_decay: NonNegFloat = 0.0, amsgrad: bool = False) -> torch.optim.Adam:
    return torch.optim.Adam(params, lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, amsgrad=amsgrad)


def adamw(params: Params, /, lr: PosFloat = 1e-3, betas: Betas = (0.9, 0.999), eps: PosFloat = 1e-8,
          weight_decay: NonNegFloat = 0.01, amsgrad: bool = False) -> torch.optim.AdamW:
    return torch.optim.AdamW(params, lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                             amsgrad=amsgrad)
