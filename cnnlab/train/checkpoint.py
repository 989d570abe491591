"""The checkpoint format, owned here: what last.pt and best.pt hold, how they are written and read back.

A checkpoint is data. It loads with `torch.load(weights_only=True)` (tensors and plain containers, never
code), and every entry is checked for its type before use. Its recorded config is never instantiated: resume
builds from the run's own config and compares, evaluate checks the record against cnnlab's schema first.

    last.pt  format, kind "last", model, optimizer, scheduler, scaler, progress, running, rng, average (the
             weight average's state, or null), + the run's extras
    best.pt  format, kind "best", model, progress (of the best epoch), + the run's extras
    extras   config (the resolved config, as data), classes (the class names), wandb_id
"""

from __future__ import annotations

import pickle
import random
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor

from cnnlab import CnnlabError
from cnnlab.atomic import atomic_save
from cnnlab.config.check import ConfigError, check_node
from cnnlab.config.schema import RunNode

FORMAT = 2


@dataclass
class Progress:
    """Where training stands: the next epoch and batch to run, the steps taken, and the best validation epoch."""

    epoch: int = 1
    batch: int = 0
    step: int = 0
    best_val_acc: float | None = None
    best_epoch: int | None = None
    test_acc_at_best: float | None = None


# entry -> (type, what it is), checked on every load
COMMON = {"format": (int, "an integer"), "kind": (str, "'last' or 'best'"), "model": (dict, "a state dict"),
          "progress": (dict, "a dict"), "config": (dict, "a dict"), "classes": (list, "a list of class names"),
          "wandb_id": ((str, type(None)), "a string or null")}
LAST = {**COMMON, "optimizer": (dict, "a dict"), "scheduler": (dict, "a dict"), "scaler": (dict, "a dict"),
        "running": (list, "a list"), "rng": (list, "a list"), "average": ((dict, type(None)), "a state dict or null")}
PROGRESS = {"epoch": int, "batch": int, "step": int, "best_val_acc": (float, type(None)),
            "best_epoch": (int, type(None)), "test_acc_at_best": (float, type(None))}


def save_last(path: Path, model: dict, optimizer: dict, scheduler: dict, scaler: dict, progress: Progress,
              running: list, rng: list, average: dict | None, extras: dict[str, Any]) -> None:
    atomic_save({"format": FORMAT, "kind": "last", "model": model, "optimizer": optimizer, "scheduler": scheduler,
                 "scaler": scaler, "progress": asdict(progress), "running": running, "rng": rng, "average": average,
                 **extras}, path)


def save_best(path: Path, model: dict, progress: Progress, extras: dict[str, Any]) -> None:
    atomic_save({"format": FORMAT, "kind": "best", "model": model, "progress": asdict(progress), **extras}, path)


def load(path: str | Path, kind: str | None = None) -> dict[str, Any]:
    """Read a checkpoint (of `kind` 'last' or 'best' if given) and check every entry, or say in one line why not."""
    path = Path(path)
    if not path.is_file():
        raise CnnlabError(f"checkpoint {path} does not exist")
    if not zipfile.is_zipfile(path):  # torch.save writes a zip archive; anything else is not a checkpoint of ours
        raise CnnlabError(f"checkpoint {path} is not a readable checkpoint: truncated, corrupt or not one at all "
                          "(not a file torch.save wrote)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0].split(". ")[0]
        raise CnnlabError(f"checkpoint {path} refused by the weights-only loader (it holds more than tensors "
                          f"and plain data): {first}") from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError, KeyError, IndexError, TypeError,
            AttributeError, UnicodeDecodeError) as e:
        raise CnnlabError(f"checkpoint {path} is not a readable checkpoint: truncated, corrupt or not one at all "
                          f"({type(e).__name__})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        found = ckpt.get("format") if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CnnlabError(f"checkpoint {path} is not a cnnlab checkpoint of format {FORMAT} (format: {found!r})")
    expected = LAST if ckpt.get("kind") == "last" else COMMON
    _check_entries(path, ckpt, expected)
    _check_entries(path, ckpt["progress"], {k: (t, "") for k, t in PROGRESS.items()}, "progress.")
    if not all(isinstance(k, str) and isinstance(v, Tensor) for k, v in ckpt["model"].items()):
        raise CnnlabError(f"checkpoint {path}: 'model' must map parameter names to tensors")
    if kind is not None and ckpt["kind"] != kind:
        what = "weights only (a best.pt?): resume from a last.pt" if kind == "last" else f"a {ckpt['kind']}.pt"
        raise CnnlabError(f"checkpoint {path} holds {what}")
    ckpt["path"] = str(path)
    return ckpt


def _check_entries(path: Path, entries: dict, expected: dict, prefix: str = "") -> None:
    for key, (kind, what) in expected.items():
        value = entries.get(key)
        if key not in entries or not isinstance(value, kind) or isinstance(value, bool) and kind in (int, float):
            shown = type(value).__name__ if key in entries else "missing"
            raise CnnlabError(f"checkpoint {path}: entry '{prefix}{key}' is {shown}"
                              + (f", expected {what}" if what else ""))


def recorded_config(ckpt: dict[str, Any]) -> DictConfig:
    """The checkpoint's recorded config, once it has passed cnnlab's schema (so every `_target_` in it is one of
    cnnlab's, and every value plain data); refused in one line otherwise."""
    where = f"checkpoint {ckpt['path']}"
    interpolated = [k for k, v in _flat(ckpt["config"], "config").items() if isinstance(v, str) and "${" in v]
    if interpolated:  # a recorded config is resolved: an interpolation could only be crafted
        raise CnnlabError(f"{where}: its recorded config holds an interpolation at {interpolated[0]}")
    cfg = OmegaConf.create(ckpt["config"])
    try:
        check_node(cfg, RunNode, "")
    except ConfigError as e:
        raise CnnlabError(f"{where}: its recorded config is not one cnnlab writes: {e}") from None
    return cfg


def check_compatible(ckpt: dict[str, Any], config: dict[str, Any]) -> None:
    """Refuse in one line to resume a checkpoint whose recorded config is not cnnlab's, or whose model or
    optimizer differs from this run's."""
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


def _flat(tree: Any, prefix: str) -> dict[str, Any]:
    if isinstance(tree, dict):
        return {k: v for key, sub in tree.items() for k, v in _flat(sub, f"{prefix}.{key}").items()}
    if isinstance(tree, list) and any(isinstance(v, dict | list) for v in tree):
        return {k: v for i, sub in enumerate(tree) for k, v in _flat(sub, f"{prefix}[{i}]").items()}
    return {prefix: tree}


def progress_of(ckpt: dict[str, Any]) -> Progress:
    return Progress(**ckpt["progress"])


def rng_state() -> dict[str, Any]:
    """Every global RNG this process uses (python, numpy, torch, CUDA), in weights-only-loadable types."""
    np_state = np.random.get_state()
    return {"python": random.getstate(), "torch": torch.get_rng_state(),
            "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    torch.set_rng_state(state["torch"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
