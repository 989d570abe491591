"""SGD in airbench's decoupled parametrisation (KellerJordan/cifar10-airbench, airbench94.py), where the lr and the
weight decay do not move with each other, the momentum or the batch size.

airbench gives `lr` and `weight_decay` per 1024 images of a summed loss, both divided by how much nesterov momentum
enlarges a step (1 + 1 / (1 - momentum)), and the decay as what each step takes off every weight whatever its
group's lr. So airbench94's values (lr 11.5, weight decay 0.0153, momentum 0.85) keep their meaning at any batch
size or momentum, and a group at 64x the lr (its BatchNorm biases) keeps the same decay. This class turns them into
PyTorch SGD's for cnnlab's mean loss; the schedule then scales each group's lr (and the decay with it) as for any
optimizer.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

from cnnlab.types import Fraction, NonNegFloat, PosFloat, PosInt


def pytorch_settings(lr: float, weight_decay: float, momentum: float, images_per_step: int) -> tuple[float, float]:
    """PyTorch SGD's (lr, weight_decay) for a mean loss, from airbench's decoupled lr and weight decay. Each step
    takes off lr x weight_decay = airbench's weight_decay x images_per_step / kilostep_scale, whatever the lr."""
    kilostep_scale = 1024 * (1 + 1 / (1 - momentum))
    return lr * images_per_step / kilostep_scale, weight_decay / lr


class DecoupledSGD(torch.optim.SGD):
    """torch.optim.SGD whose `lr` and `weight_decay` (and each parameter group's) are airbench's decoupled values;
    `batch_size` x `accumulate` images make one step."""

    def __init__(self, params: Iterable[Tensor] | Iterable[dict[str, Any]], /, lr: PosFloat,
                 weight_decay: NonNegFloat = 0.0, momentum: Fraction = 0.9, nesterov: bool = True,
                 batch_size: PosInt = 1024, accumulate: PosInt = 1) -> None:
        groups = list(params)
        if groups and not isinstance(groups[0], dict):
            groups = [{"params": groups}]

        def settings(group_lr: float, group_weight_decay: float) -> dict[str, float]:
            step_lr, step_wd = pytorch_settings(group_lr, group_weight_decay, momentum, batch_size * accumulate)
            return {"lr": step_lr, "weight_decay": step_wd}

        groups = [{**g, **settings(g.get("lr", lr), g.get("weight_decay", weight_decay))} for g in groups]
        super().__init__(groups, momentum=momentum, nesterov=nesterov, **settings(lr, weight_decay))
