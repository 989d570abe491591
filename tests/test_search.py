"""cnnlab's Optuna sweeper (cnnlab/search.py, hydra/sweeper=optuna) with real Optuna, real worker processes and
real trial jobs: workers sharing one journal, pruning, re-runs, a killed trial's heartbeat, failures."""

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
from conftest import QUICK, ROOT, run_cli, wandb_run

from cnnlab.compare import main as compare_main
from cnnlab.train import checkpoint

optuna = pytest.importorskip("optuna")
pytestmark = pytest.mark.slow

SEARCH = ["-m", "hydra/sweeper=optuna", *QUICK, "trainer.epochs=2"]


def study(tmp_path: Path, name: str = "search.None.vgg11_bn.synthetic.adam.none") -> optuna.Study:
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(
        str(tmp_path / "outputs" / "optuna.journal")))
    return optuna.load_study(study_name=name, storage=storage)


def sweeps(tmp_path: Path) -> list[Path]:
    return sorted((tmp_path / "outputs" / "multirun").iterdir())


def test_three_workers_share_one_journal_and_run_every_trial_once(tmp_path: Path) -> None:
    """Three joblib workers, six trials: each trial is asked for once, runs once, into its own dir, the workers
    overlap (no batch barrier holds one back while another trains), and they share the cores out among their
    trials rather than each taking all of them."""
    res = run_cli(*SEARCH, "hydra/launcher=local_parallel", "hydra.launcher.n_jobs=3", "hydra.sweeper.n_jobs=3",
                  "hydra.sweeper.n_trials=6", "optim.lr=tag(log, interval(1e-4, 1e-2))", cwd=tmp_path, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    trials = study(tmp_path).get_trials()
    assert [t.number for t in trials] == list(range(6)) and all(t.state.name == "COMPLETE" for t in trials)
    assert len({t.params["optim.lr"] for t in trials}) == 6
    (sweep,) = sweeps(tmp_path)
    jobs = [json.loads(line) for line in (sweep / "jobs.jsonl").read_text().splitlines()]
    assert sorted(job["job"] for job in jobs) == list(range(6)) and {job["status"] for job in jobs} == {"finished"}
    for t in trials:
        summary = json.loads((sweep / f"trial_{t.number}" / "summary.json").read_text())
        assert summary["best_val_acc"] == pytest.approx(t.value)
        assert summary["machine"].endswith(f", {max(1, os.cpu_count() // 3)} threads")
    spans = sorted((t.datetime_start, t.datetime_complete) for t in trials)
    assert any(start < end for (_, end), (start, _) in zip(spans, spans[1:], strict=False))  # running side by side
    assert {p.name for p in sweep.glob("*.png")} >= {"optimization_history.png", "param_importances.png"}
    assert yaml.safe_load((sweep / "optimization_results.yaml").read_text())["best_value"] == \
        max(t.value for t in trials)


def test_a_pruner_stops_a_bad_trial_at_the_end_of_an_epoch(tmp_path: Path) -> None:
    """An lr of 1e-9 leaves the network at chance: the threshold pruner stops it after epoch 1 of 3, with its
    last.pt written, and every record says so. (Seen to fail: should_stop never asked.)"""
    res = run_cli(*SEARCH, "trainer.epochs=3", "dataset.source.train_size=1024", "logger=wandb",
                  "logger.mode=offline", "hydra.sweeper.n_trials=2", "optim.lr=choice(1e-9, 5e-3)",
                  "hydra.sweeper.sampler._target_=optuna.samplers.BruteForceSampler",
                  "+hydra.sweeper.pruner._target_=optuna.pruners.ThresholdPruner", "+hydra.sweeper.pruner.lower=0.2",
                  cwd=tmp_path, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    by_lr = {t.params["optim.lr"]: t for t in study(tmp_path).get_trials()}
    bad, good = by_lr[1e-9], by_lr[5e-3]
    assert bad.state.name == "PRUNED" and list(bad.intermediate_values) == [1]
    assert good.state.name == "COMPLETE" and list(good.intermediate_values) == [1, 2]  # the last epoch: its value
    (sweep,) = sweeps(tmp_path)
    run = sweep / f"trial_{bad.number}"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "pruned" and summary["pruned_at_epoch"] == 1
    assert checkpoint.load(run / "last.pt")["progress"]["epoch"] == 2  # epoch 1 done: a resume would start epoch 2
    assert wandb_run(run)["summary"]["status"] == "pruned"
    jobs = {job["job"]: job for job in map(json.loads, (sweep / "jobs.jsonl").read_text().splitlines())}
    assert jobs[bad.number]["status"] == "pruned" and jobs[bad.number]["pruned_at_epoch"] == 1
    assert jobs[good.number]["status"] == "finished"
    assert (sweep / "intermediate_values.png").is_file()
    out = subprocess.run([sys.executable, "-m", "cnnlab.compare", str(sweep)], capture_output=True, text=True,
                         cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr
    (row,) = [line for line in out.stdout.splitlines() if "optim.lr=1e-09" in line]
    assert "1 (1 pruned)" in row


def test_running_a_search_again_adds_new_distinct_trials(tmp_path: Path) -> None:
    """The same command twice: one study of 4 trials, none replaying another's values, and trial dirs that never
    collide. A different model is a different study."""
    for model in ("vgg11_bn", "vgg11_bn", "vgg13_bn"):
        res = run_cli("hparams_search=optuna_lr_wd", *QUICK[1:], f"model={model}", "trainer.epochs=1",
                      "hydra.sweeper.n_trials=2", cwd=tmp_path, timeout=600)
        assert res.returncode == 0, res.stderr[-3000:]
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(
        str(tmp_path / "outputs" / "optuna.journal")))
    names = sorted(s.study_name for s in optuna.get_all_study_summaries(storage))
    assert names == ["optuna_lr_wd.None.vgg11_bn.synthetic.adam.none", "optuna_lr_wd.None.vgg13_bn.synthetic.adam.none"]
    trials = study(tmp_path, names[0]).get_trials()
    assert [t.number for t in trials] == [0, 1, 2, 3]
    assert len({tuple(sorted(t.params.items())) for t in trials}) == 4
    first, second, _ = sweeps(tmp_path)
    assert sorted(p.name for p in first.glob("trial_*")) == ["trial_0", "trial_1"]
    assert sorted(p.name for p in second.glob("trial_*")) == ["trial_2", "trial_3"]


def test_a_killed_trial_does_not_stay_running(tmp_path: Path) -> None:
    """SIGKILL a search mid-trial, worker and job together (a preempted node): its trial stays RUNNING only until
    its heartbeat goes stale; the next command fails it, retries its values, and goes on. (Seen to fail: the
    stale trials failed only after the command has counted the study's trials, so the retry never ran.)"""
    args = [*SEARCH, "trainer.epochs=30", "hydra.sweeper.n_trials=1", "optim.lr=interval(1e-3, 1e-2)",
            "hydra.sweeper.heartbeat_interval=1", "hydra.sweeper.grace_period=3", "hydra.sweeper.max_retry=1"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    search = subprocess.Popen([sys.executable, "-m", "cnnlab.run", *args], cwd=tmp_path, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 120
    while not list((tmp_path / "outputs").glob("multirun/*/trial_0/metrics.jsonl")) and time.time() < deadline:
        time.sleep(0.5)
    os.killpg(search.pid, signal.SIGKILL)
    search.wait()
    (killed,) = study(tmp_path).get_trials()
    assert killed.state.name == "RUNNING"
    time.sleep(4)  # past the grace period
    res = run_cli(*[a.replace("trainer.epochs=30", "trainer.epochs=1") for a in args], cwd=tmp_path, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    trials = study(tmp_path).get_trials()
    assert [t.state.name for t in trials] == ["FAIL", "COMPLETE", "COMPLETE"]
    assert trials[1].params == killed.params and trials[1].system_attrs["failed_trial"] == 0  # the retry


def test_an_inline_search_space_on_the_command_line(tmp_path: Path) -> None:
    """No search config: hydra/sweeper=optuna and the spaces typed as overrides (Hydra's grammar)."""
    res = run_cli(*SEARCH, "trainer.epochs=1", "hydra.sweeper.n_trials=3", "optim.lr=tag(log, interval(1e-4, 1e-2))",
                  "data.batch_size=choice(32, 64)", "trainer.loss.label_smoothing=range(0, 0.3, 0.1)", cwd=tmp_path,
                  timeout=600)
    assert res.returncode == 0 and "Traceback" not in res.stderr, res.stderr[-3000:]
    trials = study(tmp_path).get_trials()
    assert len(trials) == 3 and all(t.state.name == "COMPLETE" for t in trials)
    for t in trials:
        assert 1e-4 <= t.params["optim.lr"] <= 1e-2 and t.params["data.batch_size"] in (32, 64)
        assert any(t.params["trainer.loss.label_smoothing"] == pytest.approx(v) for v in (0.0, 0.1, 0.2))
        (sweep,) = sweeps(tmp_path)
        config = yaml.safe_load((sweep / f"trial_{t.number}" / ".hydra" / "config.yaml").read_text())
        assert config["data"]["batch_size"] == t.params["data.batch_size"]


def test_compare_reads_a_search_of_two_workers_sharing_the_cores(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture) -> None:
    """Two workers as threads of the search (Hydra's own launcher): each trial gets half the cores. (Seen to fail:
    OMP_NUM_THREADS not set for the trials.)"""
    res = run_cli(*SEARCH, "trainer.epochs=1", "hydra.sweeper.n_trials=2", "optim.lr=choice(1e-3, 3e-3)",
                  "hydra.sweeper.sampler._target_=optuna.samplers.BruteForceSampler", "hydra.sweeper.n_jobs=2",
                  cwd=tmp_path, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    (sweep,) = sweeps(tmp_path)
    for trial in ("trial_0", "trial_1"):
        machine = json.loads((sweep / trial / "summary.json").read_text())["machine"]
        assert machine.endswith(f", {max(1, os.cpu_count() // 2)} threads")
    compare_main([str(sweep)])
    out = capsys.readouterr().out
    assert "optim.lr=0.001" in out and "optim.lr=0.003" in out


def test_an_rdb_url_as_storage(tmp_path: Path) -> None:
    """SQLite through Optuna's RDB storage (PostgreSQL and MySQL take the same path), with its own heartbeat."""
    url = f"sqlite:///{tmp_path}/studies.db"
    res = run_cli(*SEARCH, "trainer.epochs=1", "hydra.sweeper.n_trials=2", "optim.lr=interval(1e-3, 1e-2)",
                  f"hydra.sweeper.storage={url}", "hydra.sweeper.study_name=rdb", cwd=tmp_path, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    trials = optuna.load_study(study_name="rdb", storage=url).get_trials()
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE"]
    assert not (tmp_path / "outputs" / "optuna.journal").exists()
