"""Batches straight from uint8 tensors held on the training device, augmented with batched tensor ops.

Each epoch draws, from a generator seeded by (seed, epoch), a permutation and every sample's crop offset,
flip and cutout centre up front. So an epoch is reproducible on its own and can be resumed at any batch, and
there is no per-image Python work and no worker process.

The loader protocol, met by this loader and by cnnlab.data.torchvision_loader alike: `len(loader)` batches,
`set_epoch(epoch, start_batch)` before iterating, and an epoch resumed at `start_batch` yields exactly the
batches an uninterrupted epoch yields from there.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from cnnlab.types import Pixels

PaddingMode = Literal["zeros", "reflect"]


@dataclass(frozen=True)
class Augment:
    """Train-time augmentation (conf/augment/), which both loaders apply."""

    crop_padding: Pixels = 4
    padding_mode: PaddingMode = "zeros"
    flip: bool | Literal["alternate"] = True
    cutout: Pixels = 0
    drop_last: bool = False


CROP_FLIP = Augment()  # torchvision's RandomCrop(32, padding=4) + RandomHorizontalFlip


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The generator of one epoch's order and augmentation, shared by both loaders."""
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


def shard(batch: int, batch_size: int, n: int, rank: int, world_size: int) -> slice:
    """Rank `rank`'s part of global batch `batch` of `n` samples: contiguous, sizes differing by at most one."""
    start = batch * batch_size
    size = min(n, start + batch_size) - start
    q, r = divmod(size, world_size)
    lo = start + rank * q + min(rank, r)
    return slice(lo, lo + q + (rank < r))


def num_batches(n: int, batch_size: int, drop_last: bool, world_size: int) -> int:
    full, rest = divmod(n, batch_size)
    # a last partial batch too small to give every rank a sample is dropped on all ranks alike
    return full + (not drop_last and rest >= world_size)


def last_batch_size(n: int, batch_size: int, drop_last: bool, rank: int, world_size: int) -> int:
    """The images of this rank's part of an epoch's last batch."""
    last = shard(num_batches(n, batch_size, drop_last, world_size) - 1, batch_size, n, rank, world_size)
    return last.stop - last.start


def _shifted_index(offset: Tensor, padding: int, length: int, mode: PaddingMode) -> tuple[Tensor, Tensor]:
    """Source indices of a crop taken at `offset` from an image padded by `padding`, and their validity."""
    idx = offset[:, None] - padding + torch.arange(length, device=offset.device)
    if mode == "reflect":
        idx = idx.abs()
        idx = torch.where(idx > length - 1, 2 * (length - 1) - idx, idx)
        return idx, torch.ones_like(idx, dtype=torch.bool)
    valid = (idx >= 0) & (idx < length)
    return idx.clamp(0, length - 1), valid


def crop_flip(images: Tensor, dy: Tensor, dx: Tensor, flip: Tensor, padding: int,
              mode: PaddingMode = "zeros") -> Tensor:
    """RandomCrop(size, padding) + RandomHorizontalFlip for a whole batch in one gather.

    `dy`, `dx` are offsets in [0, 2*padding] into the padded image (torchvision's crop corner); `flip` is a
    bool per image. Zero padding fills with 0 exactly like torchvision's default fill.
    """
    b, c, h, w = images.shape
    rows, row_ok = _shifted_index(dy, padding, h, mode)
    cols, col_ok = _shifted_index(dx, padding, w, mode)
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    col_ok = torch.where(flip[:, None], col_ok.flip(1), col_ok)
    # two gathers (rows, then columns) over index views that expand without copying
    out = images.gather(2, rows[:, None, :, None].expand(b, c, h, w))
    out = out.gather(3, cols[:, None, None, :].expand(b, c, h, w))
    if mode == "zeros" and padding > 0:
        out.mul_(row_ok[:, None, :, None] & col_ok[:, None, None, :])
    return out


def cutout(x: Tensor, cy: Tensor, cx: Tensor, size: int) -> Tensor:
    """Zero a size x size square whose centre is (cy, cx) in each image, clipped at the borders."""
    h, w = x.shape[-2:]
    top, left = cy - size // 2, cx - size // 2
    ys = torch.arange(h, device=x.device)[None, :]
    xs = torch.arange(w, device=x.device)[None, :]
    in_y = (ys >= top[:, None]) & (ys < top[:, None] + size)
    in_x = (xs >= left[:, None]) & (xs < left[:, None] + size)
    return x.masked_fill(in_y[:, None, :, None] & in_x[:, None, None, :], 0)


class TensorLoader:
    """Yields (normalised float images, labels) batches on `device`.

    train=True shuffles and augments (crop with `crop_padding`, flip, cutout of `cutout` pixels, each
    optional); train=False walks the data in order without augmentation. flip="alternate" flips a random half
    of the images in odd epochs and exactly the other half in even ones (airbench's alternating flip). Under
    DDP each global batch of `batch_size` is split across the `world_size` ranks, so the global order is the
    same for any world size.
    """

    def __init__(self, images: Tensor, labels: Tensor, batch_size: int, mean: Sequence[float],
                 std: Sequence[float], *, train: bool, augment: Augment = CROP_FLIP, device: str | torch.device = "cpu",
                 seed: int = 0, channels_last: bool = False, rank: int = 0, world_size: int = 1) -> None:
        self.device = torch.device(device)
        self.images = images.to(self.device)
        self.labels = labels.to(self.device)
        self.batch_size = batch_size
        self.train = train
        self.seed = seed
        self.crop_padding = augment.crop_padding if train else 0
        self.padding_mode = augment.padding_mode
        self.flip = augment.flip if train else False
        self.cutout = augment.cutout if train else 0
        self.drop_last = augment.drop_last and train
        self.channels_last = channels_last
        std_t = torch.tensor(std, dtype=torch.float32, device=self.device)[None, :, None, None]
        mean_t = torch.tensor(mean, dtype=torch.float32, device=self.device)[None, :, None, None]
        self.scale = 1.0 / (255.0 * std_t)  # (x / 255 - mean) / std = x * scale - shift
        self.shift = mean_t / std_t
        self.rank, self.world_size = rank, world_size
        self.epoch = 0
        self.start_batch = 0

    def __len__(self) -> int:
        return num_batches(len(self.labels), self.batch_size, self.drop_last, self.world_size)

    def last_batch_size(self) -> int:
        return last_batch_size(len(self.labels), self.batch_size, self.drop_last, self.rank, self.world_size)

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Choose the epoch whose permutation and augmentation to draw, and the batch to start from."""
        self.epoch, self.start_batch = epoch, start_batch

    def _plan(self) -> dict[str, Tensor]:
        n, (h, w) = len(self.labels), self.images.shape[-2:]
        if not self.train:
            return {"order": torch.arange(n, device=self.device)}
        g = epoch_generator(self.seed, self.epoch)
        p = self.crop_padding
        plan = {"order": torch.randperm(n, generator=g),
                "dy": torch.randint(0, 2 * p + 1, (n,), generator=g),
                "dx": torch.randint(0, 2 * p + 1, (n,), generator=g),
                "flip": torch.rand(n, generator=g) < (0.5 if self.flip else 0.0),
                "cy": torch.randint(0, h, (n,), generator=g),
                "cx": torch.randint(0, w, (n,), generator=g)}
        if self.flip == "alternate":  # per image: a seeded coin in odd epochs, its opposite in even ones
            coin = torch.rand(n, generator=epoch_generator(self.seed, 0)) < 0.5
            plan["flip"] = (coin ^ (self.epoch % 2 == 0))[plan["order"]]
        return {k: v.to(self.device) for k, v in plan.items()}

    def first_images(self, n: int) -> Tensor:
        """The first `n` images, normalised and unaugmented, in float32 (to fit a whitening layer)."""
        return self.images[:n].float().mul_(self.scale.float()).sub_(self.shift.float())

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        plan = self._plan()
        for b in range(self.start_batch, len(self)):
            sl = shard(b, self.batch_size, len(self.labels), self.rank, self.world_size)
            idx = plan["order"][sl]
            x = self.images[idx]
            if self.crop_padding or self.flip:
                x = crop_flip(x, plan["dy"][sl], plan["dx"][sl], plan["flip"][sl], self.crop_padding,
                              self.padding_mode)
            if self.channels_last:  # change layout while the pixels are 1 byte, not 4
                x = x.contiguous(memory_format=torch.channels_last)
            x = x.float().mul_(self.scale).sub_(self.shift)
            if self.cutout:
                x = cutout(x, plan["cy"][sl], plan["cx"][sl], self.cutout)
            yield x, self.labels[idx]
        self.start_batch = 0
