from __future__ import annotations

import os
import pickle
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_image_tree

from cnnlab import CnnlabError
from cnnlab.data.sources import Cifar, ImageFolder, Synthetic


def write_cifar_archive(root: Path, variant: str = "cifar10", per_batch: int = 20) -> np.ndarray:
    """A miniature CIFAR archive in the official layout (python pickles of uint8 rows, tar.gz)."""
    rng = np.random.default_rng(0)
    if variant == "cifar10":
        folder, train, test, meta = "cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], \
            ("batches.meta", {"label_names": [f"n{i}" for i in range(10)]})
        label_key, classes = "labels", 10
    else:
        folder, train, test, meta = "cifar-100-python", ["train"], ["test"], \
            ("meta", {"fine_label_names": [f"n{i}" for i in range(100)]})
        label_key, classes = "fine_labels", 100
    staging = root / "staging" / folder
    staging.mkdir(parents=True)
    first = None
    for name in train + test:
        data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        first = data if first is None else first
        labels = rng.integers(0, classes, per_batch).tolist()
        with open(staging / name, "wb") as f:
            pickle.dump({"data": data, label_key: labels}, f, protocol=2)
    with open(staging / meta[0], "wb") as f:
        pickle.dump(meta[1], f, protocol=2)
    archive = root / ("cifar-10-python.tar.gz" if variant == "cifar10" else "cifar-100-python.tar.gz")
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(staging, arcname=folder)
    return first


@pytest.mark.parametrize("variant,classes,n_train", [("cifar10", 10, 100), ("cifar100", 100, 20)])
def test_cifar_archive_in_the_data_dir_is_extracted_and_read(tmp_path: Path, variant: str, classes: int,
                                                             n_train: int) -> None:
    first_rows = write_cifar_archive(tmp_path, variant)
    data = Cifar(str(tmp_path), variant=variant, download=True).load()
    assert data.train_x.shape == (n_train, 3, 32, 32) and data.train_x.dtype == torch.uint8
    assert data.test_x.shape == (20, 3, 32, 32) and len(data.classes) == classes
    # rows are stored R plane, G plane, B plane: the same layout as (3, 32, 32)
    assert torch.equal(data.train_x[0].flatten(), torch.from_numpy(first_rows[0]))
    assert (tmp_path / ("cifar-10-batches-py" if variant == "cifar10" else "cifar-100-python")).is_dir()


def test_cifar_offline_without_data_says_how_to_supply_it(tmp_path: Path) -> None:
    with pytest.raises(CnnlabError) as err:
        Cifar(str(tmp_path / "nothing"), download=True).load()
    msg = str(err.value)
    assert "\n" not in msg and "cifar-10-python.tar.gz" in msg and "dataset=imagefolder" in msg


def test_cifar_batch_file_with_a_code_payload_is_refused(tmp_path: Path) -> None:
    write_cifar_archive(tmp_path)
    Cifar(str(tmp_path)).load()
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    with open(tmp_path / "cifar-10-batches-py" / "test_batch", "wb") as f:
        pickle.dump({"data": Payload(), "labels": []}, f)
    with pytest.raises(CnnlabError, match="refusing to load"):
        Cifar(str(tmp_path)).load()
    assert not marker.exists()


def test_image_folder_is_decoded_once_then_served_from_the_cache(tmp_path: Path) -> None:
    root = write_image_tree(tmp_path / "tree", {"train": 30, "test": 10})
    cache = tmp_path / "cache"
    first = ImageFolder(str(root)).load(str(cache))
    assert first.train_x.shape == (90, 3, 32, 32) and first.classes == ["c0", "c1", "c2"]
    assert first.train_y.tolist() == [0] * 30 + [1] * 30 + [2] * 30
    cached = list(cache.glob("imagefolder-*.pt"))
    assert len(cached) == 1
    stamp = cached[0].stat().st_mtime_ns
    second = ImageFolder(str(root)).load(str(cache))
    assert torch.equal(first.train_x, second.train_x) and second.stats == first.stats
    assert cached[0].stat().st_mtime_ns == stamp  # a hit: nothing rewritten

    # changing a source file invalidates the cache
    time.sleep(0.01)
    img = root / "train" / "c0" / "00000.png"
    from PIL import Image

    Image.fromarray(np.full((32, 32, 3), 7, np.uint8)).save(img)
    third = ImageFolder(str(root)).load(str(cache))
    assert (third.train_x[0] == 7).all()
    (refreshed,) = cache.glob("imagefolder-*.pt")  # the outdated decode was replaced, not kept beside
    assert refreshed != cached[0]


def test_image_folder_statistics_are_per_channel(tmp_path: Path) -> None:
    root = write_image_tree(tmp_path / "tree", {"train": 20, "test": 5})
    data = ImageFolder(str(root)).load(str(tmp_path / "cache"))
    mean, std = data.channel_stats()
    x = data.train_x.double() / 255
    assert np.allclose(mean, x.mean((0, 2, 3)).tolist(), atol=1e-6)
    assert np.allclose(std, x.std((0, 2, 3), unbiased=False).tolist(), atol=1e-6)


def test_read_only_data_dir_works_with_a_separate_cache(tmp_path: Path) -> None:
    root = write_image_tree(tmp_path / "tree", {"train": 5, "test": 5})
    for path in sorted(root.rglob("*"), reverse=True):
        path.chmod(0o555 if path.is_dir() else 0o444)
    root.chmod(0o555)
    try:
        data = ImageFolder(str(root)).load(str(tmp_path / "cache"))
        assert data.train_x.shape[0] == 15
        assert not any(p.suffix == ".pt" for p in root.rglob("*"))
    finally:
        for path in [root, *root.rglob("*")]:
            path.chmod(0o755)


def test_image_folder_errors_name_the_file_or_dir(tmp_path: Path) -> None:
    with pytest.raises(CnnlabError, match="has no 'train/' dir"):
        ImageFolder(str(tmp_path / "missing")).load()
    (tmp_path / "empty" / "train" / "a").mkdir(parents=True)
    (tmp_path / "empty" / "test" / "a").mkdir(parents=True)
    with pytest.raises(CnnlabError, match="holds no images"):
        ImageFolder(str(tmp_path / "empty")).load()
    root = write_image_tree(tmp_path / "tree", {"train": 3, "test": 3})
    (root / "train" / "c1" / "00001.png").write_bytes(b"not a png")
    with pytest.raises(CnnlabError, match=r"cannot decode image .*c1/00001\.png"):
        ImageFolder(str(root)).load(str(tmp_path / "cache"))


def test_images_of_another_size_are_resized(tmp_path: Path) -> None:
    root = write_image_tree(tmp_path / "tree", {"train": 2, "test": 2}, size=40)
    assert ImageFolder(str(root), image_size=32).load().train_x.shape[-2:] == (32, 32)


def test_synthetic_is_deterministic_and_balanced() -> None:
    a, b = Synthetic(seed=1).load(), Synthetic(seed=1).load()
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.test_y, b.test_y)
    counts = torch.bincount(a.train_y, minlength=10)
    assert counts.min() > 120 and a.train_x.dtype == torch.uint8
