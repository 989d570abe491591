"""The classic path: torchvision datasets + PIL transforms + DataLoader, for data that does not fit in memory
(image folders are then read file by file) and as the baseline the fast tensor loader is measured against."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from torchvision import datasets, transforms

from cnnlab import CnnlabError
from cnnlab.data.sources import ImageFolder, ImageTensors


class TensorImages(Dataset):
    """uint8 (N, 3, H, W) tensors served as PIL images, like torchvision's CIFAR10 dataset does."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, classes: list[str],
                 transform: Callable[[Image.Image], torch.Tensor]) -> None:
        self.images = images.permute(0, 2, 3, 1).numpy()
        self.labels = labels.tolist()
        self.classes = classes
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.transform(Image.fromarray(self.images[i])), self.labels[i]


def pil_transforms(train: bool, mean: Sequence[float], std: Sequence[float], crop_padding: int = 4,
                   padding_mode: str = "zeros", flip: bool = True, cutout: int = 0, size: int = 32,
                   **_: object) -> transforms.Compose:
    if cutout:
        raise CnnlabError("augment.cutout is only implemented by dataset.loader=tensor")
    steps: list = []
    if train and crop_padding:
        mode = "constant" if padding_mode == "zeros" else padding_mode
        steps.append(transforms.RandomCrop(size, padding=crop_padding, padding_mode=mode))
    if train and flip:
        steps.append(transforms.RandomHorizontalFlip())
    steps += [transforms.ToTensor(), transforms.Normalize(mean, std)]
    return transforms.Compose(steps)


def torchvision_loader(source: ImageFolder | ImageTensors, split: str, batch_size: int, train: bool,
                       mean: Sequence[float], std: Sequence[float], augment: dict, num_workers: int = 0,
                       seed: int = 0, rank: int = 0, world_size: int = 1) -> DataLoader:
    """`batch_size` is global: each of the `world_size` ranks loads its share through a DistributedSampler."""
    if isinstance(source, ImageFolder):
        tf = pil_transforms(train, mean, std, size=source.image_size, **augment)
        resize = [transforms.Resize((source.image_size, source.image_size))]
        dataset: Dataset = datasets.ImageFolder(str(source.root / split), transforms.Compose(resize + [tf]))
    else:
        x, y = (source.train_x, source.train_y) if split == "train" else (source.test_x, source.test_y)
        dataset = TensorImages(x, y, source.classes, pil_transforms(train, mean, std, size=x.shape[-1], **augment))
    drop_last = train and augment.get("drop_last", False)
    sampler = DistributedSampler(dataset, world_size, rank, shuffle=train, seed=seed, drop_last=drop_last) \
        if world_size > 1 else None
    return DataLoader(dataset, batch_size=batch_size // world_size, shuffle=train and sampler is None,
                      sampler=sampler, num_workers=num_workers, drop_last=drop_last,
                      generator=torch.Generator().manual_seed(seed), persistent_workers=num_workers > 0)
