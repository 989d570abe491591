"""Weight initialisation schemes, named in model configs (`model.init`), each applied once after construction.

- kaiming_fan_out: conv weights ~ kaiming normal (fan_out, ReLU gain), conv biases 0 (torchvision's ResNet and VGG).
- xavier_uniform: conv and linear weights ~ xavier uniform; biases keep PyTorch's default (the seed's ResNet).
- vgg_normal: conv weights ~ N(0, sqrt(2 / (k*k*out_channels))), conv biases 0 (the seed's VGG, after the
  original VGG code).
- pytorch_default: every layer as PyTorch initialises it.
- dirac: each conv starts as an identity on its first min(in, out) channels (`nn.init.dirac_`) plus
  kaiming-uniform noise on the rest, conv biases 0 (airbench's convs).
- airbench_muon: dirac, except that the whitening stem's bias keeps PyTorch's default and the head's weights are
  rescaled to unit std (airbench94_muon's CifarNet.reset).

Linear and norm layers keep PyTorch's defaults unless a scheme names them.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from cnnlab.models.layers import Init, Whitening


def init_weights(model: nn.Module, scheme: Init) -> None:
    for m in model.modules():
        if isinstance(m, Whitening) and scheme == "airbench_muon":
            m.reset_parameters()  # PyTorch's default bias (the fit sets the weights)
        elif isinstance(m, nn.Conv2d):
            _init_conv(m, "dirac" if scheme == "airbench_muon" else scheme)
        elif isinstance(m, nn.Linear) and scheme == "xavier_uniform":
            nn.init.xavier_uniform_(m.weight)
        elif isinstance(m, nn.Linear) and scheme == "airbench_muon":
            with torch.no_grad():
                m.weight.mul_(1 / m.weight.std())


@torch.no_grad()
def _init_conv(conv: nn.Conv2d, scheme: Init) -> None:
    if scheme == "kaiming_fan_out":
        nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    elif scheme == "xavier_uniform":
        nn.init.xavier_uniform_(conv.weight)
        return
    elif scheme == "vgg_normal":
        n = conv.kernel_size[0] * conv.kernel_size[1] * conv.out_channels
        nn.init.normal_(conv.weight, 0.0, math.sqrt(2.0 / n))
    elif scheme == "dirac":
        nn.init.kaiming_uniform_(conv.weight, a=math.sqrt(5))  # PyTorch's default, then the identity part
        nn.init.dirac_(conv.weight[: min(conv.out_channels, conv.in_channels)])
    else:
        return
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)
