"""Hydra callbacks (conf/config.yaml, hydra.callbacks): checks that Hydra's own steps would otherwise turn into
a traceback."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig


class OutputDirCheck(Callback):
    """Before Hydra creates the run (or sweep) dir: one line and exit 1 if it cannot be created or written."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        check_writable(Path(config.hydra.run.dir), "hydra.run.dir")

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        check_writable(Path(config.hydra.sweep.dir), "hydra.sweep.dir")


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
