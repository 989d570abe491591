"""Sweeps as researchers run them: grids over seeds, Optuna, parallel launchers, then `cnnlab.compare`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import CONF, SYNTH, TINY, make_cfg, run_cli
from hydra import compose, initialize_config_dir
from test_run import wandb_run

from cnnlab.compare import main as compare_main

TINY_RUN = [*TINY, *SYNTH, "dataset.source.train_size=256", "dataset.source.test_size=128", "trainer.epochs=2"]


def job_dirs(root: Path) -> list[Path]:
    (sweep,) = (root / "outputs" / "multirun").iterdir()
    return sorted(p for p in sweep.iterdir() if p.is_dir() and p.name.isdigit())


def test_grid_over_seeds_then_compare(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    res = run_cli("-m", *TINY_RUN, "optim.lr=1e-3,3e-3", "trainer.label_smoothing=0,0.1", "seed=0,1", cwd=tmp_path,
                  timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    jobs = job_dirs(tmp_path)
    assert len(jobs) == 8 and all((j / "metrics.jsonl").exists() for j in jobs)
    runs = [wandb_run(j) for j in jobs]
    assert {r["run"]["run_group"] for r in runs} == {jobs[0].parent.name}
    assert len({r["run_id"] for r in runs}) == 8 and all(r["state"] == "finished" for r in runs)

    assert compare_main([str(jobs[0].parent)]) == 0
    out = capsys.readouterr().out
    assert "8 runs, 4 configs, differing in: optim.lr, trainer.label_smoothing" in out
    rows = [line for line in out.splitlines() if line.startswith("optim.lr=")]
    assert len(rows) == 4 and all(line.split()[2] == "2" for line in rows)  # n = 2 seeds each
    csv_rows = (jobs[0].parent / "compare.csv").read_text().splitlines()
    assert len(csv_rows) == 5 and csv_rows[0].startswith("config,n,final_acc")
    finals = [float(r.split(",")[2]) for r in csv_rows[1:]]
    assert finals == sorted(finals, reverse=True)
    assert (jobs[0].parent / "compare.png").read_bytes()[:4] == b"\x89PNG"
    assert "| config |" in (jobs[0].parent / "compare.md").read_text()


def test_a_failed_job_is_reported_and_its_neighbours_are_intact(tmp_path: Path) -> None:
    res = run_cli("-m", *TINY_RUN, "optim=sgd", "optim.momentum=0", "optim.nesterov=false", "optim.lr=0.01,1e12",
                  cwd=tmp_path)
    assert res.returncode != 0 and "training diverged" in res.stderr
    good, bad = job_dirs(tmp_path)
    assert wandb_run(good)["state"] == "finished" and wandb_run(good)["exit_code"] == 0
    assert json.loads((good / "summary.json").read_text())["status"] == "finished"
    assert wandb_run(bad)["exit_code"] == 1
    assert json.loads((bad / "summary.json").read_text())["status"] == "failed"


def test_optuna_sweep_writes_results_and_resumes_its_study(tmp_path: Path) -> None:
    optuna = pytest.importorskip("optuna")
    args = ["-m", "hparams_search=optuna_lr_wd", "hydra.sweeper.n_trials=3", "hydra.sweeper.study_name=t",
            *TINY_RUN, "trainer.epochs=1", "logger=none"]
    first = run_cli(*args, cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    (sweep,) = (tmp_path / "outputs" / "multirun").iterdir()
    results = (sweep / "optimization_results.yaml").read_text()
    assert "best_params:" in results and "optim.lr:" in results and "best_value:" in results
    second = run_cli(*args, cwd=tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    study = optuna.load_study(study_name="t", storage=f"sqlite:///{tmp_path}/outputs/optuna.db")
    trials = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(trials) == 6 and all(0 <= t.value <= 1 for t in trials)


@pytest.mark.parametrize("launcher", ["local_parallel", "submitit_local"])
def test_launchers_run_a_two_job_sweep(tmp_path: Path, launcher: str) -> None:
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher" if launcher == "local_parallel"
                        else "hydra_plugins.hydra_submitit_launcher")
    res = run_cli("-m", f"hydra/launcher={launcher}", "seed=0,1", *TINY_RUN, "trainer.epochs=1", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    jobs = job_dirs(tmp_path)
    assert len(jobs) == 2
    runs = [wandb_run(j) for j in jobs]
    assert len({r["run"]["run_group"] for r in runs}) == 1 and all(r["state"] == "finished" for r in runs)
    assert [json.loads((j / "summary.json").read_text())["status"] for j in jobs] == ["finished"] * 2


def test_slurm_launcher_config_carries_resources_from_config() -> None:
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=["hydra/launcher=slurm", "hydra.launcher.partition=gpu",
                                           "hydra.launcher.gpus_per_node=4"], return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert (launcher.partition, launcher.gpus_per_node, launcher.timeout_min) == ("gpu", 4, 240)


def test_compare_reads_plain_run_dirs_too(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from cnnlab.run import train

    for seed in (0, 1):
        for lr in ("1e-3", "3e-3"):
            train(make_cfg(*TINY_RUN, "logger=none", f"seed={seed}", f"optim.lr={lr}"), tmp_path / f"{lr}_{seed}")
    assert compare_main([str(tmp_path), "--out", str(tmp_path / "cmp")]) == 0
    out = capsys.readouterr().out
    assert "4 runs, 2 configs, differing in: optim.lr" in out
    (tmp_path / "empty").mkdir()
    assert compare_main([str(tmp_path / "empty")]) == 1
