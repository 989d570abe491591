"""One training job: build data, model, optimizer, schedule and loggers from a checked config with Hydra
`instantiate`, train, and return the run's objective (by default the best validation accuracy: what sweepers
optimise; never a test figure unless `objective=final_test_acc`).

Every check runs before the run dir is written: a refused run leaves it as it was.
"""

from __future__ import annotations

import contextlib
import logging
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from cnnlab import CnnlabError, distributed
from cnnlab.config import build, validate
from cnnlab.data import Data
from cnnlab.models.layers import fit_whitening
from cnnlab.rundir import RunDir
from cnnlab.track import Loggers
from cnnlab.track.provenance import machine, provenance
from cnnlab.track.records import records
from cnnlab.track.wandb_logger import wandb_config
from cnnlab.train.recorded import check_compatible

log = logging.getLogger("cnnlab")


def train(cfg: DictConfig, run_dir: str | Path, name: str | None = None, group: str | None = None,
          hydra_record: dict[str, Any] | None = None, launch_dir: Path | None = None,
          stop_early: Callable[[dict[str, Any]], bool] | None = None) -> float | None:
    """Run one training job into `run_dir`; return its objective. Under DDP every rank calls this; rank 0's
    run dir is the run's, and only rank 0 writes files and logs. `launch_dir` (the working dir by default) is
    where the run's provenance is asked of git; `stop_early` is a search's pruner (Trainer.fit)."""
    validate(cfg)
    with build(cfg.runtime, "runtime") as runtime, contextlib.ExitStack() as held:
        run_dir = RunDir(Path(distributed.broadcast(str(run_dir))))
        if runtime.rank == 0:
            held.enter_context(run_dir.held())
        trainer = build(cfg.trainer, "trainer")
        saver = build(cfg.checkpoints, "checkpoints")(run_dir)
        ckpt = saver.to_resume(trainer.last_epoch)
        config = OmegaConf.to_container(cfg, resolve=True)
        changes = check_compatible(ckpt, config, saver.allow_changes) if ckpt is not None else []
        seed_everything(cfg.seed + runtime.rank)
        data = build(cfg.data, "data")(runtime.device, runtime.rank, runtime.world_size, runtime.channels_last)
        model = build_model(cfg, data, runtime.rank)
        state = trainer.prepare(model, build(cfg.optim, "optim"), build(cfg.sched, "sched"), data.train, runtime)
        fit_whitening(state.model, data.train.first_images(WHITENING_IMAGES).to(runtime.device))
        if ckpt is not None:
            trainer.restore(state, ckpt, runtime, saver.allow_changes)
        if runtime.rank > 0:
            trainer.fit(state, data, runtime, Loggers(), saver, stop_early)  # rank 0 writes the files
            return None
        # every check has passed: from here on the run dir is written
        resume_at = (ckpt["progress"]["step"], ckpt["progress"]["epoch"]) if ckpt else None
        origin = provenance(launch_dir)
        with records(run_dir, config, hydra_record, resume_at=resume_at) as loggers:
            if cfg.logger.get("_target_"):
                wandb = build(cfg.logger, "logger")(run_dir, wandb_config(config, origin), name, group or name,
                                                    ckpt["wandb_id"] if ckpt else None)
                loggers.add(wandb, wandb_id=wandb.run_id)
            params = sum(p.numel() for p in state.model.parameters())
            log.info("data: %s", data.description)
            log.info("model: %s, %s parameters on %s x %d -> %s", cfg.model._target_, f"{params:,}", runtime.device,
                     runtime.world_size, run_dir.path)
            if ckpt is not None:
                log.info("resuming %s at epoch %d, step %d", ckpt["path"], state.progress.epoch, state.progress.step)
            for change in changes:
                log.warning("resumed with a changed value (checkpoints.resume_changes=allow): %s", change)
            loggers.summary({"num_parameters": params, "device": str(runtime.device), "precision": runtime.precision,
                             "world_size": runtime.world_size, "run_dir": str(run_dir.path), "data": data.description,
                             "machine": machine(), **origin})
            saver.extras = {"config": config, "classes": data.classes, "wandb_id": loggers.wandb_id}
            summary = trainer.fit(state, data, runtime, loggers, saver, stop_early)
            loggers.outcome = summary.pop("status", "finished")
            loggers.summary(summary)
    return summary[cfg.objective]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def build_model(cfg: DictConfig, data: Data, rank: int) -> torch.nn.Module:
    """The configured model, with the same initial weights on every rank (its whitening not yet fitted: train
    fits it once the trainer has taken the initial weights); refused in one line if the data's class count or
    image size does not fit it."""
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
    torch.manual_seed(cfg.seed + rank)
    return model


WHITENING_IMAGES = 5000  # airbench fits its whitening to the first 5,000 training images
