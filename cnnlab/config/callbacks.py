"""Hydra callbacks (conf/config.yaml, hydra.callbacks): checks that Hydra's own steps would otherwise turn into
a traceback."""

from __future__ import annotations

import copy
import os
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import InterpolationResolutionError, MissingMandatoryValue, OmegaConfBaseException

from cnnlab import CnnlabError
from cnnlab.config.compose_errors import cannot_resolve
from cnnlab.rundir import SweepDir, note_existing_ancestor


class OutputDirCheck(Callback):
    """Before Hydra creates the run (or sweep) dir: one line and exit 1 if it cannot be resolved, created or
    written, or if a setting Hydra resolves after creating it cannot be resolved."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        check_output_dir(config, "hydra.run.dir")

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        check_output_dir(config, "hydra.sweep.dir")
        first_job = copy.deepcopy(config)  # each job's subdir resolves with its number, here the first's
        with open_dict(first_job):
            first_job.hydra.job.num, first_job.hydra.job.id = 0, "0"
        check_resolvable(first_job, ("hydra.sweep.subdir",))


def check_output_dir(config: DictConfig, key: str) -> None:
    check_task_resolves(config)
    check_resolvable(config, (key, *JOB_SETTINGS))
    path = Path(OmegaConf.select(config, key))
    check_writable(path, key)
    note_existing_ancestor(path)


# what Hydra's run_job resolves only after it has created the job's dir
JOB_SETTINGS = ("hydra.job.chdir", "hydra.job.env_set", "hydra.job_logging", "hydra.verbose", "hydra.output_subdir")


def check_task_resolves(config: DictConfig) -> None:
    """An interpolation of the task's config that can never resolve (a key that is not there, one that refers to
    itself), named by its own key: Hydra would meet it first inside hydra.job.override_dirname. A value not set
    (???) and the resolvers' own errors are left to the schema's check, which says what to give."""
    for key in config:
        if key == "hydra":
            continue
        try:
            node = config[key]
            if OmegaConf.is_config(node):
                OmegaConf.to_container(node, resolve=True)
        except InterpolationResolutionError as error:
            if not isinstance(error.__cause__, CnnlabError | MissingMandatoryValue) \
                    and "MissingMandatoryValue" not in str(error):
                sys.exit(f"error: {cannot_resolve(error.full_key or str(key), error)}")
        except OmegaConfBaseException:
            continue


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


class SweepSummary(Callback):
    """After a sweep, one line: how many jobs failed and the first one's error, with exit code 1. A sweep is the
    set of runs asked for, so any failure fails it; a search (any other sweeper) explores, and fails only when no
    trial finished (cnnlab's Optuna sweeper says so itself). Each job's outcome is in the sweep dir's jobs.jsonl."""

    def __init__(self) -> None:
        self.earlier = 0  # records of a sweep run before into the same dir

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.earlier = len(SweepDir(Path(config.hydra.sweep.dir)).records())

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        jobs = self.jobs(config)
        failed = [job for job in jobs if job["status"] == "failed"]
        searching = not str(config.hydra.sweeper.get("_target_", "")).endswith(".BasicSweeper")
        if failed and (not searching or len(failed) == len(jobs)):
            self.fail(jobs)

    def jobs(self, config: DictConfig) -> list[dict]:
        return SweepDir(Path(config.hydra.sweep.dir)).records()[self.earlier:]

    @staticmethod
    def fail(jobs: list[dict]) -> None:
        failed = [job for job in jobs if job["status"] == "failed"]
        first = failed[0]
        sys.exit(f"error: {len(failed)} of {len(jobs)} jobs failed; the first, {' '.join(first['overrides'])}: "
                 f"{first['error']}")
