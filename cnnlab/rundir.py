"""The one place that names every file a run leaves in its run dir."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class RunDir:
    path: Path

    @property
    def config(self) -> Path:
        """The config with every interpolation resolved (what ran)."""
        return self.path / "config_resolved.yaml"

    @property
    def hydra(self) -> Path:
        """Hydra's own record: config.yaml, hydra.yaml and overrides.yaml (the command line's overrides)."""
        return self.path / ".hydra"

    @property
    def metrics(self) -> Path:
        """One JSON record per log interval and per epoch (cnnlab.track.metrics)."""
        return self.path / "metrics.jsonl"

    @property
    def summary(self) -> Path:
        """The run's figures and status (cnnlab.track.metrics)."""
        return self.path / "summary.json"

    @property
    def last(self) -> Path:
        """The resumable checkpoint (cnnlab.train.checkpoint)."""
        return self.path / "last.pt"

    @property
    def best(self) -> Path:
        """The weights of the best-validation epoch (cnnlab.train.checkpoint)."""
        return self.path / "best.pt"

    @property
    def log(self) -> Path:
        """The run's log (what the console shows, without progress bars)."""
        return self.path / "run.log"

    @property
    def wandb(self) -> Path:
        """The W&B run's files (offline runs sync from here with `wandb sync`)."""
        return self.path / "wandb"


def remove_if_empty(path: Path) -> None:
    """Remove a dir Hydra created for a run that failed before writing anything into it, and its parents
    (outputs/runs, outputs) where that leaves them empty, up to the launch dir."""
    launch = Path.cwd().resolve()
    path = path.resolve()
    while path != launch and launch in path.parents:
        try:
            path.rmdir()
        except OSError:
            return
        path = path.parent
