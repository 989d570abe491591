"""A short real training on a subset of CIFAR-10 (the PNG tree beside the project), when it is there."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import SHARED_CIFAR10, epochs_of, make_cfg

from cnnlab.job import train

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not (SHARED_CIFAR10 / "train").is_dir(), reason="no ../shared/data/cifar10")]


def subset(dst: Path, per_class: dict[str, int]) -> Path:
    """Link the first N images of each class and split into a new tree (the source stays read-only)."""
    for split, n in per_class.items():
        for class_dir in sorted((SHARED_CIFAR10 / split).iterdir()):
            out = dst / split / class_dir.name
            out.mkdir(parents=True)
            for src in sorted(class_dir.glob("*.png"))[:n]:
                (out / src.name).symlink_to(src)
    return dst


def test_short_training_on_real_cifar10_beats_chance_clearly(tmp_path: Path) -> None:
    root = subset(tmp_path / "cifar10_subset", {"train": 300, "test": 100})
    cfg = make_cfg("dataset=cifar10_folder", f"dataset.root={root}", "dataset.val_size=500", "model=vgg11_bn",
                   "model.cfg=[32,M,64,M,128,M,128,M]", "model.classifier_hidden=[]", "model.classifier_dropout=0",
                   "optim.lr=2e-3", "trainer.epochs=4", "data.batch_size=100", "logger=none")
    best_val = train(cfg, tmp_path / "run")
    epochs = epochs_of(tmp_path / "run")
    assert epochs[-1]["train_loss"] < epochs[0]["train_loss"]
    assert best_val > 0.3 and epochs[-1]["test_acc"] > 0.3  # 10 classes: chance is 0.1
