"""An exponential moving average of a model's weights and BatchNorm statistics (its float state), for
evaluation with averaged weights, or as Lookahead (the model continues from the average after each update)."""

from __future__ import annotations

from typing import Annotated

import torch
from annotated_types import Gt, Lt
from torch import Tensor, nn

from cnnlab.types import NonNegFloat, NonNegInt, Options


class EmaSchedule(Options):
    """When and how strongly to average (conf/trainer/default.yaml, `ema`). airbench94: every 5 steps from the
    start, decay 0.95 per step ramped by (step / total)^3, lookahead."""

    every: NonNegInt = 0  # steps between updates; 0: off
    decay: Annotated[float, Gt(0), Lt(1)] = 0.95  # per step; an update every k steps uses decay^k
    ramp_power: NonNegFloat = 0.0  # the decay ramps up as (step / total steps)^ramp_power (0: constant)
    start_epoch: NonNegInt = 1  # the first epoch that averages, from its first update's weights; 0: the initial
    lookahead: bool = False  # after each update the model continues from the average, and training ends on it
    evaluate: bool = True  # evaluate (and keep in best.pt) the averaged weights

    def due(self, epoch: int, step: int) -> bool:
        return self.every > 0 and epoch >= self.start_epoch and step % self.every == 0

    def decay_at(self, step: int, total: int) -> float:
        """In float32, as airbench94 computes its schedule of decays (a torch.arange over the steps)."""
        ramp = (torch.tensor([step]) / total) ** self.ramp_power
        return (self.decay**self.every * ramp).item()


class WeightAverage:
    def __init__(self, state: dict[str, Tensor]) -> None:
        self.state = {k: v.detach().clone() for k, v in state.items() if v.is_floating_point()}

    @torch.no_grad()
    def update(self, model: nn.Module, decay: float) -> None:
        current = model.state_dict()
        for k, average in self.state.items():
            average.lerp_(current[k].to(average.dtype), 1 - decay)

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        current = model.state_dict()
        for k, average in self.state.items():
            current[k].copy_(average)
