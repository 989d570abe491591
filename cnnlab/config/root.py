"""The root keys of a run's config (conf/config.yaml) and of an evaluation's (conf/evaluate.yaml), and the
targets each group's node may name: the allow-list of what a config, and so a checkpoint's recorded config, may
build. Every key below the root is declared by the constructor it reaches."""

from __future__ import annotations

from typing import Annotated, Any, Literal, TypedDict

from cnnlab.data import Augment, Dataset, make_data
from cnnlab.models import VGG, ConvGroups, ResNet
from cnnlab.runtime import Runtime
from cnnlab.track.wandb_logger import WandbLogger
from cnnlab.train import schedules
from cnnlab.train.checkpoint import CheckpointSaver
from cnnlab.train.muon import Muon
from cnnlab.train.optimizers import adam, adamw, sgd
from cnnlab.train.sgd_decoupled import DecoupledSGD
from cnnlab.train.trainer import Trainer, Tta
from cnnlab.types import NonEmptyPath, OneOf, PosInt, Seed, text


class RunConfig(TypedDict):
    """A training run. `data` comes last: it interpolates `dataset`, `augment`, `seed` and `cache_dir`, which are
    checked (and named in a fault) at their homes first."""

    seed: Seed
    objective: Literal["best_val_acc", "final_val_acc", "final_test_acc"]
    data_dir: NonEmptyPath
    cache_dir: NonEmptyPath
    dataset: Annotated[Any, OneOf(Dataset)]
    augment: Annotated[Any, OneOf(Augment)]
    model: Annotated[Any, OneOf(VGG, ResNet, ConvGroups)]
    optim: Annotated[Any, OneOf(sgd, DecoupledSGD, adam, adamw, Muon)]
    sched: Annotated[Any, OneOf(schedules.constant, schedules.step, schedules.cosine, schedules.onecycle)]
    trainer: Annotated[Any, OneOf(Trainer)]
    checkpoints: Annotated[Any, OneOf(CheckpointSaver)]
    runtime: Annotated[Any, OneOf(Runtime)]
    logger: Annotated[Any, OneOf(WandbLogger, None)]
    data: Annotated[Any, OneOf(make_data)]


CheckpointPath = text(r".+", "a path to a checkpoint")


class EvaluateConfig(TypedDict):
    checkpoint: CheckpointPath
    split: Literal["test", "val"]
    tta: Tta
    batch_size: PosInt
    dataset_root: NonEmptyPath | None
    cache_dir: NonEmptyPath
    runtime: Annotated[Any, OneOf(Runtime)]
