"""Checkpoints that survive crashes: safe loading (weights only), resumability checks, and the RNG states a
checkpoint carries for exact resume. (Writes go through cnnlab.atomic.)"""

from __future__ import annotations

import pickle
import random
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cnnlab import CnnlabError


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint with `weights_only=True`: tensors and plain containers only, never code."""
    path = Path(path)
    if not path.is_file():
        raise CnnlabError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CnnlabError(f"checkpoint {path} refused by the weights-only loader (it holds more than tensors "
                          f"and plain data): {first}") from e
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError) as e:
        raise CnnlabError(f"checkpoint {path} is truncated or corrupt ({type(e).__name__})") from e
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        raise CnnlabError(f"checkpoint {path} is not a cnnlab checkpoint (no 'model' entry)")
    ckpt["path"] = str(path)
    return ckpt


def load_weights(model: torch.nn.Module, checkpoint: dict) -> None:
    """Put the checkpoint's weights into `model`, or say in one line why they do not fit."""
    try:
        model.load_state_dict(checkpoint["model"])
    except RuntimeError as e:
        detail = " ".join(str(e).split())[:300]
        raise CnnlabError(f"checkpoint {checkpoint.get('path')} does not fit the configured model "
                          f"({type(model).__name__}): {detail}") from e


def check_resumable(checkpoint: dict, epochs: int) -> None:
    """Refuse, before anything heavy starts, a checkpoint that cannot continue a run of `epochs` epochs."""
    if "optimizer" not in checkpoint:
        raise CnnlabError(f"checkpoint {checkpoint.get('path')} holds weights only (a best.pt?): resume from a last.pt")
    if checkpoint["next_epoch"] > epochs:
        raise CnnlabError(f"nothing to train: checkpoint {checkpoint.get('path')} has finished epoch "
                          f"{checkpoint['next_epoch'] - 1}; set trainer.epochs above that")


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
