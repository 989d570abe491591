"""`python -m cnnlab.run [overrides]` (or `cnnlab-run`): compose the config, run one training job (cnnlab.job)
into Hydra's run dir, or one per sweep job, and return its objective to the sweeper.

This module imports no torch: the shell's TAB completion and `--help` load it, and the job imports what it needs
when it runs.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from cnnlab import CONF_DIR
from cnnlab.entry import command, reported
from cnnlab.rundir import SweepDir
from cnnlab.search import trial_link


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def main(cfg: DictConfig) -> float | None:
    from cnnlab.job import train

    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    link = trial_link()  # this run is a trial of a search (cnnlab.search), which its worker started
    sweep = SweepDir(Path(hc.sweep.dir), hc.job.num, tuple(hc.overrides.task)) \
        if hc.mode == RunMode.MULTIRUN else None
    group = link.study_name if link else sweep.path.name if sweep else run_dir.name
    hydra_record = {"config.yaml": cfg, "hydra.yaml": OmegaConf.create({"hydra": hc}),
                    "overrides.yaml": hc.overrides.task}
    overrides = link.overrides if link else list(hc.overrides.task)
    name = run_name(sweep.varying(overrides) if sweep else overrides) or group
    if link:
        link.beat()
    return reported(lambda: train(cfg, run_dir, name=name, group=group, hydra_record=hydra_record,
                                  launch_dir=Path(hc.runtime.cwd), stop_early=link.should_stop if link else None),
                    run_dir, link or sweep)


def run_name(overrides: list[str], limit: int = 96) -> str:
    """A W&B run's name: the overrides that tell it apart, as many as fit in `limit` characters (W&B shows 128),
    then how many more there are."""
    name = ""
    for i, override in enumerate(overrides):
        more = f" +{len(overrides) - i} more"
        if len(name) + len(override) + 1 > limit - (len(more) if i + 1 < len(overrides) else 0):
            return f"{name}{more}".strip()
        name = f"{name} {override}".strip()
    return name


def cli() -> None:
    if "RANK" not in os.environ:
        command(main, "config")
        return
    rank = int(os.environ["RANK"])
    if rank > 0 and not {"-m", "--multirun"} & set(sys.argv):
        # torchrun's other ranks: rank 0 owns the run dir and the console; these keep Hydra's files in scratch
        scratch = tempfile.mkdtemp(prefix=f"cnnlab-rank{rank}-")
        sys.argv = [a for a in sys.argv if not a.startswith("hydra.run.dir=")]
        sys.argv += [f"hydra.run.dir={scratch}", "hydra/job_logging=disabled", "hydra/hydra_logging=disabled"]
    try:
        command(main, "config")
        code: int | str | None = 0
    except SystemExit as e:
        code = e.code
    exit_without_shutdown(code)


def exit_without_shutdown(code: int | str | None) -> None:
    """Leave a torchrun rank without the interpreter's shutdown.

    DDP keeps the process group, and so gloo's worker threads, alive past destroy_process_group; a worker still
    freeing a finished collective's tensors when the interpreter shuts down cannot take the GIL and aborts the
    process (pytorch/pytorch#179291). Everything is written and W&B finished by now; flush and go.
    """
    if isinstance(code, str):
        print(code, file=sys.stderr)
        code = 1
    logging.shutdown()
    if "wandb" in sys.modules:
        sys.modules["wandb"].teardown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code or 0)


if __name__ == "__main__":
    # Enter through the importable module, so that launchers pickle `main` by reference to cnnlab.run
    # rather than by value from __main__.
    from cnnlab.run import cli as entry_point

    entry_point()
