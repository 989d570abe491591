"""cnnlab's Optuna sweeper as a Hydra plugin (Hydra finds sweepers in the hydra_plugins package): chosen with
`hydra/sweeper=optuna` (conf/hydra/sweeper/optuna.yaml); the search itself is cnnlab.search."""

from __future__ import annotations

import functools
import logging
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger("cnnlab")


class OptunaSweeper(Sweeper):
    def __init__(self, study_name: str, storage: str, direction: str, n_trials: int, n_jobs: int,
                 sampler: Any = None, pruner: Any = None, params: Any = None, heartbeat_interval: int = 60,
                 grace_period: int | None = None, max_retry: int = 0) -> None:
        self.settings = dict(study_name=study_name, storage=storage, direction=direction, n_trials=n_trials,
                             n_jobs=n_jobs, heartbeat_interval=heartbeat_interval,
                             grace_period=grace_period or 2 * heartbeat_interval, max_retry=max_retry)
        self.sampler, self.pruner, self.params = sampler, pruner, params or {}

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.hydra_context, self.config = hydra_context, config

    def sweep(self, arguments: list[str]) -> Any:
        from cnnlab import search

        s = self.settings
        space, fixed = search.split_arguments(arguments, {k: str(v) for k, v in dict(self.params).items()})
        self.validate_batch_is_legal([fixed])  # a search whose fixed overrides cannot compose ends here, in one line
        sweep_dir = Path(self.config.hydra.sweep.dir).resolve()
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        plain = functools.partial(OmegaConf.to_container, resolve=True)
        objective = OmegaConf.select(self.config, "objective", default="best_val_acc")
        if self.pruner is not None and not str(objective).startswith(("best_val", "final_val")):
            sys.exit(f"error: hydra.sweeper.pruner prunes on validation accuracy, but objective is {objective}: "
                     "set objective=best_val_acc (a search never selects on test)")
        draft = search.Search(
            study_name=s["study_name"], storage=str(s["storage"]), direction=s["direction"], space=space, fixed=fixed,
            hydra_flags=config_flags(sys.argv[1:]),
            sampler=plain(self.sampler) if self.sampler is not None else None,
            pruner=plain(self.pruner) if self.pruner is not None else None, n_trials=s["n_trials"], stop_at=0,
            sweep_dir=str(sweep_dir), launch_dir=str(Path.cwd()), heartbeat_interval=s["heartbeat_interval"],
            grace_period=s["grace_period"], max_retry=s["max_retry"], threads=self.threads_per_trial(s["n_jobs"]),
            metric="val_acc", objective=str(objective))
        first = search.study_size(draft)
        plan = search.Search(**{**draft.__dict__, "stop_at": first + s["n_trials"]})
        log.info("search %s: %d trials with %d workers into %s (study: %s, %d trials so far)", plan.study_name,
                 plan.n_trials, s["n_jobs"], sweep_dir, plan.storage, first)
        code = self.run_workers(plan, s["n_jobs"])
        line = search.summarise(plan, first)
        if code:
            sys.exit(code)
        if line:
            sys.exit(line)
        return []

    @property
    def workers_are_threads(self) -> bool:
        """Under Hydra's basic launcher the workers are threads of this process; any other launcher runs them."""
        return str(self.config.hydra.launcher.get("_target_", "")).endswith(".BasicLauncher")

    def threads_per_trial(self, n_jobs: int) -> int | None:
        """The cores shared out among the trials of workers that are threads here; None (torch's default) for one
        worker, or workers that a launcher runs (joblib limits its workers' threads itself; SLURM gives each
        job its own cores)."""
        if n_jobs == 1 or not self.workers_are_threads:
            return None
        return max(1, (os.cpu_count() or 1) // n_jobs)

    def run_workers(self, plan: Any, n_jobs: int) -> int:
        """n_jobs workers: threads here under Hydra's basic launcher (the trials are processes of their own),
        else jobs of the configured launcher (joblib, submitit, ...). Returns a stop's exit code, or 0."""
        from cnnlab.search import Stopped, work

        if self.workers_are_threads:
            with ThreadPoolExecutor(n_jobs) as pool:
                futures = [pool.submit(work, plan, i) for i in range(n_jobs)]
                codes = [stopped_code(f.exception()) for f in futures]
            return max(codes)
        launcher = Plugins.instance().instantiate_launcher(
            hydra_context=self.hydra_context, task_function=functools.partial(worker_job, plan), config=self.config)
        returns = launcher.launch([[*plan.fixed, "hydra.sweep.subdir=workers/${hydra.job.num}"]] * n_jobs, 0)
        codes = []
        for ret in returns:
            try:
                ret.return_value  # noqa: B018 - raises the worker's exception
                codes.append(0)
            except Stopped as e:
                codes.append(e.code)
        return max(codes)


CONFIG_FLAGS = ("--config-dir", "-cd", "--config-path", "-cp", "--config-name", "-cn")


def config_flags(argv: list[str]) -> list[str]:
    """The command line's flags that say where the config is (each trial's command needs them too)."""
    flags = []
    for i, arg in enumerate(argv):
        if arg in CONFIG_FLAGS and i + 1 < len(argv):
            flags += [arg, argv[i + 1]]
        elif arg.startswith(tuple(f"{flag}=" for flag in CONFIG_FLAGS)):
            flags.append(arg)
    return flags


def stopped_code(error: BaseException | None) -> int:
    from cnnlab.search import Stopped

    if error is None:
        return 0
    if isinstance(error, Stopped):
        return error.code
    raise error


def worker_job(plan: Any, cfg: DictConfig) -> int:
    """A launcher's job: one worker of the search."""
    from cnnlab.search import work

    return work(plan, HydraConfig.get().job.num)
