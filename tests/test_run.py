"""The command line as users run it: real subprocesses, real Hydra multiruns, real W&B offline runs read back
with W&B's own inspector."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT, SYNTH, TINY, epochs_of, history, job_dirs, run_cli, untimed, wandb_inspect, wandb_run

import cnnlab
from cnnlab.track.metrics import read_metrics
from cnnlab.train import checkpoint

pytestmark = pytest.mark.slow

FAST = [*TINY, *SYNTH, "trainer.epochs=2", "trainer.log_every=4"]


def checkout_commit() -> str | None:
    """The commit of the checkout these tests run from, or None (a copy of the tree outside git)."""
    if not (ROOT / ".git").exists():
        return None
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()


def test_version_names_cnnlab_and_its_commit(tmp_path: Path) -> None:
    res = run_cli("--version", cwd=tmp_path)
    assert res.returncode == 0 and res.stdout.startswith(f"cnnlab {cnnlab.__version__}")
    commit = checkout_commit()
    assert (f"(git {commit[:12]}" in res.stdout) if commit else res.stdout.strip() == f"cnnlab {cnnlab.__version__}"


def test_multirun_gives_one_run_dir_and_one_finished_wandb_run_per_job(tmp_path: Path) -> None:
    res = run_cli("-m", *FAST, "optim.lr=1e-3,3e-3", "logger.log_checkpoint=true", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    jobs = job_dirs(tmp_path)
    assert [j.name for j in jobs] == ["0", "1"]
    groups, lrs = set(), []
    for job in jobs:
        epochs = epochs_of(job)
        assert len(epochs) == 2
        w = wandb_run(job)
        assert w["state"] == "finished" and w["exit_code"] == 0
        groups.add(w["run"]["run_group"])
        for key in ("val_acc", "test_acc"):  # max and last, never overwritten by the end of the run
            assert w["summary"][key] == {"max": max(e[key] for e in epochs), "last": epochs[-1][key]}
        summary = json.loads((job / "summary.json").read_text())
        for key in ("best_val_acc", "final_test_acc", "test_acc_at_best_val", "num_parameters"):
            assert w["summary"][key] == pytest.approx(summary[key])
        assert w["summary"]["status"] == "finished" and w["summary"]["epoch"] == 2
        assert [h["_step"] for h in history(w) if "epoch" in h] == [e["step"] for e in epochs]
        config = w["config"]
        assert config["dataset"]["num_classes"] == 10 and "${" not in json.dumps(config)
        assert "dataset" not in config["data"] and "augment" not in config["data"]  # each node once
        origin = {k: summary[k] for k in ("cnnlab_version", "git_commit", "git_dirty", "cnnlab_git_commit")}
        assert origin == {"cnnlab_version": cnnlab.__version__, "git_commit": None, "git_dirty": None,
                          "cnnlab_git_commit": checkout_commit()}  # launched outside a repo, from this checkout
        assert config["provenance"]["cnnlab_version"] == cnnlab.__version__ and len(w["name"]) <= 96
        lrs.append(config["optim"]["lr"])
        assert f"optim.lr={config['optim']['lr']}" in w["name"]
        assert any(r.get("type") == "artifact" and r["artifact"]["type"] == "model" for r in w["records"])
        (log,) = (job / "wandb").glob("offline-run-*/files/run.log")  # the run's log is a file of the W&B run
        assert "epoch 2 | train loss" in log.read_text()
    assert groups == {jobs[0].parent.name} and lrs == [1e-3, 3e-3]


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_a_stopped_and_resumed_run_continues_its_wandb_run(tmp_path: Path, stop: int) -> None:
    run_dir = tmp_path / "run"
    args = [sys.executable, "-m", "cnnlab.run", *TINY, *SYNTH, "trainer.epochs=8", "trainer.log_every=1",
            "checkpoints.every_steps=1", "runtime.deterministic=true", f"hydra.run.dir={run_dir}"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(args, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    # stop at once when epoch 3 has begun: a tiny epoch takes ~0.1 s on a fast machine, so the 5 epochs left are
    # the margin that keeps the stop from landing after the run has finished
    while not (run_dir / "metrics.jsonl").exists() or not any(
            r["epoch"] == 3 for r in read_metrics(run_dir / "metrics.jsonl")):
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        time.sleep(0.01)
    proc.send_signal(stop)
    proc.wait(timeout=120)
    at = checkpoint.load(run_dir / "last.pt")["progress"]["step"]
    res = subprocess.run([*args, "checkpoints.resume=auto"], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]

    first_dir, second_dir = sorted((run_dir / "wandb").glob("offline-run-*"))
    second = wandb_inspect(second_dir)
    # one W&B run, continued: the same id (sync both offline runs, in order, with `wandb sync`)
    assert second["run_id"] == first_dir.name.rsplit("-", 1)[1] == checkpoint.load(run_dir / "last.pt")["wandb_id"]
    resumed_steps = [h["_step"] for h in history(second)]
    # on from the checkpoint's step (at it, when the stop came after an epoch's last batch: its end record)
    assert resumed_steps[0] in (at, at + 1) and resumed_steps == sorted(resumed_steps)
    if stop == signal.SIGTERM:  # a clean stop: W&B wrote the first part whole, up to the step it stopped at
        first = wandb_inspect(first_dir)
        assert first["summary"]["status"] == "interrupted" and max(h["_step"] for h in history(first)) == at
    epochs = epochs_of(run_dir)
    assert [e["epoch"] for e in epochs] == list(range(1, 9))
    for key in ("val_acc", "test_acc"):  # the max counts the epochs before the stop too
        assert second["summary"][key] == {"max": max(e[key] for e in epochs), "last": epochs[-1][key]}
    assert second["state"] == "finished" and second["summary"]["status"] == "finished"


def test_two_runs_started_together_get_separate_dirs(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "cnnlab.run", *FAST, "trainer.epochs=1", "logger=none"]
    procs = [subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
             for _ in range(2)]
    assert all(p.wait(timeout=300) == 0 for p in procs)
    runs = list((tmp_path / "outputs" / "runs").iterdir())
    assert len(runs) == 2 and all((r / "metrics.jsonl").exists() for r in runs)


def test_wandb_online_with_the_network_down_falls_back_to_offline(tmp_path: Path) -> None:
    env = {"WANDB_API_KEY": "0" * 40, "WANDB_BASE_URL": "http://127.0.0.1:9"}  # nothing listens there
    started = time.monotonic()
    res = run_cli(*FAST, "trainer.epochs=1", "logger.mode=online", "logger.init_timeout=5",
                  "logger.log_checkpoint=true", cwd=tmp_path, env=env, timeout=120)
    assert time.monotonic() - started < 60  # never the ~100 s an online start blocks for without init_timeout
    assert res.returncode == 0, res.stderr[-3000:]
    assert "logging offline instead" in res.stdout + res.stderr and "artifact skipped" in res.stdout + res.stderr
    (run_dir,) = (tmp_path / "outputs" / "runs").iterdir()
    recorded = wandb_run(run_dir)
    assert recorded["state"] == "finished"
    assert "0" * 40 not in (run_dir / "config_resolved.yaml").read_text()
    assert "0" * 40 not in json.dumps(recorded["config"])


def test_wandb_disabled_by_environment_wins_over_the_config(tmp_path: Path) -> None:
    res = run_cli(*FAST, "trainer.epochs=1", "logger.mode=offline", cwd=tmp_path, env={"WANDB_MODE": "disabled"})
    assert res.returncode == 0, res.stderr[-3000:]
    (run_dir,) = (tmp_path / "outputs" / "runs").iterdir()
    assert not list(run_dir.glob("wandb/offline-run-*")) and (run_dir / "metrics.jsonl").exists()


def test_an_interrupted_run_resumes_to_the_uninterrupted_result(tmp_path: Path) -> None:
    common = [*TINY, *SYNTH, "trainer.epochs=3", "trainer.log_every=1", "runtime.deterministic=true", "logger=none"]
    straight = run_cli(*common, f"hydra.run.dir={tmp_path / 'straight'}", cwd=tmp_path)
    assert straight.returncode == 0, straight.stderr[-3000:]
    run_dir = tmp_path / "stopped"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "cnnlab.run", *common, f"hydra.run.dir={run_dir}"], cwd=tmp_path,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    while not (run_dir / "metrics.jsonl").exists() or max(
            (r["step"] for r in read_metrics(run_dir / "metrics.jsonl")), default=0) < 10:
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 143
    assert checkpoint.load(run_dir / "last.pt")["progress"]["batch"] != 0  # stopped mid-epoch, at a step
    resumed = run_cli(*common, f"hydra.run.dir={run_dir}", "checkpoints.resume=auto", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a = checkpoint.load(tmp_path / "straight" / "last.pt")["model"]
    b = checkpoint.load(run_dir / "last.pt")["model"]
    assert all((a[k] == b[k]).all() for k in a)
    assert untimed(read_metrics(tmp_path / "straight" / "metrics.jsonl")) == \
        untimed(read_metrics(run_dir / "metrics.jsonl"))


def test_image_folder_run_counts_its_classes(tmp_path: Path) -> None:
    from conftest import write_image_tree

    tree = write_image_tree(tmp_path / "tree", {"train": 20, "test": 10})
    res = run_cli(*TINY, "dataset=imagefolder", f"dataset.root={tree}", "trainer.epochs=1", "logger=none",
                  cwd=tmp_path, timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    (run_dir,) = (tmp_path / "outputs" / "runs").iterdir()
    resolved = (run_dir / "config_resolved.yaml").read_text()
    assert "num_classes: 3" in resolved and "val_size: auto" in resolved
    assert "54 train, 6 validation (held out of train/), 30 test images" in res.stdout + res.stderr
