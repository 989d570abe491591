"""The one training loop: train step, evaluation, logging through a `Logger`, checkpoints and exact resume.

The hot loop never waits on the device: loss and accuracy are summed on the device and read (`.item()`)
only every `log_every` steps and at the end of an epoch.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from cnnlab import CnnlabError
from cnnlab.atomic import atomic_save
from cnnlab.data import Data
from cnnlab.track import Logger
from cnnlab.train import distributed
from cnnlab.train.checkpoint import load_weights, rng_state, set_rng_state

log = logging.getLogger("cnnlab")


def pick_device(device: str) -> torch.device:
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        picked = torch.device(device)
    except RuntimeError:
        raise CnnlabError(f"trainer.device is {device!r}; allowed: auto, cpu, cuda, cuda:N, mps") from None
    missing = None
    if picked.type == "cuda" and not torch.cuda.is_available():
        missing = "no CUDA device is available here"
    elif picked.type == "cuda" and (picked.index or 0) >= torch.cuda.device_count():
        missing = f"this machine has {torch.cuda.device_count()} CUDA device(s)"
    elif picked.type == "mps" and not mps_available():
        missing = "MPS is not available here"
    if missing:
        raise CnnlabError(f"trainer.device is {device!r} but {missing}: use trainer.device=auto, or cpu")
    return picked


def mps_available() -> bool:
    return bool(getattr(torch.backends, "mps", None)) and torch.backends.mps.is_available()


def native_bf16(device: torch.device) -> bool:
    """Whether bf16 autocast runs natively: CUDA, or a CPU with bf16 instructions (AVX512-BF16, AMX).

    On this project's 2-core AVX512-BF16 CPU, bf16 autocast trains 1.4-2.0x faster than fp32
    (benchmarks/throughput.py, docs/benchmarks.md).
    """
    if device.type == "cuda":
        return True
    if device.type != "cpu":
        return False
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def batch_sums(loss_sum: Tensor, correct: Tensor, n: int) -> Tensor:
    """(loss sum, correct, images) of one batch as float64 on the device, to add up without host syncs."""
    return torch.stack([loss_sum.double(), correct.double(), torch.tensor(float(n), device=correct.device,
                                                                          dtype=torch.float64)])


class Trainer:
    """Trains `model` on `data` for `epochs` epochs; see conf/trainer/default.yaml for every switch."""

    def __init__(self, epochs: int, batch_size: int, eval_batch_size: int | None = None, device: str = "auto",
                 precision: str = "auto", channels_last: str | bool = "auto", compile: bool = False,
                 label_smoothing: float = 0.0, grad_clip: float | None = None, log_every: int = 50,
                 eval_every: int = 1, tta_flip: bool = False, save_checkpoints: bool = True,
                 checkpoint_every_steps: int = 0, deterministic: bool = False, num_workers: int = 0,
                 resume: str | None = None, strategy: str = "single", sync_batchnorm: bool = False,
                 ddp_timeout_s: float = 600) -> None:
        self.epochs, self.batch_size = epochs, batch_size
        self.eval_batch_size = eval_batch_size or 2 * batch_size
        distributed.setup(strategy, ddp_timeout_s)
        self.rank, self.world_size = distributed.rank(), distributed.world_size()
        for key, size in (("batch_size", self.batch_size), ("eval_batch_size", self.eval_batch_size)):
            if size % self.world_size:
                raise CnnlabError(f"trainer.{key} is {size}, which {self.world_size} ranks cannot share evenly: "
                                  f"use a multiple of {self.world_size} (it is the global batch size)")
        self.sync_batchnorm = sync_batchnorm
        self.device = pick_device(device)
        if self.device.type == "cuda" and self.world_size > 1:
            self.device = torch.device("cuda", distributed.local_rank())
        if sync_batchnorm and self.world_size > 1 and self.device.type != "cuda":
            raise CnnlabError("trainer.sync_batchnorm=true needs CUDA devices (PyTorch's SyncBatchNorm is GPU-only)")
        cuda = self.device.type == "cuda"
        self.precision = ("bf16" if native_bf16(self.device) else "fp32") if precision == "auto" else precision
        if self.precision not in ("fp32", "bf16", "fp16"):
            raise CnnlabError(f"trainer.precision is {precision!r}; allowed: auto, fp32, bf16, fp16")
        self.channels_last = True if channels_last == "auto" else bool(channels_last)
        self.compile = compile
        self.label_smoothing, self.grad_clip = label_smoothing, grad_clip
        self.log_every, self.eval_every, self.tta_flip = log_every, eval_every, tta_flip
        self.save_checkpoints, self.checkpoint_every_steps = save_checkpoints, checkpoint_every_steps
        self.deterministic, self.num_workers, self.resume = deterministic, num_workers, resume
        if deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
            torch.backends.cudnn.benchmark = False
        elif cuda:
            torch.backends.cudnn.benchmark = True

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    def _logits(self, model: nn.Module, x: Tensor) -> Tensor:
        with self.autocast():
            out = model(x).float()
            if self.tta_flip:
                out = (out + model(x.flip(3)).float()) / 2
        return out

    @torch.inference_mode()
    def predict(self, model: nn.Module, loader: Iterable) -> tuple[Tensor, Tensor]:
        """Logits (float32, on the device) and labels of a whole loader, flip-averaged if `tta_flip`."""
        model.eval()
        logits, labels = [], []
        for x, y in loader:
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            logits.append(self._logits(model, x))
            labels.append(y)
        return torch.cat(logits), torch.cat(labels)

    @torch.inference_mode()
    def evaluate(self, model: nn.Module, loader: Iterable) -> dict[str, float]:
        """Test loss and accuracy, summed over the ranks' shards of the test set."""
        model.eval()
        sums = torch.zeros(3, dtype=torch.float64, device=self.device)
        for x, y in loader:
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            out = self._logits(model, x)
            sums += batch_sums(nn.functional.cross_entropy(out.double(), y, reduction="sum"),
                               (out.argmax(1) == y).sum(), len(y))
        loss_sum, correct, seen = distributed.all_reduce_sum(sums).tolist()
        return {"test_loss": loss_sum / seen, "test_acc": correct / seen}

    def fit(self, model: nn.Module, data: Data, optimizer: Callable, scheduler: Callable, logger: Logger,
            run_dir: str | Path, extra_state: dict[str, Any] | None = None,
            checkpoint: dict[str, Any] | None = None) -> dict[str, Any]:
        """Train, evaluate every `eval_every` epochs, log and checkpoint; return the run's summary.

        `optimizer(params)` and `scheduler(optimizer, steps_per_epoch, epochs)` are the partially applied
        configs; `checkpoint` is a loaded checkpoint to continue from.
        """
        run_dir = Path(run_dir)
        if self.sync_batchnorm and self.world_size > 1:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        model.to(self.device)
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        opt = optimizer(model.parameters())
        steps_per_epoch = len(data.train)
        sched = scheduler(opt, steps_per_epoch=steps_per_epoch, epochs=self.epochs)
        scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")
        criterion = nn.CrossEntropyLoss(label_smoothing=self.label_smoothing)
        forward = model
        if self.world_size > 1:
            forward = nn.parallel.DistributedDataParallel(
                model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        if self.compile:
            forward = torch.compile(forward)

        epoch, start_batch, step, best_acc, running = 1, 0, 0, 0.0, None
        if checkpoint is not None:
            load_weights(model, checkpoint)
            opt.load_state_dict(checkpoint["optimizer"])
            sched.load_state_dict(checkpoint["scheduler"])
            scaler.load_state_dict(checkpoint["scaler"])
            epoch, start_batch, step = checkpoint["next_epoch"], checkpoint["next_batch"], checkpoint["step"]
            # RNG states and running sums are kept per rank
            rngs, rank_sums = checkpoint["rng"], checkpoint["running"]
            if len(rngs) != self.world_size:
                log.warning("checkpoint has the RNG states of %d ranks, this run has %d: dropout and other random "
                            "layers will not continue exactly", len(rngs), self.world_size)
            best_acc, running = checkpoint["best_acc"], rank_sums[self.rank % len(rank_sums)]
            set_rng_state(rngs[self.rank % len(rngs)])

        def save(name: str, epoch: int, batch: int, sums: Tensor) -> None:
            """A resumable checkpoint: training continues at batch `batch` of epoch `epoch`."""
            if not self.save_checkpoints:
                return
            # collectives: every rank takes part, rank 0 writes
            rngs, rank_sums = distributed.gather(rng_state()), distributed.gather(sums.tolist())
            if self.rank == 0:
                atomic_save({"model": model.state_dict(), "optimizer": opt.state_dict(),
                             "scheduler": sched.state_dict(), "scaler": scaler.state_dict(),
                             "next_epoch": epoch, "next_batch": batch, "step": step, "best_acc": best_acc,
                             "running": rank_sums, "rng": rngs, **(extra_state or {})},
                            run_dir / name)

        summary: dict[str, Any] = {}
        start = time.perf_counter()
        while epoch <= self.epochs:
            model.train()
            if hasattr(data.train, "set_epoch"):
                data.train.set_epoch(epoch, start_batch)
            elif hasattr(getattr(data.train, "sampler", None), "set_epoch"):
                data.train.sampler.set_epoch(epoch)  # torchvision path under DDP: a DistributedSampler
            # loss sum, correct, images: summed on the device, read only at log intervals
            sums = torch.tensor(running or [0.0, 0.0, 0.0], dtype=torch.float64, device=self.device)
            running = None
            epoch_start = mark = time.perf_counter()
            mark_images = self._totals(sums)[2]
            for batch, (x, y) in enumerate(data.train, start=start_batch):
                x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
                if self.channels_last and x.dim() == 4:
                    x = x.contiguous(memory_format=torch.channels_last)
                with self.autocast():
                    out = forward(x)
                    loss = criterion(out, y)
                opt.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                if self.grad_clip:
                    scaler.unscale_(opt)
                    nn.utils.clip_grad_norm_(model.parameters(), self.grad_clip)
                scaler.step(opt)
                scaler.update()
                sched.step()
                step += 1
                sums += batch_sums(loss.detach() * len(y), (out.argmax(1) == y).sum(), len(y))
                if step % self.log_every == 0:
                    loss_sum, correct, seen = self._totals(sums)
                    self._check_finite(loss_sum, epoch, step, run_dir)
                    now = time.perf_counter()
                    logger.log({"kind": "step", "epoch": epoch, "step": step, "batch": batch + 1,
                                "batches": steps_per_epoch, "train_loss": loss_sum / seen, "train_acc": correct / seen,
                                "lr": opt.param_groups[0]["lr"],
                                "images_per_second": (seen - mark_images) / max(now - mark, 1e-9)})
                    mark, mark_images = now, seen
                if self.checkpoint_every_steps and step % self.checkpoint_every_steps == 0:
                    save("last.pt", epoch, batch + 1, sums)
            loss_sum, correct, seen = self._totals(sums)
            self._check_finite(loss_sum, epoch, step, run_dir)
            train_seconds = time.perf_counter() - epoch_start
            record = {"kind": "epoch", "epoch": epoch, "step": step, "train_loss": loss_sum / max(seen, 1),
                      "train_acc": correct / max(seen, 1), "lr": opt.param_groups[0]["lr"],
                      "epoch_seconds": train_seconds, "images_per_second": seen / max(train_seconds, 1e-9)}
            if epoch % self.eval_every == 0 or epoch == self.epochs:
                record.update(self.evaluate(model, data.test))
            record["seconds"] = time.perf_counter() - start
            logger.log(record)
            summary.update({k: v for k, v in record.items() if k not in ("kind", "seconds")})
            is_best = record.get("test_acc", -1.0) > best_acc
            best_acc = max(best_acc, record.get("test_acc", 0.0))
            epoch, start_batch = epoch + 1, 0
            save("last.pt", epoch, 0, torch.zeros(3))
            if is_best and self.save_checkpoints and self.rank == 0:
                # best.pt is for evaluation and fine-tuning: weights and config, no optimizer state
                atomic_save({"model": model.state_dict(), "epoch": epoch - 1, "step": step,
                             "best_acc": best_acc, **(extra_state or {})}, run_dir / "best.pt")
        summary.update({"best_test_acc": best_acc, "final_test_acc": summary.get("test_acc"),
                        "train_seconds": time.perf_counter() - start})
        return summary

    @staticmethod
    def _totals(sums: Tensor) -> list[float]:
        """Loss sum, correct and images over all ranks (the only host sync of the training loop)."""
        return distributed.all_reduce_sum(sums.clone()).tolist()

    def _check_finite(self, loss_sum: float, epoch: int, step: int, run_dir: Path) -> None:
        if not math.isfinite(loss_sum):
            kept = run_dir / "last.pt"
            where = f"the last good checkpoint is {kept}" if kept.exists() else "no checkpoint was written yet"
            raise CnnlabError(f"training diverged: the train loss is {loss_sum} at epoch {epoch}, step {step}; "
                              f"{where}; lower optim.lr or set trainer.grad_clip")
