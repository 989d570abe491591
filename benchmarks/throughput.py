"""cnnlab's data path and training step against a seed-style baseline, measured side by side in one run.

  python benchmarks/throughput.py [--data ../shared/data/cifar10] [--steps 6] [--models vgg16,resnet18]

Prints four tables: loader images/s; training images/s per model (cnnlab's Trainer vs a plain loop over a
torchvision DataLoader with PIL transforms, fp32, NCHW, `.item()` every step, as in the seed's main.py);
model FLOP utilisation against this machine's measured fp32 matmul peak; peak resident memory. Every
training measurement runs in a fresh subprocess so memory and threads do not leak between rows.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from cnnlab.data import Data
from cnnlab.data.loader import TensorLoader
from cnnlab.data.sources import ImageFolder, ImageTensors
from cnnlab.data.torchvision_loader import FileImages, TensorImages, TorchvisionLoader
from cnnlab.rundir import RunDir
from cnnlab.runtime import Runtime
from cnnlab.track.provenance import machine
from cnnlab.train.checkpoint import CheckpointSaver
from cnnlab.train.schedules import constant
from cnnlab.train.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]
BATCH = 100
MODELS = {  # name -> overrides of the model config group
    "vgg16": ["model=vgg16"],
    "resnet50_layer4": ["model=resnet50_layer4"],
    "resnet18": ["model=resnet18"],
    "vgg_compact": ["model=vgg_compact"],
    "airbench94": ["model=airbench94"],
}
# the runtime with its defaults for the machine, and with them switched off one by one
CNNLAB_VARIANTS = {"cnnlab fp32 NCHW malloc": {"precision": "fp32", "channels_last": False, "hold_freed_memory": False},
                   "cnnlab fp32 NCHW": {"precision": "fp32", "channels_last": False},
                   "cnnlab fp32": {"precision": "fp32"}, "cnnlab": {}}


def load(data_dir: str) -> tuple[ImageTensors, list[float], list[float]]:
    tensors = ImageFolder(data_dir).load(os.environ.get("CNNLAB_CACHE_DIR", "~/.cache/cnnlab"))
    mean, std = tensors.channel_stats()
    return tensors, mean, std


def images_per_second(loader, limit: int) -> float:
    seen, start = 0, time.perf_counter()
    for x, _ in loader:
        seen += len(x)
        if seen >= limit:
            break
    return seen / (time.perf_counter() - start)


class SeedStyle(Dataset):
    """The seed's main.py data path: PIL images through RandomCrop, RandomHorizontalFlip, ToTensor, Normalize."""

    def __init__(self, images: TensorImages, mean: list[float], std: list[float]) -> None:
        self.images = images
        self.transform = transforms.Compose([transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(),
                                             transforms.ToTensor(), transforms.Normalize(mean, std)])

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        image, label = self.images[i]
        return self.transform(image), label


def loader_table(data_dir: str) -> list[tuple[str, float]]:
    tensors, mean, std = load(data_dir)
    rows = [(f"cnnlab TensorLoader (uint8 tensors, batched crop+flip), {layout} batches",
             images_per_second(TensorLoader(tensors.train_x, tensors.train_y, BATCH, mean, std, train=True,
                                            channels_last=layout == "channels_last"), 50_000))
            for layout in ("NCHW", "channels_last")]
    for workers in (0, 2):
        loader = DataLoader(SeedStyle(TensorImages(tensors.train_x, tensors.train_y), mean, std), batch_size=BATCH,
                            shuffle=True, num_workers=workers)
        rows.append((f"torchvision DataLoader, CIFAR-style PIL dataset, {workers} workers",
                     images_per_second(loader, 5000)))
    tv = TorchvisionLoader(TensorImages(tensors.train_x, tensors.train_y), BATCH, mean, std, train=True,
                           image_size=32, num_workers=2)
    rows.append(("cnnlab TorchvisionLoader (seeded per-sample augmentation), 2 workers", images_per_second(tv, 5000)))
    paths, labels, *_ = ImageFolder(data_dir).files("train")
    files = TorchvisionLoader(FileImages(paths, labels), BATCH, mean, std, train=True, image_size=32, num_workers=2)
    rows.append(("cnnlab TorchvisionLoader from PNG files, 2 workers", images_per_second(files, 5000)))
    return rows


class Records:
    """A Logger that keeps the trainer's records in memory."""

    def __init__(self) -> None:
        self.records: list[dict] = []

    def log(self, record: dict) -> None:
        self.records.append(record)

    def summary(self, values: dict) -> None:
        pass

    def close(self, status: str = "finished") -> None:
        pass


def build_model(name: str) -> torch.nn.Module:
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return instantiate(compose("config", overrides=MODELS[name]).model)


def flops_per_image(model: torch.nn.Module) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    model.train()
    with FlopCounterMode(display=False) as counter:
        model(torch.randn(2, 3, 32, 32)).sum().backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops() / 2


def child(name: str, variant: str, steps: int, data_dir: str) -> dict:
    """One training measurement: `steps` timed steps after 2 warm-up steps."""
    torch.manual_seed(0)
    tensors, mean, std = load(data_dir)
    n = (steps + 2) * BATCH
    subset = ImageTensors(tensors.train_x[:n], tensors.train_y[:n], tensors.test_x[:BATCH], tensors.test_y[:BATCH],
                          tensors.classes)
    model = build_model(name)
    flops = flops_per_image(model)
    if variant.startswith("cnnlab"):
        runtime = Runtime(**CNNLAB_VARIANTS[variant])
        trainer = Trainer(epochs=2, log_every=10**9)
        train = TensorLoader(subset.train_x, subset.train_y, BATCH, mean, std, train=True,
                             channels_last=runtime.channels_last)
        test = TensorLoader(subset.test_x, subset.test_y, BATCH, mean, std, train=False)
        data = Data(train, None, test, subset.classes, mean, std, (3, 32, 32), "a subset")
        state = trainer.prepare(model, partial(torch.optim.Adam, lr=1e-3), constant, train, runtime)
        records = Records()  # epoch 1 warms up; epoch 2's rate is the one reported
        trainer.fit(state, data, runtime, records, CheckpointSaver(RunDir(Path("/nonexistent")), save=False))
        ips = [r for r in records.records if r["kind"] == "epoch"][-1]["images_per_second"]
    else:
        dataset = SeedStyle(TensorImages(subset.train_x, subset.train_y), mean, std)
        loader = DataLoader(dataset, batch_size=BATCH, shuffle=True, num_workers=2)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        criterion = torch.nn.CrossEntropyLoss()
        model.train()
        running_loss, correct = 0.0, 0
        for i, (images, labels) in enumerate(loader):
            if i == 2:
                start = time.perf_counter()
            outputs = model(images)
            loss = criterion(outputs, labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            running_loss += loss.item()
            correct += outputs.max(1)[1].eq(labels).sum().item()
        ips = steps * BATCH / (time.perf_counter() - start)
    return {"images_per_second": ips, "flops_per_image": flops,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def matmul_peak() -> float:
    """The best fp32 matmul rate over a few sizes and repeats (a noisy machine only ever lowers it)."""
    best = 0.0
    for size in (1024, 2048, 3072):
        a, b = torch.randn(size, size), torch.randn(size, size)
        a @ b
        for _ in range(3):
            start, n = time.perf_counter(), max(2, 4096**3 // size**3)
            for _ in range(n):
                a @ b
            best = max(best, 2 * size**3 * n / (time.perf_counter() - start))
    return best


def start_up(data_dir: str) -> tuple[float, float]:
    """Seconds from launching `python -m cnnlab.run` (data cache warm, W&B off) until training starts (its
    last log line before the loop) and until its first step is logged (the first step's compute included)."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "run"
        start = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "cnnlab.run", "dataset=cifar10_folder",
                                 f"dataset.root={data_dir}", *MODELS["vgg_compact"], "logger=none",
                                 "trainer.log_every=1",
                                 f"hydra.run.dir={run_dir}"], cwd=ROOT, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        for line in proc.stdout:
            if "parameters on" in line:
                training = time.perf_counter() - start
                break
        else:
            raise RuntimeError("cnnlab.run exited before training")
        metrics = run_dir / "metrics.jsonl"
        while not (metrics.exists() and metrics.stat().st_size > 0):
            time.sleep(0.01)
        first_step = time.perf_counter() - start
        proc.kill()
        proc.wait()
    return training, first_step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "cifar10"))
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--child", nargs=2, metavar=("MODEL", "VARIANT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(*args.child, args.steps, args.data)))
        return

    print(f"# cnnlab throughput, {time.strftime('%Y-%m-%d')}, {machine()}, batch {BATCH}\n")
    load(args.data)  # build the uint8 cache once, outside every timing

    print("## 1. Loader alone (train split, augmentation on)\n")
    print("| loader | images/s | vs PIL, 0 workers |\n|---|---:|---:|")
    rows = loader_table(args.data)
    base = rows[2][1]  # the seed's loader
    for label, ips in rows:
        print(f"| {label} | {ips:,.0f} | {ips / base:.1f}x |")

    peak = matmul_peak()
    results = {}
    variants = ["seed-style", *CNNLAB_VARIANTS]
    for name in args.models.split(","):
        for variant in variants:
            out = subprocess.run([sys.executable, __file__, "--child", name, variant, "--steps", str(args.steps),
                                  "--data", args.data], capture_output=True, text=True, check=True)
            results[name, variant] = json.loads(out.stdout.strip().splitlines()[-1])

    print("\n## 2. Training images/s (same model, batch and data; 2 warm-up steps excluded)\n")
    print("cnnlab's trainer with its defaults for this machine (tensor loader, freed memory held for reuse, "
          "channels_last, bf16 autocast where native), and with bf16, channels_last and the held memory switched off "
          "one by one (`glibc malloc`: freed memory unmapped, glibc's default).\n")
    print("| model | seed-style loop | cnnlab fp32 NCHW, glibc malloc | cnnlab fp32 NCHW | cnnlab fp32 channels_last "
          "| cnnlab default | speed-up |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name in args.models.split(","):
        ips = [results[name, v]["images_per_second"] for v in variants]
        print(f"| {name} | " + " | ".join(f"{x:,.1f}" for x in ips) + f" | {ips[-1] / ips[0]:.2f}x |")
    training, first_step = start_up(args.data)
    print(f"\nStart-up of `python -m cnnlab.run` (vgg_compact, data cache warm, W&B off): training starts "
          f"{training:.1f} s after launch; the first step is logged at {first_step:.1f} s.")

    print(f"\n## 3. Model FLOP utilisation (measured fp32 matmul peak: {peak / 1e9:,.0f} GFLOP/s)\n")
    print("bf16 runs can exceed the fp32 peak: the CPU's bf16 instructions do more per cycle.\n")
    print("| model | training GFLOP/image | seed-style | cnnlab fp32 | cnnlab default |\n|---|---:|---:|---:|---:|")
    for name in args.models.split(","):
        f = results[name, "cnnlab"]["flops_per_image"]
        mfu = [f * results[name, v]["images_per_second"] / peak for v in ("seed-style", "cnnlab fp32", "cnnlab")]
        print(f"| {name} | {f / 1e9:.3f} | " + " | ".join(f"{m:.0%}" for m in mfu) + " |")

    print("\n## 4. Peak resident memory of each training process (MB)\n")
    print("Both load the full 60,000-image uint8 tensor cache (184 MB) before taking their training subset.\n")
    print("| model | seed-style | cnnlab default |\n|---|---:|---:|")
    for name in args.models.split(","):
        print(f"| {name} | {results[name, 'seed-style']['peak_rss_mb']:,.0f} | "
              f"{results[name, 'cnnlab']['peak_rss_mb']:,.0f} |")


if __name__ == "__main__":
    main()
