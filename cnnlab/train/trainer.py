"""The one training loop: prepare -> restore -> (train_epoch -> step) -> evaluate, with checkpoints and exact
resume. It knows nothing of files but through cnnlab.train.checkpoint, and nothing of W&B: it calls a Logger.

The hot loop never waits on the device: loss and accuracy are summed on the device and read (`.item()`) only
every `log_every` steps and at the end of an epoch. A non-finite step loss stays in that sum, so every step is
checked; the weights and buffers are checked before any checkpoint is written, so none holds NaN or inf.
Every method beyond plain SGD (parameter groups, a weight average, mixing, accumulation, batch limits) is a
switch of conf/trainer/default.yaml, off there.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import torch
from annotated_types import Gt, Le
from torch import Tensor, nn

from cnnlab import CnnlabError, Interrupted, distributed
from cnnlab.data import Data
from cnnlab.models.layers import Whitening
from cnnlab.runtime import Runtime
from cnnlab.track import Logger
from cnnlab.train import checkpoint
from cnnlab.train.checkpoint import CheckpointSaver, Progress
from cnnlab.train.ema import EmaSchedule, WeightAverage
from cnnlab.train.mix import Mix, mix_batch
from cnnlab.train.schedules import total_steps
from cnnlab.types import Fraction, NonNegFloat, NonNegInt, Options, PosFloat, PosInt

log = logging.getLogger("cnnlab")


@dataclass
class State:
    """Everything that changes while training, and so what last.pt holds."""

    model: nn.Module  # the module whose weights are saved
    forward: nn.Module  # what a training step calls: the model, wrapped in DDP or compiled where configured
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    progress: Progress
    total_steps: int  # optimizer steps in the whole run
    batches_per_epoch: int
    running: list[float] | None = None  # this rank's sums of an epoch resumed mid-way
    average: WeightAverage | None = None  # the weight average, once it has started


def batch_sums(loss_sum: Tensor, correct: Tensor, n: int) -> Tensor:
    """(loss sum, correct, images) of one batch as float64 on the device, to add up without host syncs."""
    return torch.stack([loss_sum.double(), correct.double(), torch.tensor(float(n), device=correct.device,
                                                                          dtype=torch.float64)])


Tta = Literal["none", "flip", "flip_translate"]


class Loss(Options):
    """Cross-entropy with `label_smoothing`, over a batch's `reduction`: mean, or sum (airbench's; the lr then
    scales with the batch)."""

    label_smoothing: Fraction = 0.0
    reduction: Literal["mean", "sum"] = "mean"


class Limits(Options):
    """Debug limits: train on at most `train_batches` per epoch, evaluate on at most `eval_batches`;
    `overfit_batches`: train on epoch 1's first N batches again and again (can the model fit them?)."""

    train_batches: PosInt | None = None
    eval_batches: PosInt | None = None
    overfit_batches: PosInt | None = None


class WhitenBias(Options):
    """A whitening stem's bias learns for `epochs` epochs, then freezes (null: always); with `decay` its lr falls
    linearly to 0 over them (it needs a param_groups rule {params: whiten})."""

    epochs: NonNegInt | None = None
    decay: bool = False


class ParamGroup(Options):
    """A rule of `param_groups`: the parameters of one kind (cnnlab.train.trainer.parameter_kinds) train with the
    optimizer's lr and weight decay scaled."""

    params: Literal["bias", "norm", "norm_bias", "norm_weight", "whiten", "linear"]
    lr_scale: PosFloat
    weight_decay_scale: NonNegFloat


LOSS, NO_AVERAGE, WHITEN_BIAS, NO_MIX, NO_LIMITS = Loss(), EmaSchedule(), WhitenBias(), Mix(), Limits()


class Trainer:
    """Trains for `epochs` epochs (a fraction ends the last one early); conf/trainer/default.yaml documents every
    switch."""

    def __init__(self, epochs: Annotated[float, Gt(0), Le(100_000)], loss: Loss = LOSS,
                 grad_clip: PosFloat | None = None, accumulate: PosInt = 1, log_every: PosInt = 50,
                 eval_every: PosInt = 1, tta: Tta = "none", param_groups: Sequence[ParamGroup] = (),
                 ema: EmaSchedule = NO_AVERAGE, whiten_bias: WhitenBias = WHITEN_BIAS, mix: Mix = NO_MIX,
                 limits: Limits = NO_LIMITS) -> None:
        self.epochs, self.last_epoch, self.grad_clip = epochs, math.ceil(epochs), grad_clip
        self.accumulate, self.log_every, self.eval_every, self.tta = accumulate, log_every, eval_every, tta
        self.param_groups = [ParamGroup.of(g) for g in param_groups]
        self.ema, self.whiten_bias, self.mix = EmaSchedule.of(ema), WhitenBias.of(whiten_bias), Mix.of(mix)
        limits = Limits.of(limits)
        self.limit_train = limits.overfit_batches or limits.train_batches
        self.limit_eval, self.overfit = limits.eval_batches, limits.overfit_batches is not None
        self.loss = Loss.of(loss)
        self.criterion = nn.CrossEntropyLoss(label_smoothing=self.loss.label_smoothing, reduction=self.loss.reduction)

    # ------------------------------------------------------------------------------------ prepare, restore
    def batches_per_epoch(self, loader: Any) -> int:
        return min(len(loader), self.limit_train or len(loader))

    def prepare(self, model: nn.Module, optimizer: Callable, scheduler: Callable, loader: Any,
                runtime: Runtime) -> State:
        """Place the model and build its optimizer (`optimizer(params)`), schedule
        (`scheduler(optimizer, steps_per_epoch, epochs)`) and grad scaler. A weight average from the start
        (`ema.start_epoch` 0) holds the weights as they come, before the whitening fit."""
        batches = self.batches_per_epoch(loader)
        if batches == 0:
            raise CnnlabError("the training split gives 0 batches per epoch: lower data.batch_size, or set "
                              "augment.drop_last=false")
        per_feature = any(isinstance(m, nn.BatchNorm1d) for m in model.modules())  # 1 value a channel per image
        if per_feature and batches == len(loader) and loader.last_batch_size() == 1:
            raise CnnlabError("the training split's last batch holds 1 image, which BatchNorm1d cannot normalise: set "
                              "augment.drop_last=true, or a data.batch_size that leaves more than 1 image over")
        model, forward = runtime.place(model)
        opt = optimizer(self.parameter_groups(model, optimizer) if self.param_groups else model.parameters())
        steps_per_epoch = math.ceil(batches / self.accumulate)
        sched = scheduler(opt, steps_per_epoch, self.epochs)
        if self.whiten_bias.decay:
            self.decay_whiten_bias(model, opt, sched, steps_per_epoch)
        scaler = torch.amp.GradScaler(runtime.device.type, enabled=runtime.precision == "fp16")
        average = WeightAverage(model.state_dict()) if self.ema.every and self.ema.start_epoch == 0 else None
        return State(model, forward, opt, sched, scaler, Progress(), total_steps(steps_per_epoch, self.epochs),
                     batches, average=average)

    def decay_whiten_bias(self, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
                          steps_per_epoch: int) -> None:
        """The whitening bias's lr falls linearly from its group's to 0 over `whiten_bias_epochs`, when it
        freezes (airbench94_muon), in place of the shared schedule; it needs a param_groups rule of its own."""
        biases = {id(m.bias) for m in model.modules() if isinstance(m, Whitening)}
        group = next((i for i, g in enumerate(optimizer.param_groups) if biases & {id(p) for p in g["params"]}), None)
        if group is None or self.whiten_bias.epochs is None:
            raise CnnlabError("trainer.whiten_bias.decay is true, but the model has no whitening bias that learns for "
                              "trainer.whiten_bias.epochs: set model.whiten=true and trainer.whiten_bias.epochs")
        if {id(p) for p in optimizer.param_groups[group]["params"]} != biases:
            raise CnnlabError("trainer.whiten_bias.decay needs the whitening bias in a group of its own: put a "
                              "trainer.param_groups rule {params: whiten, ...} before the others")
        span = self.whiten_bias.epochs * steps_per_epoch
        scheduler.lr_lambdas[group] = lambda step: max(0.0, 1 - step / span)
        optimizer.param_groups[group]["lr"] = scheduler.base_lrs[group] * scheduler.lr_lambdas[group](
            scheduler.last_epoch)

    def parameter_groups(self, model: nn.Module, optimizer: Callable) -> list[dict[str, Any]]:
        """The trainable parameters in groups: each `param_groups` rule takes the parameters it selects (the
        first matching rule wins) with its lr and weight decay scaled; the rest keep the optimizer's own."""
        base = getattr(optimizer, "keywords", {})
        groups = [{"params": [], "lr": base.get("lr", 1.0) * rule.lr_scale,
                   "weight_decay": base.get("weight_decay", 0.0) * rule.weight_decay_scale}
                  for rule in self.param_groups] + [{"params": []}]
        kinds = parameter_kinds(model)
        for name, param in model.named_parameters():
            if param.requires_grad:  # frozen ones (a whitening filter, a frozen BN scale) stay out
                matched = next((i for i, rule in enumerate(self.param_groups) if rule.params in kinds[name]),
                               len(self.param_groups))
                groups[matched]["params"].append(param)
        return [g for g in groups if g["params"]]

    def restore(self, state: State, ckpt: dict[str, Any], runtime: Runtime, allow_changes: bool = False) -> None:
        """Continue `state` from a checked last.pt, or say in one line why it does not fit. Writes nothing."""
        where = f"checkpoint {ckpt['path']}"
        expected = state.model.state_dict()
        checkpoint.check_tensors(where, "model", ckpt["model"], expected)
        if ckpt["average"] is not None:
            checkpoint.check_tensors(where, "average", ckpt["average"],
                                     {k: v for k, v in expected.items() if v.is_floating_point()})
        progress = checkpoint.progress_of(ckpt)
        self.check_progress(where, progress, state, allow_changes)
        state.model.load_state_dict(ckpt["model"])
        configured = [{k: v for k, v in g.items() if k != "params"} for g in state.optimizer.param_groups]
        configured_base_lrs = list(state.scheduler.base_lrs)
        for name, target in (("optimizer", state.optimizer), ("scheduler", state.scheduler),
                             ("scaler", state.scaler)):
            try:
                target.load_state_dict(ckpt[name])
            except (KeyError, ValueError, TypeError, RuntimeError, IndexError) as e:
                raise CnnlabError(f"{where}: its '{name}' state does not fit this run's {name} "
                                  f"({type(e).__name__}: {e})") from None
        check_optimizer_state(where, state.optimizer, state.scheduler, progress.step)
        if allow_changes:
            use_configured_values(state.optimizer, state.scheduler, configured, configured_base_lrs)
        rngs, sums = ckpt["rng"], ckpt["running"]
        if len(rngs) != runtime.world_size:
            log.warning("checkpoint has the RNG states of %d ranks, this run has %d: dropout and other random "
                        "layers will not continue exactly", len(rngs), runtime.world_size)
        try:
            checkpoint.set_rng_state(rngs[runtime.rank % len(rngs)])
            running = [float(v) for v in sums[runtime.rank % len(sums)]]
            average = WeightAverage({k: v.to(runtime.device) for k, v in ckpt["average"].items()}) \
                if ckpt["average"] is not None else None
        except (KeyError, ValueError, TypeError, IndexError, RuntimeError, ZeroDivisionError, AttributeError) as e:
            raise CnnlabError(f"{where}: its RNG states, running sums or weight average are malformed "
                              f"({type(e).__name__})") from None
        state.progress, state.running = progress, running if len(running) == 3 else None
        state.average = average

    def check_progress(self, where: str, p: Progress, state: State, allow_changes: bool) -> None:
        """The checkpoint's counters against this run's data: a batch within an epoch, and (with the data as it
        was) exactly the steps that its epochs and batches imply."""
        batches = state.batches_per_epoch
        if p.batch > batches:
            raise CnnlabError(f"{where}: entry 'progress.batch' is {p.batch}, past the {batches} batches of an epoch "
                              "of this run's data")
        steps = (p.epoch - 1) * math.ceil(batches / self.accumulate) + math.ceil(p.batch / self.accumulate)
        if p.step != steps and not allow_changes:
            raise CnnlabError(f"{where}: entry 'progress.step' is {p.step}, but epoch {p.epoch} at batch {p.batch} "
                              f"means {steps} steps")

    # ----------------------------------------------------------------------------------------------- fit
    def fit(self, state: State, data: Data, runtime: Runtime, logger: Logger, saver: CheckpointSaver,
            stop_early: Callable[[dict[str, Any]], bool] | None = None) -> dict[str, Any]:
        """Train, evaluate every `eval_every` epochs, log and checkpoint; return the run's summary. `stop_early`
        (a search's pruner) sees each epoch's record once its last.pt is written, and may end the run there."""
        p, summary, start = state.progress, {}, time.perf_counter()
        runtime.stop.armed = True  # from here a signal stops the run at a step boundary, with last.pt written
        try:
            while p.epoch <= self.last_epoch:
                record, sums = self.train_epoch(state, data.train, runtime, logger, saver)
                if p.epoch % self.eval_every == 0 or p.epoch == self.last_epoch:
                    try:
                        record.update(self.evaluate_epoch(state, data, runtime, saver))
                    except Interrupted:
                        self.save_last(state, saver, sums)  # the epoch trained: resume evaluates it
                        raise
                record["seconds"] = time.perf_counter() - start
                self.check_finite(state, saver)
                logger.log(record)
                summary.update({f"final_{k}": v for k, v in record.items() if k.endswith(("_loss", "_acc"))})
                summary.update(epoch=p.epoch, step=p.step, images_per_second=record["images_per_second"])
                p.epoch, p.batch = p.epoch + 1, 0
                self.save_last(state, saver, torch.zeros(3))
                if stop_early is not None and p.epoch <= self.last_epoch and distributed.broadcast(stop_early(record)):
                    log.info("pruned at epoch %d: the search stops this trial here", record["epoch"])
                    summary.update(status="pruned", pruned_at_epoch=record["epoch"])
                    break
        finally:
            runtime.stop.armed = False
        summary.update(best_val_acc=p.best_val_acc, best_epoch=p.best_epoch, test_acc_at_best_val=p.test_acc_at_best,
                       train_seconds=time.perf_counter() - start)
        return summary

    def train_epoch(self, state: State, loader: Any, runtime: Runtime, logger: Logger,
                    saver: CheckpointSaver) -> tuple[dict[str, Any], Tensor]:
        """Train the rest of the epoch; its record, and its running sums (loss, correct, images) on the device."""
        p = state.progress
        state.model.train()
        if self.whiten_bias.epochs is not None:
            for m in state.model.modules():
                if isinstance(m, Whitening):  # its bias learns for the first epochs only
                    m.bias.requires_grad_(p.epoch <= self.whiten_bias.epochs)
        loader.set_epoch(1 if self.overfit else p.epoch, p.batch)  # overfit: epoch 1's first batches, always
        batches = self.batches_per_epoch(loader)
        last_batch = len(loader) - 1  # the only batch DDP ranks can share unevenly
        # loss sum, correct, images: summed on the device, read only at log intervals
        running = state.running or [0.0, 0.0, 0.0]
        sums = torch.tensor(running, dtype=torch.float64, device=runtime.device)
        state.running = None
        epoch_start = mark = time.perf_counter()
        resumed_images = mark_images = running[2]
        for batch, (x, y) in enumerate(loader, start=p.batch):
            if batch >= batches or p.step >= state.total_steps:  # the last of fractional epochs ends early
                break
            weight = distributed.share_weight(len(y)) if batch == last_batch else 1.0
            sums += self.step(state, *runtime.batch(x, y), runtime, new_window=batch % self.accumulate == 0,
                              weight=weight)
            if (batch + 1) % self.accumulate and batch + 1 < batches:
                continue  # gradients accumulate until the window's last batch
            self.update(state)
            p.step, p.batch = p.step + 1, batch + 1
            stop = runtime.stop.signum if runtime.world_size == 1 else None
            if p.step % self.log_every == 0:
                loss_sum, correct, seen = totals(sums)
                if not math.isfinite(loss_sum):
                    self.diverged(state, saver, f"the train loss is {loss_sum / seen}")
                now = time.perf_counter()
                logger.log({"kind": "step", "epoch": p.epoch, "step": p.step, "batch": p.batch, "batches": batches,
                            "train_loss": loss_sum / seen, "train_acc": correct / seen,
                            "lr": state.optimizer.param_groups[-1]["lr"],
                            "images_per_second": (seen - mark_images) / max(now - mark, 1e-9)})
                mark, mark_images = now, seen
                stop = distributed.any_rank(runtime.stop.signum)
            if stop:
                self.save_last(state, saver, sums)
                raise Interrupted(stop)
            if saver.due(p.step):
                self.save_last(state, saver, sums)
        loss_sum, correct, seen = totals(sums)
        seconds = time.perf_counter() - epoch_start
        return {"kind": "epoch", "epoch": p.epoch, "step": p.step, "train_loss": loss_sum / max(seen, 1),
                "train_acc": correct / max(seen, 1), "lr": state.optimizer.param_groups[-1]["lr"],
                "epoch_seconds": seconds, "images_per_second": (seen - resumed_images) / max(seconds, 1e-9)}, sums

    def step(self, state: State, x: Tensor, y: Tensor, runtime: Runtime, new_window: bool = True,
             weight: float = 1.0) -> Tensor:
        """Forward and backward of one batch (mixed with mixup/cutmix where configured); its (loss sum, correct,
        images), on the device. The first batch of an accumulation window drops the last window's gradients.
        `weight` scales the loss that is backpropagated (this rank's share of an unevenly split batch)."""
        mixed = mix_batch(x, y, self.mix.mixup, self.mix.cutmix) if self.mix.mixup or self.mix.cutmix else None
        with runtime.autocast():
            if mixed is None:
                out = state.forward(x)
                loss = self.criterion(out, y)
            else:
                x, y, y_other, lam = mixed
                out = state.forward(x)
                loss = lam * self.criterion(out, y) + (1 - lam) * self.criterion(out, y_other)
        # dropped here, not after the optimizer step: freed earlier, the memory goes back to the kernel before the
        # forward pass and returns as page faults (docs/benchmarks.md, "No slowdown")
        if new_window:
            state.optimizer.zero_grad(set_to_none=True)
        if self.loss.reduction == "mean":
            state.scaler.scale(loss * weight / self.accumulate).backward()
            return batch_sums(loss.detach() * len(y), (out.argmax(1) == y).sum(), len(y))
        # summed over the window's images on every rank: DDP averages the ranks' gradients, so undo that
        state.scaler.scale(loss * distributed.world_size() if distributed.world_size() > 1 else loss).backward()
        return batch_sums(loss.detach(), (out.argmax(1) == y).sum(), len(y))

    def update(self, state: State) -> None:
        """One optimizer step on the accumulated gradients, the schedule's step, and the weight average's."""
        if self.grad_clip:
            state.scaler.unscale_(state.optimizer)
            nn.utils.clip_grad_norm_(state.model.parameters(), self.grad_clip)
        state.scaler.step(state.optimizer)
        state.scaler.update()
        state.scheduler.step()
        step = state.progress.step + 1
        if self.ema.due(state.progress.epoch, step):
            if state.average is None:
                state.average = WeightAverage(state.model.state_dict())
            else:
                state.average.update(state.model, self.ema.decay_at(step, state.total_steps))
                if self.ema.lookahead:
                    state.average.copy_to(state.model)

    # ------------------------------------------------------------------------------------------ evaluate
    def evaluate_epoch(self, state: State, data: Data, runtime: Runtime, saver: CheckpointSaver) -> dict[str, float]:
        """Validation and test figures of the evaluated weights (the average's, where configured); a new best
        validation accuracy writes best.pt with them. Test selects nothing."""
        p, record = state.progress, {}
        model = self.evaluated_model(state)
        if data.val is not None:
            record.update(self.evaluate(model, data.val, runtime, "val"))
        record.update(self.evaluate(model, data.test, runtime, "test"))
        if "val_acc" in record and (p.best_val_acc is None or record["val_acc"] > p.best_val_acc):
            p.best_val_acc, p.best_epoch, p.test_acc_at_best = record["val_acc"], p.epoch, record["test_acc"]
            self.check_finite(state, saver)
            saver.save_best(model, p)
        return record

    def evaluated_model(self, state: State) -> nn.Module:
        """The model, or a copy holding the average: at every evaluation, or with lookahead (the model continuing
        from the average) at the last, where training ends on the average. last.pt keeps the model to continue."""
        if state.average is None or not self.ema.evaluate or (self.ema.lookahead and
                                                               state.progress.epoch < self.last_epoch):
            return state.model
        averaged = copy.deepcopy(state.model)
        state.average.copy_to(averaged)
        return averaged

    @torch.inference_mode()
    def evaluate(self, model: nn.Module, loader: Iterable, runtime: Runtime, split: str = "test") -> dict[str, float]:
        """`{split}_loss` and `{split}_acc` over the loader (its first `limit_eval_batches`), summed across ranks."""
        model.eval()
        sums = torch.zeros(3, dtype=torch.float64, device=runtime.device)
        for i, (x, y) in enumerate(loader):
            if self.limit_eval is not None and i >= self.limit_eval:
                break
            if runtime.stop.signum is not None and runtime.world_size == 1:
                raise Interrupted(runtime.stop.signum)  # fit writes last.pt of the trained epoch
            x, y = runtime.batch(x, y)
            out = logits(model, x, runtime, self.tta)
            sums += batch_sums(nn.functional.cross_entropy(out.double(), y, reduction="sum"),
                               (out.argmax(1) == y).sum(), len(y))
        loss_sum, correct, seen = distributed.all_reduce_sum(sums).tolist()
        return {f"{split}_loss": loss_sum / seen, f"{split}_acc": correct / seen}

    # ------------------------------------------------------------------------------------- checkpoints
    def save_last(self, state: State, saver: CheckpointSaver, sums: Tensor) -> None:
        """last.pt at the current progress, once the weights are known to be finite (a collective)."""
        self.check_finite(state, saver)
        saver.save_last(state, sums)

    def check_finite(self, state: State, saver: CheckpointSaver) -> None:
        bad = checkpoint.nonfinite(state.model.state_dict())
        if distributed.any_rank(len(bad)):
            self.diverged(state, saver, f"{len(bad)} weight and buffer tensors hold NaN or inf "
                                        f"({bad[0] if bad else 'on another rank'})")

    def diverged(self, state: State, saver: CheckpointSaver, what: str) -> None:
        p = state.progress
        raise CnnlabError(f"training diverged at epoch {p.epoch}, step {p.step}: {what}; {saver.kept()}; lower "
                          "optim.lr or set trainer.grad_clip")


def parameter_kinds(model: nn.Module) -> dict[str, set[str]]:
    """The `param_groups` selectors each parameter answers to: bias, norm, norm_bias, norm_weight, whiten, linear."""
    kinds = {}
    for module_name, module in model.named_modules():
        for name, _ in module.named_parameters(recurse=False):
            tags = {"bias"} if name == "bias" else set()
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                tags |= {"norm", f"norm_{name}"}
            if isinstance(module, Whitening):
                tags.add("whiten")
            if isinstance(module, nn.Linear):
                tags.add("linear")
            kinds[f"{module_name}.{name}" if module_name else name] = tags
    return kinds


def logits(model: nn.Module, x: Tensor, runtime: Runtime, tta: str = "none") -> Tensor:
    """float32 logits of an evaluation batch. tta "flip": averaged with the mirror image's; "flip_translate":
    half that, and half the mean of the same for the image shifted by one pixel up-left and down-right (reflect
    padding). Summed in airbench's order, so that it computes airbench's figures to the bit."""
    with runtime.autocast():
        def mirrored(v: Tensor) -> Tensor:
            return 0.5 * model(v).float() + 0.5 * model(v.flip(3)).float()

        if tta == "none":
            return model(x).float()
        if tta == "flip":
            return mirrored(x)
        padded = nn.functional.pad(x, (1, 1, 1, 1), mode="reflect")
        translated = torch.stack([mirrored(padded[..., :-2, :-2]), mirrored(padded[..., 2:, 2:])])
        return 0.5 * mirrored(x) + 0.5 * translated.mean(0)


def totals(sums: Tensor) -> list[float]:
    """Loss sum, correct and images over all ranks (the only host sync of the training loop)."""
    return distributed.all_reduce_sum(sums.clone()).tolist()


def check_optimizer_state(where: str, optimizer: torch.optim.Optimizer, scheduler: Any, step: int) -> None:
    """After loading: every state tensor of a parameter is finite and shaped like it (or a scalar), every
    hyperparameter finite, and the schedule at the checkpoint's step."""
    for group in optimizer.param_groups:
        for key, value in group.items():
            numbers = value if isinstance(value, tuple | list) and key != "params" else [value]
            if key != "params" and any(isinstance(v, float) and not math.isfinite(v) for v in numbers):
                raise CnnlabError(f"{where}: its optimizer's {key} is {value}; allowed: finite numbers")
        for i, param in enumerate(group["params"]):
            for key, value in optimizer.state.get(param, {}).items():
                if not isinstance(value, Tensor):
                    continue
                if value.dim() and value.shape != param.shape or value.is_complex():
                    raise CnnlabError(f"{where}: its optimizer state '{key}' of parameter {i} is {value.dtype} "
                                      f"{tuple(value.shape)}, the parameter is {param.dtype} {tuple(param.shape)}")
                if value.is_floating_point() and not value.isfinite().all():
                    raise CnnlabError(f"{where}: its optimizer state '{key}' of parameter {i} holds NaN or inf: "
                                      "resume from an earlier checkpoint")
    if scheduler.last_epoch != step:
        raise CnnlabError(f"{where}: its schedule is at step {scheduler.last_epoch}, its progress at step {step}")


def use_configured_values(optimizer: torch.optim.Optimizer, scheduler: Any, configured: list[dict[str, Any]],
                          base_lrs: list[float]) -> None:
    """checkpoints.resume_changes=allow: the optimizer's values are this run's, not the checkpoint's, and the schedule
    continues at its step from this run's lr."""
    scheduler.base_lrs = base_lrs
    for group, values, base, factor in zip(optimizer.param_groups, configured, base_lrs, scheduler.lr_lambdas,
                                           strict=True):
        group.update(values)
        group["lr"] = base * factor(scheduler.last_epoch)
