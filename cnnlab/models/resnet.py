"""ResNet from block type, block counts and widths; every convention a ResNet variant differs in is a key.

- `stride_at`: where a downsampling bottleneck puts its stride: on the 3x3 (torchvision, "ResNet v1.5") or on
  its first 1x1 (the original paper's Caffe models, and the seed). Basic blocks stride their first 3x3.
- `relu`: "after_add" (torchvision): conv-BN-ReLU, except that the branch's last conv and the shortcut have no
  ReLU, which follows the residual add. "every_conv" (the seed): every conv, the branch's last and the
  shortcut projection included, is followed by BN and ReLU, and nothing follows the add.
- `conv_bias`, `shortcut` (identity where the shape allows, or always a projection), `downsample_at` (the
  first or the last block of a stage), `stem`, `init` (cnnlab.models.init) and `zero_init_residual`;
- and the options of cnnlab.models.layers: `activation`, BatchNorm's `bn_momentum`/`bn_eps`/`bn_scale`, a
  patch-whitening stem before the stem (`whiten`) and `output_scale`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from torch import Tensor, nn

from cnnlab.models import layers as L
from cnnlab.models.init import Init, init_weights
from cnnlab.models.layers import Activation

Relu = Literal["after_add", "every_conv"]
StrideAt = Literal["3x3", "1x1"]
Shortcut = Literal["identity_when_possible", "always_project"]
Stem = Literal["cifar", "imagenet"]
DownsampleAt = Literal["first", "last"]


@dataclass(frozen=True)
class Style:
    """How every conv-BN(-activation) of a network is made."""

    activation: Activation = "relu"
    conv_bias: bool = False
    bn_momentum: float = 0.1
    bn_eps: float = 1e-5
    bn_scale: bool = True

    def conv_bn(self, c_in: int, c_out: int, kernel: int, stride: int = 1, act: bool = True) -> nn.Sequential:
        layers: list[nn.Module] = [
            nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=kernel // 2, bias=self.conv_bias),
            L.batch_norm(c_out, self.bn_momentum, self.bn_eps, self.bn_scale),
        ]
        if act:
            layers.append(L.activation(self.activation))
        return nn.Sequential(*layers)


class Block(nn.Module):
    """A residual block: `branch(x) + shortcut(x)`, then the activation when relu="after_add"."""

    expansion = 1

    def __init__(self, c_in: int, width: int, stride: int, relu: Relu, shortcut: Shortcut, stride_at: StrideAt,
                 style: Style) -> None:
        super().__init__()
        every = relu == "every_conv"
        c_out = width * self.expansion
        self.branch = self.make_branch(c_in, width, c_out, stride, every, stride_at, style)
        if shortcut == "identity_when_possible" and stride == 1 and c_in == c_out:
            self.shortcut: nn.Module = nn.Identity()
        else:
            self.shortcut = style.conv_bn(c_in, c_out, 1, stride, act=every)
        self.out_relu = nn.Identity() if every else L.activation(style.activation)

    def make_branch(self, c_in: int, width: int, c_out: int, stride: int, last_act: bool, stride_at: StrideAt,
                    style: Style) -> nn.Sequential:
        raise NotImplementedError

    def last_bn(self) -> nn.BatchNorm2d:
        return self.branch[-1][1]

    def forward(self, x: Tensor) -> Tensor:
        return self.out_relu(self.branch(x) + self.shortcut(x))


class BasicBlock(Block):
    expansion = 1

    def make_branch(self, c_in: int, width: int, c_out: int, stride: int, last_act: bool, stride_at: StrideAt,
                    style: Style) -> nn.Sequential:
        return nn.Sequential(style.conv_bn(c_in, width, 3, stride), style.conv_bn(width, c_out, 3, act=last_act))


class Bottleneck(Block):
    expansion = 4

    def make_branch(self, c_in: int, width: int, c_out: int, stride: int, last_act: bool, stride_at: StrideAt,
                    style: Style) -> nn.Sequential:
        first, middle = (stride, 1) if stride_at == "1x1" else (1, stride)
        return nn.Sequential(style.conv_bn(c_in, width, 1, first), style.conv_bn(width, width, 3, middle),
                             style.conv_bn(width, c_out, 1, act=last_act))


BLOCKS: dict[str, type[Block]] = {"basic": BasicBlock, "bottleneck": Bottleneck}


class ResNet(nn.Module):
    """Stem, one stage per entry of `layers`/`widths`/`strides`, global average pool, linear head.

    stem "cifar": 3x3/1 conv, no pooling; "imagenet": 7x7/2 conv + 3x3/2 max-pool.
    downsample_at "first" puts a stage's stride on its first block (torchvision); "last" on its last block
    (the seed).
    """

    def __init__(self, block: Literal["basic", "bottleneck"], layers: Sequence[int], widths: Sequence[int],
                 num_classes: int, strides: Sequence[int] | None = None, stem: Stem = "cifar", stem_width: int = 64,
                 downsample_at: DownsampleAt = "first", stride_at: StrideAt = "3x3", relu: Relu = "after_add",
                 conv_bias: bool = False, shortcut: Shortcut = "identity_when_possible",
                 init: Init = "kaiming_fan_out", zero_init_residual: bool = False, in_channels: int = 3,
                 activation: Activation = "relu", bn_momentum: float = 0.1, bn_eps: float = 1e-5,
                 bn_scale: bool = True, whiten: bool = False, whiten_kernel: int = 2,
                 output_scale: float = 1.0) -> None:
        super().__init__()
        strides = list(strides) if strides is not None else [1] + [2] * (len(layers) - 1)
        if not (len(layers) == len(widths) == len(strides)) or not layers:
            raise ValueError("model.layers, model.widths and model.strides must be non-empty and equally long")
        style = Style(activation, conv_bias, bn_momentum, bn_eps, bn_scale)
        block_cls = BLOCKS[block]
        self.whiten: nn.Module = nn.Identity()
        if whiten:
            self.whiten, in_channels = L.whitening_stem(in_channels, whiten_kernel, activation)
        if stem == "cifar":
            self.stem = style.conv_bn(in_channels, stem_width, 3)
        else:
            self.stem = nn.Sequential(style.conv_bn(in_channels, stem_width, 7, 2),
                                      nn.MaxPool2d(3, stride=2, padding=1))
        c_in = stem_width
        stages = []
        for n_blocks, width, stride in zip(layers, widths, strides, strict=True):
            at = 0 if downsample_at == "first" else n_blocks - 1
            blocks = []
            for i in range(n_blocks):
                blocks.append(block_cls(c_in, width, stride if i == at else 1, relu, shortcut, stride_at, style))
                c_in = width * block_cls.expansion
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c_in, num_classes)
        self.scale: nn.Module = L.Scale(output_scale) if output_scale != 1.0 else nn.Identity()

        init_weights(self, init)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, Block):
                    nn.init.zeros_(m.last_bn().weight)

    def forward(self, x: Tensor) -> Tensor:
        return self.scale(self.fc(self.pool(self.stages(self.stem(self.whiten(x)))).flatten(1)))
