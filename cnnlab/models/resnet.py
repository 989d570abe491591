"""ResNet from block type, block counts and widths; every convention a ResNet variant differs in is a key.

- `residual` says how each block is wired:
  - `stride_at`: where a downsampling bottleneck puts its stride: on the 3x3 (torchvision, "ResNet v1.5") or on
    its first 1x1 (the original paper's Caffe models, and the seed). Basic blocks stride their first 3x3.
  - `relu`: "after_add" (torchvision): conv-BN-ReLU, except that the branch's last conv and the shortcut have no
    ReLU, which follows the residual add. "every_conv" (the seed): every conv, the branch's last and the
    shortcut projection included, is followed by BN and ReLU, and nothing follows the add.
  - `shortcut`: identity where the shape allows, or always a projection; `zero_init`: each branch's last BN
    weight starts at 0.
- `downsample_at` (the first or the last block of a stage), `stem`;
- `style` (cnnlab.models.layers.Style): the activation, conv bias, BatchNorm options and init.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from torch import Tensor, nn

from cnnlab.models.init import init_weights
from cnnlab.models.layers import Style
from cnnlab.types import ClassCount, Options, PosInt

Stem = Literal["cifar", "imagenet"]
DownsampleAt = Literal["first", "last"]
TORCHVISION_STYLE = Style(conv_bias=False, init="kaiming_fan_out")


class Residual(Options):
    """How each residual block is wired (see the module's docstring)."""

    relu: Literal["after_add", "every_conv"] = "after_add"
    shortcut: Literal["identity_when_possible", "always_project"] = "identity_when_possible"
    stride_at: Literal["3x3", "1x1"] = "3x3"
    zero_init: bool = False


TORCHVISION = Residual()


class Block(nn.Module):
    """A residual block: `branch(x) + shortcut(x)`, then the activation when relu="after_add"."""

    expansion = 1

    def __init__(self, c_in: int, width: int, stride: int, residual: Residual, style: Style) -> None:
        super().__init__()
        every = residual.relu == "every_conv"
        c_out = width * self.expansion
        self.branch = self.make_branch(c_in, width, c_out, stride, every, residual.stride_at, style)
        if residual.shortcut == "identity_when_possible" and stride == 1 and c_in == c_out:
            self.shortcut: nn.Module = nn.Identity()
        else:
            self.shortcut = style.conv_bn(c_in, c_out, 1, stride, act=every)
        self.out_relu = nn.Identity() if every else style.act()

    def make_branch(self, c_in: int, width: int, c_out: int, stride: int, last_act: bool, stride_at: str,
                    style: Style) -> nn.Sequential:
        raise NotImplementedError

    def last_bn(self) -> nn.BatchNorm2d:
        return self.branch[-1][1]

    def forward(self, x: Tensor) -> Tensor:
        return self.out_relu(self.branch(x) + self.shortcut(x))


class BasicBlock(Block):
    expansion = 1

    def make_branch(self, c_in: int, width: int, c_out: int, stride: int, last_act: bool, stride_at: str,
                    style: Style) -> nn.Sequential:
        return nn.Sequential(style.conv_bn(c_in, width, 3, stride), style.conv_bn(width, c_out, 3, act=last_act))


class Bottleneck(Block):
    expansion = 4

    def make_branch(self, c_in: int, width: int, c_out: int, stride: int, last_act: bool, stride_at: str,
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

    def __init__(self, block: Literal["basic", "bottleneck"], layers: Sequence[PosInt], widths: Sequence[PosInt],
                 num_classes: ClassCount, strides: Sequence[PosInt] | None = None, stem: Stem = "cifar",
                 stem_width: PosInt = 64, downsample_at: DownsampleAt = "first", residual: Residual = TORCHVISION,
                 in_channels: PosInt = 3, style: Style = TORCHVISION_STYLE) -> None:
        super().__init__()
        strides = list(strides) if strides is not None else [1] + [2] * (len(layers) - 1)
        if not (len(layers) == len(widths) == len(strides)) or not layers:
            raise ValueError("model.layers, model.widths and model.strides must be non-empty and equally long")
        residual, style = Residual.of(residual), Style.of(style)
        block_cls = BLOCKS[block]
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
                blocks.append(block_cls(c_in, width, stride if i == at else 1, residual, style))
                c_in = width * block_cls.expansion
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c_in, num_classes)

        init_weights(self, style.init)
        if residual.zero_init:
            for m in self.modules():
                if isinstance(m, Block):
                    nn.init.zeros_(m.last_bn().weight)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.pool(self.stages(self.stem(x))).flatten(1))
