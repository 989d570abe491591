"""Shared helpers: compose the real configs, tiny model overrides, a generated image-folder tree, subprocess
runs as users launch them, and W&B runs read back with W&B's own inspector.

Tiers: `pytest -m "not slow"` is the everyday tier (in-process, about 1.5 min on 2 cores); CI runs everything.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig
from PIL import Image

import cnnlab.config  # noqa: F401 - registers the config resolvers
from cnnlab.track.metrics import read_metrics

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
SHARED_CIFAR10 = ROOT.parent / "shared" / "data" / "cifar10"

# A VGG small enough to train in seconds on two CPU cores, still built from YAML alone.
TINY = ["model=vgg11_bn", "model.cfg=[16,M,32,M,64,M]", "model.classifier_hidden=[]",
        "model.classifier_dropout=0.0"]
SYNTH = ["dataset=synthetic", "dataset.source.train_size=512", "dataset.source.test_size=256"]
QUICK = [*TINY, *SYNTH, "logger=none", "trainer.log_every=4", "data.batch_size=64"]


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CNNLAB_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))
    for var in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_BASE_URL", "WANDB_SWEEP_ID", "WANDB_RUN_ID",
                "HYDRA_FULL_ERROR"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")


REFERENCES = ROOT.parent / "shared" / "reference"


def outside_reference(name: str) -> types.ModuleType:
    """An outside project's code rebuilt as a test oracle (../shared/reference/<name>.py, never copied in here).
    Missing, its proofs fail under CI (CI=true) and skip elsewhere, saying so."""
    path = REFERENCES / f"{name}.py"
    if not path.is_file():
        message = f"the outside reference {path} is missing: ../shared/reference must sit beside the project"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    spec = importlib.util.spec_from_file_location(f"reference_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_cfg(*overrides: str, config_name: str = "config", hydra: bool = False) -> DictConfig:
    """The composed config (with Hydra's own node when `hydra`)."""
    if not GlobalHydra.instance().is_initialized():  # once per test process: composing is then ~25 % faster
        initialize_config_dir(config_dir=str(CONF), version_base="1.3")
    return compose(config_name=config_name, overrides=list(overrides), return_hydra_config=hydra)


def run_cli(*args: str, cwd: Path, env: dict | None = None, timeout: int = 300,
            module: str = "cnnlab.run") -> subprocess.CompletedProcess:
    """`python -m cnnlab.run ...` (or another module) in a subprocess, launched from `cwd` (where outputs/ lands)."""
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


def epochs_of(run_dir: Path) -> list[dict]:
    return [r for r in read_metrics(run_dir / "metrics.jsonl") if r["kind"] == "epoch"]


def untimed(records: list[dict]) -> list[dict]:
    """Records without their wall-clock figures, which differ between any two runs."""
    return [{k: v for k, v in r.items() if "second" not in k} for r in records]


def job_dirs(launch_dir: Path) -> list[Path]:
    """The job dirs of the one sweep under `launch_dir`/outputs/multirun, in job order."""
    (sweep,) = (launch_dir / "outputs" / "multirun").iterdir()
    return sorted((p for p in sweep.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name))


def wandb_inspect(offline_run: Path) -> dict[str, Any]:
    """What W&B recorded for one offline run dir, read back with its own inspector: the summary view plus
    `records`, every record of the run's file."""
    wandb = str(Path(sys.executable).parent / "wandb")
    out = subprocess.run([wandb, "leet", "inspect", "--json", str(offline_run)], capture_output=True, text=True,
                         timeout=120, check=True)
    records = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    summary = subprocess.run([wandb, "leet", "inspect", "--summary", "--json", str(offline_run)],
                             capture_output=True, text=True, timeout=120, check=True)
    (run,) = [r["run"] for r in records if r.get("type") == "run"]
    return {"run": run, "records": records, **json.loads(summary.stdout)}


def wandb_run(run_dir: Path) -> dict[str, Any]:
    """The W&B run of a run dir that holds exactly one offline run."""
    (offline,) = (run_dir / "wandb").glob("offline-run-*")
    return wandb_inspect(offline)


def history(inspected: dict[str, Any]) -> list[dict[str, Any]]:
    """The run's history rows, each with its `_step`."""
    return [r["history"]["item"] for r in inspected["records"] if r.get("type") == "history"]


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


def snapshot(path: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under `path` with its bytes and mode: to prove a refused run changed nothing."""
    if not path.exists():
        return {}
    return {str(p.relative_to(path)): (p.read_bytes(), p.stat().st_mode) for p in sorted(path.rglob("*"))
            if p.is_file()}
