"""Shared helpers: compose the real configs, tiny model overrides, a generated image-folder tree."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig
from PIL import Image

import cnnlab.run  # noqa: F401 - registers the config resolvers

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
SHARED_CIFAR10 = ROOT.parent / "shared" / "data" / "cifar10"

# A VGG small enough to train in seconds on two CPU cores, still built from YAML alone.
TINY = ["model=vgg11_bn", "model.cfg=[16,M,32,M,64,M]", "model.classifier_hidden=[]",
        "model.classifier_dropout=0.0"]
SYNTH = ["dataset=synthetic", "dataset.source.train_size=512", "dataset.source.test_size=256"]


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CNNLAB_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))
    for var in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_BASE_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")


def make_cfg(*overrides: str) -> DictConfig:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def run_cli(*args: str, cwd: Path, env: dict | None = None, timeout: int = 300,
            module: str = "cnnlab.run") -> subprocess.CompletedProcess:
    """`python -m cnnlab.run ...` (or another module) in a subprocess, launched from `cwd` (where outputs/ lands)."""
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


def write_image_tree(root: Path, per_class: dict[str, int], classes: int = 3, size: int = 32,
                     seed: int = 0) -> Path:
    """train/<class>/*.png + test/<class>/*.png with a colour per class, so the task is learnable."""
    rng = np.random.default_rng(seed)
    for split, n in per_class.items():
        for c in range(classes):
            d = root / split / f"c{c}"
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                base = np.zeros((size, size, 3), np.float64)
                base[..., c % 3] = 160
                img = np.clip(base + rng.normal(0, 40, base.shape), 0, 255).astype(np.uint8)
                Image.fromarray(img).save(d / f"{i:05d}.png")
    return root
