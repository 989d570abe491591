"""Where and how the arithmetic runs: the device, the precision (autocast), the memory format, torch.compile,
the host allocator, the DDP process group, and the signals that stop a run cleanly. Training and evaluation use
it alike.

`with Runtime(...) as runtime:` joins the process group (under DDP) and catches SIGINT/SIGTERM, and a
submitit preemption, as a request to stop at the next step boundary; leaving it restores both.
"""

from __future__ import annotations

import contextlib
import ctypes
import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Annotated, Any, Literal

import torch
from annotated_types import Gt, Le
from torch import Tensor, nn

from cnnlab import PREEMPTION_SIGNAL, CnnlabError, Interrupted, distributed
from cnnlab.types import text

Device = text(r"auto|cpu|mps|cuda(:\d+)?", "auto, cpu, cuda, cuda:N, mps")


class Runtime:
    def __init__(self, device: Device = "auto", precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto",
                 channels_last: Literal["auto"] | bool = "auto", compile: bool = False,
                 deterministic: bool = False, strategy: Literal["single", "ddp"] = "single",
                 sync_batchnorm: bool = False, ddp_timeout_s: Annotated[float, Gt(0), Le(7 * 86400)] = 600,
                 hold_freed_memory: Literal["auto"] | bool = "auto") -> None:
        self.device = pick_device(device)
        on_cpu = self.device.type == "cpu"
        self.hold_freed_memory = hold_freed_memory is True or (hold_freed_memory == "auto" and on_cpu)
        self.precision = ("bf16" if native_bf16(self.device) else "fp32") if precision == "auto" else precision
        self.channels_last = channels_last is True or channels_last == "auto"
        self.compile, self.deterministic = compile, deterministic
        self.strategy, self.sync_batchnorm, self.ddp_timeout_s = strategy, sync_batchnorm, ddp_timeout_s
        self.rank, self.world_size = 0, 1
        self.stop = StopRequests()

    def __enter__(self) -> Runtime:
        distributed.setup(self.strategy, self.ddp_timeout_s)
        self.rank, self.world_size = distributed.rank(), distributed.world_size()
        if self.device.type == "cuda" and self.world_size > 1:
            self.device = torch.device("cuda", distributed.local_rank())
        if self.sync_batchnorm and self.world_size > 1 and self.device.type != "cuda":
            raise CnnlabError("runtime.sync_batchnorm=true needs CUDA devices (PyTorch's SyncBatchNorm is GPU-only)")
        if self.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
            torch.backends.cudnn.benchmark = False
        elif self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        if self.hold_freed_memory:
            keep_freed_memory_in_heap()
        self.stop.install()
        return self

    def __exit__(self, kind: type | None, error: BaseException | None, *_: Any) -> None:
        self.stop.uninstall()
        if isinstance(error, Interrupted):
            error.then = self.stop.continue_preemption()
        if kind is None:
            distributed.barrier()  # ranks leave together: a rank exiting mid-teardown aborts gloo
        distributed.teardown()

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    def place(self, model: nn.Module) -> tuple[nn.Module, nn.Module]:
        """Put `model` on the device in the chosen memory format; return it and the module to call for training
        (wrapped in DDP and compiled where configured)."""
        if self.sync_batchnorm and self.world_size > 1:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        model.to(self.device)
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        forward = model
        if self.world_size > 1:
            forward = nn.parallel.DistributedDataParallel(
                model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        if self.compile:
            forward = torch.compile(forward)
        return model, forward

    def batch(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, y


def pick_device(device: str) -> torch.device:
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps") if mps_available() else torch.device("cpu")
    picked = torch.device(device)
    missing = None
    if picked.type == "cuda" and not torch.cuda.is_available():
        missing = "no CUDA device is available here"
    elif picked.type == "cuda" and (picked.index or 0) >= torch.cuda.device_count():
        missing = f"this machine has {torch.cuda.device_count()} CUDA device(s)"
    elif picked.type == "mps" and not mps_available():
        missing = "MPS is not available here"
    if missing:
        raise CnnlabError(f"runtime.device is {device!r} but {missing}: use runtime.device=auto, or cpu")
    return picked


def keep_freed_memory_in_heap() -> bool:
    """Have glibc's malloc keep freed memory for reuse instead of handing it back to the kernel (process-wide,
    for the rest of the process); False where the C library is not glibc.

    By default glibc serves every allocation above its mmap threshold (128 KiB, adapting up to 32 MiB) with a fresh
    mapping and unmaps it on free, so a CPU training step that allocates and frees its activations maps them again
    and page-faults every page of them in again; with the thresholds lifted those faults are gone (measured in
    docs/benchmarks.md, "Freed memory held for reuse"). The cost: the process keeps its peak memory until it exits.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold, largest = -1, -3, 2**31 - 1
    return bool(mallopt(m_mmap_threshold, largest)) and bool(mallopt(m_trim_threshold, largest))


def mps_available() -> bool:
    return bool(getattr(torch.backends, "mps", None)) and torch.backends.mps.is_available()


def native_bf16(device: torch.device) -> bool:
    """Whether bf16 autocast runs natively: CUDA, or a CPU with bf16 instructions (AVX512-BF16, AMX), where it is
    the faster default (benchmarks/throughput.py, docs/benchmarks.md)."""
    if device.type == "cuda":
        return True
    if device.type != "cpu":
        return False
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


class StopRequests:
    """SIGINT and SIGTERM, and a submitit preemption, stop a run. While the training loop runs (`armed`), a
    signal is a request that the loop honours at the next step boundary, where it writes last.pt; otherwise,
    or when SIGINT comes twice, it raises Interrupted at once. Under submitit, SIGTERM stays submitit's, and
    its preemption handler (which requeues the job) runs once cnnlab has stopped (`continue_preemption`)."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.armed = False
        self.previous: dict[int, Any] = {}

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signals reach the main thread only (a job run in a launcher's thread)
        submitit = callable(signal.getsignal(PREEMPTION_SIGNAL))
        for signum in (signal.SIGINT, PREEMPTION_SIGNAL) if submitit else (signal.SIGINT, signal.SIGTERM):
            self.previous[signum] = signal.signal(signum, self._request)

    def uninstall(self) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)

    def _request(self, signum: int, frame: FrameType | None) -> None:
        if not self.armed or self.signum == signal.SIGINT == signum:
            raise Interrupted(signum)
        self.signum = signum

    def continue_preemption(self) -> Callable[[], None] | None:
        """submitit's own preemption handling (checkpoint, requeue, exit), to run once cnnlab has stopped."""
        handler = self.previous.get(PREEMPTION_SIGNAL)
        if self.signum != PREEMPTION_SIGNAL or not callable(handler):
            return None
        return lambda: handler(PREEMPTION_SIGNAL, None)
