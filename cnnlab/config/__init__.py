"""Composition helpers for every entry point: the resolvers the YAML uses, `validate` (every key against the
code that declares it, right after Hydra composes), and `build` (Hydra `instantiate` with one-line errors)."""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from cnnlab import CnnlabError
from cnnlab.config.check import ConfigError, check, first_line

__all__ = ["ConfigError", "build", "validate", "validate_evaluate"]

CIFAR10_PNG_ENV = "CNNLAB_CIFAR10_PNG"
PROJECT_ROOT = Path(__file__).resolve().parents[2]


def build(node: DictConfig, key: str, **kwargs: Any) -> Any:
    """`instantiate`, with a failing constructor reported as a one-line error that names the config key."""
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as e:
        cause = e.__cause__ or e
        if isinstance(cause, CnnlabError):
            raise cause from None
        raise CnnlabError(f"{key}: {first_line(cause)}") from e


def validate(cfg: DictConfig) -> None:
    """Every key of a run's config against its declaration, then the rules that span groups."""
    # the declarations import every target (torch too): a command that only composes does without them
    from cnnlab.config.root import RunConfig

    check(cfg, RunConfig)
    if cfg.objective != "final_test_acc" and cfg.dataset.val_size == 0:
        raise ConfigError(f"objective is {cfg.objective} but dataset.val_size is 0 (no validation split): "
                          "set dataset.val_size, or objective=final_test_acc")


def validate_evaluate(cfg: DictConfig) -> None:
    from cnnlab.config.root import EvaluateConfig

    check(cfg, EvaluateConfig)


# ---------------------------------------------------------------------------------------------- resolvers
def _existing_dir(path: str) -> str:
    """${cnnlab.dir:outputs}: the path, created if missing (for files opened before any job starts, such as
    the Optuna study database)."""
    Path(path).mkdir(parents=True, exist_ok=True)
    return path


def _class_count(root: str) -> int:
    """${cnnlab.class_count:<root>}: how many class dirs an image-folder tree has under train/."""
    train = Path(root).expanduser() / "train"
    if not train.is_dir():
        raise CnnlabError(f"dataset.root {Path(root).expanduser().resolve()} has no 'train/' dir (expected "
                          "train/<class>/*, test/<class>/*)")
    return sum(1 for e in os.scandir(train) if e.is_dir())


def _cifar10_png() -> str | None:
    """${cnnlab.cifar10_png:}: a CIFAR-10 PNG tree to fall back on: $CNNLAB_CIFAR10_PNG, else
    ../shared/data/cifar10 beside the project (or beside the launch dir), else null."""
    if os.environ.get(CIFAR10_PNG_ENV):
        return os.environ[CIFAR10_PNG_ENV]
    for base in (PROJECT_ROOT, Path.cwd()):
        tree = base.parent / "shared" / "data" / "cifar10"
        if (tree / "train").is_dir():
            return str(tree)
    return None


def _default_resume() -> str | None:
    """${cnnlab.default_resume:}: "allow" under Hydra's submitit launchers, whose requeue after a preemption or a
    timeout runs the same job into the same dir again; otherwise null (a run dir holding last.pt is refused)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    target = OmegaConf.select(HydraConfig.get(), "launcher._target_", default="") or ""
    return "allow" if "submitit" in target else None


RESOLVERS = {
    # A short random id per launch keeps run dirs unique even when two runs start in the same second; Hydra
    # copies resolver caches into every job of a multirun, so a sweep's jobs share one id.
    "cnnlab.uid": (lambda: uuid.uuid4().hex[:6], True),
    "cnnlab.dir": (_existing_dir, False),
    "cnnlab.class_count": (_class_count, False),
    "cnnlab.cifar10_png": (_cifar10_png, False),
    "cnnlab.default_resume": (_default_resume, False),
}
for _name, (_resolver, _cache) in RESOLVERS.items():
    if not OmegaConf.has_resolver(_name):
        OmegaConf.register_new_resolver(_name, _resolver, use_cache=_cache)
