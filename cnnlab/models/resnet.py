"""ResNet from block type, block counts and widths, stem and where each stage downsamples.

Two block styles:
- "standard" (torchvision / kuangliu): conv-BN(-ReLU) without conv bias, a projection shortcut only where
  the shape changes, ReLU after the residual add.
- "seed" (the course exercise's ResNet50_layer4): every conv has a bias and is followed by BN and ReLU,
  the last one of the branch and the shortcut projection included, and there is no ReLU after the add.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, get_args

from torch import Tensor, nn

Style = Literal["standard", "seed"]
Shortcut = Literal["identity_when_possible", "always_project"]
Stem = Literal["cifar", "imagenet"]
DownsampleAt = Literal["first", "last"]


def conv_bn(c_in: int, c_out: int, kernel: int, stride: int = 1, relu: bool = True, bias: bool = False,
            ) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=kernel // 2, bias=bias),
        nn.BatchNorm2d(c_out),
    ]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class Block(nn.Module):
    """A residual block: `branch(x) + shortcut(x)`, then ReLU in the standard style."""

    expansion = 1

    def __init__(self, c_in: int, width: int, stride: int, style: Style, shortcut: Shortcut) -> None:
        super().__init__()
        seed = style == "seed"
        c_out = width * self.expansion
        self.branch = self.make_branch(c_in, width, c_out, stride, seed)
        if shortcut == "identity_when_possible" and stride == 1 and c_in == c_out:
            self.shortcut: nn.Module = nn.Identity()
        else:
            self.shortcut = conv_bn(c_in, c_out, 1, stride, relu=seed, bias=seed)
        self.out_relu = nn.Identity() if seed else nn.ReLU(inplace=True)

    def make_branch(self, c_in: int, width: int, c_out: int, stride: int, seed: bool) -> nn.Sequential:
        raise NotImplementedError

    def last_bn(self) -> nn.BatchNorm2d:
        return self.branch[-1][1]

    def forward(self, x: Tensor) -> Tensor:
        return self.out_relu(self.branch(x) + self.shortcut(x))


class BasicBlock(Block):
    expansion = 1

    def make_branch(self, c_in: int, width: int, c_out: int, stride: int, seed: bool) -> nn.Sequential:
        return nn.Sequential(conv_bn(c_in, width, 3, stride, bias=seed),
                             conv_bn(width, c_out, 3, relu=seed, bias=seed))


class Bottleneck(Block):
    expansion = 4

    def make_branch(self, c_in: int, width: int, c_out: int, stride: int, seed: bool) -> nn.Sequential:
        return nn.Sequential(conv_bn(c_in, width, 1, bias=seed),
                             conv_bn(width, width, 3, stride, bias=seed),
                             conv_bn(width, c_out, 1, relu=seed, bias=seed))


BLOCKS: dict[str, type[Block]] = {"basic": BasicBlock, "bottleneck": Bottleneck}


class ResNet(nn.Module):
    """Stem, one stage per entry of `layers`/`widths`/`strides`, global average pool, linear head.

    stem "cifar": 3x3/1 conv, no pooling; "imagenet": 7x7/2 conv + 3x3/2 max-pool.
    downsample_at "first" puts a stage's stride on its first block (torchvision); "last" on its last block
    (the seed).
    """

    def __init__(self, block: Literal["basic", "bottleneck"], layers: Sequence[int], widths: Sequence[int],
                 num_classes: int, strides: Sequence[int] | None = None,
                 stem: Stem = "cifar", stem_width: int = 64,
                 downsample_at: DownsampleAt = "first", style: Style = "standard",
                 shortcut: Shortcut = "identity_when_possible", zero_init_residual: bool = False,
                 in_channels: int = 3) -> None:
        super().__init__()
        if block not in BLOCKS:
            raise ValueError(f"model.block is {block!r}; allowed: {sorted(BLOCKS)}")
        strides = list(strides) if strides is not None else [1] + [2] * (len(layers) - 1)
        if not (len(layers) == len(widths) == len(strides)) or not layers:
            raise ValueError("model.layers, model.widths and model.strides must be non-empty and equally long")
        if num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        for key, value, choices in (("stem", stem, Stem), ("downsample_at", downsample_at, DownsampleAt),
                                    ("style", style, Style), ("shortcut", shortcut, Shortcut)):
            allowed = get_args(choices)
            if value not in allowed:
                raise ValueError(f"model.{key} is {value!r}; allowed: {list(allowed)}")
        block_cls = BLOCKS[block]
        seed = style == "seed"
        if stem == "cifar":
            self.stem = conv_bn(in_channels, stem_width, 3, bias=seed)
        else:
            self.stem = nn.Sequential(conv_bn(in_channels, stem_width, 7, 2, bias=seed),
                                      nn.MaxPool2d(3, stride=2, padding=1))
        c_in = stem_width
        stages = []
        for n_blocks, width, stride in zip(layers, widths, strides, strict=True):
            at = 0 if downsample_at == "first" else n_blocks - 1
            blocks = []
            for i in range(n_blocks):
                blocks.append(block_cls(c_in, width, stride if i == at else 1, style, shortcut))
                c_in = width * block_cls.expansion
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c_in, num_classes)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, Block):
                    nn.init.zeros_(m.last_bn().weight)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.pool(self.stages(self.stem(x))).flatten(1))
