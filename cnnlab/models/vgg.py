"""VGG from a cfg list: ints are 3x3 conv widths, 'M' is a 2x2 max-pool (torchvision's make_layers)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from cnnlab.models.init import Init, init_weights


def make_layers(cfg: Sequence[int | str], batch_norm: bool = False, in_channels: int = 3) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, v in enumerate(cfg):
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        elif isinstance(v, int) and not isinstance(v, bool) and v > 0:
            layers.append(nn.Conv2d(in_channels, v, kernel_size=3, padding=1))
            if batch_norm:
                layers.append(nn.BatchNorm2d(v))
            layers.append(nn.ReLU(inplace=True))
            in_channels = v
        else:
            raise ValueError(f"model.cfg[{i}] is {v!r}: entries must be positive ints (conv widths) or 'M'")
    return nn.Sequential(*layers)


def make_classifier(in_features: int, hidden: Sequence[int], num_classes: int, dropout: float,
                    batch_norm: bool) -> nn.Sequential:
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
    layers.append(nn.Linear(in_features, num_classes))
    return nn.Sequential(*layers)


class VGG(nn.Module):
    """Features from `cfg`, global max-pooling to 1x1 where needed, then an MLP classifier.

    `init` defaults to "vgg_normal" (the seed's and the original VGG code's); see cnnlab.models.init.
    """

    def __init__(self, cfg: Sequence[int | str], num_classes: int, batch_norm: bool = False,
                 classifier_hidden: Sequence[int] = (512,), classifier_dropout: float = 0.5,
                 classifier_batch_norm: bool = True, init: Init = "vgg_normal", in_channels: int = 3) -> None:
        super().__init__()
        if not any(v != "M" for v in cfg):
            raise ValueError("model.cfg needs at least one conv width")
        self.features = make_layers(list(cfg), batch_norm, in_channels)
        self.pool = nn.AdaptiveMaxPool2d(1)
        width = next(v for v in reversed(cfg) if v != "M")
        self.classifier = make_classifier(width, list(classifier_hidden), num_classes, classifier_dropout,
                                          classifier_batch_norm)
        init_weights(self, init)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.pool(self.features(x)).flatten(1))
