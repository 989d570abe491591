"""Data: a `Dataset` (where the pixels come from, the class count, the normalisation and the validation
hold-out) and an `Augment` are put together by `make_data` into train, validation and test loaders.

conf/config.yaml's `data` node is `make_data` with everything but what is known at run time: the device,
the rank and the world size.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import torch
from annotated_types import Gt, Len, Lt
from torch import Tensor

from cnnlab import CnnlabError
from cnnlab.data.loader import Augment, TensorLoader
from cnnlab.data.sources import Cifar, ImageFolder, Synthetic, cpu_count
from cnnlab.types import ClassCount, NonEmptyPath, NonNegInt, OneOf, PosFloat, PosInt, Seed, text

log = logging.getLogger("cnnlab")

AUTO_VAL_FRACTION, AUTO_VAL_MAX = 0.1, 5000
Name = text(r"[A-Za-z0-9_.-]+", "a name of letters, digits, _ . -")


@dataclass
class Dataset:
    """A source of pixels and what a run needs to know of it (conf/dataset/)."""

    source: Annotated[Any, OneOf(Cifar, ImageFolder, Synthetic)]
    name: Name
    root: NonEmptyPath | None
    num_classes: ClassCount
    mean: Annotated[list[float], Len(3, 3)] | None
    std: Annotated[list[PosFloat], Len(3, 3)] | None
    val_size: Literal["auto"] | NonNegInt | Annotated[float, Gt(0), Lt(1)] = "auto"
    val_seed: Seed = 0

    def val_count(self, n_train: int) -> int:
        size = self.val_size
        if size == "auto":
            count = min(AUTO_VAL_MAX, round(AUTO_VAL_FRACTION * n_train))
        else:
            count = round(size * n_train) if isinstance(size, float) else int(size)
        if count >= n_train:
            raise CnnlabError(f"dataset.val_size is {size}, but the train split has only {n_train} images")
        return count


def holdout(labels: Tensor, count: int, seed: int) -> tuple[Tensor, Tensor]:
    """Split indices 0..N-1 into (train, val) with `count` in val, stratified: each class gives its share
    (largest remainders), drawn by a generator seeded with `seed`. Both index tensors are sorted."""
    if count == 0:
        return torch.arange(len(labels)), torch.arange(0)
    g = torch.Generator().manual_seed(seed)
    classes, sizes = labels.unique(return_counts=True)
    quota = sizes.double() * count / len(labels)
    take = quota.floor().long()
    short = count - int(take.sum())
    take[torch.argsort(quota - take, descending=True, stable=True)[:short]] += 1
    val = [torch.nonzero(labels == c).flatten()[torch.randperm(int(s), generator=g)[:int(k)]]
           for c, s, k in zip(classes, sizes, take, strict=True)]
    val_idx = torch.cat(val).sort().values
    keep = torch.ones(len(labels), dtype=torch.bool)
    keep[val_idx] = False
    return torch.nonzero(keep).flatten(), val_idx


@dataclass
class Data:
    train: Iterable
    val: Iterable | None  # None: no validation split
    test: Iterable
    classes: list[str]
    mean: list[float]
    std: list[float]
    image_shape: tuple[int, int, int]  # (channels, height, width) of every image the loaders yield
    description: str  # which data, in words


def make_data(device: torch.device, rank: int, world_size: int, channels_last: bool, /,
              dataset: Annotated[Dataset, OneOf(Dataset)], augment: Annotated[Augment, OneOf(Augment)],
              loader: Literal["tensor", "torchvision"], num_workers: NonNegInt, batch_size: PosInt,
              eval_batch_size: PosInt | None, seed: Seed, cache_dir: NonEmptyPath) -> Data:
    """Load `dataset`, hold out its validation split, and build the loaders of the `loader` kind, for the
    process of `rank` among `world_size` (the run supplies these and the device)."""
    eval_batch_size = eval_batch_size or 2 * batch_size
    if num_workers > cpu_count():
        raise CnnlabError(f"data.num_workers is {num_workers}; allowed: 0 to {cpu_count()} (this machine's CPUs)")
    for key, size in (("batch_size", batch_size), ("eval_batch_size", eval_batch_size)):
        if size % world_size:
            raise CnnlabError(f"data.{key} is {size}, which {world_size} ranks cannot share evenly: use a multiple "
                              f"of {world_size} (it is the global batch size)")
    source, mean, std = dataset.source, dataset.mean, dataset.std
    if loader == "torchvision" and isinstance(source, ImageFolder) and None not in (mean, std):
        return _streamed(dataset, augment, batch_size, eval_batch_size, seed, num_workers, rank, world_size)
    tensors = source.load(cache_dir)
    if mean is None or std is None:
        mean, std = tensors.channel_stats()
    mean, std = list(mean), list(std)
    train_idx, val_idx = holdout(tensors.train_y, dataset.val_count(len(tensors.train_y)), dataset.val_seed)
    splits = {"train": (tensors.train_x[train_idx], tensors.train_y[train_idx]),
              "val": (tensors.train_x[val_idx], tensors.train_y[val_idx]),
              "test": (tensors.test_x, tensors.test_y)}
    if loader == "tensor":
        common = dict(augment=augment, device=device, seed=seed, channels_last=channels_last, rank=rank,
                      world_size=world_size)

        def make(split: str, train: bool) -> TensorLoader:
            x, y = splits[split]
            return TensorLoader(x, y, batch_size if train else eval_batch_size, mean, std, train=train, **common)
    else:
        from cnnlab.data.torchvision_loader import TensorImages, TorchvisionLoader  # torchvision: 3 s to import

        def make(split: str, train: bool) -> TorchvisionLoader:
            x, y = splits[split]
            return TorchvisionLoader(TensorImages(x, y), batch_size if train else eval_batch_size, mean, std,
                                     train=train, image_size=x.shape[-1], augment=augment, seed=seed,
                                     num_workers=num_workers, rank=rank, world_size=world_size)
    what = describe(tensors.description, len(train_idx), len(val_idx), len(tensors.test_y))
    return Data(make("train", True), make("val", False) if len(val_idx) else None, make("test", False),
                tensors.classes, mean, std, tuple(tensors.train_x.shape[1:]), what)


def _streamed(dataset: Dataset, augment: Augment, batch_size: int, eval_batch_size: int, seed: int,
              num_workers: int, rank: int, world_size: int) -> Data:
    """An image folder read file by file, each epoch (data.loader=torchvision with mean and std given)."""
    from cnnlab.data.torchvision_loader import FileImages, TorchvisionLoader

    source = dataset.source
    train_paths, train_labels, classes, _ = source.files("train")
    test_paths, test_labels, *_ = source.files("test")
    labels = torch.tensor(train_labels)
    train_idx, val_idx = holdout(labels, dataset.val_count(len(labels)), dataset.val_seed)

    def pick(idx: Tensor) -> tuple[list[str], list[int]]:
        return [train_paths[i] for i in idx.tolist()], labels[idx].tolist()

    common = dict(mean=list(dataset.mean), std=list(dataset.std), image_size=source.image_size, seed=seed,
                  num_workers=num_workers, rank=rank, world_size=world_size, augment=augment)
    train = TorchvisionLoader(FileImages(*pick(train_idx)), batch_size, train=True, **common)
    val = TorchvisionLoader(FileImages(*pick(val_idx)), eval_batch_size, train=False, **common) \
        if len(val_idx) else None
    test = TorchvisionLoader(FileImages(test_paths, test_labels), eval_batch_size, train=False, **common)
    what = describe(f"images from {source.root}, read file by file", len(train_idx), len(val_idx),
                    len(test_labels))
    return Data(train, val, test, classes, list(dataset.mean), list(dataset.std),
                (3, source.image_size, source.image_size), what)


def describe(what: str, n_train: int, n_val: int, n_test: int) -> str:
    val = f"{n_val:,} validation (held out of train/)" if n_val else "no validation split"
    return f"{what}: {n_train:,} train, {val}, {n_test:,} test images"
