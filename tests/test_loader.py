"""The loaders: torchvision's augmentation semantics, exact per-epoch plans, mid-epoch resume, DDP shards."""

from __future__ import annotations

import pytest
import torch
import torchvision.transforms.functional as TF
from PIL import Image
from torchvision import transforms

from cnnlab.data.loader import Augment, TensorLoader, crop_flip
from cnnlab.data.torchvision_loader import TensorImages, TorchvisionLoader

MEAN, STD = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]


def augment_of(kw: dict) -> Augment:
    """The augmentation the keyword arguments `kw` name (taken out of them), the rest at its defaults."""
    return Augment(**{k: kw.pop(k) for k in list(kw) if k in Augment.__dataclass_fields__})


def loader(n: int = 1000, batch_size: int = 300, **kw) -> TensorLoader:
    g = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
    labels = torch.arange(n)
    return TensorLoader(images, labels, batch_size, MEAN, STD, augment=augment_of(kw), **{"train": True, **kw})


@pytest.mark.parametrize("mode,tv_mode", [("zeros", "constant"), ("reflect", "reflect")])
def test_crop_flip_equals_torchvision_pad_crop_flip(mode: str, tv_mode: str) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8, generator=g)
    dy, dx = torch.randint(0, 9, (64,), generator=g), torch.randint(0, 9, (64,), generator=g)
    flip = torch.rand(64, generator=g) < 0.5
    out = crop_flip(x, dy, dx, flip, padding=4, mode=mode)
    for i in range(64):
        ref = TF.crop(TF.pad(x[i], [4], padding_mode=tv_mode), int(dy[i]), int(dx[i]), 32, 32)
        if flip[i]:
            ref = TF.hflip(ref)
        assert torch.equal(out[i], ref), i


def _marker_positions(batch: torch.Tensor) -> list[tuple[int, int]]:
    """Where the single bright pixel ended up in each image (row, col); (-1, -1) if cropped away."""
    flat = batch[:, 0].reshape(len(batch), -1)
    pos = flat.argmax(1)
    found = flat.max(1).values > 0.9
    return [(int(p) // 32, int(p) % 32) if ok else (-1, -1) for p, ok in zip(pos, found, strict=True)]


def test_augmentation_statistics_match_torchvision_random_crop_and_flip() -> None:
    n = 4000
    img = torch.zeros(3, 32, 32, dtype=torch.uint8)
    img[:, 10, 5] = 255  # off-centre, so a flip moves it
    ours = TensorLoader(img.expand(n, 3, 32, 32).clone(), torch.zeros(n, dtype=torch.long), n, [0, 0, 0],
                        [1 / 255, 1 / 255, 1 / 255], train=True, seed=3)
    (x, _), = list(ours)
    ours_pos = _marker_positions(x / 255)
    tv = transforms.Compose([transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(),
                             transforms.PILToTensor()])
    torch.manual_seed(3)
    pil = Image.fromarray(img.permute(1, 2, 0).numpy())
    tv_pos = _marker_positions(torch.stack([tv(pil) for _ in range(n)]).float() / 255)

    def histograms(positions: list[tuple[int, int]]) -> tuple[torch.Tensor, float]:
        rows = torch.tensor([r for r, _ in positions])
        cols = torch.tensor([c for _, c in positions])
        dy = torch.bincount(rows - 10 + 4, minlength=9).float() / n  # row = 10 - (dy - 4)
        flipped = (cols > 16).float().mean().item()
        return dy, flipped

    ours_dy, ours_flip = histograms(ours_pos)
    tv_dy, tv_flip = histograms(tv_pos)
    assert torch.allclose(ours_dy, torch.full((9,), 1 / 9), atol=0.025)
    assert torch.allclose(ours_dy, tv_dy, atol=0.035)
    assert abs(ours_flip - 0.5) < 0.04 and abs(ours_flip - tv_flip) < 0.05


def test_every_sample_once_per_epoch_and_partial_last_batch() -> None:
    keep = loader(n=1000, batch_size=300)
    labels = torch.cat([y for _, y in keep])
    assert len(keep) == 4 and sorted(labels.tolist()) == list(range(1000))
    drop = loader(n=1000, batch_size=300, drop_last=True)
    assert len(drop) == 3 and sum(len(y) for _, y in drop) == 900


def test_epochs_are_deterministic_per_seed_and_differ_between_epochs() -> None:
    a, b, other_seed = loader(seed=7), loader(seed=7), loader(seed=8)
    first = [x for x, _ in a]
    assert all(torch.equal(x, y) for x, y in zip(first, [x for x, _ in b], strict=True))
    assert not torch.equal(first[0], next(iter(other_seed))[0])
    a.set_epoch(1)
    assert not torch.equal(first[0], next(iter(a))[0])


def test_resuming_mid_epoch_yields_the_rest_of_the_same_epoch() -> None:
    full = loader(seed=5)
    full.set_epoch(3)
    batches = list(full)
    resumed = loader(seed=5)
    resumed.set_epoch(3, start_batch=2)
    rest = list(resumed)
    assert len(rest) == len(batches) - 2
    for (x, y), (rx, ry) in zip(batches[2:], rest, strict=True):
        assert torch.equal(x, rx) and torch.equal(y, ry)
    assert len(list(resumed)) == len(batches)  # the next pass starts from the beginning again


def test_eval_loader_is_ordered_unaugmented_and_normalised() -> None:
    ev = loader(train=False, batch_size=256)
    x = torch.cat([x for x, _ in ev])
    labels = torch.cat([y for _, y in ev])
    assert torch.equal(labels, torch.arange(1000))
    pixels = x * torch.tensor(STD)[None, :, None, None] + torch.tensor(MEAN)[None, :, None, None]
    assert torch.allclose(pixels * 255, ev.images.float(), atol=1e-3)


def test_cutout_zeroes_a_square_in_every_image() -> None:
    cut = loader(crop_padding=0, flip=False, cutout=8)
    x, _ = next(iter(cut))
    zeros = (x == 0).all(1).flatten(1).sum(1)  # zero in every channel: normalised mean
    assert zeros.min() >= 16 and zeros.max() <= 64


def test_channels_last() -> None:
    x, _ = next(iter(loader(channels_last=True)))
    assert x.is_contiguous(memory_format=torch.channels_last) and x.dtype == torch.float32


@pytest.mark.parametrize("world", [2, 3])
def test_ranks_split_every_global_batch_of_the_single_process_order(world: int) -> None:
    single = [(x, y) for x, y in loader(n=1000, batch_size=300, seed=4)]
    shards = [list(loader(n=1000, batch_size=300, seed=4, rank=r, world_size=world)) for r in range(world)]
    assert all(len(s) == len(single) for s in shards)
    for b, (x, y) in enumerate(single):
        assert torch.equal(torch.cat([s[b][1] for s in shards]), y)
        assert torch.equal(torch.cat([s[b][0] for s in shards]), x)


def test_a_last_batch_smaller_than_the_world_is_dropped_everywhere() -> None:
    assert len(loader(n=601, batch_size=300, world_size=2)) == 2
    assert len(loader(n=602, batch_size=300, world_size=2)) == 3


# ------------------------------------------------------------- the torchvision loader meets the same protocol
def tv_loader(n: int = 200, batch_size: int = 64, workers: int = 0, **kw) -> TorchvisionLoader:
    g = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
    return TorchvisionLoader(TensorImages(images, torch.arange(n)), batch_size, MEAN, STD, augment=augment_of(kw),
                             **{"train": True, "image_size": 32, "seed": 5, "num_workers": workers, **kw})


def test_torchvision_loader_walks_the_tensor_loaders_order() -> None:
    tv = tv_loader()
    tensor = loader(n=200, batch_size=64, seed=5)
    for epoch in (1, 2):
        tv.set_epoch(epoch)
        tensor.set_epoch(epoch)
        assert [y.tolist() for _, y in tv] == [y.tolist() for _, y in tensor]


@pytest.mark.parametrize("workers", [0, pytest.param(2, marks=pytest.mark.slow)])
def test_torchvision_loader_resumes_mid_epoch_exactly_with_any_workers(workers: int) -> None:
    full = tv_loader()
    full.set_epoch(3)
    batches = list(full)
    resumed = tv_loader(workers=workers)
    resumed.set_epoch(3, start_batch=2)
    rest = list(resumed)
    assert len(rest) == len(batches) - 2
    for (x, y), (rx, ry) in zip(batches[2:], rest, strict=True):
        assert torch.equal(x, rx) and torch.equal(y, ry)  # the same images, the same random crops and flips


@pytest.mark.slow
def test_torchvision_loader_augments_and_evaluates_plainly() -> None:
    train, ev = tv_loader(), tv_loader(train=False)
    train.set_epoch(1)
    ev.set_epoch(1)
    (x, _), (ex, ey) = next(iter(train)), next(iter(ev))
    assert torch.equal(ey, torch.arange(64))  # evaluation walks the data in order
    assert not torch.equal(x, ex)


@pytest.mark.slow
@pytest.mark.parametrize("world", [2, 3])
def test_torchvision_loader_ranks_split_each_global_batch(world: int) -> None:
    single = [y for _, y in tv_loader()]
    shards = [[y for _, y in tv_loader(rank=r, world_size=world)] for r in range(world)]
    for b, y in enumerate(single):
        assert torch.equal(torch.cat([s[b] for s in shards]), y)
