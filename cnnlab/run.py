"""`python -m cnnlab.run [overrides]`: compose the config, build data, model, optimizer, schedule and loggers
with Hydra `instantiate`, train, and return the final test accuracy (what sweepers optimise)."""

from __future__ import annotations

import logging
import os
import random
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from cnnlab import CONF_DIR, CnnlabError
from cnnlab.config import validate
from cnnlab.data import make_data
from cnnlab.track import Loggers
from cnnlab.track.console import ConsoleLogger
from cnnlab.track.git import git_state
from cnnlab.track.metrics import MetricsFile
from cnnlab.train import distributed
from cnnlab.train.checkpoint import check_resumable, load_checkpoint
from cnnlab.train.trainer import Trainer

log = logging.getLogger("cnnlab")

# A short random id per launch keeps run dirs unique even when two runs start in the same second; Hydra
# copies resolver caches into every job of a multirun, so a sweep's jobs share one id.
if not OmegaConf.has_resolver("cnnlab_uid"):
    OmegaConf.register_new_resolver("cnnlab_uid", lambda: uuid.uuid4().hex[:6], use_cache=True)


def _existing_dir(path: str) -> str:
    """${cnnlab_dir:outputs}: the path, created if missing (for files opened before any job starts, such as
    the Optuna study database)."""
    Path(path).mkdir(parents=True, exist_ok=True)
    return path


if not OmegaConf.has_resolver("cnnlab_dir"):
    OmegaConf.register_new_resolver("cnnlab_dir", _existing_dir)


def build(node: DictConfig, key: str, **kwargs: Any) -> Any:
    """`instantiate`, with a failing constructor reported as a one-line error that names the config key."""
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as e:
        cause = e.__cause__ or e
        if isinstance(cause, CnnlabError):
            raise cause from None
        raise CnnlabError(f"{key}: {str(cause).splitlines()[0] if str(cause) else type(cause).__name__}") from e


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def find_resume(resume: str | None, run_dir: Path) -> Path | None:
    last = run_dir / "last.pt"
    if resume is None:
        if last.exists():
            raise CnnlabError(f"run dir {run_dir} already holds {last.name}: continue it with trainer.resume=auto "
                              "or pick another hydra.run.dir")
        return None
    if resume == "auto":
        if not last.exists():
            raise CnnlabError(f"trainer.resume=auto but there is nothing to resume: no last.pt in {run_dir} "
                              "(re-run with hydra.run.dir=<the run's dir>, or give a checkpoint path)")
        return last
    return Path(resume).expanduser().resolve()


def train(cfg: DictConfig, run_dir: str | Path, name: str | None = None, group: str | None = None) -> float:
    """Run one training job into `run_dir`; return its final test accuracy.

    Under DDP every rank calls this; rank 0's run dir is the run's, and only rank 0 writes files and logs.
    """
    validate(cfg)
    trainer = build(cfg.trainer, "trainer")  # joins the process group under DDP
    try:
        result = _train(cfg, trainer, Path(distributed.broadcast(str(run_dir))), name, group)
        distributed.barrier()  # ranks leave together: a rank exiting mid-teardown aborts gloo
        return result
    finally:
        distributed.teardown()


def _train(cfg: DictConfig, trainer: Trainer, run_dir: Path, name: str | None, group: str | None) -> float:
    main_rank = trainer.rank == 0
    resume_path = find_resume(cfg.trainer.resume, run_dir)
    checkpoint = load_checkpoint(resume_path) if resume_path else None
    if checkpoint is not None:
        check_resumable(checkpoint, cfg.trainer.epochs)
    seed_everything(cfg.seed + trainer.rank)
    source = build(cfg.dataset.source, "dataset.source")
    data = make_data(source, loader=cfg.dataset.loader, augment=OmegaConf.to_container(cfg.augment),
                     batch_size=cfg.trainer.batch_size, eval_batch_size=trainer.eval_batch_size,
                     mean=cfg.dataset.mean, std=cfg.dataset.std, device=trainer.device, seed=cfg.seed,
                     cache_dir=cfg.cache_dir, channels_last=trainer.channels_last,
                     num_workers=cfg.trainer.num_workers, rank=trainer.rank, world_size=trainer.world_size)
    with open_dict(cfg):
        if cfg.dataset.num_classes is None:
            cfg.dataset.num_classes = len(data.classes)
        if cfg.dataset.mean is None or cfg.dataset.std is None:
            cfg.dataset.mean, cfg.dataset.std = data.mean, data.std
    if cfg.dataset.num_classes != len(data.classes):
        raise CnnlabError(f"dataset.num_classes is {cfg.dataset.num_classes} but the data has "
                          f"{len(data.classes)} classes")
    torch.manual_seed(cfg.seed)  # the same initial weights on every rank and for any world size
    model = build(cfg.model, "model")
    torch.manual_seed(cfg.seed + trainer.rank)
    config = OmegaConf.to_container(cfg, resolve=True)

    loggers, wandb_logger = Loggers(), None
    if main_rank:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config_resolved.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
        if cfg.logger.get("_target_"):
            # partial: the run's config must reach W&B as data, not be instantiated recursively
            wandb_logger = build(cfg.logger, "logger", _partial_=True)(
                run_dir=run_dir, run_config=config, name=name, group=group or name,
                run_id=checkpoint.get("wandb_id") if checkpoint else None)
        resume_at = (checkpoint["step"], checkpoint["next_epoch"]) if checkpoint else None
        loggers = Loggers(MetricsFile(run_dir, resume_at=resume_at), ConsoleLogger(), wandb_logger)
    ok = False
    try:
        params = sum(p.numel() for p in model.parameters())
        loggers.summary({"num_parameters": params, "device": str(trainer.device), "world_size": trainer.world_size,
                         "run_dir": str(run_dir), **git_state(Path(__file__).parent)})
        if main_rank:
            log.info("%s: %s parameters on %s x %d, %d train / %d test batches -> %s", cfg.model._target_,
                     f"{params:,}", trainer.device, trainer.world_size, len(data.train), len(data.test), run_dir)
        extra = {"config": config, "wandb_id": wandb_logger.run_id if wandb_logger else None}
        summary = trainer.fit(model, data, build(cfg.optim, "optim"), build(cfg.sched, "sched"), loggers,
                              run_dir, extra_state=extra, checkpoint=checkpoint)
        loggers.summary(summary)
        ok = True
    finally:
        loggers.close(ok)
    return summary["final_test_acc"]


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def main(cfg: DictConfig) -> float:
    hc = HydraConfig.get()
    multirun = hc.mode == RunMode.MULTIRUN
    name = hc.job.override_dirname or None
    group = Path(hc.sweep.dir).name if multirun else Path(hc.runtime.output_dir).name
    try:
        return train(cfg, hc.runtime.output_dir, name=name or group, group=group)
    except CnnlabError as e:
        if os.environ.get("HYDRA_FULL_ERROR") == "1" or multirun:
            log.error("error: %s", e)
            raise
        sys.exit(f"error: {e}")


def cli() -> None:
    if "RANK" not in os.environ:
        main()
        return
    rank = int(os.environ["RANK"])
    if rank > 0 and not {"-m", "--multirun"} & set(sys.argv):
        # torchrun's other ranks: rank 0 owns the run dir and the console; these keep Hydra's files in scratch
        scratch = tempfile.mkdtemp(prefix=f"cnnlab-rank{rank}-")
        sys.argv = [a for a in sys.argv if not a.startswith("hydra.run.dir=")]
        sys.argv += [f"hydra.run.dir={scratch}", "hydra.output_subdir=null", "hydra/job_logging=disabled",
                     "hydra/hydra_logging=disabled"]
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
