"""The typed schema of every config group: each leaf key's type, allowed values and range.

A group whose options build different objects (model, optim, sched, dataset.source, logger) is a union of
nodes told apart by `_target_`, so the union is also the allow-list of what a config, and so a checkpoint's
recorded config, may name. The YAML files under conf/ hold the values; tests check every option against this.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

from cnnlab.config.check import LINKED, Length, Pattern, Range

PosInt = Annotated[int, Range(ge=1)]
NonNegInt = Annotated[int, Range(ge=0)]
PosFloat = Annotated[float, Range(gt=0)]
NonNegFloat = Annotated[float, Range(ge=0)]
Fraction = Annotated[float, Range(ge=0, lt=1)]  # dropout, smoothing, momentum: 1 would mean nothing is learnt
Ratio = Annotated[float, Range(ge=0, le=1)]
Seed = Annotated[int, Range(ge=0, le=2**32 - 1)]  # numpy's range; the loaders derive per-epoch seeds from it
ImageSize = Annotated[int, Range(ge=1, le=1024)]  # pixels a side: the whole dataset is held in memory as uint8
SampleCount = Annotated[int, Range(ge=1, le=10_000_000)]
ClassCount = Annotated[int, Range(ge=1, le=100_000)]
Pixels = Annotated[int, Range(ge=0, le=1024)]  # a crop's padding or a cutout's side
NonEmptyPath = Annotated[str, Pattern(r".+", "a non-empty path")]
# W&B's own limits: a project or entity of at most 128 characters without / \ # ? % :, a tag of at most 64
WandbName = Annotated[str, Pattern(r"[^/\\#?%:\s][^/\\#?%:]{0,127}", "1-128 characters, none of / \\ # ? % :")]
WandbTag = Annotated[str, Pattern(r"[^\n]{1,64}", "1-64 characters on one line")]
Init = Literal["kaiming_fan_out", "xavier_uniform", "vgg_normal", "pytorch_default", "dirac", "airbench_muon"]


# ------------------------------------------------------------------------------------------------ model
@dataclass
class LayerOptions:
    """What both families share (cnnlab.models.layers)."""

    activation: Literal["relu", "gelu"]
    bn_momentum: Annotated[float, Range(gt=0, le=1)]
    bn_eps: PosFloat
    bn_scale: bool
    whiten: bool
    whiten_kernel: Annotated[int, Range(ge=1, le=8)]
    output_scale: PosFloat


@dataclass
class VGGNode(LayerOptions):
    _target_: Literal["cnnlab.models.VGG"]
    cfg: list[PosInt | Literal["M"]]
    num_classes: ClassCount
    batch_norm: bool
    classifier_hidden: list[PosInt]
    classifier_dropout: Fraction
    classifier_batch_norm: bool
    classifier_bias: bool
    init: Init
    in_channels: PosInt
    conv_bias: bool
    pool_before_norm: bool


@dataclass
class ResNetNode(LayerOptions):
    _target_: Literal["cnnlab.models.ResNet"]
    block: Literal["basic", "bottleneck"]
    layers: list[PosInt]
    widths: list[PosInt]
    strides: list[PosInt]
    num_classes: ClassCount
    stem: Literal["cifar", "imagenet"]
    stem_width: PosInt
    downsample_at: Literal["first", "last"]
    stride_at: Literal["3x3", "1x1"]
    relu: Literal["after_add", "every_conv"]
    conv_bias: bool
    shortcut: Literal["identity_when_possible", "always_project"]
    init: Init
    zero_init_residual: bool
    in_channels: PosInt


# ------------------------------------------------------------------------------------------ optim, sched
@dataclass
class SGDNode:
    _target_: Literal["torch.optim.SGD"]
    _partial_: Literal[True]
    lr: PosFloat
    momentum: Fraction
    dampening: Fraction
    nesterov: bool
    weight_decay: NonNegFloat


@dataclass
class AdamNode:
    _target_: Literal["torch.optim.Adam"]
    _partial_: Literal[True]
    lr: PosFloat
    betas: Annotated[list[Fraction], Length(2)]
    eps: PosFloat
    weight_decay: NonNegFloat
    amsgrad: bool


@dataclass
class AdamWNode(AdamNode):
    _target_: Literal["torch.optim.AdamW"]  # type: ignore[assignment]


@dataclass
class MuonNode:
    _target_: Literal["cnnlab.train.muon.Muon"]
    _partial_: Literal[True]
    lr: PosFloat
    momentum: Fraction
    nesterov: bool
    weight_decay: NonNegFloat
    sgd_momentum: Fraction
    ns_steps: Annotated[int, Range(ge=1, le=100)]
    ns_dtype: Literal["fp32", "bf16"] = "fp32"  # added after format 2's first checkpoints


@dataclass
class DecoupledSGDNode:
    _target_: Literal["cnnlab.train.sgd_decoupled.DecoupledSGD"]
    _partial_: Literal[True]
    lr: PosFloat
    momentum: Fraction
    nesterov: bool
    weight_decay: NonNegFloat
    batch_size: PosInt
    accumulate: PosInt


@dataclass
class ConstantNode:
    _target_: Literal["cnnlab.train.schedules.constant"]
    _partial_: Literal[True]
    warmup_epochs: NonNegFloat


@dataclass
class StepNode(ConstantNode):
    _target_: Literal["cnnlab.train.schedules.step"]  # type: ignore[assignment]
    milestones: list[PosInt]
    gamma: PosFloat


@dataclass
class CosineNode(ConstantNode):
    _target_: Literal["cnnlab.train.schedules.cosine"]  # type: ignore[assignment]
    min_lr_ratio: Ratio


@dataclass
class OneCycleNode:
    _target_: Literal["cnnlab.train.schedules.onecycle"]
    _partial_: Literal[True]
    pct_start: Fraction
    start_ratio: Ratio
    end_ratio: Ratio


# ------------------------------------------------------------------------------------------------- data
@dataclass
class CifarNode:
    _target_: Literal["cnnlab.data.sources.Cifar"]
    root: NonEmptyPath
    variant: Literal["cifar10", "cifar100"]
    download: bool
    url: str
    md5: str | None
    png_fallback: str | None


@dataclass
class ImageFolderNode:
    _target_: Literal["cnnlab.data.sources.ImageFolder"]
    root: NonEmptyPath
    image_size: ImageSize
    workers: PosInt | None  # at most this machine's CPU count (checked where the pool starts)


@dataclass
class SyntheticNode:
    _target_: Literal["cnnlab.data.sources.Synthetic"]
    num_classes: Annotated[ClassCount, LINKED]
    train_size: SampleCount
    test_size: SampleCount
    image_size: ImageSize
    noise: NonNegFloat
    seed: Seed


@dataclass
class DatasetNode:
    _target_: Literal["cnnlab.data.Dataset"]
    name: Annotated[str, Pattern(r"[A-Za-z0-9_.-]+", "a name of letters, digits, _ . -")]
    root: NonEmptyPath | None
    num_classes: ClassCount
    mean: Annotated[list[float], Length(3)] | None
    std: Annotated[list[PosFloat], Length(3)] | None
    val_size: Literal["auto"] | NonNegInt | Annotated[float, Range(gt=0, lt=1)]
    val_seed: Seed
    source: CifarNode | ImageFolderNode | SyntheticNode


@dataclass
class AugmentNode:
    _target_: Literal["cnnlab.data.Augment"]
    crop_padding: Pixels
    padding_mode: Literal["zeros", "reflect"]
    flip: Literal[True, False, "alternate"]
    cutout: Pixels
    drop_last: bool


@dataclass
class DataNode:
    _target_: Literal["cnnlab.data.make_data"]
    _partial_: Literal[True]
    dataset: Annotated[DatasetNode, LINKED]
    augment: Annotated[AugmentNode, LINKED]
    loader: Literal["tensor", "torchvision"]
    num_workers: NonNegInt
    batch_size: PosInt
    eval_batch_size: PosInt | None
    seed: Annotated[Seed, LINKED]
    cache_dir: Annotated[NonEmptyPath, LINKED]


# ------------------------------------------------------------------------------- trainer, runtime, logger
Tta = Literal["none", "flip", "flip_translate"]


@dataclass
class ParamGroupNode:
    params: Literal["bias", "norm", "norm_bias", "norm_weight", "whiten", "linear"]
    lr_scale: PosFloat
    weight_decay_scale: NonNegFloat


@dataclass
class EmaNode:
    every: NonNegInt
    decay: Annotated[float, Range(gt=0, lt=1)]
    ramp_power: NonNegFloat
    start_epoch: NonNegInt
    lookahead: bool
    evaluate: bool


@dataclass
class TrainerNode:
    _target_: Literal["cnnlab.train.trainer.Trainer"]
    epochs: Annotated[float, Range(gt=0, le=100_000)]
    label_smoothing: Fraction
    grad_clip: PosFloat | None
    log_every: PosInt
    eval_every: PosInt
    tta: Tta
    save_checkpoints: bool
    checkpoint_every_steps: NonNegInt
    resume: Literal["auto", "allow"] | Annotated[str, Pattern(r".*\.pt", "a path to a .pt checkpoint")] | None
    param_groups: list[ParamGroupNode]
    ema: EmaNode
    whiten_bias_epochs: NonNegInt | None
    mixup: NonNegFloat
    cutmix: NonNegFloat
    accumulate: PosInt
    limit_train_batches: PosInt | None
    limit_eval_batches: PosInt | None
    overfit_batches: PosInt | None
    resume_changes: Literal["refuse", "allow"] = "refuse"  # added after format 2's first checkpoints
    loss_reduction: Literal["mean", "sum"] = "mean"  # added after format 2's first checkpoints
    whiten_bias_decay: bool = False  # added after format 2's first checkpoints


@dataclass
class RuntimeNode:
    _target_: Literal["cnnlab.runtime.Runtime"]
    device: Annotated[str, Pattern(r"auto|cpu|mps|cuda(:\d+)?", "auto, cpu, cuda, cuda:N, mps")]
    precision: Literal["auto", "fp32", "bf16", "fp16"]
    channels_last: Literal["auto", True, False]
    compile: bool
    deterministic: bool
    strategy: Literal["single", "ddp"]
    sync_batchnorm: bool
    ddp_timeout_s: Annotated[float, Range(gt=0, le=7 * 86400)]
    hold_freed_memory: Literal["auto", True, False] = "auto"  # added after format 2's first checkpoints


@dataclass
class WandbNode:
    _target_: Literal["cnnlab.track.wandb_logger.WandbLogger"]
    project: WandbName
    entity: WandbName | None
    mode: Literal["online", "offline", "disabled"] | None
    tags: list[WandbTag]
    job_type: Annotated[str, Pattern(r"[A-Za-z0-9_.-]{1,64}", "1-64 letters, digits, _ . -")]
    init_timeout: Annotated[float, Range(gt=0, le=3600)]
    log_checkpoint: bool


@dataclass
class NoLoggerNode:
    """logger=none: no W&B."""


# ------------------------------------------------------------------------------------------- the whole run
@dataclass
class RunNode:
    seed: Seed
    objective: Literal["best_val_acc", "final_val_acc", "final_test_acc"]
    data_dir: NonEmptyPath
    cache_dir: NonEmptyPath
    data: DataNode
    dataset: DatasetNode
    augment: AugmentNode
    model: VGGNode | ResNetNode
    optim: SGDNode | DecoupledSGDNode | AdamNode | AdamWNode | MuonNode
    sched: ConstantNode | StepNode | CosineNode | OneCycleNode
    trainer: TrainerNode
    runtime: RuntimeNode
    logger: WandbNode | NoLoggerNode


@dataclass
class EvaluateNode:
    checkpoint: Annotated[str, Pattern(r".+", "a path to a checkpoint")]
    split: Literal["test", "val"]
    tta: Tta
    batch_size: PosInt
    dataset_root: NonEmptyPath | None
    cache_dir: NonEmptyPath
    runtime: RuntimeNode
