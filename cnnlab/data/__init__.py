"""Data: sources decode pixels to uint8 tensors; loaders batch, augment and normalise them."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from cnnlab import CnnlabError
from cnnlab.data.loader import TensorLoader
from cnnlab.data.sources import ImageFolder, ImageTensors


@dataclass
class Data:
    train: Iterable
    test: Iterable
    classes: list[str]
    mean: list[float]
    std: list[float]


def make_data(source: Any, *, loader: str, augment: dict, batch_size: int, eval_batch_size: int,
              mean: Sequence[float] | None, std: Sequence[float] | None, device: torch.device, seed: int,
              cache_dir: str, channels_last: bool = False, num_workers: int = 0, rank: int = 0,
              world_size: int = 1) -> Data:
    """Build the train and test loaders of `source` with the `loader` kind ('tensor' or 'torchvision')."""
    if loader not in ("tensor", "torchvision"):
        raise CnnlabError(f"dataset.loader is {loader!r}; allowed: tensor, torchvision")
    streaming = loader == "torchvision" and isinstance(source, ImageFolder) and None not in (mean, std)
    tensors: ImageTensors | None = None if streaming else source.load(cache_dir)
    if mean is None or std is None:
        mean, std = tensors.channel_stats()
    mean, std = list(mean), list(std)
    if loader == "torchvision":
        from cnnlab.data.torchvision_loader import torchvision_loader

        common = dict(source=source if streaming else tensors, mean=mean, std=std, augment=augment,
                      num_workers=num_workers, seed=seed, rank=rank, world_size=world_size)
        train = torchvision_loader(split="train", batch_size=batch_size, train=True, **common)
        test = torchvision_loader(split="test", batch_size=eval_batch_size, train=False, **common)
        classes = train.dataset.classes
    else:
        common = dict(mean=mean, std=std, device=device, seed=seed, channels_last=channels_last, rank=rank,
                      world_size=world_size, **augment)
        train = TensorLoader(tensors.train_x, tensors.train_y, batch_size, train=True, **common)
        test = TensorLoader(tensors.test_x, tensors.test_y, eval_batch_size, train=False, **common)
        classes = tensors.classes
    return Data(train, test, classes, mean, std)
