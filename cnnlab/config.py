"""Checks on the composed config that run before anything heavy, each naming the bad key and what is allowed."""

from __future__ import annotations

from omegaconf import DictConfig

from cnnlab import CnnlabError


def _positive(cfg: DictConfig, key: str, integer: bool = False) -> None:
    value = cfg
    for part in key.split("."):
        value = value.get(part) if isinstance(value, DictConfig) else None
    kind = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind) or value <= 0:
        what = "a positive integer" if integer else "a positive number"
        raise CnnlabError(f"{key} is {value!r}; it must be {what}")


def validate(cfg: DictConfig) -> None:
    _positive(cfg, "optim.lr")
    _positive(cfg, "trainer.epochs", integer=True)
    _positive(cfg, "trainer.batch_size", integer=True)
    _positive(cfg, "trainer.log_every", integer=True)
    _positive(cfg, "trainer.eval_every", integer=True)
    if cfg.trainer.eval_batch_size is not None:
        _positive(cfg, "trainer.eval_batch_size", integer=True)
    if cfg.dataset.num_classes is not None:
        _positive(cfg, "dataset.num_classes", integer=True)
    for key in ("mean", "std"):
        value = cfg.dataset.get(key)
        if value is not None and (len(value) != 3 or (key == "std" and min(value) <= 0)):
            raise CnnlabError(f"dataset.{key} is {list(value)}; it must be 3 numbers (per RGB channel)"
                              + (", all positive" if key == "std" else ""))
