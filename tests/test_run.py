"""The command line as users run it: real subprocesses, real Hydra multiruns, real W&B offline runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import ROOT, SYNTH, TINY, run_cli, write_image_tree

from cnnlab.track.metrics import read_metrics

FAST = [*TINY, *SYNTH, "trainer.epochs=2", "trainer.log_every=4"]


def wandb_run(run_dir: Path) -> dict:
    """What W&B recorded for the offline run in `run_dir`, read back with its own inspector."""
    (offline,) = (run_dir / "wandb").glob("offline-run-*")
    out = subprocess.run([str(Path(sys.executable).parent / "wandb"), "leet", "inspect", "--json", str(offline)],
                         capture_output=True, text=True, timeout=120, check=True)
    records = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    summary = subprocess.run([str(Path(sys.executable).parent / "wandb"), "leet", "inspect", "--summary", "--json",
                              str(offline)], capture_output=True, text=True, timeout=120, check=True)
    (run,) = [r["run"] for r in records if r.get("type") == "run"]
    return {"run": run, "records": records, **json.loads(summary.stdout)}


def test_multirun_gives_one_run_dir_and_one_finished_wandb_run_per_job(tmp_path: Path) -> None:
    res = run_cli("-m", *FAST, "optim.lr=1e-3,3e-3", "logger.log_checkpoint=true", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    (sweep,) = (tmp_path / "outputs" / "multirun").iterdir()
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir() and p.name.isdigit())
    assert [j.name for j in jobs] == ["0", "1"]
    groups, lrs = set(), []
    for job in jobs:
        epochs = [r for r in read_metrics(job / "metrics.jsonl") if r["kind"] == "epoch"]
        assert len(epochs) == 2
        w = wandb_run(job)
        assert w["state"] == "finished" and w["exit_code"] == 0
        groups.add(w["run"]["run_group"])
        assert w["summary"]["test_acc"] == pytest.approx(epochs[-1]["test_acc"])
        assert w["summary"]["num_parameters"] > 0 and w["summary"]["epoch"] == 2
        config = w["config"]
        assert config["dataset"]["num_classes"] == 10 and "${" not in json.dumps(config)
        lrs.append(config["optim"]["lr"])
        assert f"optim.lr={config['optim']['lr']}" in w["name"]
        assert any(r.get("type") == "artifact" and r["artifact"]["type"] == "model" for r in w["records"])
    assert groups == {sweep.name} and lrs == [1e-3, 3e-3]


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
    res = run_cli(*FAST, "trainer.epochs=1", "logger.mode=online", "logger.init_timeout=5",
                  "logger.log_checkpoint=true", cwd=tmp_path, env=env, timeout=120)
    assert "artifact skipped" in res.stdout + res.stderr
    assert res.returncode == 0, res.stderr[-3000:]
    assert "logging offline instead" in res.stdout + res.stderr
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


@pytest.mark.parametrize("override,message", [
    ("optim.lr=-1", "error: optim.lr is -1; it must be a positive number"),
    ("trainer.epochs=0", "error: trainer.epochs is 0; it must be a positive integer"),
    ("model.cfg=[16,Q,32]", "error: model: model.cfg[1] is 'Q': entries must be positive ints (conv widths) or 'M'"),
    ("trainer.device=tpu", "error: trainer.device is 'tpu'; allowed: auto, cpu, cuda, cuda:N, mps"),
    pytest.param("trainer.device=cuda", "error: trainer.device is 'cuda' but no CUDA device is available here: use "
                 "trainer.device=auto, or cpu", marks=pytest.mark.skipif(torch.cuda.is_available(), reason="has CUDA")),
])
def test_bad_input_is_one_clear_line_and_a_nonzero_exit(tmp_path: Path, override: str, message: str) -> None:
    res = run_cli(*FAST, "logger=none", override, cwd=tmp_path, timeout=120)
    assert res.returncode == 1
    assert res.stderr.strip().splitlines()[-1] == message
    assert "Traceback" not in res.stderr


def test_unknown_config_option_lists_what_is_allowed(tmp_path: Path) -> None:
    res = run_cli("model=vgg17", cwd=tmp_path, timeout=120)
    assert res.returncode != 0
    assert "Could not find 'model/vgg17'" in res.stderr and "vgg16_bn" in res.stderr
    assert "Traceback" not in res.stderr


def test_image_folder_run_and_a_class_count_that_disagrees_with_the_data(tmp_path: Path) -> None:
    tree = write_image_tree(tmp_path / "tree", {"train": 20, "test": 10})
    common = [*TINY, "dataset=imagefolder", f"dataset.root={tree}", "trainer.epochs=1", "logger=none"]
    ok = run_cli(*common, cwd=tmp_path, timeout=120)
    assert ok.returncode == 0, ok.stderr[-3000:]
    (run_dir,) = (tmp_path / "outputs" / "runs").iterdir()
    assert "num_classes: 3" in (run_dir / "config_resolved.yaml").read_text()
    bad = run_cli(*common, "dataset.num_classes=7", cwd=tmp_path, timeout=120)
    assert bad.returncode == 1
    assert bad.stderr.strip().splitlines()[-1] == "error: dataset.num_classes is 7 but the data has 3 classes"
