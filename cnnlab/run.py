"""`python -m cnnlab.run [overrides]` (or `cnnlab-run`): compose the config, build data, model, optimizer,
schedule and loggers with Hydra `instantiate`, train, and return the run's objective (by default the best
validation accuracy: what sweepers optimise; never a test figure unless `objective=final_test_acc`).

Every check runs before the run dir is written: a refused run leaves it as it was.
"""

from __future__ import annotations

import logging
import os
import random
import sys
import tempfile
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import CompactHydraException
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from cnnlab import CONF_DIR, CnnlabError
from cnnlab.config import build, validate
from cnnlab.config.compose_errors import report_compose_errors_in_one_line
from cnnlab.data import Data
from cnnlab.models.layers import Whitening
from cnnlab.rundir import RunDir, remove_if_empty
from cnnlab.runtime import Interrupted
from cnnlab.track import Loggers
from cnnlab.track.provenance import git_state, machine
from cnnlab.track.records import records
from cnnlab.train import distributed
from cnnlab.train.checkpoint import check_compatible

log = logging.getLogger("cnnlab")


def train(cfg: DictConfig, run_dir: str | Path, name: str | None = None, group: str | None = None,
          hydra_record: dict[str, Any] | None = None) -> float | None:
    """Run one training job into `run_dir`; return its objective. Under DDP every rank calls this; rank 0's
    run dir is the run's, and only rank 0 writes files and logs."""
    validate(cfg)
    with build(cfg.runtime, "runtime") as runtime:
        run_dir = RunDir(Path(distributed.broadcast(str(run_dir))))
        trainer = build(cfg.trainer, "trainer")
        ckpt = trainer.checkpoint_to_resume(run_dir)
        config = OmegaConf.to_container(cfg, resolve=True)
        if ckpt is not None:
            check_compatible(ckpt, config)
        seed_everything(cfg.seed + runtime.rank)
        data = build(cfg.data, "data")(device=runtime.device, rank=runtime.rank, world_size=runtime.world_size,
                                       channels_last=runtime.channels_last)
        model = build_model(cfg, data, runtime.rank)
        state = trainer.prepare(model, build(cfg.optim, "optim"), build(cfg.sched, "sched"), data.train, runtime)
        if ckpt is not None:
            trainer.restore(state, ckpt, runtime)
        if runtime.rank > 0:
            trainer.fit(state, data, runtime, Loggers(), run_dir, extras={})  # rank 0 logs and writes
            return None
        # every check has passed: from here on the run dir is written
        resume_at = (ckpt["progress"]["step"], ckpt["progress"]["epoch"]) if ckpt else None
        with records(run_dir, cfg, hydra_record, resume_at=resume_at, wandb_id=ckpt["wandb_id"] if ckpt else None,
                     name=name, group=group) as loggers:
            params = sum(p.numel() for p in state.model.parameters())
            log.info("data: %s", data.description)
            log.info("model: %s, %s parameters on %s x %d -> %s", cfg.model._target_, f"{params:,}", runtime.device,
                     runtime.world_size, run_dir.path)
            if ckpt is not None:
                log.info("resuming %s at epoch %d, step %d", ckpt["path"], state.progress.epoch, state.progress.step)
            loggers.summary({"num_parameters": params, "device": str(runtime.device), "precision": runtime.precision,
                             "world_size": runtime.world_size, "run_dir": str(run_dir.path), "data": data.description,
                             "machine": machine(), **git_state(Path(__file__).parent)})
            extras = {"config": config, "classes": data.classes, "wandb_id": loggers.wandb_id}
            summary = trainer.fit(state, data, runtime, loggers, run_dir, extras)
            loggers.summary(summary)
    return summary[cfg.objective]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def build_model(cfg: DictConfig, data: Data, rank: int) -> torch.nn.Module:
    """The configured model, with the same initial weights on every rank; refused in one line if the data's
    class count or image size does not fit it."""
    if cfg.dataset.num_classes != len(data.classes):
        raise CnnlabError(f"dataset.num_classes is {cfg.dataset.num_classes} but the data has "
                          f"{len(data.classes)} classes")
    torch.manual_seed(cfg.seed)
    model = build(cfg.model, "model")
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(2, *data.image_shape))
    except RuntimeError as e:
        shape = "x".join(map(str, data.image_shape))
        raise CnnlabError(f"model: a {shape} image does not fit through it ({str(e).splitlines()[0]})") from None
    for layer in model.modules():
        if isinstance(layer, Whitening):  # fit to the patches of the first training images (airbench: 5000)
            layer.fit(data.train.first_images(WHITENING_IMAGES))
    torch.manual_seed(cfg.seed + rank)
    return model


WHITENING_IMAGES = 5000


class JobFailed(CompactHydraException):
    """A sweep job that failed with a one-line error: Hydra prints just that line, and a sweeper records the
    failure (Optuna: a FAIL trial) and goes on."""


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def main(cfg: DictConfig) -> float | None:
    hc = HydraConfig.get()
    multirun = hc.mode == RunMode.MULTIRUN
    run_dir = Path(hc.runtime.output_dir)
    group = Path(hc.sweep.dir).name if multirun else run_dir.name
    hydra_record = {"config.yaml": cfg, "hydra.yaml": OmegaConf.create({"hydra": hc}),
                    "overrides.yaml": hc.overrides.task}
    try:
        return train(cfg, run_dir, name=hc.job.override_dirname or group, group=group, hydra_record=hydra_record)
    except CnnlabError as e:
        remove_if_empty(run_dir)
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        if multirun:
            log.error("error: %s", e)
            raise JobFailed(f"error: {e}") from None
        sys.exit(f"error: {e}")
    except Interrupted as e:
        remove_if_empty(run_dir)
        last = RunDir(run_dir).last
        held = f"; {last} holds the run: continue it with trainer.resume=auto hydra.run.dir={run_dir}" \
            if last.exists() else ""
        print(f"{e}{held}", file=sys.stderr)
        if e.then is not None:
            e.then()  # submitit's preemption handling: requeue this job into the same run dir, and exit
        sys.exit(e.exit_code)


def cli() -> None:
    report_compose_errors_in_one_line()
    if "RANK" not in os.environ:
        main()
        return
    rank = int(os.environ["RANK"])
    if rank > 0 and not {"-m", "--multirun"} & set(sys.argv):
        # torchrun's other ranks: rank 0 owns the run dir and the console; these keep Hydra's files in scratch
        scratch = tempfile.mkdtemp(prefix=f"cnnlab-rank{rank}-")
        sys.argv = [a for a in sys.argv if not a.startswith("hydra.run.dir=")]
        sys.argv += [f"hydra.run.dir={scratch}", "hydra/job_logging=disabled", "hydra/hydra_logging=disabled"]
    try:
        main()
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
