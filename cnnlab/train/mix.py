"""Mixup and CutMix on a whole batch, on its device: each batch is mixed with a permutation of itself."""

from __future__ import annotations

import torch
from torch import Tensor

from cnnlab.types import NonNegFloat, Options


class Mix(Options):
    """Beta(alpha, alpha) mixup and CutMix alphas (0: off; with both set, each batch gets one at even odds)."""

    mixup: NonNegFloat = 0.0
    cutmix: NonNegFloat = 0.0


def mix_batch(x: Tensor, y: Tensor, mixup: float, cutmix: float) -> tuple[Tensor, Tensor, Tensor, float]:
    """(mixed images, labels, the partners' labels, the weight of the first labels). With both alphas set, each
    batch is mixed one way or the other at even odds. Draws from the global RNGs (saved in checkpoints)."""
    use_cutmix = cutmix > 0 and (mixup <= 0 or torch.rand(()).item() < 0.5)
    alpha = cutmix if use_cutmix else mixup
    lam = float(torch.distributions.Beta(alpha, alpha).sample())
    partner = torch.randperm(len(y), device=x.device)
    if not use_cutmix:
        return x * lam + x[partner] * (1 - lam), y, y[partner], lam
    h, w = x.shape[-2:]
    cut_h, cut_w = int(h * (1 - lam) ** 0.5), int(w * (1 - lam) ** 0.5)
    cy, cx = int(torch.randint(h, ())), int(torch.randint(w, ()))
    top, bottom = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, h)
    left, right = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, w)
    x = x.clone()
    x[..., top:bottom, left:right] = x[partner][..., top:bottom, left:right]
    return x, y, y[partner], 1 - (bottom - top) * (right - left) / (h * w)
