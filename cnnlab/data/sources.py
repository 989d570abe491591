"""Where pixels come from: CIFAR-10/100 batch files, an image-folder tree, or a synthetic task.

Every source returns the whole dataset as uint8 tensors (N, 3, H, W) with int64 labels; it knows nothing
about augmentation or devices. Image folders are decoded once, in parallel, into a cache file.
"""

from __future__ import annotations

import codecs
import contextlib
import hashlib
import logging
import os
import pickle
import signal
import tarfile
import warnings
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

try:
    from numpy._core.multiarray import _reconstruct
except ImportError:  # numpy < 2
    from numpy.core.multiarray import _reconstruct
from torch import Tensor

from cnnlab import CnnlabError
from cnnlab.atomic import atomic_save, atomic_write
from cnnlab.types import ClassCount, ImageSize, NonEmptyPath, NonNegFloat, PosInt, SampleCount, Seed

log = logging.getLogger("cnnlab")

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm"}


@dataclass
class ImageTensors:
    train_x: Tensor
    train_y: Tensor
    test_x: Tensor
    test_y: Tensor
    classes: list[str]
    stats: tuple[list[float], list[float]] | None = None
    description: str = ""  # which data this is, in words, for the run's log

    def channel_stats(self) -> tuple[list[float], list[float]]:
        """Per-channel mean and std of the training images on the 0..1 scale (computed once)."""
        if self.stats is None:
            self.stats = self._compute_stats()
        return self.stats

    def _compute_stats(self) -> tuple[list[float], list[float]]:
        total = torch.zeros(3, dtype=torch.float64)
        total_sq = torch.zeros(3, dtype=torch.float64)
        for chunk in self.train_x.split(4096):
            x = chunk.to(torch.float64) / 255
            total += x.sum((0, 2, 3))
            total_sq += (x * x).sum((0, 2, 3))
        n = self.train_x.shape[0] * self.train_x.shape[2] * self.train_x.shape[3]
        mean = total / n
        std = (total_sq / n - mean**2).sqrt()
        return mean.tolist(), std.tolist()


def _resolve(root: str) -> Path:
    # Relative paths resolve against the launch dir: cnnlab runs Hydra with job.chdir=false.
    return Path(root).expanduser().resolve()


def cpu_count() -> int:
    """The CPUs this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def available_memory() -> int:
    """Bytes of memory the machine can give without swapping (MemAvailable), or its total where that is unknown."""
    try:
        with open("/proc/meminfo") as f:
            fields = dict(line.split(":", 1) for line in f)
        return int(fields["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def check_memory(what: str, needed: int) -> None:
    """Refuse in one line, before allocating, data that would not fit in this machine's memory."""
    free = available_memory()
    if needed > free:
        raise CnnlabError(f"{what} need about {needed / 2**30:.1f} GiB of memory, more than the "
                          f"{free / 2**30:.1f} GiB this machine has free: lower them")


# ---------------------------------------------------------------------------------------------- CIFAR
CIFAR = {
    "cifar10": dict(title="CIFAR-10", folder="cifar-10-batches-py", archive="cifar-10-python.tar.gz",
                    train=[f"data_batch_{i}" for i in range(1, 6)], test=["test_batch"], meta="batches.meta",
                    label_key="labels", names_key="label_names"),
    "cifar100": dict(title="CIFAR-100", folder="cifar-100-python", archive="cifar-100-python.tar.gz",
                     train=["train"], test=["test"], meta="meta", label_key="fine_labels",
                     names_key="fine_label_names"),
}
DOWNLOAD_TIMEOUT_S = 30
PNG_ENV = "CNNLAB_CIFAR10_PNG"  # a CIFAR-10 PNG tree to fall back on (see cnnlab.config's resolvers)


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """The CIFAR batch files are pickles: allow plain containers and numpy arrays, nothing that runs code."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a CIFAR batch file")
        return {"ndarray": np.ndarray, "dtype": np.dtype, "_reconstruct": _reconstruct, "encode": codecs.encode}[name]


def _read_batch(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            return _NumpyOnlyUnpickler(f, encoding="latin1").load()
    except (OSError, pickle.UnpicklingError, EOFError, ValueError) as e:
        raise CnnlabError(f"cannot read CIFAR batch file {path}: {e}") from e


class Cifar:
    """CIFAR-10 or CIFAR-100 from the python batch files under `root`; if they are missing, extracted from the
    archive there, else downloaded from `url` (checked against `md5`). Where neither works and `png_fallback`
    names a PNG image-folder tree of the same dataset, that tree is used instead, and its description says so.
    """

    def __init__(self, root: NonEmptyPath, variant: Literal["cifar10", "cifar100"] = "cifar10",
                 download: bool = True, url: str = "", md5: str | None = None, png_fallback: str | None = None) -> None:
        self.root = _resolve(root)
        self.variant = variant
        self.download = download
        self.url, self.md5 = url, md5
        self.png_fallback = png_fallback

    def load(self, cache_dir: str | None = None) -> ImageTensors:
        spec = CIFAR[self.variant]
        folder = self.root / spec["folder"]
        if not folder.is_dir():
            archive = self.root / spec["archive"]
            if not archive.is_file():
                why = self._download(archive)
                if why and self.png_fallback and (Path(self.png_fallback).expanduser() / "train").is_dir():
                    return self._fallback(spec, cache_dir, f"the original is not in {self.root} and {why}")
                if why:
                    raise CnnlabError(self._missing(spec, why))
            elif self.md5 and (found := md5_of(archive)) != self.md5:
                raise CnnlabError(f"archive {archive} has md5 {found}, expected {self.md5} "
                                  "(dataset.source.md5): remove it to download it again")
            self._extract(archive)

        def read(names: list[str]) -> tuple[Tensor, Tensor]:
            batches = [_read_batch(folder / name) for name in names]
            x = np.concatenate([b["data"] for b in batches]).reshape(-1, 3, 32, 32)
            y = np.concatenate([np.asarray(b[spec["label_key"]]) for b in batches])
            return torch.from_numpy(np.ascontiguousarray(x, dtype=np.uint8)), torch.from_numpy(y.astype(np.int64))

        train_x, train_y = read(spec["train"])
        test_x, test_y = read(spec["test"])
        classes = list(_read_batch(folder / spec["meta"])[spec["names_key"]])
        return ImageTensors(train_x, train_y, test_x, test_y, classes, description=f"{spec['title']} from {folder}")

    def _fallback(self, spec: dict, cache_dir: str | None, why: str) -> ImageTensors:
        tensors = ImageFolder(self.png_fallback).load(cache_dir)
        tensors.description = (f"{spec['title']} as the PNG copy in {_resolve(self.png_fallback)} ({why}); its pixels "
                               "went through JPEG, so accuracies run ~2-3 points below the original dataset's")
        return tensors

    def _download(self, archive: Path) -> str | None:
        """Download the archive; None when that worked, else why not."""
        if not self.download:
            return "dataset.source.download is false"
        created = [d for d in (archive.parent, *archive.parent.parents) if not d.exists()]  # deepest first
        try:
            _download(self.url, archive, self.md5)
        except CnnlabError as e:
            for d in created:  # a failed download leaves no empty data dirs behind
                with contextlib.suppress(OSError):
                    d.rmdir()
            return str(e)
        return None

    def _extract(self, archive: Path) -> None:
        """Unpack into the root, once every member has passed: none may have an absolute path or lead outside the
        root (through "..", or as a link), nor be a device file (tarfile's "data" filter, made strict)."""
        try:
            with tarfile.open(archive, "r:gz") as tar:
                members = [_inside(member, str(self.root)) for member in tar.getmembers()]
                tar.extractall(self.root, members=members, filter="data")
        except (OSError, tarfile.TarError) as e:
            raise CnnlabError(f"cannot extract {archive}: {e}") from None

    def _missing(self, spec: dict, why: str) -> str:
        png = f"set {PNG_ENV} to a PNG tree of it, " if self.variant == "cifar10" else ""
        return (f"{spec['title']} is not in {self.root} and {why}: put {spec['archive']} (or its extracted "
                f"{spec['folder']}/) there (or set data_dir=...), {png}or use dataset=imagefolder dataset.root=...")


def _inside(member: tarfile.TarInfo, root: str) -> tarfile.TarInfo:
    if member.name.startswith(("/", "\\")):  # the "data" filter would strip the slash; refuse instead
        raise tarfile.AbsolutePathError(member)
    return tarfile.data_filter(member, root)


def md5_of(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _download(url: str, dest: Path, md5: str | None) -> None:
    """Fetch `url` into `dest` atomically; a file whose md5 differs from `md5` is refused and not kept."""
    import urllib.request

    digest = hashlib.md5(usedforsecurity=False)

    def write(f: Any) -> None:
        try:
            with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response:
                while chunk := response.read(1 << 20):
                    digest.update(chunk)
                    f.write(chunk)
        except (OSError, ValueError) as e:  # no network, refused, timed out, an HTTP error, a malformed URL
            raise CnnlabError(f"the download from {url} failed: {getattr(e, 'reason', None) or e}") from e
        if md5 and digest.hexdigest() != md5:
            raise CnnlabError(f"the file downloaded from {url} has md5 {digest.hexdigest()}, expected {md5}")

    log.info("downloading %s to %s", url, dest)
    atomic_write(dest, write)


# -------------------------------------------------------------------------------------- image folders
def _decode(path: str, size: int) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                im = im.convert("RGB")
                if im.size != (size, size):
                    im = im.resize((size, size), Image.BILINEAR)
                return np.asarray(im, dtype=np.uint8).transpose(2, 0, 1)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise CnnlabError(f"image {path} has more than {Image.MAX_IMAGE_PIXELS:,} pixels (PIL's limit against "
                          "decompression bombs): shrink it or remove it") from None
    except (OSError, UnidentifiedImageError, ValueError) as e:
        raise CnnlabError(f"cannot decode image {path}: {e}") from None


@contextlib.contextmanager
def signals_held() -> Iterator[None]:
    """Hold Ctrl-C and SIGTERM until the block ends (where they are then delivered)."""
    stops = {signal.SIGINT, signal.SIGTERM}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, stops)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _leave_signals_to_the_parent() -> None:
    """A decoding worker ignores Ctrl-C and SIGTERM: the parent stops the pool, which ends after its current
    chunk, instead of each worker dying with a traceback of its own."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _decode_many(paths: list[str], size: int) -> np.ndarray:
    return np.stack([_decode(p, size) for p in paths])


class ImageFolder:
    """A `train/<class>/*` + `test/<class>/*` tree of images (read-only is fine), resized to `image_size`."""

    def __init__(self, root: NonEmptyPath, image_size: ImageSize = 32, workers: PosInt | None = None) -> None:
        self.root = _resolve(root)
        self.image_size = image_size
        if workers is not None and workers > cpu_count():
            raise CnnlabError(f"dataset.source.workers is {workers}; allowed: 1 to {cpu_count()} (this machine's "
                              "CPUs), or null for all of them")
        self.workers = workers or cpu_count()

    def files(self, split: str) -> tuple[list[str], list[int], list[str], str]:
        """Image paths, labels and class names of `split`, and a fingerprint of the files' names, sizes, mtimes."""
        split_dir = self.root / split
        if not split_dir.is_dir():
            raise CnnlabError(f"dataset.root {self.root} has no '{split}/' dir (expected train/<class>/*, "
                              f"test/<class>/*)")
        classes = sorted(e.name for e in os.scandir(split_dir) if e.is_dir())
        paths, labels, digest = [], [], hashlib.sha256()
        for label, name in enumerate(classes):
            entries = sorted((e for e in os.scandir(split_dir / name)
                              if os.path.splitext(e.name)[1].lower() in IMAGE_SUFFIXES), key=lambda e: e.name)
            for e in entries:
                st = e.stat()
                digest.update(f"{name}/{e.name}|{st.st_size}|{st.st_mtime_ns}\n".encode())
            if not entries and split == "train":
                raise CnnlabError(f"dataset.root: the class dir {split_dir / name} holds no images (allowed "
                                  f"suffixes: {' '.join(sorted(IMAGE_SUFFIXES))}): add its images or remove it")
            paths += [e.path for e in entries]
            labels += [label] * len(entries)
        if not paths:
            raise CnnlabError(f"dataset.root {split_dir} holds no images in class subdirs "
                              f"(allowed suffixes: {' '.join(sorted(IMAGE_SUFFIXES))})")
        return paths, labels, classes, digest.hexdigest()

    def load(self, cache_dir: str | None = None) -> ImageTensors:
        listing = {split: self.files(split) for split in ("train", "test")}
        if listing["train"][2] != listing["test"][2]:
            raise CnnlabError(f"dataset.root {self.root}: train/ and test/ have different class dirs")
        cache = self._cache_path(cache_dir, listing) if cache_dir else None
        if cache is not None and cache.is_file():
            cached = self._read_cache(cache, listing)
            if cached is not None:
                return cached
        images = sum(len(paths) for paths, *_ in listing.values())
        check_memory(f"the {images:,} images of {self.root} at dataset.source.image_size {self.image_size}",
                     2 * images * 3 * self.image_size**2)
        log.info("decoding the %s images of %s (once: the next runs read %s)", f"{images:,}", self.root,
                 cache or "them again")
        tensors = {}
        pool = ProcessPoolExecutor(self.workers, initializer=_leave_signals_to_the_parent)
        try:
            for split, (paths, labels, *_) in listing.items():
                chunks = [paths[i:i + 500] for i in range(0, len(paths), 500)]
                with signals_held():  # a signal in the middle of a fork would be lost in its at-fork hooks
                    decoded = pool.map(_decode_many, chunks, [self.image_size] * len(chunks))
                arrays = list(decoded)
                tensors[f"{split}_x"] = torch.from_numpy(np.concatenate(arrays))
                tensors[f"{split}_y"] = torch.tensor(labels, dtype=torch.int64)
        except BaseException:  # an error or a signal: drop what is queued; the workers end after their chunk
            pool.shutdown(cancel_futures=True)
            raise
        pool.shutdown()
        data = ImageTensors(**tensors, classes=listing["train"][2], description=f"images from {self.root}")
        if cache is not None:
            data.channel_stats()
            self._write_cache(data, cache)
        return data

    def _read_cache(self, cache: Path, listing: dict) -> ImageTensors | None:
        """The cached decode, or None (to decode again) where it is damaged or does not match the source: uint8
        images of the configured size, one per listed file, and the listed labels and classes."""
        try:
            entry = torch.load(cache, weights_only=True)
            data = ImageTensors(**entry, description=f"images from {self.root}")
        except Exception:  # noqa: BLE001 - a damaged cache is rebuilt, never fatal
            data = None
        s = self.image_size
        fits = data is not None and data.classes == listing["train"][2] and all(
            isinstance(x, Tensor) and x.dtype == torch.uint8 and x.shape == (len(labels), 3, s, s)
            and isinstance(y, Tensor) and y.dtype == torch.int64 and y.tolist() == labels
            for x, y, (_, labels, *_) in ((data.train_x, data.train_y, listing["train"]),
                                          (data.test_x, data.test_y, listing["test"])))
        if not fits:
            log.warning("image cache %s is damaged or does not match %s: decoding the images again", cache, self.root)
            return None
        return data

    def _write_cache(self, data: ImageTensors, cache: Path) -> None:
        """Cache the decode for the next run. Concurrent builders write the same content under the same name;
        an unwritable cache dir only costs the next run a decode."""
        try:
            atomic_save({k: v for k, v in vars(data).items() if k != "description"}, cache)
        except CnnlabError as e:
            log.warning("image cache not written (%s); the next run decodes the images again", e)
            return
        for stale in cache.parent.glob(f"{self._cache_prefix()}*.pt"):  # this tree's outdated decodes
            if stale != cache:
                stale.unlink(missing_ok=True)

    def _cache_path(self, cache_dir: str, listing: dict) -> Path:
        """<cache_dir>/imagefolder-<name>-<hash of root>-<hash of the files and size>.pt"""
        content = "|".join([str(self.image_size), *(fp for *_, fp in listing.values())])
        return _resolve(cache_dir) / f"{self._cache_prefix()}{hashlib.sha256(content.encode()).hexdigest()[:16]}.pt"

    def _cache_prefix(self) -> str:
        return f"imagefolder-{self.root.name}-{hashlib.sha256(str(self.root).encode()).hexdigest()[:8]}-"


# ------------------------------------------------------------------------------------------ synthetic
class Synthetic:
    """A learnable in-memory task: each class is a smooth random colour pattern plus pixel noise."""

    def __init__(self, num_classes: ClassCount = 10, train_size: SampleCount = 2000, test_size: SampleCount = 500,
                 image_size: ImageSize = 32, noise: NonNegFloat = 48.0, seed: Seed = 0) -> None:
        self.num_classes, self.train_size, self.test_size = num_classes, train_size, test_size
        self.image_size, self.noise, self.seed = image_size, noise, seed

    def load(self, cache_dir: str | None = None) -> ImageTensors:
        s = self.image_size
        images = self.train_size + self.test_size
        check_memory(f"dataset.source.train_size + test_size at image_size {s} ({images:,} images)",
                     12 * images * 3 * s * s)  # float32 intermediates, three at a time
        g = torch.Generator().manual_seed(self.seed)
        coarse = torch.rand(self.num_classes, 3, 4, 4, generator=g) * 2 - 1
        templates = torch.nn.functional.interpolate(coarse, size=(s, s), mode="bicubic", align_corners=False)

        def sample(n: int) -> tuple[Tensor, Tensor]:
            y = torch.randint(0, self.num_classes, (n,), generator=g)
            x = templates[y] * 70 + 128
            x = x + torch.randn(n, 3, s, s, generator=g) * self.noise
            return x.round().clamp(0, 255).to(torch.uint8), y

        train_x, train_y = sample(self.train_size)
        test_x, test_y = sample(self.test_size)
        return ImageTensors(train_x, train_y, test_x, test_y, [f"class{i}" for i in range(self.num_classes)],
                            description=f"a synthetic task of {self.num_classes} classes (seed {self.seed})")
