"""The fault table: every bad input and fault cnnlab handles, run as a user runs it. Each row gives the command,
the exit code, the pattern of the one line that ends stderr, and what must stay as it was. No row may print a
traceback (HYDRA_FULL_ERROR=1 brings it back: the last row)."""

from __future__ import annotations

import contextlib
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from conftest import QUICK, ROOT, SYNTH, TINY, make_cfg, snapshot, write_image_tree

from cnnlab.run import train
from cnnlab.track.metrics import read_metrics

pytestmark = pytest.mark.slow

LONG = [*QUICK, "trainer.epochs=50", "trainer.log_every=1"]


@dataclass
class Fault:
    name: str
    args: list[str]
    code: int
    message: str  # a regex the last line of stderr must match
    module: str = "cnnlab.run"
    prepare: Callable[[Path], None] | None = None  # builds, in the launch dir, what the row needs
    signal: int | None = None  # sent once training runs
    file_limit: int | None = None  # RLIMIT_FSIZE in bytes: writes beyond it fail as on a full disk
    unchanged: bool = True  # the launch dir's files are byte-for-byte as before
    kept: str | None = None  # where the run may progress: a file that must stay byte-for-byte as it was


def finished_run(launch: Path) -> None:
    """A one-epoch run at run/, with Adam: what the resume rows try to continue."""
    train(make_cfg(*QUICK, "trainer.epochs=1"), launch / "run")


def hostile_checkpoint(launch: Path) -> None:
    finished_run(launch)
    ckpt = torch.load(launch / "run" / "last.pt", weights_only=True)
    ckpt["config"]["model"] = {"_target_": "builtins.open", "file": str(launch / "pwned"), "mode": "w"}
    torch.save(ckpt, launch / "hostile.pt")


def text_file(launch: Path) -> None:
    (launch / "notes.pt").write_text("epoch 1 loss 2.3\n")


FAULTS = [
    Fault("a config its group lacks", ["model=vgg61"], 1,
          r"^error: model=vgg61 is not a config of model; allowed: airbench94, resnet18, .*, vgg16, .*vgg_compact$"),
    Fault("a config its group lacks, in a sweep", ["-m", "model=vgg16,vgg61"], 1,
          r"^error: model=vgg61 is not a config of model; allowed: airbench94, "),
    Fault("a config its group lacks, in a list", ["optim=[sgd,a]"], 1,
          r"^error: optim=a is not a config of optim; allowed: adam, adamw, muon, sgd, sgd_decoupled$"),
    Fault("a momentum Muon cannot use", ["optim=muon", "optim.momentum=1"], 1,
          r"^error: optim\.momentum is 1; allowed: a number >= 0 and < 1$"),
    Fault("a key the config lacks", ["optim.lrr=1e-3"], 1,
          r"^error: optim\.lrr is not a key of optim; allowed keys: _target_, _partial_, lr, .* "
          r"\(a new key: \+optim\.lrr=\.\.\.\)$"),
    Fault("a top-level key the evaluate config lacks", ["chekpoint=last.pt"], 1,
          r"^error: chekpoint is not a key of the config; allowed keys: checkpoint, split, ", module="cnnlab.evaluate"),
    Fault("an override that does not parse", ["trainer.epochs=[3"], 1,
          r"^error: cannot parse the override 'trainer\.epochs=\[3': "),
    Fault("a list indexed by a name", ["model.cfg.first=8"], 1,
          r"^error: cannot apply the override 'model\.cfg\.first=8': invalid literal for int\(\)"),
    Fault("a wrong type for a Hydra setting", ["hydra.job.chdir=maybe"], 1,
          r"^error: hydra\.job\.chdir: Value 'maybe' is not a valid bool \(type str\)$"),
    Fault("a run dir that does not resolve", ["hydra.run.dir=${nosuch}"], 1,
          r"^error: cannot resolve hydra\.run\.dir: Interpolation key 'nosuch' not found$"),
    Fault("a Hydra setting resolved after the run dir exists", ["hydra.output_subdir=${nosuch}"], 1,
          r"^error: cannot resolve hydra\.output_subdir: Interpolation key 'nosuch' not found$"),
    Fault("a job subdir that does not resolve, in a sweep", ["-m", *QUICK, "hydra.sweep.subdir=${nosuch}", "seed=0,1"],
          1, r"^error: cannot resolve hydra\.sweep\.subdir: Interpolation key 'nosuch' not found$"),
    Fault("imagefolder without a root", [*TINY, "logger=none", "dataset=imagefolder"], 1,
          r"^error: dataset\.root is not set; give it, for example dataset\.root=<"),
    Fault("evaluate without a checkpoint", [], 1, r"^error: checkpoint is not set; give it", module="cnnlab.evaluate"),
    Fault("a text file as a checkpoint", ["checkpoint=notes.pt"], 1,
          r"^error: checkpoint notes\.pt is not a readable checkpoint", module="cnnlab.evaluate", prepare=text_file),
    Fault("a checkpoint naming code", ["checkpoint=hostile.pt"], 1,
          r"^error: checkpoint hostile\.pt: its recorded config is not one cnnlab writes: model\._target_ is "
          r"'builtins\.open'; allowed: cnnlab\.models\.VGG, cnnlab\.models\.ResNet$", module="cnnlab.evaluate",
          prepare=hostile_checkpoint),
    Fault("a model that pools below 1x1", [*QUICK, "model.cfg=[16,M,M,M,M,M,M]"], 1,
          r"^error: model: a 3x32x32 image does not fit through it \("),
    Fault("a config that trains 0 batches", [*QUICK, "data.batch_size=100000", "augment.drop_last=true"], 1,
          r"^error: the training split gives 0 batches per epoch: lower data\.batch_size"),
    Fault("a zero-depth stage", [*SYNTH, "logger=none", "model=resnet18", "model.layers=[0,0,0,0]"], 1,
          r"^error: model\.layers\[0\] is 0; allowed: an integer >= 1$"),
    Fault("a negative grad clip", [*QUICK, "trainer.grad_clip=-1"], 1,
          r"^error: trainer\.grad_clip is -1; allowed: a number > 0 or null$"),
    Fault("compile=maybe", [*QUICK, "runtime.compile=maybe"], 1,
          r"^error: runtime\.compile is 'maybe'; allowed: true or false$"),
    Fault("label smoothing above 1", [*QUICK, "trainer.label_smoothing=1.5"], 1,
          r"^error: trainer\.label_smoothing is 1\.5; allowed: a number >= 0 and < 1$"),
    Fault("a negative crop padding", [*QUICK, "augment.crop_padding=-2"], 1,
          r"^error: augment\.crop_padding is -2; allowed: an integer >= 0$"),
    Fault("a device this machine lacks", [*QUICK, "runtime.device=cuda:7"], 1,
          r"^error: runtime\.device is 'cuda:7' but (no CUDA device is available here|this machine has)"),
    Fault("a class count the data disagrees with", [*TINY, "logger=none", "dataset=imagefolder", "dataset.root=tree",
                                                    "dataset.num_classes=7"], 1,
          r"^error: dataset\.num_classes is 7 but the data has 3 classes$",
          prepare=lambda launch: write_image_tree(launch / "tree", {"train": 10, "test": 5}) and None),
    Fault("a run dir that holds last.pt", [*QUICK, "hydra.run.dir=run"], 1,
          r"^error: run dir .*/run already holds last\.pt: continue it with trainer\.resume=auto",
          prepare=finished_run),
    Fault("resume with another model", [*QUICK, "hydra.run.dir=run", "trainer.resume=auto", "trainer.epochs=2",
                                         "model.cfg=[8,M,16,M]"], 1,
          r"^error: checkpoint .*last\.pt was trained with model\.cfg=\[16, 'M', 32, 'M', 64, 'M'\], this run has "
          r"model\.cfg=\[8, 'M', 16, 'M'\]", prepare=finished_run),
    Fault("resume Adam's checkpoint with SGD", [*QUICK, "hydra.run.dir=run", "trainer.resume=auto",
                                                "trainer.epochs=2", "optim=sgd"], 1,
          r"^error: checkpoint .*last\.pt was trained with optimizer torch\.optim\.Adam, this run configures "
          r"torch\.optim\.SGD: resume with the checkpoint's optim choice$", prepare=finished_run),
    Fault("resume a hostile checkpoint", [*QUICK, "trainer.resume=hostile.pt", "trainer.epochs=2"], 1,
          r"^error: checkpoint hostile\.pt: its recorded config is not one cnnlab writes", prepare=hostile_checkpoint),
    Fault("a read-only outputs dir", [*QUICK], 1,
          r"^error: cannot write the run dir outputs/runs/.*: .*outputs is not writable; choose another with "
          r"hydra\.run\.dir=\.\.\.$", prepare=lambda launch: (launch / "outputs").mkdir()),
    Fault("a file-size limit (a full disk) while writing last.pt", [*QUICK, "hydra.run.dir=run", "trainer.resume=auto",
                                                                   "trainer.epochs=2"], 1,
          r"^error: cannot write .*run/last\.pt: the file is larger than this process may write \(ulimit -f\); "
          r"nothing was changed there$", prepare=finished_run, file_limit=200_000, unchanged=False, kept="run/last.pt"),
    Fault("a diverging job in a sweep", ["-m", *QUICK, "trainer.epochs=2", "optim=sgd", "optim.lr=0.01,1e12"], 1,
          r"^error: 1 of 2 jobs failed; the first, .*optim\.lr=1000000000000\.0: training diverged at epoch 1, "
          r"step \d+",
          unchanged=False),
    Fault("Ctrl-C", [*LONG, "hydra.run.dir=run"], 130,
          r"^interrupted by SIGINT; .*run/last\.pt holds the run: continue it with trainer\.resume=auto "
          r"hydra\.run\.dir=.*run$", signal=signal.SIGINT, unchanged=False),
    Fault("SIGTERM", [*LONG, "hydra.run.dir=run"], 143,
          r"^interrupted by SIGTERM; .*run/last\.pt holds the run", signal=signal.SIGTERM, unchanged=False),
]


@contextlib.contextmanager
def read_only(path: Path) -> Iterator[None]:
    """`path` unwritable, also for root (which ignores permission bits): chattr +i where we are root."""
    if os.geteuid() == 0:
        if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(path)]).returncode:
            pytest.skip("cannot make a dir read-only for root here (no chattr +i)")
        try:
            yield
        finally:
            subprocess.run(["chattr", "-i", str(path)])
    else:
        path.chmod(0o555)
        try:
            yield
        finally:
            path.chmod(0o755)


def listing(path: Path) -> list[str]:
    """Every file and dir under `path`: a refused run leaves no new (even empty) dir behind."""
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


def launch(fault: Fault, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (fault.file_limit, fault.file_limit))

    cmd = [sys.executable, "-m", fault.module, *fault.args]
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=limit if fault.file_limit else None)
    if fault.signal is not None:
        metrics = cwd / "run" / "metrics.jsonl"
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline and not (
                metrics.exists() and any(r["kind"] == "step" and r["step"] >= 3 for r in read_metrics(metrics))):
            time.sleep(0.01)
        proc.send_signal(fault.signal)
    out, err = proc.communicate(timeout=300)
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


@pytest.mark.parametrize("fault", FAULTS, ids=[f.name for f in FAULTS])
def test_fault_table(fault: Fault, tmp_path: Path) -> None:
    if fault.prepare:
        fault.prepare(tmp_path)
    before, paths_before = snapshot(tmp_path), listing(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with read_only(tmp_path / "outputs") if fault.name == "a read-only outputs dir" else contextlib.nullcontext():
        res = launch(fault, tmp_path, env)
    lines = res.stderr.strip().splitlines()
    assert res.returncode == fault.code, res.stderr[-3000:]
    assert lines and re.search(fault.message, lines[-1]), res.stderr[-3000:]
    assert "Traceback" not in res.stderr
    if fault.unchanged:
        assert snapshot(tmp_path) == before and listing(tmp_path) == paths_before
    if fault.kept:
        assert snapshot(tmp_path)[fault.kept] == before[fault.kept]
    assert not (tmp_path / "pwned").exists()


def test_interrupted_runs_keep_the_last_finished_step_and_say_so(tmp_path: Path) -> None:
    fault = next(f for f in FAULTS if f.name == "Ctrl-C")
    res = launch(fault, tmp_path, {**os.environ, "PYTHONPATH": str(ROOT)})
    assert res.returncode == 130
    ckpt = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    steps = [r["step"] for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if r["kind"] == "step"]
    assert ckpt["progress"]["step"] == steps[-1] >= 3  # the last finished step, logged and saved
    assert '"status": "interrupted"' in (tmp_path / "run" / "summary.json").read_text()


def test_a_real_full_disk_while_writing_last_pt(tmp_path: Path) -> None:
    mount = tmp_path / "small"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("cannot mount a small tmpfs here (not root?)")
    try:
        finished_run(mount)
        (mount / "filler").write_bytes(b"\0" * (1024 * 1024 - sum(p.stat().st_size for p in mount.rglob("*")
                                                                      if p.is_file()) - 64 * 1024))
        before = snapshot(mount / "run")
        res = subprocess.run([sys.executable, "-m", "cnnlab.run", *QUICK, f"hydra.run.dir={mount / 'run'}",
                              "trainer.resume=auto", "trainer.epochs=2"], cwd=tmp_path, capture_output=True,
                             text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=300)
        assert res.returncode == 1 and "Traceback" not in res.stderr
        assert re.search(r"^error: cannot write .*/small/run/(best|last)\.pt: the disk is full: free space there, or "
                         r"choose another dir; nothing was changed there$", res.stderr.strip().splitlines()[-1])
        after = snapshot(mount / "run")
        assert after["last.pt"] == before["last.pt"] and after["best.pt"] == before["best.pt"]
    finally:
        subprocess.run(["umount", str(mount)])


@pytest.mark.parametrize("override,message", [("trainer.grad_clip=-1", "trainer.grad_clip is -1"),
                                               ("optim.lrr=1e-3", "Key 'lrr' is not in struct")])
def test_full_error_brings_the_traceback_back(tmp_path: Path, override: str, message: str) -> None:
    res = subprocess.run([sys.executable, "-m", "cnnlab.run", *QUICK, override], cwd=tmp_path,
                         capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT),
                                                              "HYDRA_FULL_ERROR": "1"}, timeout=300)
    assert res.returncode == 1 and "Traceback" in res.stderr and message in res.stderr


def test_an_unwritable_cache_dir_still_trains(tmp_path: Path) -> None:
    tree = write_image_tree(tmp_path / "tree", {"train": 10, "test": 5})
    cache = tmp_path / "cache"
    cache.mkdir()
    with read_only(cache):
        res = subprocess.run([sys.executable, "-m", "cnnlab.run", *TINY, "logger=none", "dataset=imagefolder",
                              f"dataset.root={tree}", "trainer.epochs=1"], cwd=tmp_path, capture_output=True, text=True,
                             env={**os.environ, "PYTHONPATH": str(ROOT), "CNNLAB_CACHE_DIR": str(cache)}, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "image cache not written" in res.stdout + res.stderr and not list(cache.iterdir())
