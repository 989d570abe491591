"""What a checkpoint's recorded config may be, and how far a resumed run may differ from it.

A recorded config is data: it passes the checks a run's config does before anything reads it, and is never
instantiated. A key it lacks (one added after the checkpoint was written) counts at its declared default.
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf

from cnnlab import CnnlabError
from cnnlab.config.check import ConfigError, check, keys_of
from cnnlab.config.root import RunConfig
from cnnlab.runtime import Runtime
from cnnlab.train.checkpoint import CheckpointSaver
from cnnlab.train.trainer import Trainer
from cnnlab.types import Options

# What a resumed run may set anew: how long it trains; how it logs, evaluates and checkpoints; where it runs and
# logs to; and where its data lives on this machine. Any other difference from the checkpoint's recorded config
# (the optimizer's values, the batch size, the dataset, the augmentation, the seed, ...) is refused, unless
# checkpoints.resume_changes=allow, which resumes with this run's values. A key ending in "." names a whole node.
MAY_CHANGE_ON_RESUME = (
    "trainer.epochs", "trainer.log_every", "trainer.eval_every", "trainer.tta", "trainer.limits.eval_batches",
    "checkpoints.", "runtime.", "logger.", "objective", "data_dir", "cache_dir", "data.cache_dir", "data.num_workers",
    "data.eval_batch_size", "dataset.root", "dataset.source.root", "dataset.source.download", "dataset.source.url",
    "dataset.source.md5", "dataset.source.png_fallback", "dataset.source.workers")
MIRRORED = ("data.dataset.", "data.augment.")  # interpolations of `dataset` and `augment`: compared there


def recorded_config(ckpt: dict[str, Any]) -> DictConfig:
    """The checkpoint's recorded config, once it passes the checks a run's config does (so every `_target_` in it
    is one cnnlab declares, and every value plain data); refused in one line otherwise."""
    where = f"checkpoint {ckpt['path']}"
    interpolated = [k for k, v in _flat(ckpt["config"], "config").items() if isinstance(v, str) and "${" in v]
    if interpolated:  # a recorded config is resolved: an interpolation could only be crafted
        raise CnnlabError(f"{where}: its recorded config holds an interpolation at {interpolated[0]}")
    cfg = OmegaConf.create(ckpt["config"])
    upgrade(cfg)
    try:
        check(cfg, RunConfig)
    except ConfigError as e:
        raise CnnlabError(f"{where}: its recorded config is not one cnnlab writes: {e}") from None
    return cfg


def check_compatible(ckpt: dict[str, Any], config: dict[str, Any], allow_changes: bool) -> list[str]:
    """Refuse in one line to resume a checkpoint whose recorded config is not cnnlab's, whose model or optimizer
    differs from this run's, or that differs in any key outside MAY_CHANGE_ON_RESUME unless `allow_changes`; return
    those keys (as "key: before -> now") when they are allowed."""
    recorded = OmegaConf.to_container(recorded_config(ckpt))
    before, now = _flat(recorded.get("model"), "model"), _flat(config["model"], "model")
    differing = sorted(k for k in before.keys() | now.keys() if before.get(k) != now.get(k))
    if differing:
        k = differing[0]
        raise CnnlabError(f"checkpoint {ckpt['path']} was trained with {k}={before.get(k)!r}, this run has "
                          f"{k}={now.get(k)!r} ({len(differing)} model key(s) differ): resume with the checkpoint's "
                          "model config")
    was, now_optim = _flat(recorded.get("optim"), "optim").get("optim._target_"), config["optim"]["_target_"]
    if was != now_optim:
        raise CnnlabError(f"checkpoint {ckpt['path']} was trained with optimizer {was}, this run configures "
                          f"{now_optim}: resume with the checkpoint's optim choice")
    before, now = with_defaults(_flat(recorded, "")), with_defaults(_flat(config, ""))
    changes = [f"{k[1:]}: {before.get(k, '(absent)')!r} -> {now.get(k, '(absent)')!r}"
               for k in sorted(before.keys() | now.keys())
               if before.get(k) != now.get(k) and not k[1:].startswith(MAY_CHANGE_ON_RESUME + MIRRORED)]
    if changes and not allow_changes:
        raise CnnlabError(f"checkpoint {ckpt['path']} was trained with other values: {', '.join(changes)}; resume "
                          "with the checkpoint's values, or add checkpoints.resume_changes=allow to train on with this "
                          "run's")
    return changes


def _flat(tree: Any, prefix: str) -> dict[str, Any]:
    if isinstance(tree, dict):
        return {k: v for key, sub in tree.items() for k, v in _flat(sub, f"{prefix}.{key}").items()}
    if isinstance(tree, list) and any(isinstance(v, dict | list) for v in tree):
        return {k: v for i, sub in enumerate(tree) for k, v in _flat(sub, f"{prefix}[{i}]").items()}
    return {prefix: tree}


def upgrade(cfg: DictConfig) -> None:
    """Bring a config recorded by an earlier cnnlab of this checkpoint format to today's layout: PyTorch's
    optimizers named by the typed functions that build them, the logger node partial, the checkpoint keys in a node
    of their own, and the keys that moved into groups (MOVED). A model key the network no longer has is dropped
    where its value is what the network now always does (NEUTRAL); any other difference is left for the checks to
    refuse, in one line that names today's keys."""
    optim, logger = cfg.get("optim"), cfg.get("logger")
    if isinstance(optim, DictConfig) and optim.get("_target_") in RENAMED:
        optim._target_ = RENAMED[optim._target_]
    if isinstance(logger, DictConfig) and logger.get("_target_") and "_partial_" not in logger:
        logger._partial_ = True
    if "checkpoints" not in cfg and isinstance(cfg.get("trainer"), DictConfig):
        cfg.checkpoints = {"_target_": "cnnlab.train.checkpoint.CheckpointSaver", "_partial_": True}
    for old, new in MOVED.items():
        parent, _, name = old.rpartition(".")
        node = OmegaConf.select(cfg, parent)
        if isinstance(node, DictConfig) and name in node and OmegaConf.select(cfg, new) is None:
            OmegaConf.update(cfg, new, node.pop(name), force_add=True)
    model = cfg.get("model")
    for name, value in NEUTRAL.get(model.get("_target_"), {}).items() if isinstance(model, DictConfig) else ():
        if name in model and model[name] == value:
            model.pop(name)


RENAMED = {f"torch.optim.{name}": f"cnnlab.train.optimizers.{name.lower()}" for name in ("SGD", "Adam", "AdamW")}
MOVED = {
    **{f"model.{k}": f"model.style.{k}" for k in ("activation", "conv_bias", "bn_momentum", "bn_eps", "bn_scale",
                                                  "init")},
    **{f"model.{k}": f"model.residual.{k}" for k in ("relu", "shortcut", "stride_at")},
    "model.zero_init_residual": "model.residual.zero_init",
    "trainer.save_checkpoints": "checkpoints.save", "trainer.checkpoint_every_steps": "checkpoints.every_steps",
    "trainer.resume": "checkpoints.resume", "trainer.resume_changes": "checkpoints.resume_changes",
    "trainer.label_smoothing": "trainer.loss.label_smoothing", "trainer.loss_reduction": "trainer.loss.reduction",
    "trainer.mixup": "trainer.mix.mixup", "trainer.cutmix": "trainer.mix.cutmix",
    "trainer.limit_train_batches": "trainer.limits.train_batches",
    "trainer.limit_eval_batches": "trainer.limits.eval_batches",
    "trainer.overfit_batches": "trainer.limits.overfit_batches",
    "trainer.whiten_bias_epochs": "trainer.whiten_bias.epochs",
    "trainer.whiten_bias_decay": "trainer.whiten_bias.decay",
}
NEUTRAL = {"cnnlab.models.VGG": {"pool_before_norm": False},
           "cnnlab.models.ResNet": {"whiten": False, "whiten_kernel": 2, "output_scale": 1.0}}


def with_defaults(flat: dict[str, Any]) -> dict[str, Any]:
    """`flat` (a flattened config) with each absent trainer, checkpoint and runtime key at its declared default."""
    return {**DEFAULTS, **flat}


def _defaults(node: str, declared: Any) -> dict[str, Any]:
    found = {}
    for name, key in keys_of(declared).items():
        if isinstance(key.default, Options):
            found |= {f".{node}.{name}.{k}": v for k, v in key.default.model_dump().items()}
        elif not key.required and isinstance(key.default, bool | int | float | str | type(None)):
            found[f".{node}.{name}"] = key.default
    return found


DEFAULTS = {**_defaults("trainer", Trainer), **_defaults("checkpoints", CheckpointSaver),
            **_defaults("runtime", Runtime)}
