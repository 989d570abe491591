"""The checkpoint format, owned here: what last.pt and best.pt hold, how they are written and read back; and
`CheckpointSaver`, the one object per run that writes them (where, what with, when) and picks what a run resumes.

A checkpoint is data. It loads with `torch.load(weights_only=True)` (tensors and plain containers, never
code), and every entry is checked for its type before use. Its recorded config is never instantiated: resume
builds from the run's own config and compares, evaluate checks the record against cnnlab's schema first.

    last.pt  format, kind "last", model, optimizer, scheduler, scaler, progress, running, rng, average (the
             weight average's state, or null), + the run's extras
    best.pt  format, kind "best", model, progress (of the best epoch), + the run's extras
    extras   config (the resolved config, as data), classes (the class names), wandb_id
"""

from __future__ import annotations

import math
import pickle
import random
import re
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

from cnnlab import CnnlabError, distributed
from cnnlab.atomic import atomic_save
from cnnlab.rundir import RunDir
from cnnlab.types import NonNegInt, text

if TYPE_CHECKING:
    from cnnlab.train.trainer import State

FORMAT = 2
Resume = Literal["auto", "allow"] | text(r".*\.pt", "a path to a .pt checkpoint") | None


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
WANDB_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")  # W&B's generated ids are 8 of [a-z0-9]; none holds / \ # ? % :
COUNTER_MAX = 2**53  # far past any real run, and exact as a float (what JSON and W&B carry)

def write_last(path: Path, model: dict, optimizer: dict, scheduler: dict, scaler: dict, progress: Progress,
               running: list, rng: list, average: dict | None, extras: dict[str, Any]) -> None:
    atomic_save({"format": FORMAT, "kind": "last", "model": model, "optimizer": optimizer, "scheduler": scheduler,
                 "scaler": scaler, "progress": asdict(progress), "running": running, "rng": rng, "average": average,
                 **extras}, path)


def write_best(path: Path, model: dict, progress: Progress, extras: dict[str, Any]) -> None:
    atomic_save({"format": FORMAT, "kind": "best", "model": model, "progress": asdict(progress), **extras}, path)


def load(path: str | Path, kind: str | None = None) -> dict[str, Any]:
    """Read a checkpoint (of `kind` 'last' or 'best' if given) and check every entry, or say in one line why not."""
    path = Path(path)
    if path.is_dir():
        raise CnnlabError(f"checkpoint {path} is a directory: give a checkpoint file, such as {path / 'best.pt'} "
                          f"or {path / 'last.pt'}")
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
    _check_progress(path, ckpt["progress"])
    if not all(isinstance(k, str) and isinstance(v, Tensor) for k, v in ckpt["model"].items()):
        raise CnnlabError(f"checkpoint {path}: 'model' must map parameter names to tensors")
    if not ckpt["classes"] or not all(isinstance(c, str) and 0 < len(c) <= 255 for c in ckpt["classes"]):
        raise CnnlabError(f"checkpoint {path}: entry 'classes' must be a non-empty list of class names")
    if ckpt["wandb_id"] is not None and not WANDB_ID.fullmatch(ckpt["wandb_id"]):
        raise CnnlabError(f"checkpoint {path}: entry 'wandb_id' is {ckpt['wandb_id'][:80]!r}; allowed: 1-64 "
                          "letters, digits, _ and - (a W&B run id), or null")
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


def _check_progress(path: Path, progress: dict[str, Any]) -> None:
    """Each counter within its range, each best figure finite and a fraction, or null with the others."""
    def refuse(key: str, allowed: str) -> None:
        raise CnnlabError(f"checkpoint {path}: entry 'progress.{key}' is {progress[key]!r}; allowed: {allowed}")

    for key, low in (("epoch", 1), ("batch", 0), ("step", 0)):
        if not low <= progress[key] <= COUNTER_MAX:
            refuse(key, f"an integer >= {low} and <= 2**53")
    for key in ("best_val_acc", "test_acc_at_best"):
        value = progress[key]
        if value is not None and not (math.isfinite(value) and 0 <= value <= 1):
            refuse(key, "a fraction from 0 to 1, or null")
    best = progress["best_epoch"]
    if best is not None and not 1 <= best <= progress["epoch"]:
        refuse("best_epoch", f"an integer from 1 to progress.epoch ({progress['epoch']}), or null")
    if (best is None) != (progress["best_val_acc"] is None):
        refuse("best_epoch", "null exactly when progress.best_val_acc is null")


def check_tensors(where: str, entry: str, loaded: dict[str, Any], expected: dict[str, Tensor]) -> None:
    """Refuse in one line a state whose tensors are not exactly the expected names, dtypes and shapes, or whose
    floating-point tensors hold NaN or inf."""
    missing, unexpected = expected.keys() - loaded.keys(), loaded.keys() - expected.keys()
    if missing or unexpected:
        name, what = (sorted(missing)[0], "lacks") if missing else (sorted(unexpected)[0], "has an unexpected")
        raise CnnlabError(f"{where} does not fit the configured model: '{entry}' {what} tensor {name} "
                          f"({len(missing)} missing, {len(unexpected)} unexpected)")
    for name, want in expected.items():
        got = loaded[name]
        if not isinstance(got, Tensor) or got.dtype != want.dtype or got.shape != want.shape:
            shown = f"{got.dtype} {tuple(got.shape)}" if isinstance(got, Tensor) else type(got).__name__
            raise CnnlabError(f"{where} does not fit the configured model: '{entry}.{name}' is {shown}, the model's "
                              f"is {want.dtype} {tuple(want.shape)}")
    bad = nonfinite(loaded)
    if bad:
        raise CnnlabError(f"{where} holds NaN or inf in {len(bad)} tensors ({entry}.{bad[0]}): use an earlier one")


def nonfinite(tensors: dict[str, Tensor]) -> list[str]:
    """The names of the floating-point tensors that hold NaN or inf."""
    floats = {k: t for k, t in tensors.items() if t.is_floating_point()}
    if not floats:
        return []
    ok = torch.stack([t.isfinite().all() for t in floats.values()]).tolist()
    return [k for k, good in zip(floats, ok, strict=True) if not good]


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


# ------------------------------------------------------------------------------------------ the writer
class CheckpointSaver:
    """The checkpoints of the run in `run_dir` (conf/checkpoints/): `save`: write them at all; `every_steps`: last.pt
    also every that many steps (0: at epoch ends and stops only); `resume`: null (a fresh run dir), auto (continue
    its last.pt), allow (continue it if there is one) or a path to a last.pt; `resume_changes`: refuse a resumed
    run's values that differ from the checkpoint's (cnnlab.train.recorded), or allow them."""

    def __init__(self, run_dir: RunDir, /, save: bool = True, every_steps: NonNegInt = 0, resume: Resume = None,
                 resume_changes: Literal["refuse", "allow"] = "refuse") -> None:
        self.run_dir, self.save, self.every_steps, self.resume = run_dir, save, every_steps, resume
        self.allow_changes = resume_changes == "allow"
        self.extras: dict[str, Any] = {}  # set once the run's records are open (the W&B id is known then)

    def to_resume(self, last_epoch: int) -> dict[str, Any] | None:
        """The checkpoint that `resume` names, read and checked, or None to start afresh. Writes nothing."""
        run_dir, resume = self.run_dir, self.resume
        last, held = run_dir.last, run_dir.records()
        if resume is None:
            if last.exists():
                raise CnnlabError(f"run dir {run_dir.path} already holds {last.name}: continue it with "
                                  "checkpoints.resume=auto (or allow), or pick another hydra.run.dir")
            if held:
                raise CnnlabError(f"run dir {run_dir.path} already holds a finished run's {held[0].name} (and no "
                                  "last.pt to continue): pick another hydra.run.dir")
            return None
        if resume == "allow" and not last.exists():
            return None  # a job requeued before its first checkpoint starts again
        if resume not in ("auto", "allow") and held and Path(resume).expanduser().resolve() != last.resolve():
            raise CnnlabError(f"run dir {run_dir.path} already holds {held[0].name}: a checkpoint from elsewhere "
                              "continues into a new run dir (pick another hydra.run.dir)")
        if resume == "auto" and not last.exists():
            raise CnnlabError(f"checkpoints.resume=auto but there is nothing to resume: no last.pt in {run_dir.path} "
                              "(re-run with hydra.run.dir=<the run's dir>, or give a checkpoint path)")
        ckpt = load(last if resume in ("auto", "allow") else Path(resume).expanduser(), "last")
        done = progress_of(ckpt).epoch - 1
        if done >= last_epoch:
            raise CnnlabError(f"nothing to train: checkpoint {ckpt['path']} has finished epoch {done}; set "
                              "trainer.epochs above that")
        return ckpt

    def due(self, step: int) -> bool:
        """Whether last.pt is written at this step, besides epoch ends and stops."""
        return self.every_steps > 0 and step % self.every_steps == 0

    def save_last(self, state: State, sums: Tensor) -> None:
        """A resumable last.pt at the state's progress (a collective: every rank takes part, rank 0 writes)."""
        if not self.save:
            return
        rngs, rank_sums = distributed.gather(rng_state()), distributed.gather(sums.tolist())
        if distributed.rank() == 0:
            write_last(self.run_dir.last, state.model.state_dict(), state.optimizer.state_dict(),
                       state.scheduler.state_dict(), state.scaler.state_dict(), state.progress, rank_sums, rngs,
                       state.average.state if state.average is not None else None, self.extras)

    def save_best(self, model: nn.Module, progress: Progress) -> None:
        """best.pt with the evaluated weights of the best validation epoch (rank 0 only)."""
        if self.save and distributed.rank() == 0:
            write_best(self.run_dir.best, model.state_dict(), progress, self.extras)

    def kept(self) -> str:
        """What a diverged run leaves to go back to, in words."""
        last = self.run_dir.last
        return f"the last finite checkpoint is {last}" if last.exists() else "no checkpoint was written"
