"""DDP on CPU ranks (gloo), launched as users do: torchrun, and Hydra's submitit launcher with 2 tasks."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import ROOT, epochs_of, run_cli

from cnnlab.track.metrics import read_metrics
from cnnlab.train import checkpoint

# Without BatchNorm and dropout, DDP's averaged gradient is exactly the global batch's: the figures then match
# a single process up to the order of floating-point sums. (467 training images: 7 whole batches of 64, then 19
# images that the ranks share 10 and 9, each rank's gradient weighed by its share.)
NO_BN = ["dataset=synthetic", "dataset.source.train_size=512", "dataset.val_size=45", "dataset.source.test_size=256",
         "model=vgg11",
         "model.cfg=[16,M,32,M,64,M]", "model.classifier_batch_norm=false", "model.classifier_dropout=0",
         "trainer.epochs=3", "data.batch_size=64", "runtime.deterministic=true", "trainer.log_every=2",
         "runtime.precision=fp32"]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
pytestmark = pytest.mark.slow


def torchrun(*args: str, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                             "-m", "cnnlab.run", "runtime.strategy=ddp", *args], cwd=cwd, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def kill_tree(pid: int) -> None:
    """SIGKILL a process and all its descendants at once (torchrun starts each rank in a session of its own)."""
    pids, frontier = [pid], [pid]
    while frontier:
        out = subprocess.run(["ps", "-o", "pid=", "--ppid", ",".join(map(str, frontier))], capture_output=True,
                             text=True).stdout
        frontier = [int(p) for p in out.split()]
        pids += frontier
    for p in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(p, signal.SIGKILL)


def assert_same_figures(a: list[dict], b: list[dict]) -> None:
    assert [r["epoch"] for r in a] == [r["epoch"] for r in b] == [1, 2, 3]
    for ra, rb in zip(a, b, strict=True):
        for key in ("train_loss", "val_loss", "test_loss"):
            assert ra[key] == pytest.approx(rb[key], rel=1e-4), key
        for key in ("train_acc", "val_acc", "test_acc"):  # a near-tie may fall either way
            assert ra[key] == pytest.approx(rb[key], abs=0.005), key


@pytest.fixture(scope="module")
def single(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cwd = tmp_path_factory.mktemp("single")
    res = run_cli(*NO_BN, "logger=none", f"hydra.run.dir={cwd / 'run'}", cwd=cwd, env={"OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr[-3000:]
    return cwd / "run"


@pytest.fixture(scope="module")
def ddp(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """An uninterrupted 2-rank run, W&B offline: its launch dir and console output."""
    cwd = tmp_path_factory.mktemp("ddp")
    proc = torchrun(*NO_BN, "checkpoints.every_steps=1", cwd=cwd)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-3000:]
    return cwd, out


def test_torchrun_two_ranks_matches_one_process_and_writes_once(ddp: tuple[Path, str], single: Path) -> None:
    cwd, out = ddp
    (run_dir,) = (cwd / "outputs" / "runs").iterdir()  # one run dir, however many ranks
    assert len(list(run_dir.glob("wandb/offline-run-*"))) == 1
    assert json.loads((run_dir / "summary.json").read_text())["world_size"] == 2
    assert_same_figures(epochs_of(run_dir), epochs_of(single))
    assert epochs_of(run_dir)[-1]["test_acc"] > 0.4  # it learns: chance is 0.1
    assert out.count("epoch 3 |") == 1  # only rank 0 prints


def test_two_rank_run_killed_and_resumed_continues_exactly(tmp_path: Path, ddp: tuple[Path, str],
                                                           single: Path) -> None:
    run_dir = tmp_path / "run"
    args = [*NO_BN, "logger=none", "checkpoints.every_steps=1", f"hydra.run.dir={run_dir}"]
    proc = torchrun(*args, cwd=tmp_path)
    while not (run_dir / "metrics.jsonl").exists() or max((r["step"] for r in read_metrics(
            run_dir / "metrics.jsonl")), default=0) < 12:
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        time.sleep(0.01)
    kill_tree(proc.pid)  # torchrun and both ranks, mid-epoch 2
    proc.wait()
    assert 11 <= checkpoint.load(run_dir / "last.pt")["progress"]["step"] < 24
    proc = torchrun(*args, "checkpoints.resume=auto", cwd=tmp_path)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-3000:]
    ckpt = checkpoint.load(run_dir / "last.pt")
    assert ckpt["progress"]["step"] == 24 and len(ckpt["rng"]) == 2
    assert_same_figures(epochs_of(run_dir), epochs_of(single))
    (uninterrupted,) = (ddp[0] / "outputs" / "runs").iterdir()
    reference = checkpoint.load(uninterrupted / "last.pt")["model"]
    assert all(torch.equal(ckpt["model"][k], reference[k]) for k in reference)  # bit-identical


def test_a_batch_the_ranks_cannot_share_is_a_clear_error(tmp_path: Path) -> None:
    proc = torchrun(*NO_BN, "logger=none", "data.batch_size=63", cwd=tmp_path)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode != 0
    assert "error: data.batch_size is 63, which 2 ranks cannot share evenly: use a multiple of 2" in out


def test_ddp_without_a_launcher_says_how_to_start_it(tmp_path: Path) -> None:
    res = run_cli(*NO_BN, "logger=none", "runtime.strategy=ddp", cwd=tmp_path)
    assert res.returncode == 1 and "needs a launcher that starts the ranks: torchrun" in res.stderr


def test_submitit_launcher_with_two_tasks_is_one_ddp_job(tmp_path: Path, single: Path) -> None:
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    res = run_cli("-m", "hydra/launcher=submitit_local", "hydra.launcher.tasks_per_node=2", "runtime.strategy=ddp",
                  *NO_BN, cwd=tmp_path, env={"OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr[-3000:]
    (sweep,) = (tmp_path / "outputs" / "multirun").iterdir()
    (job,) = [p for p in sweep.iterdir() if p.name.isdigit()]
    assert json.loads((job / "summary.json").read_text())["world_size"] == 2
    assert len(list(job.glob("wandb/offline-run-*"))) == 1
    assert_same_figures(epochs_of(job), epochs_of(single))


def test_a_rank_that_dies_takes_the_job_down_without_a_hang(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    proc = torchrun(*NO_BN, "logger=none", "trainer.epochs=50", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    while not (run_dir / "metrics.jsonl").exists() or not read_metrics(run_dir / "metrics.jsonl"):
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        time.sleep(0.01)
    ranks = subprocess.run(["ps", "-o", "pid=", "--ppid", str(proc.pid)], capture_output=True, text=True).stdout
    os.kill(int(ranks.split()[-1]), signal.SIGKILL)  # one rank dies mid-training
    started = time.monotonic()
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode != 0 and time.monotonic() - started < 60
    assert "Signals.SIGKILL" in out or "exitcode  : -9" in out  # torchrun names the rank that died
