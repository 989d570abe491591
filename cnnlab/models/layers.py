"""Building blocks both families share: the activation, BatchNorm with its options, the patch-whitening stem
(airbench's first layer) and output scaling."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

Activation = Literal["relu", "gelu"]


def activation(kind: Activation) -> nn.Module:
    return nn.GELU() if kind == "gelu" else nn.ReLU(inplace=True)


def batch_norm(channels: int, momentum: float = 0.1, eps: float = 1e-5, scale: bool = True) -> nn.BatchNorm2d:
    """BatchNorm2d; `scale=False` keeps its weight at 1, frozen (airbench's BN), the bias still learns."""
    bn = nn.BatchNorm2d(channels, eps=eps, momentum=momentum)
    bn.weight.requires_grad_(scale)
    return bn


class Whitening(nn.Conv2d):
    """A `kernel` x `kernel` conv whose filters whiten the image's patches: the eigenvectors of the patch
    covariance scaled by 1/sqrt(eigenvalue), each with its negation (2 * c * kernel^2 outputs). Its weights are
    frozen; fit() sets them from training images. Its bias learns (the trainer can freeze it after some epochs)."""

    def __init__(self, in_channels: int = 3, kernel: int = 2, eps: float = 5e-4) -> None:
        super().__init__(in_channels, 2 * in_channels * kernel * kernel, kernel, padding=0, bias=True)
        self.eps = eps
        self.weight.requires_grad_(False)
        nn.init.zeros_(self.bias)

    @torch.no_grad()
    def fit(self, images: Tensor) -> None:
        """Set the filters from normalised images (N, C, H, W) of the training split, in airbench's float32
        arithmetic, step for step (so that a run of its recipe starts from its filters to the bit)."""
        c, (kh, kw) = images.shape[1], self.kernel_size
        patches = images.unfold(2, kh, 1).unfold(3, kw, 1).transpose(1, 3).reshape(-1, c, kh, kw).float()
        flat = patches.view(len(patches), -1)
        covariance = (flat.T @ flat) / len(flat)
        eigenvalues, eigenvectors = torch.linalg.eigh(covariance, UPLO="U")
        eigenvalues = eigenvalues.flip(0).view(-1, 1, 1, 1)
        eigenvectors = eigenvectors.T.reshape(c * kh * kw, c, kh, kw).flip(0)
        filters = eigenvectors / torch.sqrt(eigenvalues + self.eps)
        self.weight.copy_(torch.cat((filters, -filters)))


def fit_whitening(model: nn.Module, images: Tensor) -> None:
    """Fit every Whitening layer of `model` to normalised training images (its filters are not learnt)."""
    for layer in model.modules():
        if isinstance(layer, Whitening):
            layer.fit(images)


def whitening_stem(in_channels: int, kernel: int, act: Activation) -> tuple[nn.Sequential, int]:
    """A Whitening layer and its activation, and the number of channels it puts out."""
    whitening = Whitening(in_channels, kernel)
    return nn.Sequential(whitening, activation(act)), whitening.out_channels


class Scale(nn.Module):
    """Multiplies the logits by a constant (airbench's 1/9: a cooler softmax at initialisation)."""

    def __init__(self, factor: float) -> None:
        super().__init__()
        self.factor = factor

    def forward(self, x: Tensor) -> Tensor:
        return x * self.factor

    def extra_repr(self) -> str:
        return f"factor={self.factor}"
