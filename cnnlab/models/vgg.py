"""VGG from a cfg list: ints are 3x3 conv widths, 'M' is a 2x2 max-pool (torchvision's make_layers), then global
max-pooling and an MLP classifier; with a patch-whitening stem and output scaling as options."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from torch import Tensor, nn

from cnnlab.models import layers as L
from cnnlab.models.init import init_weights
from cnnlab.models.layers import Style
from cnnlab.types import ClassCount, Fraction, PosFloat, PosInt

SEED_STYLE = Style(init="vgg_normal")  # the seed's and the original VGG code's


def make_layers(cfg: Sequence[int | str], batch_norm: bool, in_channels: int, style: Style) -> nn.Sequential:
    """conv-(BN)-act per width and a max-pool per 'M'."""
    layers: list[nn.Module] = []
    for v in cfg:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [style.conv(in_channels, v), style.norm(v), style.act()] if batch_norm else \
                [style.conv(in_channels, v), style.act()]
            in_channels = v
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
    """(A whitening stem,) features from `cfg`, global max-pooling to 1x1, then an MLP classifier. Every option's
    default leaves the network torchvision's (and the seed's)."""

    def __init__(self, cfg: Sequence[PosInt | Literal["M"]], num_classes: ClassCount, batch_norm: bool = False,
                 classifier_hidden: Sequence[PosInt] = (512,), classifier_dropout: Fraction = 0.5,
                 classifier_batch_norm: bool = True, classifier_bias: bool = True, in_channels: PosInt = 3,
                 style: Style = SEED_STYLE, whiten: bool = False, whiten_kernel: L.WhitenKernel = 2,
                 output_scale: PosFloat = 1.0) -> None:
        super().__init__()
        if not any(v != "M" for v in cfg):
            raise ValueError("model.cfg needs at least one conv width")
        style = Style.of(style)
        self.stem: nn.Module = nn.Identity()
        if whiten:
            self.stem, in_channels = L.whitening_stem(in_channels, whiten_kernel, style.activation)
        self.features = make_layers(list(cfg), batch_norm, in_channels, style)
        self.pool = nn.AdaptiveMaxPool2d(1)
        width = next(v for v in reversed(cfg) if v != "M")
        self.classifier = make_classifier(width, list(classifier_hidden), num_classes, classifier_dropout,
                                          classifier_batch_norm, classifier_bias)
        if output_scale != 1.0:
            self.classifier.append(L.Scale(output_scale))
        init_weights(self, style.init)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.pool(self.features(self.stem(x))).flatten(1))
