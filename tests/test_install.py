"""The installed form: a wheel built from this checkout, installed (not editable) into a separate dir, run from a
directory outside the repository through its console scripts: a training, a sweep, a comparison, TAB completion,
and the user's own configs beside the packaged ones."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, SYNTH, TINY

pytestmark = pytest.mark.slow

RUN = [*TINY, *SYNTH, "trainer.epochs=1", "logger=none"]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """cnnlab's wheel, installed with `pip install --target` (its dependencies come from this environment)."""
    wheels, site = tmp_path_factory.mktemp("wheels"), tmp_path_factory.mktemp("site")
    isolation = [] if importlib.util.find_spec("setuptools") is None else ["--no-build-isolation"]
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", *isolation, "-w", str(wheels),
                            str(ROOT)], capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stderr[-3000:]
    (wheel,) = wheels.glob("cnnlab-*.whl")
    install = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site),
                              str(wheel)], capture_output=True, text=True, timeout=600)
    assert install.returncode == 0, install.stderr[-3000:]
    return site


def installed(site: Path, script: str, *args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "PYTHONPATH": str(site), **(env or {})}
    return subprocess.run([str(site / "bin" / script), *args], cwd=cwd, env=full_env, capture_output=True, text=True,
                          timeout=600)


def test_the_wheel_carries_its_configs_and_runs_from_anywhere(site: Path, tmp_path: Path) -> None:
    assert (site / "cnnlab" / "conf" / "config.yaml").is_file()
    # one Hydra plugin, the Optuna sweeper, where Hydra looks for plugins; the rest are callbacks
    assert [p.name for p in (site / "hydra_plugins").iterdir()] == ["cnnlab_optuna_sweeper"]
    where = subprocess.run([sys.executable, "-c", "import cnnlab; print(cnnlab.__file__, cnnlab.CONF_DIR)"],
                           cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(site)}, capture_output=True, text=True)
    assert where.stdout.split() == [str(site / "cnnlab" / "__init__.py"), str(site / "cnnlab" / "conf")]
    assert (site / "cnnlab" / "sweeps" / "wandb_lr_wd.yaml").is_file()  # the W&B sweep definitions ship
    project = tmp_path / "project"  # the user's own project, a git repo: the run records its commit
    project.mkdir()
    for git in (["init", "-q"], ["-c", "user.name=u", "-c", "user.email=u@x", "commit", "-q", "--allow-empty",
                                 "-m", "start"]):
        subprocess.run(["git", *git], cwd=project, check=True)
    res = installed(site, "cnnlab-run", *RUN, cwd=project)
    assert res.returncode == 0, res.stderr[-3000:]
    (run_dir,) = (project / "outputs" / "runs").iterdir()  # output goes to ./outputs of the launch dir
    assert (run_dir / "best.pt").exists() and (run_dir / "summary.json").exists()
    summary = json.loads((run_dir / "summary.json").read_text())
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=project, capture_output=True, text=True).stdout.strip()
    assert summary["git_commit"] == head and summary["git_dirty"] is False  # outputs/ is untracked
    assert summary["cnnlab_version"] and summary["cnnlab_git_commit"] is None  # an installed cnnlab: no checkout
    version = installed(site, "cnnlab-run", "--version", cwd=tmp_path)
    assert version.stdout.strip() == f"cnnlab {summary['cnnlab_version']}"
    evaluated = installed(site, "cnnlab-evaluate", f"checkpoint={run_dir / 'best.pt'}", cwd=tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]


def test_an_installed_sweep_and_compare(site: Path, tmp_path: Path) -> None:
    res = installed(site, "cnnlab-run", "-m", *RUN, "optim.lr=1e-3,3e-3", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    (sweep,) = (tmp_path / "outputs" / "multirun").iterdir()
    assert sorted(p.name for p in sweep.iterdir() if p.name.isdigit()) == ["0", "1"]
    compared = installed(site, "cnnlab-compare", str(sweep), cwd=tmp_path)
    assert compared.returncode == 0 and "2 runs, 2 configs, differing in: optim.lr" in compared.stdout


def test_an_installed_search(site: Path, tmp_path: Path) -> None:
    pytest.importorskip("optuna")
    res = installed(site, "cnnlab-run", "-m", "hydra/sweeper=optuna", *RUN, "hydra.sweeper.n_trials=2",
                    "optim.lr=interval(1e-3, 1e-2)", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    (sweep,) = (tmp_path / "outputs" / "multirun").iterdir()
    assert sorted(p.name for p in sweep.glob("trial_*")) == ["trial_0", "trial_1"]
    assert (sweep / "optimization_results.yaml").is_file()


def test_tab_completion_of_the_console_script(site: Path, tmp_path: Path) -> None:
    script = installed(site, "cnnlab-run", "-sc", "install=bash", cwd=tmp_path)
    assert "complete -o nospace -o default -F hydra_bash_completion cnnlab-run" in script.stdout
    line = "cnnlab-run mod"
    choices = installed(site, "cnnlab-run", "-sc", "query=bash", cwd=tmp_path,
                        env={"COMP_LINE": line, "COMP_POINT": str(len(line))})
    assert "model=" in choices.stdout.split()
    line = "cnnlab-run model=vgg1"
    choices = installed(site, "cnnlab-run", "-sc", "query=bash", cwd=tmp_path,
                        env={"COMP_LINE": line, "COMP_POINT": str(len(line))})
    assert {"model=vgg16", "model=vgg16_bn", "model=vgg19"} <= set(choices.stdout.split())


def test_the_users_own_configs_beside_the_packaged_ones(site: Path, tmp_path: Path) -> None:
    mine = tmp_path / "my_configs"
    (mine / "experiment").mkdir(parents=True)
    (mine / "model").mkdir()
    (mine / "model" / "tiny_vgg.yaml").write_text("defaults:\n  - vgg11_bn\n  - _self_\n\ncfg: [8, M, 16, M]\n"
                                                  "classifier_hidden: []\nclassifier_dropout: 0.0\n")
    (mine / "experiment" / "smoke.yaml").write_text("# @package _global_\ndefaults:\n  - override /model: tiny_vgg\n"
                                                    "  - override /dataset: synthetic\n\ntrainer:\n  epochs: 1\n")
    res = installed(site, "cnnlab-run", "--config-dir", str(mine), "experiment=smoke", "logger=none", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    (run_dir,) = (tmp_path / "outputs" / "runs").iterdir()
    assert "cfg:\n  - 8\n  - M\n  - 16\n  - M" in (run_dir / "config_resolved.yaml").read_text()
