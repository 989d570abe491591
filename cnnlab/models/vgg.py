"""VGG from a cfg list: ints are 3x3 conv widths, 'M' is a 2x2 max-pool (torchvision's make_layers), with the
options airbench's network needs: GELU, BatchNorm's momentum/eps/frozen scale, pooling between a conv and its
norm, a patch-whitening stem, a bias-free head and output scaling."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn

from cnnlab.models import layers as L
from cnnlab.models.init import Init, init_weights
from cnnlab.models.layers import Activation


def make_layers(cfg: Sequence[int | str], batch_norm: bool = False, in_channels: int = 3, act: Activation = "relu",
                conv_bias: bool = True, norm: dict[str, Any] | None = None,
                pool_before_norm: bool = False) -> nn.Sequential:
    """conv-(BN)-act per width and a max-pool per 'M'; with `pool_before_norm`, a conv followed by 'M' becomes
    conv-pool-BN-act (airbench's order)."""
    layers: list[nn.Module] = []
    skip = False
    for i, v in enumerate(cfg):
        if skip:
            skip = False
            continue
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        elif isinstance(v, int) and not isinstance(v, bool) and v > 0:
            layers.append(nn.Conv2d(in_channels, v, kernel_size=3, padding=1, bias=conv_bias))
            if pool_before_norm and i + 1 < len(cfg) and cfg[i + 1] == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
                skip = True
            if batch_norm:
                layers.append(L.batch_norm(v, **(norm or {})))
            layers.append(L.activation(act))
            in_channels = v
        else:
            raise ValueError(f"model.cfg[{i}] is {v!r}: entries must be positive ints (conv widths) or 'M'")
    return nn.Sequential(*layers)


def make_classifier(in_features: int, hidden: Sequence[int], num_classes: int, dropout: float,
                    batch_norm: bool, bias: bool = True) -> nn.Sequential:
    """[Dropout, Linear, (BatchNorm1d), ReLU] per hidden width, then Dropout, Linear to the classes."""
    layers: list[nn.Module] = []
    for width in hidden:
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        layers.append(nn.Linear(in_features, width))
        if batch_norm:
            layers.append(nn.BatchNorm1d(width))
        layers.append(nn.ReLU(inplace=True))
        in_features = width
    if dropout > 0:
        layers.append(nn.Dropout(dropout))
    layers.append(nn.Linear(in_features, num_classes, bias=bias))
    return nn.Sequential(*layers)


class VGG(nn.Module):
    """(A whitening stem,) features from `cfg`, global max-pooling to 1x1, then an MLP classifier.

    `init` defaults to "vgg_normal" (the seed's and the original VGG code's); see cnnlab.models.init. Every
    other option's default leaves the network torchvision's (and the seed's).
    """

    def __init__(self, cfg: Sequence[int | str], num_classes: int, batch_norm: bool = False,
                 classifier_hidden: Sequence[int] = (512,), classifier_dropout: float = 0.5,
                 classifier_batch_norm: bool = True, classifier_bias: bool = True, init: Init = "vgg_normal",
                 in_channels: int = 3, activation: Activation = "relu", conv_bias: bool = True,
                 bn_momentum: float = 0.1, bn_eps: float = 1e-5, bn_scale: bool = True, pool_before_norm: bool = False,
                 whiten: bool = False, whiten_kernel: int = 2, output_scale: float = 1.0) -> None:
        super().__init__()
        if not any(v != "M" for v in cfg):
            raise ValueError("model.cfg needs at least one conv width")
        self.stem: nn.Module = nn.Identity()
        if whiten:
            self.stem, in_channels = L.whitening_stem(in_channels, whiten_kernel, activation)
        norm = dict(momentum=bn_momentum, eps=bn_eps, scale=bn_scale)
        self.features = make_layers(list(cfg), batch_norm, in_channels, activation, conv_bias, norm, pool_before_norm)
        self.pool = nn.AdaptiveMaxPool2d(1)
        width = next(v for v in reversed(cfg) if v != "M")
        self.classifier = make_classifier(width, list(classifier_hidden), num_classes, classifier_dropout,
                                          classifier_batch_norm, classifier_bias)
        if output_scale != 1.0:
            self.classifier.append(L.Scale(output_scale))
        init_weights(self, init)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.pool(self.features(self.stem(x))).flatten(1))
