"""Learning-rate schedules, stepped once per optimizer step, each with an optional linear warmup.

Every schedule is a LambdaLR, so its state is a step count that checkpoints restore exactly. A config picks
one with `_partial_: true`; the trainer supplies the optimizer and the length of training.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from cnnlab.types import Fraction, NonNegFloat, PosFloat, PosInt, Ratio


def total_steps(steps_per_epoch: int, epochs: float) -> int:
    """The steps of `epochs` epochs (a fraction of one rounds up, as airbench's 9.9 epochs do)."""
    return math.ceil(steps_per_epoch * epochs)


def _with_warmup(optimizer: Optimizer, factor: Callable[[int], float], warmup_steps: int) -> LambdaLR:
    def lr_lambda(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        return factor(step)

    return LambdaLR(optimizer, lr_lambda)


def constant(optimizer: Optimizer, steps_per_epoch: int, epochs: float, /,
             warmup_epochs: NonNegFloat = 0) -> LambdaLR:
    return _with_warmup(optimizer, lambda step: 1.0, round(warmup_epochs * steps_per_epoch))


def step(optimizer: Optimizer, steps_per_epoch: int, epochs: float, /, milestones: Sequence[PosInt] = (),
         gamma: PosFloat = 0.1, warmup_epochs: NonNegFloat = 0) -> LambdaLR:
    """Multiply the lr by `gamma` at each epoch in `milestones`."""
    bounds = sorted(m * steps_per_epoch for m in milestones)
    return _with_warmup(optimizer, lambda s: gamma ** sum(s >= b for b in bounds),
                        round(warmup_epochs * steps_per_epoch))


def cosine(optimizer: Optimizer, steps_per_epoch: int, epochs: float, /, warmup_epochs: NonNegFloat = 0,
           min_lr_ratio: Ratio = 0.0) -> LambdaLR:
    """Cosine decay from the base lr to `min_lr_ratio` times it, after the warmup."""
    warmup = round(warmup_epochs * steps_per_epoch)
    span = max(1, total_steps(steps_per_epoch, epochs) - warmup)

    def factor(s: int) -> float:
        progress = min(1.0, (s - warmup) / span)
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return _with_warmup(optimizer, factor, warmup)


def onecycle(optimizer: Optimizer, steps_per_epoch: int, epochs: float, /, pct_start: Fraction = 0.25,
             start_ratio: Ratio = 0.1, end_ratio: Ratio = 0.0) -> LambdaLR:
    """Linear ramp from `start_ratio` x lr up to the lr over the first `pct_start` of the steps (floored), then
    linear to `end_ratio` (`pct_start` 0: from the lr straight down, airbench94_muon's schedule). Computed as
    airbench94's triangular schedule is, to the bit."""
    total = total_steps(steps_per_epoch, epochs)
    peak = int(total * pct_start)

    def factor(s: int) -> float:
        if s < peak:
            frac = s / peak
            return start_ratio * (1 - frac) + 1.0 * frac
        frac = min(1.0, (s - peak) / max(1, total - peak))
        return 1.0 * (1 - frac) + end_ratio * frac

    return LambdaLR(optimizer, factor)
