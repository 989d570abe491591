"""Building blocks every network shares: the `Style` of its conv-BN-activation layers (one object, the `style` node
of every model config), the patch-whitening stem (airbench's first layer) and output scaling."""

from __future__ import annotations

from typing import Annotated, Literal

import torch
from annotated_types import Ge, Gt, Le
from torch import Tensor, nn

from cnnlab.types import Options, PosFloat

Activation = Literal["relu", "gelu"]
Init = Literal["kaiming_fan_out", "xavier_uniform", "vgg_normal", "pytorch_default", "dirac", "airbench_muon"]
WhitenKernel = Annotated[int, Ge(1), Le(8)]


def activation(kind: Activation) -> nn.Module:
    return nn.GELU() if kind == "gelu" else nn.ReLU(inplace=True)


class Style(Options):
    """How every conv-BN-activation of a network is made, and how its weights start (cnnlab.models.init)."""

    activation: Activation = "relu"
    conv_bias: bool = True
    bn_momentum: Annotated[float, Gt(0), Le(1)] = 0.1  # PyTorch's: the weight of each batch in the running stats
    bn_eps: PosFloat = 1e-5
    bn_scale: bool = True  # false: BatchNorm's weight stays 1, frozen (airbench's BN); its bias still learns
    init: Init = "pytorch_default"

    def conv(self, c_in: int, c_out: int, kernel: int = 3, stride: int = 1) -> nn.Conv2d:
        return nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=kernel // 2, bias=self.conv_bias)

    def norm(self, channels: int) -> nn.BatchNorm2d:
        bn = nn.BatchNorm2d(channels, eps=self.bn_eps, momentum=self.bn_momentum)
        bn.weight.requires_grad_(self.bn_scale)
        return bn

    def act(self) -> nn.Module:
        return activation(self.activation)

    def conv_bn(self, c_in: int, c_out: int, kernel: int, stride: int = 1, act: bool = True) -> nn.Sequential:
        layers = [self.conv(c_in, c_out, kernel, stride), self.norm(c_out)]
        return nn.Sequential(*layers, self.act()) if act else nn.Sequential(*layers)


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
