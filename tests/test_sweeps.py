"""Sweeps as researchers run them: grids over seeds then `cnnlab.compare`, Optuna studies that survive failed
trials, parallel launchers, a SLURM-style requeue after preemption, and W&B sweep agents."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import QUICK, ROOT, SYNTH, TINY, job_dirs, make_cfg, run_cli, untimed, wandb_run

import cnnlab
from cnnlab.compare import main as compare_main
from cnnlab.config import validate
from cnnlab.track.metrics import read_metrics
from cnnlab.train import checkpoint

pytestmark = pytest.mark.slow

SMALL = ["model.cfg=[16,M,32,M,64,M]", "model.classifier_hidden=[]", "model.classifier_dropout=0.0", *SYNTH,
         "dataset.source.train_size=256", "dataset.source.test_size=128", "trainer.epochs=2", "trainer.log_every=2"]


def test_a_model_by_lr_by_seed_sweep_compares_as_one_row_per_choice(tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture) -> None:
    res = run_cli("-m", "model=vgg11_bn,vgg13_bn", *SMALL, "optim.lr=1e-3,3e-3", "seed=0,1", "logger=none",
                  cwd=tmp_path, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    jobs = job_dirs(tmp_path)
    assert len(jobs) == 8
    sweep = jobs[0].parent
    assert compare_main([str(sweep)]) == 0
    out = capsys.readouterr().out
    assert "8 runs, 4 configs, differing in: model, optim.lr" in out
    labels = {line.split("  ")[0] for line in out.splitlines() if line.startswith("model=")}
    assert labels == {f"model={m} optim.lr={lr}" for m in ("vgg11_bn", "vgg13_bn") for lr in ("0.001", "0.003")}
    rows = list(csv_rows(sweep / "compare.csv"))
    assert [r["n"] for r in rows] == ["2"] * 4
    for row in rows:  # each figure is the mean over the row's seeds of what its runs recorded
        members = [j for j in jobs if f"model={row['config'].split()[0].split('=')[1]}" in overrides(j)
                   and row["config"].split()[1] in overrides(j)]
        best = [max(r["val_acc"] for r in epochs(j)) for j in members]
        assert float(row["best_val"]) == pytest.approx(sum(best) / 2)
        assert float(row["final_test"]) == pytest.approx(sum(epochs(j)[-1]["test_acc"] for j in members) / 2)
    assert [float(r["best_val"]) for r in rows] == sorted((float(r["best_val"]) for r in rows), reverse=True)
    assert (sweep / "compare.png").read_bytes()[:4] == b"\x89PNG"
    assert "| config | n | best val | test at best val | final test |" in (sweep / "compare.md").read_text()


def csv_rows(path: Path):
    import csv

    with open(path) as f:
        yield from csv.DictReader(f)


def overrides(job: Path) -> list[str]:
    return yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text())


def epochs(job: Path) -> list[dict]:
    return [r for r in read_metrics(job / "metrics.jsonl") if r["kind"] == "epoch"]


def test_compare_falls_back_to_the_resolved_config_without_hydras_record(tmp_path: Path,
                                                                         capsys: pytest.CaptureFixture) -> None:
    from cnnlab.job import train

    for seed in (0, 1):
        for lr in ("1e-3", "3e-3"):
            train(make_cfg(*QUICK, "trainer.epochs=1", f"seed={seed}", f"optim.lr={lr}"), tmp_path / f"{lr}_{seed}")
    assert compare_main([str(tmp_path), "--out", str(tmp_path / "cmp")]) == 0
    assert "4 runs, 2 configs, differing in: optim.lr" in capsys.readouterr().out
    (tmp_path / "empty").mkdir()
    assert compare_main([str(tmp_path / "empty")]) == 1


def test_a_failed_job_is_reported_and_its_neighbours_are_intact(tmp_path: Path) -> None:
    res = run_cli("-m", *TINY, *SMALL, "optim=sgd", "optim.momentum=0", "optim.nesterov=false", "optim.lr=0.01,1e12",
                  cwd=tmp_path)
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert res.stderr.strip().splitlines()[-1].startswith("error: 1 of 2 jobs failed; the first, ")
    good, bad = job_dirs(tmp_path)
    jobs = [json.loads(line) for line in (good.parent / "jobs.jsonl").read_text().splitlines()]
    assert [job["status"] for job in jobs] == ["finished", "failed"]
    assert jobs[1]["error"].startswith("training diverged") and "optim.lr=1000000000000.0" in jobs[1]["overrides"]
    assert wandb_run(good)["state"] == "finished" and wandb_run(good)["exit_code"] == 0
    assert json.loads((good / "summary.json").read_text())["status"] == "finished"
    assert wandb_run(bad)["exit_code"] == 1 and wandb_run(bad)["summary"]["status"] == "failed"
    assert json.loads((bad / "summary.json").read_text())["status"] == "failed"


OPTUNA = ["hparams_search=optuna_lr_wd", *TINY, *SMALL, "trainer.epochs=1", "logger=none"]
RISKY_LR = """# @package _global_
# the packaged search, with an lr choice that diverges
defaults:
  - optuna_lr_wd

hydra:
  sweeper:
    n_trials: 6
    params:
      optim.lr: choice(0.01, 1e12, 0.03)
      trainer.loss.label_smoothing: choice(0.0, 0.1)
"""


def test_an_optuna_study_with_diverging_trials_records_every_trial(tmp_path: Path) -> None:
    optuna = pytest.importorskip("optuna")
    mine = tmp_path / "my_configs" / "hparams_search"  # a user's own search, beside the packaged ones
    mine.mkdir(parents=True)
    (mine / "risky_lr.yaml").write_text(RISKY_LR)
    first = run_cli(*OPTUNA, "hparams_search=risky_lr", "optim=sgd", "optim.momentum=0", "optim.nesterov=false",
                    "--config-dir", str(mine.parent), cwd=tmp_path, timeout=600)  # no -m: a search is a multirun
    assert first.returncode == 0, first.stderr[-3000:]
    (sweep,) = (tmp_path / "outputs" / "multirun").iterdir()
    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert results["best_params"]["optim.lr"] in (0.01, 0.03)
    name = "risky_lr.None.vgg11_bn.synthetic.sgd.none"
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(
        str(tmp_path / "outputs" / "optuna.journal")))
    study = optuna.load_study(study_name=name, storage=storage)
    states = [(t.params["optim.lr"], t.state) for t in study.trials]
    assert len(states) == 6  # every trial recorded: the diverged ones (lr 1e12) as failed, the study went on
    failed = [s for lr, s in states if lr == 1e12]
    assert failed and all(s == optuna.trial.TrialState.FAIL for s in failed)
    assert all(s == optuna.trial.TrialState.COMPLETE and 0 <= t.value <= 1 for (lr, s), t in
               zip(states, study.trials, strict=True) if lr != 1e12)
    diverged = [t for t in study.trials if t.params["optim.lr"] == 1e12]
    assert all(t.user_attrs["error"].startswith("training diverged") for t in diverged)
    assert "error: training diverged" in first.stdout + first.stderr
    jobs = [json.loads(line) for line in (sweep / "jobs.jsonl").read_text().splitlines()]
    assert len(jobs) == 6 and sum(job["status"] == "failed" for job in jobs) == len(failed)


@pytest.mark.parametrize("launcher", ["local_parallel", "submitit_local"])
def test_launchers_run_a_two_job_sweep(tmp_path: Path, launcher: str) -> None:
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher" if launcher == "local_parallel"
                        else "hydra_plugins.hydra_submitit_launcher")
    res = run_cli("-m", f"hydra/launcher={launcher}", "seed=0,1", *TINY, *SMALL, "trainer.epochs=1", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    jobs = job_dirs(tmp_path)
    assert len(jobs) == 2
    runs = [wandb_run(j) for j in jobs]
    assert len({r["run"]["run_group"] for r in runs}) == 1 and all(r["state"] == "finished" for r in runs)
    assert [json.loads((j / "summary.json").read_text())["status"] for j in jobs] == ["finished"] * 2


def test_slurm_launcher_config_relies_on_requeue() -> None:
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    from hydra.core.hydra_config import HydraConfig

    cfg = make_cfg("hydra/launcher=slurm", "hydra.launcher.partition=gpu", hydra=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher") and launcher.partition == "gpu"
    assert launcher.max_num_timeout >= 20 and launcher.signal_delay_s > 0
    HydraConfig.instance().set_config(cfg)
    try:
        assert cfg.checkpoints.resume == "allow"  # a requeued job continues its run dir
    finally:
        HydraConfig.instance().cfg = None


def submitit_task(root: int) -> int | None:
    """The pid of the process that runs a submitit local job, below `root`."""
    out = subprocess.run(["ps", "-eo", "pid=,args="], capture_output=True, text=True).stdout
    for line in out.splitlines():
        pid, _, args = line.strip().partition(" ")
        if "submitit.core._submit" in args:
            return int(pid)
    return None


def test_a_preempted_submitit_job_is_requeued_and_ends_as_an_uninterrupted_run(tmp_path: Path) -> None:
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    common = ["-m", "hydra/launcher=submitit_local", *TINY, *SYNTH, "trainer.epochs=3", "trainer.log_every=1",
              "runtime.deterministic=true"]
    straight = run_cli(*common, "hydra.sweep.dir=straight", "logger=none", cwd=tmp_path, timeout=600)
    assert straight.returncode == 0, straight.stderr[-3000:]

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "cnnlab.run", *common, "hydra.sweep.dir=preempted"], cwd=tmp_path,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    metrics = tmp_path / "preempted" / "0" / "metrics.jsonl"
    deadline = time.monotonic() + 300
    while not metrics.exists() or max((r["step"] for r in read_metrics(metrics)), default=0) < 12:
        assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read()[-3000:]
        time.sleep(0.01)
    task = submitit_task(proc.pid)
    assert task is not None
    os.kill(task, signal.SIGUSR2)  # what SLURM sends before a preemption or the time limit
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-3000:]

    job, reference = tmp_path / "preempted" / "0", tmp_path / "straight" / "0"
    logs = "".join(p.read_text() for p in (tmp_path / "preempted" / ".submitit").rglob("*_log.*"))
    assert "preempted by SIGUSR2" in logs and "resuming" in (job / "run.log").read_text()
    a, b = checkpoint.load(reference / "last.pt")["model"], checkpoint.load(job / "last.pt")["model"]
    assert all((a[k] == b[k]).all() for k in a)
    assert untimed(read_metrics(reference / "metrics.jsonl")) == untimed(read_metrics(job / "metrics.jsonl"))
    w = wandb_run_all(job)
    assert len({r["run_id"] for r in w}) == 1 and w[-1]["summary"]["status"] == "finished"


def wandb_run_all(run_dir: Path) -> list[dict]:
    from conftest import wandb_inspect

    return [wandb_inspect(p) for p in sorted((run_dir / "wandb").glob("offline-run-*"))]


# --------------------------------------------------------------------------------------------- W&B sweeps
SWEEP = yaml.safe_load((cnnlab.SWEEPS / "wandb_lr_wd.yaml").read_text())


def test_the_wandb_sweep_definition_runs_cnnlab_with_the_agents_values() -> None:
    assert SWEEP["command"] == ["${env}", "${interpreter}", "-m", "cnnlab.run", "${args_no_hyphens}"]
    assert SWEEP["metric"] == {"name": "best_val_acc", "goal": "maximize"}
    for bound in ("min", "max"):  # every value the agent may pass is a valid cnnlab override
        args = [f"{k}={v[bound]}" for k, v in SWEEP["parameters"].items()]
        validate(make_cfg(*args))


def test_a_run_under_wandb_agent_joins_the_agents_run_and_sweep(tmp_path: Path) -> None:
    values = {"optim.lr": 0.003, "optim.weight_decay": 1e-4, "trainer.loss.label_smoothing": 0.05}
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({k: {"value": v} for k, v in values.items()}))
    agent_env = {"WANDB_SWEEP_ID": "swp123", "WANDB_RUN_ID": "agentrun1", "WANDB_SWEEP_PARAM_PATH": str(params)}
    args = [f"{k}={v}" for k, v in values.items()]  # ${args_no_hyphens}
    res = run_cli(*TINY, *SMALL, "trainer.epochs=1", *args, cwd=tmp_path, env=agent_env)
    assert res.returncode == 0, res.stderr[-3000:]
    (run_dir,) = (tmp_path / "outputs" / "runs").iterdir()
    w = wandb_run(run_dir)
    assert w["run_id"] == "agentrun1" and w["run"].get("sweep_id") == "swp123"
    assert not w["run"].get("run_group")  # no group of cnnlab's own to fight the sweep's
    config = w["config"]
    assert (config["optim"]["lr"], config["optim"]["weight_decay"], config["trainer"]["loss"]["label_smoothing"]) == \
        (0.003, 1e-4, 0.05)
    assert w["summary"]["best_val_acc"] > 0


def test_no_sweeper_is_imposed() -> None:
    """(Seen to fail: conf/config.yaml setting hydra.sweeper._target_, which beat any sweeper chosen.)"""
    assert make_cfg(hydra=True).hydra.sweeper._target_ == "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"


@pytest.mark.parametrize("sweeper,args", [("basic", ["seed=0,1"]),
                                          ("optuna", ["hydra.sweeper.n_trials=2", "optim.lr=interval(1e-4,1e-2)"])])
def test_a_sweeper_chosen_on_the_command_line_runs_its_jobs(tmp_path: Path, sweeper: str, args: list[str]) -> None:
    res = run_cli("-m", f"hydra/sweeper={sweeper}", *args, *TINY, *SMALL, "trainer.epochs=1", "logger=none",
                  cwd=tmp_path, timeout=600)
    assert res.returncode == 0 and "Traceback" not in res.stderr, res.stderr[-3000:]
    (sweep,) = (tmp_path / "outputs" / "multirun").iterdir()
    jobs = [json.loads(line) for line in (sweep / "jobs.jsonl").read_text().splitlines()]
    assert [job["status"] for job in jobs] == ["finished", "finished"]
    assert all(0 <= job["objective"] <= 1 for job in jobs)
