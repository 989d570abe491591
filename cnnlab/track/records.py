"""What a run leaves in its run dir besides checkpoints, opened once the run's checks have passed: the resolved
config and Hydra's record of it, run.log, metrics.jsonl + summary.json and the console."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

from omegaconf import OmegaConf

from cnnlab import Interrupted
from cnnlab.atomic import atomic_write_text
from cnnlab.rundir import RunDir
from cnnlab.track import Loggers, Status
from cnnlab.track.console import ConsoleLogger
from cnnlab.track.metrics import MetricsFile

LOG_FORMAT = "[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"


@contextlib.contextmanager
def records(run_dir: RunDir, config: dict[str, Any], hydra: dict[str, Any] | None, *,
            resume_at: tuple[int, int] | None) -> Iterator[Loggers]:
    """Open the run's records and yield its loggers (metrics.jsonl and the console; the run adds W&B); on leaving,
    close them with the run's status: finished, pruned, failed, or interrupted/preempted. `config` is the
    resolved config, as the run's files record it; `resume_at` the (step, next epoch) of a resumed checkpoint."""
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
        loggers = Loggers(metrics, ConsoleLogger())
        yield loggers
        status = loggers.outcome
    except Interrupted as e:
        status = e.status
        raise
    finally:
        loggers.close(status)
        logging.getLogger().removeHandler(handler)
        handler.close()
