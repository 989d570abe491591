"""cnnlab's Optuna searches (`hydra/sweeper=optuna`, conf/hydra/sweeper/optuna.yaml): one study on disk that
`n_jobs` workers share, each asking it for its next trial as soon as its last one ends.

A worker runs each trial as a plain `python -m cnnlab.run` of the search's overrides and the trial's values, into
`<sweep dir>/trial_<number>`; the trial's job reports its validation accuracy to the study after every evaluated
epoch, stops at that epoch's end if the pruner says so, and tells the study how it ended (COMPLETE, PRUNED or FAIL).
While it trains it records a heartbeat: a trial whose job was killed (SIGKILL, preemption) goes stale, and the next
worker to ask fails it, or hands it on to be retried (`max_retry`).

The study is Optuna's journal file by default (no server; it works on a cluster's shared filesystem), or any RDB
URL. Running the same command again adds `n_trials` more trials to the same study, each worker with a sampler seeded
from `sampler.seed`, the study's size and its own index, so that no run replays another's draws.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from cnnlab.rundir import SweepDir

log = logging.getLogger("cnnlab")
LINK_ENV = "CNNLAB_TRIAL"  # the trial a job runs for, set by the worker that started it


@dataclass(frozen=True)
class Search:
    """What every worker needs, as plain data (launchers pickle it to their workers)."""

    study_name: str
    storage: str  # a journal file, or an RDB URL (sqlite:///..., postgresql://..., mysql://...)
    direction: str
    space: dict[str, str]  # each searched key and its search (`interval(1e-4, 1e-1)`, `choice(a, b)`, ...)
    fixed: list[str]  # the overrides every trial shares
    hydra_flags: list[str]  # the command line's --config-dir, --config-name, ... for each trial's command
    sampler: dict[str, Any] | None
    pruner: dict[str, Any] | None
    n_trials: int  # the trials this command adds
    stop_at: int  # the study's size at which the workers stop: its size at the start plus n_trials
    sweep_dir: str
    launch_dir: str
    heartbeat_interval: int
    grace_period: int
    max_retry: int
    threads: int | None  # each trial's CPU threads (OMP_NUM_THREADS), where the workers share this machine's cores
    metric: str  # the epoch figure reported to a pruner: val_acc
    objective: str  # what a trial returns (conf/config.yaml, objective): the pictures' axis


def quiet_optuna() -> Any:
    """optuna, its INFO lines and its notes on experimental features silenced (cnnlab logs what happens)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")
    return optuna


# ------------------------------------------------------------------------------------------ the space
def distributions(space: Mapping[str, str]) -> dict[str, Any]:
    """Optuna's distribution of each searched key, from Hydra's override grammar: `interval(a, b)` (floats, or
    integers when both ends are), `tag(log, interval(a, b))`, `range(a, b[, step])` and `choice(...)` or `a,b,c`
    (categorical)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import IntervalSweep, Transformer
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    parser = OverridesParser.create()
    result = {}
    for key, text in space.items():
        override = parser.parse_override(f"{key}={text}")
        value = override.value()
        if isinstance(value, IntervalSweep):
            log_scale = "log" in value.tags
            if isinstance(value.start, int) and isinstance(value.end, int):
                result[key] = IntDistribution(value.start, value.end, log=log_scale)
            else:
                result[key] = FloatDistribution(float(value.start), float(value.end), log=log_scale)
        else:
            result[key] = CategoricalDistribution(list(override.sweep_iterator(transformer=Transformer.encode)))
    return result


def split_arguments(arguments: list[str], params: Mapping[str, str]) -> tuple[dict[str, str], list[str]]:
    """The searched keys and the overrides every trial shares: the configured params, then the command line's
    overrides (which win); a plain value among the params is shared, as one on the command line is."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    typed = [f"{key}={value}" for key, value in params.items()] + list(arguments)
    space, fixed = {}, {}
    for text, override in zip(typed, OverridesParser.create().parse_overrides(typed), strict=True):
        key = override.get_key_element()
        space.pop(key, None)
        fixed.pop(key, None)
        (space if override.is_sweep_override() else fixed)[key] = text.split("=", 1)[1] \
            if override.is_sweep_override() else text
    return space, list(fixed.values())


def trial_overrides(params: Mapping[str, Any]) -> list[str]:
    return [f"{key}={params[key]}" for key in sorted(params)]


# ------------------------------------------------------------------------------------------- the study
def storage(spec: str, heartbeat_interval: int, grace_period: int, max_retry: int) -> Any:
    """An RDB storage for a URL, else a journal file; both with Optuna's heartbeat, and a stale trial retried up to
    `max_retry` times."""
    optuna = quiet_optuna()
    retry = optuna.storages.RetryFailedTrialCallback(max_retry=max_retry) if max_retry else None
    if "://" in spec:
        return optuna.storages.RDBStorage(spec, heartbeat_interval=heartbeat_interval, grace_period=grace_period,
                                          heartbeat_stale_trial_callback=retry)
    Path(spec).parent.mkdir(parents=True, exist_ok=True)
    return heartbeat_journal()(optuna.storages.journal.JournalFileBackend(spec), heartbeat_interval, grace_period,
                               retry)


def heartbeat_journal() -> type:
    """JournalStorage with the heartbeat RDBStorage has (Optuna's fail_stale_trials then serves it as it serves an
    RDB): each running trial's last beat is a system attribute of the trial."""
    import optuna
    from optuna.storages._heartbeat import BaseHeartbeat

    class HeartbeatJournalStorage(optuna.storages.JournalStorage, BaseHeartbeat):
        def __init__(self, backend: Any, heartbeat_interval: int, grace_period: int, callback: Any) -> None:
            super().__init__(backend)
            self.heartbeat_interval, self.grace_period, self.callback = heartbeat_interval, grace_period, callback

        def record_heartbeat(self, trial_id: int) -> None:
            self.set_trial_system_attr(trial_id, "cnnlab:heartbeat", time.time())

        def _get_stale_trial_ids(self, study_id: int) -> list[int]:
            now = time.time()
            running = self.get_all_trials(study_id, deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
            return [t._trial_id for t in running
                    if now - t.system_attrs.get("cnnlab:heartbeat", t.datetime_start.timestamp()) > self.grace_period]

        def get_heartbeat_interval(self) -> int:
            return self.heartbeat_interval

        def get_heartbeat_stale_trial_callback(self) -> Any:
            return self.callback

    return HeartbeatJournalStorage


def open_study(search: Search, seed_offset: int = 0) -> Any:
    from hydra.utils import instantiate

    optuna = quiet_optuna()
    sampler = None
    if search.sampler is not None:
        node = dict(search.sampler)
        if node.get("seed") is not None:
            node["seed"] = (int(node["seed"]) + seed_offset) % 2**32
        sampler = instantiate(node)
    pruner = instantiate(search.pruner) if search.pruner is not None else optuna.pruners.NopPruner()
    return optuna.create_study(study_name=search.study_name, storage=storage(
        search.storage, search.heartbeat_interval, search.grace_period, search.max_retry), sampler=sampler,
        pruner=pruner, direction=search.direction, load_if_exists=True)


def study_size(search: Search) -> int:
    """The study's size once its stale trials are failed (and their retries queued): where this command starts."""
    optuna = quiet_optuna()
    study = open_study(search)
    optuna.storages.fail_stale_trials(study)
    return len(study.get_trials(deepcopy=False))


# ------------------------------------------------------------------------------------------ a worker
class Stopped(Exception):
    """A trial's job was stopped by a signal: the worker stops too."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


def work(search: Search, worker: int) -> int:
    """Ask the study for trials and run them until it holds `stop_at` trials; return how many this worker ran."""
    import optuna

    study = open_study(search, seed_offset=1_000_003 * search.stop_at + worker)
    space = distributions(search.space)
    lock = optuna.storages.journal.JournalFileOpenLock(str(Path(search.sweep_dir) / ".ask"))
    ran = 0
    while True:
        optuna.storages.fail_stale_trials(study)
        with held(lock):
            if len(study.get_trials(deepcopy=False)) >= search.stop_at:
                return ran
            trial = study.ask(space)
        ran += 1
        code = run_trial(search, trial)
        state = study._storage.get_trial(trial._trial_id).state
        if state == optuna.trial.TrialState.RUNNING:  # its job ended before telling (killed, or never started)
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
        if code in (130, 143):
            raise Stopped(code)


@contextlib.contextmanager
def held(lock: Any) -> Iterator[None]:
    lock.acquire()
    try:
        yield
    finally:
        lock.release()


def run_trial(search: Search, trial: Any) -> int:
    """The trial's job: `python -m cnnlab.run` with the search's and the trial's overrides; its exit code."""
    trial_dir = Path(search.sweep_dir) / f"trial_{trial.number}"
    overrides = trial_overrides(trial.params)
    link = {"storage": search.storage, "study": search.study_name, "trial_id": trial._trial_id,
            "number": trial.number, "pruner": search.pruner, "metric": search.metric,
            "heartbeat_interval": search.heartbeat_interval, "grace_period": search.grace_period,
            "max_retry": search.max_retry, "sweep_dir": search.sweep_dir, "overrides": overrides}
    log.info("trial %d: %s", trial.number, " ".join(overrides))
    command = [sys.executable, "-m", "cnnlab.run", *search.hydra_flags, *search.fixed, *overrides, "hydra.mode=RUN",
               f"hydra.run.dir={trial_dir}"]
    env = {**os.environ, LINK_ENV: json.dumps(link)}
    if search.threads and "OMP_NUM_THREADS" not in os.environ:  # workers x threads beyond the cores slow all
        env["OMP_NUM_THREADS"] = str(search.threads)
    return subprocess.run(command, cwd=search.launch_dir, env=env).returncode


# ------------------------------------------------------------------------------------------ a trial's job
class TrialLink:
    """The job side of a trial: reports each evaluated epoch to the study, says when the pruner stops it, beats
    while it trains, and tells the study how it ended."""

    def __init__(self, spec: dict[str, Any]) -> None:
        from hydra.utils import instantiate

        optuna = quiet_optuna()
        self.spec = spec
        self.storage = storage(spec["storage"], spec["heartbeat_interval"], spec["grace_period"], spec["max_retry"])
        pruner = instantiate(spec["pruner"]) if spec["pruner"] is not None else optuna.pruners.NopPruner()
        self.study = optuna.load_study(study_name=spec["study"], storage=self.storage, pruner=pruner)
        self.trial = optuna.Trial(self.study, spec["trial_id"])
        self.pruned_at: int | None = None
        self._beating = threading.Event()

    @property
    def number(self) -> int:
        return self.spec["number"]

    @property
    def study_name(self) -> str:
        return self.spec["study"]

    @property
    def overrides(self) -> list[str]:
        return self.spec["overrides"]

    @property
    def sweep_dir(self) -> Path:
        return Path(self.spec["sweep_dir"])

    def beat(self) -> None:
        """Record a heartbeat now and every heartbeat_interval seconds, until the trial ends (rank 0's job)."""
        if not self.reporting:
            return

        def loop() -> None:
            while not self._beating.wait(self.spec["heartbeat_interval"]):
                self.storage.record_heartbeat(self.spec["trial_id"])

        self.storage.record_heartbeat(self.spec["trial_id"])
        threading.Thread(target=loop, daemon=True, name="cnnlab-heartbeat").start()

    def should_stop(self, record: dict[str, Any]) -> bool:
        """After an epoch: report its figure and ask the pruner; True stops the run at this epoch's end."""
        value = record.get(self.spec["metric"])
        if value is None or not self.reporting:
            return False
        self.trial.report(value, step=record["epoch"])
        if self.trial.should_prune():
            self.pruned_at = record["epoch"]
            return True
        return False

    def record_job(self, status: str, **values: Any) -> None:
        """How the job ended (cnnlab.entry.reported): in the sweep dir's jobs.jsonl, and told to the study."""
        if not self.reporting:
            return
        pruned = {"status": "pruned", "pruned_at_epoch": self.pruned_at} if self.pruned_at is not None else {}
        SweepDir(self.sweep_dir, self.number, tuple(self.overrides)).record_job(
            pruned.pop("status", status), **values, **pruned)
        self.tell(values.get("objective"), values.get("error"))

    @property
    def reporting(self) -> bool:
        return os.environ.get("RANK", "0") == "0"  # under torchrun, rank 0 speaks for the trial

    def tell(self, objective: float | None, error: str | None = None) -> None:
        import optuna

        self._beating.set()
        if error is not None:
            self.trial.set_user_attr("error", error)
        if self.pruned_at is not None:
            self.study.tell(self.trial, state=optuna.trial.TrialState.PRUNED)
        elif error is None and objective is not None:
            self.study.tell(self.trial, objective)
        else:
            self.study.tell(self.trial, state=optuna.trial.TrialState.FAIL)


def trial_link() -> TrialLink | None:
    spec = os.environ.get(LINK_ENV)
    return TrialLink(json.loads(spec)) if spec else None


# ------------------------------------------------------------------------------------------ the end
def summarise(search: Search, first: int) -> str | None:
    """One line on this command's trials and the study's best (also in the sweep dir's optimization_results.yaml,
    beside the pictures); an error line instead if every one of them failed."""
    import optuna

    study = open_study(search)
    trials = [t for t in study.get_trials(deepcopy=False) if t.number >= first]
    states = {s: sum(t.state == s for t in trials) for s in optuna.trial.TrialState}
    if trials and states[optuna.trial.TrialState.FAIL] == len(trials):
        failed = trials[0]
        why = failed.user_attrs.get("error", "its job ended without a result (see its run dir)")
        return (f"error: all {len(trials)} trials of search {search.study_name} failed; the first, trial "
                f"{failed.number} ({' '.join(trial_overrides(failed.params))}): {why}")
    done = [t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.COMPLETE]
    best = ""
    if done:
        best = f"; best: trial {study.best_trial.number}, {study.best_value:.4f} " \
               f"({' '.join(trial_overrides(study.best_trial.params))})"
        results = {"name": search.study_name, "best_trial": study.best_trial.number,
                   "best_params": study.best_trial.params, "best_value": study.best_value}
        (Path(search.sweep_dir) / "optimization_results.yaml").write_text(yaml.safe_dump(results, sort_keys=False))
    log.info("search %s: %d trials this run (%d complete, %d pruned, %d failed), %d in the study%s",
             search.study_name, len(trials), states[optuna.trial.TrialState.COMPLETE],
             states[optuna.trial.TrialState.PRUNED], states[optuna.trial.TrialState.FAIL],
             len(study.get_trials(deepcopy=False)), best)
    pictures(study, Path(search.sweep_dir), search.objective, pruning=search.pruner is not None)
    return None


def pictures(study: Any, out: Path, objective: str, pruning: bool) -> list[Path]:
    """Optuna's optimisation history, parameter importances and, with a pruner, the trials' intermediate values,
    as PNGs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as plots

    written = []
    drawn = [("optimization_history", functools.partial(plots.plot_optimization_history, target_name=objective)),
             ("param_importances", functools.partial(plots.plot_param_importances, target_name=objective))]
    for name, plot in drawn + ([("intermediate_values", plots.plot_intermediate_values)] if pruning else []):
        try:
            axes = plot(study)
        except (ValueError, RuntimeError, ZeroDivisionError) as e:  # too few finished trials for this picture
            log.info("no %s picture: %s", name, e)
            continue
        path = out / f"{name}.png"
        axes.figure.savefig(path, dpi=110, bbox_inches="tight")
        plt.close(axes.figure)
        written.append(path)
    return written
