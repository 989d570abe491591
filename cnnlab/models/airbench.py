"""airbench94's network (KellerJordan/cifar10-airbench), said plainly: a frozen 2x2 patch-whitening conv and its
activation, then per width a group conv-pool-BN-act, conv-BN-act, a global max-pool, a bias-free linear head and
scaled logits. tests/test_oracles.py proves it computes what airbench's own network does."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from cnnlab.models import layers as L
from cnnlab.models.init import init_weights
from cnnlab.models.layers import Style
from cnnlab.types import ClassCount, PosFloat, PosInt

AIRBENCH_STYLE = Style(activation="gelu", conv_bias=False, bn_momentum=0.4, bn_eps=1e-12, bn_scale=False,
                       init="dirac")


class ConvGroups(nn.Module):
    def __init__(self, widths: Sequence[PosInt], num_classes: ClassCount, style: Style = AIRBENCH_STYLE,
                 whiten: bool = True, whiten_kernel: L.WhitenKernel = 2, output_scale: PosFloat = 1 / 9,
                 in_channels: PosInt = 3) -> None:
        super().__init__()
        style = Style.of(style)
        self.stem, c_in = L.whitening_stem(in_channels, whiten_kernel, style.activation) if whiten else \
            (nn.Identity(), in_channels)
        layers: list[nn.Module] = []
        for width in widths:
            layers += [style.conv(c_in, width), nn.MaxPool2d(2), style.norm(width), style.act(),
                       style.conv(width, width), style.norm(width), style.act()]
            c_in = width
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveMaxPool2d(1)
        self.classifier = nn.Sequential(nn.Linear(c_in, num_classes, bias=False), L.Scale(output_scale))
        init_weights(self, style.init)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.pool(self.features(self.stem(x))).flatten(1))
