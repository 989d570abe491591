"""cnnlab's sweeper (conf/hydra/sweeper/cnnlab.yaml): Hydra's basic sweeper, except that a failed job does not end
the sweep with Hydra's multi-line report. Every job runs; each failed job has logged its own one-line error;
the sweep then ends with one line naming the failed jobs, and exit code 1. A sweep refused before any job ran
(a job's config does not compose) leaves no sweep dir behind.

Hydra instantiates sweepers only from the `hydra_plugins` namespace, hence this module's home.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.utils import JobReturn, JobStatus
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig

from cnnlab.rundir import remove_if_empty


class CnnlabSweeper(BasicSweeper):
    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        super().setup(hydra_context=hydra_context, task_function=task_function, config=config)
        self.failed: list[tuple[JobReturn, Any]] = []  # (the job, its exception)
        self.jobs = 0
        launch = self.launcher.launch

        def launch_noting_failures(job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
            results = launch(job_overrides, initial_job_idx)
            self.jobs += len(results)
            for result in results:
                if result.status == JobStatus.FAILED:  # noted here, reported once every job has run
                    self.failed.append((result, result._return_value))
                    result.status, result._return_value = JobStatus.COMPLETED, None
            return results

        self.launcher.launch = launch_noting_failures  # type: ignore[method-assign]

    def sweep(self, arguments: list[str]) -> Any:
        sweep_dir = Path(self.config.hydra.sweep.dir)
        new = not sweep_dir.exists()
        try:
            returns = super().sweep(arguments)
        except Exception:
            if new and not self.jobs:  # refused before any job ran (a job's config does not compose): no dir left
                (sweep_dir / "multirun.yaml").unlink(missing_ok=True)
                remove_if_empty(sweep_dir)
            raise
        if self.failed:
            job, error = self.failed[0]
            why = str(error).removeprefix("error: ")
            sys.exit(f"error: {len(self.failed)} of {self.jobs} jobs failed; the first, "
                     f"{' '.join(job.overrides or [])}: {why}")
        return returns
