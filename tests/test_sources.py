"""Where pixels come from: CIFAR batch files (downloaded for real from a local HTTP server, or the PNG copy
as a fallback), image folders and their cache (also under concurrent builders), and the synthetic task."""

from __future__ import annotations

import functools
import hashlib
import http.server
import io
import os
import pickle
import socket
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT, TINY, run_cli, write_image_tree

from cnnlab import CnnlabError
from cnnlab.data.sources import Cifar, ImageFolder, Synthetic


def write_cifar_archive(root: Path, variant: str = "cifar10", per_batch: int = 20) -> np.ndarray:
    """A miniature CIFAR archive in the official layout (python pickles of uint8 rows, tar.gz)."""
    rng = np.random.default_rng(0)
    if variant == "cifar10":
        folder, train, test, meta = "cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], \
            ("batches.meta", {"label_names": [f"n{i}" for i in range(10)]})
        label_key, classes = "labels", 10
    else:
        folder, train, test, meta = "cifar-100-python", ["train"], ["test"], \
            ("meta", {"fine_label_names": [f"n{i}" for i in range(100)]})
        label_key, classes = "fine_labels", 100
    staging = root / "staging" / folder
    staging.mkdir(parents=True)
    first = None
    for name in train + test:
        data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        first = data if first is None else first
        labels = rng.integers(0, classes, per_batch).tolist()
        with open(staging / name, "wb") as f:
            pickle.dump({"data": data, label_key: labels}, f, protocol=2)
    with open(staging / meta[0], "wb") as f:
        pickle.dump(meta[1], f, protocol=2)
    archive = root / ("cifar-10-python.tar.gz" if variant == "cifar10" else "cifar-100-python.tar.gz")
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(staging, arcname=folder)
    return first


@pytest.mark.parametrize("variant,classes,n_train", [("cifar10", 10, 100), ("cifar100", 100, 20)])
def test_cifar_archive_in_the_data_dir_is_extracted_and_read(tmp_path: Path, variant: str, classes: int,
                                                             n_train: int) -> None:
    first_rows = write_cifar_archive(tmp_path, variant)
    data = Cifar(str(tmp_path), variant=variant, download=True).load()
    assert data.train_x.shape == (n_train, 3, 32, 32) and data.train_x.dtype == torch.uint8
    assert data.test_x.shape == (20, 3, 32, 32) and len(data.classes) == classes
    # rows are stored R plane, G plane, B plane: the same layout as (3, 32, 32)
    assert torch.equal(data.train_x[0].flatten(), torch.from_numpy(first_rows[0]))
    assert (tmp_path / ("cifar-10-batches-py" if variant == "cifar10" else "cifar-100-python")).is_dir()


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """A generated cifar-10-python.tar.gz served over HTTP from localhost: (its URL, its md5)."""
    write_cifar_archive(tmp_path / "site")
    archive = tmp_path / "site" / "cifar-10-python.tar.gz"
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(archive.parent))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/{archive.name}", hashlib.md5(archive.read_bytes()).hexdigest()
    finally:
        server.shutdown()


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/cifar-10-python.tar.gz"  # nothing listens there any more


def test_cifar_is_downloaded_checked_and_extracted(tmp_path: Path, served: tuple[str, str]) -> None:
    url, md5 = served
    data = Cifar(str(tmp_path / "data"), url=url, md5=md5).load()
    assert data.train_x.shape == (100, 3, 32, 32) and "CIFAR-10 from" in data.description
    assert (tmp_path / "data" / "cifar-10-python.tar.gz").is_file()


def test_a_download_with_the_wrong_checksum_is_refused_and_not_kept(tmp_path: Path, served: tuple[str, str]) -> None:
    url, _ = served
    with pytest.raises(CnnlabError, match=r"has md5 [0-9a-f]+, expected 0{32}") as err:
        Cifar(str(tmp_path / "data"), url=url, md5="0" * 32).load()
    assert "\n" not in str(err.value) and not list((tmp_path / "data").glob("*.tar.gz"))


def test_without_network_the_png_copy_is_used_and_said_so(tmp_path: Path) -> None:
    tree = write_image_tree(tmp_path / "png", {"train": 4, "test": 2})
    data = Cifar(str(tmp_path / "data"), url=closed_port_url(), png_fallback=str(tree)).load(str(tmp_path / "cache"))
    assert data.train_x.shape[0] == 12 and "the PNG copy in" in data.description
    assert "went through JPEG" in data.description and "the download from http://127.0.0.1" in data.description
    assert not (tmp_path / "data").exists()  # the failed download left no empty dir behind


def test_without_network_or_a_png_copy_the_error_says_how_to_provide_the_data(tmp_path: Path) -> None:
    with pytest.raises(CnnlabError) as err:
        Cifar(str(tmp_path / "nothing"), url=closed_port_url()).load()
    msg = str(err.value)
    assert "\n" not in msg and "cifar-10-python.tar.gz" in msg and "CNNLAB_CIFAR10_PNG" in msg
    assert "dataset=imagefolder" in msg and "the download from http://127.0.0.1" in msg
    assert not (tmp_path / "nothing").exists()


@pytest.mark.slow
def test_the_cifar10_config_downloads_and_trains_from_the_command_line(tmp_path: Path,
                                                                        served: tuple[str, str]) -> None:
    url, md5 = served
    res = run_cli(*TINY, "dataset=cifar10", f"dataset.source.url={url}", f"dataset.source.md5={md5}",
                  "dataset.val_size=20", f"data_dir={tmp_path / 'data'}", "trainer.epochs=1", "logger=none",
                  cwd=tmp_path, env={"CNNLAB_CIFAR10_PNG": str(tmp_path / "no_png")})
    assert res.returncode == 0, res.stderr[-2000:]
    assert "data: CIFAR-10 from" in res.stdout + res.stderr and "80 train, 20 validation" in res.stdout + res.stderr


def test_cifar_batch_file_with_a_code_payload_is_refused(tmp_path: Path) -> None:
    write_cifar_archive(tmp_path)
    Cifar(str(tmp_path)).load()
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    with open(tmp_path / "cifar-10-batches-py" / "test_batch", "wb") as f:
        pickle.dump({"data": Payload(), "labels": []}, f)
    with pytest.raises(CnnlabError, match="refusing to load"):
        Cifar(str(tmp_path)).load()
    assert not marker.exists()


def test_image_folder_is_decoded_once_then_served_from_the_cache(tmp_path: Path) -> None:
    root = write_image_tree(tmp_path / "tree", {"train": 30, "test": 10})
    cache = tmp_path / "cache"
    first = ImageFolder(str(root)).load(str(cache))
    assert first.train_x.shape == (90, 3, 32, 32) and first.classes == ["c0", "c1", "c2"]
    assert first.train_y.tolist() == [0] * 30 + [1] * 30 + [2] * 30
    cached = list(cache.glob("imagefolder-*.pt"))
    assert len(cached) == 1
    stamp = cached[0].stat().st_mtime_ns
    second = ImageFolder(str(root)).load(str(cache))
    assert torch.equal(first.train_x, second.train_x) and second.stats == first.stats
    assert cached[0].stat().st_mtime_ns == stamp  # a hit: nothing rewritten

    # changing a source file invalidates the cache
    time.sleep(0.01)
    img = root / "train" / "c0" / "00000.png"
    from PIL import Image

    Image.fromarray(np.full((32, 32, 3), 7, np.uint8)).save(img)
    third = ImageFolder(str(root)).load(str(cache))
    assert (third.train_x[0] == 7).all()
    (refreshed,) = cache.glob("imagefolder-*.pt")  # the outdated decode was replaced, not kept beside
    assert refreshed != cached[0]


def test_image_folder_statistics_are_per_channel(tmp_path: Path) -> None:
    root = write_image_tree(tmp_path / "tree", {"train": 20, "test": 5})
    data = ImageFolder(str(root)).load(str(tmp_path / "cache"))
    mean, std = data.channel_stats()
    x = data.train_x.double() / 255
    assert np.allclose(mean, x.mean((0, 2, 3)).tolist(), atol=1e-6)
    assert np.allclose(std, x.std((0, 2, 3), unbiased=False).tolist(), atol=1e-6)


def test_read_only_data_dir_works_with_a_separate_cache(tmp_path: Path) -> None:
    root = write_image_tree(tmp_path / "tree", {"train": 5, "test": 5})
    for path in sorted(root.rglob("*"), reverse=True):
        path.chmod(0o555 if path.is_dir() else 0o444)
    root.chmod(0o555)
    try:
        data = ImageFolder(str(root)).load(str(tmp_path / "cache"))
        assert data.train_x.shape[0] == 15
        assert not any(p.suffix == ".pt" for p in root.rglob("*"))
    finally:
        for path in [root, *root.rglob("*")]:
            path.chmod(0o755)


def test_image_folder_errors_name_the_file_or_dir(tmp_path: Path) -> None:
    with pytest.raises(CnnlabError, match="has no 'train/' dir"):
        ImageFolder(str(tmp_path / "missing")).load()
    (tmp_path / "empty" / "train" / "a").mkdir(parents=True)
    (tmp_path / "empty" / "test" / "a").mkdir(parents=True)
    with pytest.raises(CnnlabError, match="holds no images"):
        ImageFolder(str(tmp_path / "empty")).load()
    root = write_image_tree(tmp_path / "tree", {"train": 3, "test": 3})
    (root / "train" / "c1" / "00001.png").write_bytes(b"not a png")
    with pytest.raises(CnnlabError, match=r"cannot decode image .*c1/00001\.png"):
        ImageFolder(str(root)).load(str(tmp_path / "cache"))


def test_images_of_another_size_are_resized(tmp_path: Path) -> None:
    root = write_image_tree(tmp_path / "tree", {"train": 2, "test": 2}, size=40)
    assert ImageFolder(str(root), image_size=32).load().train_x.shape[-2:] == (32, 32)


def test_synthetic_is_deterministic_and_balanced() -> None:
    a, b = Synthetic(seed=1).load(), Synthetic(seed=1).load()
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.test_y, b.test_y)
    counts = torch.bincount(a.train_y, minlength=10)
    assert counts.min() > 120 and a.train_x.dtype == torch.uint8


BUILD_CACHE = """
import sys
from cnnlab.data.sources import ImageFolder
data = ImageFolder(sys.argv[1]).load(sys.argv[2])
print(data.train_x.shape[0])
"""


@pytest.mark.slow
def test_concurrent_builders_of_one_cache_all_succeed(tmp_path: Path) -> None:
    root = write_image_tree(tmp_path / "tree", {"train": 40, "test": 10})
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for trial in range(3):
        cache = tmp_path / f"cache{trial}"
        procs = [subprocess.Popen([sys.executable, "-c", BUILD_CACHE, str(root), str(cache)], env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(4)]
        results = [p.communicate(timeout=120) for p in procs]
        assert [p.returncode for p in procs] == [0] * 4, [err[-500:] for _, err in results]
        assert [out.strip() for out, _ in results] == ["120"] * 4
        assert len(list(cache.glob("imagefolder-*.pt"))) == 1 and not list(cache.glob(".*.tmp"))


def test_an_unwritable_cache_dir_costs_a_warning_not_the_run(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = write_image_tree(tmp_path / "tree", {"train": 5, "test": 5})
    blocker = tmp_path / "cache"
    blocker.write_text("a file where the cache dir should be")
    data = ImageFolder(str(root)).load(str(blocker))
    assert data.train_x.shape[0] == 15
    assert "image cache not written" in caplog.text and blocker.read_text().startswith("a file")


def test_empty_url_md5_and_fallback_strings_fail_in_one_line(tmp_path: Path) -> None:
    with pytest.raises(CnnlabError, match=r"^CIFAR-10 is not in .* and the download from  failed: "):
        Cifar(str(tmp_path / "data"), url="", md5="", png_fallback="").load()
    assert not (tmp_path / "data").exists()


def test_a_local_archive_with_the_wrong_md5_is_refused_and_kept(tmp_path: Path) -> None:
    write_cifar_archive(tmp_path)
    archive = tmp_path / "cifar-10-python.tar.gz"
    before = archive.read_bytes()
    with pytest.raises(CnnlabError, match=r"^archive .*cifar-10-python\.tar\.gz has md5 [0-9a-f]{32}, expected "
                                          r"0{32} \(dataset\.source\.md5\): remove it to download it again$"):
        Cifar(str(tmp_path), md5="0" * 32).load()
    assert archive.read_bytes() == before and not (tmp_path / "cifar-10-batches-py").exists()
    Cifar(str(tmp_path), md5=hashlib.md5(before).hexdigest()).load()  # the right md5 extracts it


@pytest.mark.parametrize("member", ["../escaped", "/tmp/cnnlab-absolute-member", "link"])
def test_an_archive_member_that_leaves_the_data_dir_is_refused(tmp_path: Path, member: str) -> None:
    """(Seen to fail: with tar.extractall(filter="fully_trusted"), ../escaped lands beside the data dir.)"""
    root = tmp_path / "data"
    root.mkdir()
    with tarfile.open(root / "cifar-10-python.tar.gz", "w:gz") as tar:
        info = tarfile.TarInfo(member)
        if member == "link":
            info.type, info.linkname = tarfile.SYMTYPE, str(tmp_path / "outside")
            tar.addfile(info)
        else:
            payload = b"pwned\n"
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    with pytest.raises(CnnlabError, match=r"^cannot extract .*cifar-10-python\.tar\.gz: "):
        Cifar(str(root), download=False).load()
    assert not (tmp_path / "escaped").exists() and not Path("/tmp/cnnlab-absolute-member").exists()
    assert not (root / "link").exists()


def test_a_poisoned_cache_entry_is_rebuilt(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = write_image_tree(tmp_path / "tree", {"train": 4, "test": 2})
    cache = tmp_path / "cache"
    good = ImageFolder(str(root)).load(str(cache))
    (entry,) = cache.glob("imagefolder-*.pt")
    poisoned = {k: v for k, v in vars(good).items() if k != "description"}
    poisoned["train_x"] = torch.rand(12, 3, 16, 16)  # float, 16x16: not what this source decodes
    torch.save(poisoned, entry)
    again = ImageFolder(str(root)).load(str(cache))
    assert again.train_x.dtype == torch.uint8 and torch.equal(again.train_x, good.train_x)
    assert "does not match" in caplog.text


def png_header_only(path: Path, width: int, height: int) -> None:
    """A PNG that claims `width` x `height` pixels in a few bytes (what a decompression bomb looks like to PIL)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 4))
                     + chunk(b"IEND", b""))


def test_an_image_past_pils_bomb_limit_is_one_line(tmp_path: Path) -> None:
    root = write_image_tree(tmp_path / "tree", {"train": 2, "test": 2})
    png_header_only(root / "train" / "c0" / "bomb.png", 16000, 16000)
    with pytest.raises(CnnlabError, match=r"^image .*bomb\.png has more than 89,478,485 pixels \(PIL's limit"):
        ImageFolder(str(root)).load()


def test_an_empty_class_dir_and_too_many_workers_are_one_line(tmp_path: Path) -> None:
    root = write_image_tree(tmp_path / "tree", {"train": 2, "test": 2})
    (root / "train" / "c9").mkdir()
    (root / "test" / "c9").mkdir()
    with pytest.raises(CnnlabError, match=r"^dataset\.root: the class dir .*train/c9 holds no images"):
        ImageFolder(str(root)).load()
    with pytest.raises(CnnlabError, match=r"^dataset\.source\.workers is 4096; allowed: 1 to \d+ \(this machine's"):
        ImageFolder(str(root), workers=4096)


def test_a_synthetic_task_too_big_for_memory_is_refused_before_allocating() -> None:
    with pytest.raises(CnnlabError, match=r"^dataset\.source\.train_size \+ test_size at image_size 1024 .* need "
                                          r"about [\d.]+ GiB of memory, more than the [\d.]+ GiB"):
        Synthetic(train_size=10_000_000, image_size=1024).load()
