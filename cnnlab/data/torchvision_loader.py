"""The classic path: PIL images + torchvision transforms + DataLoader, for data that does not fit in memory
(image folders are then read file by file) and as the baseline the fast tensor loader is measured against.

It meets the same loader protocol as cnnlab.data.loader.TensorLoader: the same seeded order per epoch (the
same global batches, split the same way across DDP ranks), `set_epoch(epoch, start_batch)`, and an exact
mid-epoch resume. Each sample's random augmentation is drawn from a generator seeded by (seed, epoch, index),
so it is the same in any worker process and after any resume.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, get_worker_info
from torchvision import transforms

from cnnlab import CnnlabError
from cnnlab.data.loader import CROP_FLIP, Augment, epoch_generator, last_batch_size, num_batches, shard


class TensorImages(Dataset):
    """uint8 (N, 3, H, W) tensors served as (PIL image, label), like torchvision's CIFAR10 dataset."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.images = images.permute(0, 2, 3, 1).numpy()
        self.labels = labels.tolist()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[Image.Image, int]:
        return Image.fromarray(self.images[i]), self.labels[i]


class FileImages(Dataset):
    """Image files served as (PIL image, label), read when asked for."""

    def __init__(self, paths: Sequence[str], labels: Sequence[int]) -> None:
        self.paths, self.labels = list(paths), list(labels)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[Image.Image, int]:
        with Image.open(self.paths[i]) as im:
            return im.convert("RGB"), self.labels[i]


class SeededTransform(Dataset):
    """`images` with `transform` applied; keyed by (index, epoch), whose seed draws the transform's randomness."""

    def __init__(self, images: Dataset, transform: Callable, seed: int) -> None:
        self.images, self.transform, self.seed = images, transform, seed

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, int]:
        index, epoch = key
        image, label = self.images[index]
        seed = (self.seed * 1_000_003 + epoch) * 1_000_033 + index
        if get_worker_info() is not None:  # a worker's RNG is its own: seed it, nothing to restore
            torch.random.default_generator.manual_seed(seed)
            return self.transform(image), label
        with torch.random.fork_rng(devices=[]):  # the training process's RNG (dropout, ...) stays as it was
            torch.random.default_generator.manual_seed(seed)
            return self.transform(image), label


class EpochBatches:
    """A batch sampler: epoch `epoch`'s seeded permutation (or the plain order), global batches of
    `batch_size` split across ranks as the tensor loader splits them, from batch `start_batch` on."""

    def __init__(self, n: int, batch_size: int, shuffle: bool, drop_last: bool, seed: int, rank: int,
                 world_size: int) -> None:
        self.n, self.batch_size, self.shuffle, self.drop_last = n, batch_size, shuffle, drop_last
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.epoch, self.start_batch = 0, 0

    def __len__(self) -> int:
        return num_batches(self.n, self.batch_size, self.drop_last, self.world_size)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        order = torch.randperm(self.n, generator=epoch_generator(self.seed, self.epoch)) if self.shuffle \
            else torch.arange(self.n)
        for b in range(self.start_batch, len(self)):
            indices = order[shard(b, self.batch_size, self.n, self.rank, self.world_size)].tolist()
            yield [(i, self.epoch) for i in indices]
        self.start_batch = 0


class TorchvisionLoader:
    """A DataLoader over `images` with PIL transforms, meeting cnnlab's loader protocol."""

    def __init__(self, images: Dataset, batch_size: int, mean: Sequence[float], std: Sequence[float], *,
                 train: bool, image_size: int, augment: Augment = CROP_FLIP, seed: int = 0, num_workers: int = 0,
                 rank: int = 0, world_size: int = 1) -> None:
        if augment.cutout or augment.flip == "alternate":
            raise CnnlabError("augment.cutout and augment.flip=alternate are implemented by data.loader=tensor only")
        steps: list = [transforms.Resize((image_size, image_size))]
        if train and augment.crop_padding:
            mode = "constant" if augment.padding_mode == "zeros" else augment.padding_mode
            steps.append(transforms.RandomCrop(image_size, padding=augment.crop_padding, padding_mode=mode))
        if train and augment.flip:
            steps.append(transforms.RandomHorizontalFlip())
        steps += [transforms.ToTensor(), transforms.Normalize(mean, std)]
        self.plain = transforms.Compose([transforms.Resize((image_size, image_size)), transforms.ToTensor(),
                                         transforms.Normalize(mean, std)])
        self.batches = EpochBatches(len(images), batch_size, train, train and augment.drop_last, seed, rank, world_size)
        self.loader = DataLoader(SeededTransform(images, transforms.Compose(steps), seed), batch_sampler=self.batches,
                                 num_workers=num_workers, persistent_workers=num_workers > 0)

    def __len__(self) -> int:
        return len(self.batches)

    def last_batch_size(self) -> int:
        b = self.batches
        return last_batch_size(b.n, b.batch_size, b.drop_last, b.rank, b.world_size)

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.batches.epoch, self.batches.start_batch = epoch, start_batch

    def first_images(self, n: int) -> torch.Tensor:
        """The first `n` images, normalised and unaugmented (to fit a whitening layer)."""
        images = self.loader.dataset.images
        return torch.stack([self.plain(images[i][0]) for i in range(min(n, len(images)))])

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return iter(self.loader)
