"""What a run leaves in its run dir besides checkpoints, opened once the run's checks have passed: the resolved
config and Hydra's record of it, run.log, metrics.jsonl + summary.json, the console, and the W&B run."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

from omegaconf import DictConfig, OmegaConf

from cnnlab import Interrupted
from cnnlab.atomic import atomic_write_text
from cnnlab.config import build
from cnnlab.rundir import RunDir
from cnnlab.track import Loggers, Status
from cnnlab.track.console import ConsoleLogger
from cnnlab.track.metrics import MetricsFile

LOG_FORMAT = "[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"


@contextlib.contextmanager
def records(run_dir: RunDir, cfg: DictConfig, config: dict[str, Any], hydra: dict[str, Any] | None, *,
            resume_at: tuple[int, int] | None, wandb_id: str | None, name: str | None, group: str | None,
            provenance: dict[str, Any] | None = None) -> Iterator[Loggers]:
    """Open the run's records and yield its loggers; on leaving, close them with the run's status: finished,
    failed, or interrupted/preempted. `config` is `cfg` resolved, as the run's files and W&B record it."""
    run_dir.path.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir.config, OmegaConf.to_yaml(config))
    for file_name, content in (hydra or {}).items():  # what Hydra's output_subdir would hold
        atomic_write_text(run_dir.hydra / file_name, OmegaConf.to_yaml(content))
    handler = logging.FileHandler(run_dir.log)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    logging.getLogger().addHandler(handler)
    status: Status = "failed"
    loggers = Loggers()
    try:
        metrics = MetricsFile(run_dir, resume_at=resume_at)
        wandb = None
        if cfg.logger.get("_target_"):
            # partial: the run's config must reach W&B as data, not be instantiated recursively
            wandb = build(cfg.logger, "logger", _partial_=True)(
                run_dir=run_dir, run_config=wandb_config(config, provenance), name=name, group=group or name,
                run_id=wandb_id, history=[r for r in metrics.kept if r["kind"] == "epoch"])
        loggers = Loggers(metrics, ConsoleLogger(), wandb, wandb_id=wandb.run_id if wandb else None)
        yield loggers
        status = loggers.outcome
    except Interrupted as e:
        status = e.status
        raise
    finally:
        loggers.close(status)
        logging.getLogger().removeHandler(handler)
        handler.close()


def wandb_config(config: dict[str, Any], provenance: dict[str, Any] | None) -> dict[str, Any]:
    """The resolved config as W&B records it: each node once (data.dataset and data.augment only repeat the
    top-level dataset and augment), and where the run came from."""
    data = {k: v for k, v in config["data"].items() if k not in ("dataset", "augment")}
    return {**config, "data": data, "provenance": provenance or {}}
