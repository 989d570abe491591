"""Hydra callbacks (conf/config.yaml, hydra.callbacks): checks that Hydra's own steps would otherwise turn into
a traceback."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from cnnlab.config.compose_errors import cannot_resolve


class OutputDirCheck(Callback):
    """Before Hydra creates the run (or sweep) dir: one line and exit 1 if it cannot be resolved, created or
    written, or if a setting Hydra resolves after creating it cannot be resolved."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        check_output_dir(config, "hydra.run.dir")

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        check_output_dir(config, "hydra.sweep.dir")


def check_output_dir(config: DictConfig, key: str) -> None:
    check_resolvable(config, (key, *JOB_SETTINGS))
    check_writable(Path(OmegaConf.select(config, key)), key)


# what Hydra's run_job resolves only after it has created the job's dir
JOB_SETTINGS = ("hydra.job.chdir", "hydra.job.env_set", "hydra.job_logging", "hydra.verbose", "hydra.output_subdir")


def check_resolvable(config: DictConfig, keys: tuple[str, ...]) -> None:
    for key in keys:
        try:
            node = OmegaConf.select(config, key, throw_on_missing=True)
            if OmegaConf.is_config(node):
                OmegaConf.to_container(node, resolve=True, throw_on_missing=True)
        except OmegaConfBaseException as error:
            sys.exit(f"error: {cannot_resolve(error.full_key or key, error)}")


def check_writable(path: Path, key: str) -> None:
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        problem = f"{existing} is not a directory"
    elif not os.access(existing, os.W_OK | os.X_OK):
        problem = f"{existing} is not writable"
    else:
        return
    sys.exit(f"error: cannot write the run dir {path}: {problem}; choose another with {key}=...")
