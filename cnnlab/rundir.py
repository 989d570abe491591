"""The one place that names every file a run leaves in its run dir."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import yaml

from cnnlab import CnnlabError

log = logging.getLogger("cnnlab")


@dataclass(frozen=True)
class RunDir:
    path: Path

    @property
    def config(self) -> Path:
        """The config with every interpolation resolved (what ran)."""
        return self.path / "config_resolved.yaml"

    @property
    def hydra(self) -> Path:
        """Hydra's own record: config.yaml, hydra.yaml and overrides.yaml (the command line's overrides)."""
        return self.path / ".hydra"

    @property
    def metrics(self) -> Path:
        """One JSON record per log interval and per epoch (cnnlab.track.metrics)."""
        return self.path / "metrics.jsonl"

    @property
    def summary(self) -> Path:
        """The run's figures and status (cnnlab.track.metrics)."""
        return self.path / "summary.json"

    @property
    def last(self) -> Path:
        """The resumable checkpoint (cnnlab.train.checkpoint)."""
        return self.path / "last.pt"

    @property
    def best(self) -> Path:
        """The weights of the best-validation epoch (cnnlab.train.checkpoint)."""
        return self.path / "best.pt"

    @property
    def log(self) -> Path:
        """The run's log (what the console shows, without progress bars)."""
        return self.path / "run.log"

    @property
    def wandb(self) -> Path:
        """The W&B run's files (offline runs sync from here with `wandb sync`)."""
        return self.path / "wandb"

    def records(self) -> list[Path]:
        """The files that make a run (resumable or finished) that exist here: a new run must not replace them."""
        return [f for f in (self.last, self.best, self.metrics, self.summary) if f.exists()]

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        """Hold the run dir for this process (creating it if needed): a second live run into it is refused in one
        line. A dir made here is removed again on leaving if nothing was written into it."""
        made = [d for d in (self.path, *self.path.parents) if not d.exists()]  # deepest first
        self.path.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):  # a filesystem without flock: go on unlocked
                    log.warning("cannot lock the run dir %s (%s): nothing stops a second run into it", self.path, e)
                else:
                    raise CnnlabError(f"run dir {self.path} is in use by another live run: wait for it to end, or "
                                      "pick another hydra.run.dir") from None
            yield
        finally:
            os.close(fd)
            for d in made:
                with contextlib.suppress(OSError):
                    d.rmdir()


@dataclass(frozen=True)
class SweepDir:
    """A multirun's dir, as one of its jobs sees it: the jobs' dirs (0, 1, ...) and jobs.jsonl, one record per
    job that finished or failed (its number, its overrides, its status, and its objective or its error)."""

    path: Path
    job: int = 0
    overrides: tuple[str, ...] = ()

    @property
    def jobs(self) -> Path:
        return self.path / "jobs.jsonl"

    def record_job(self, status: str, **values: object) -> None:
        record = {"job": self.job, "overrides": list(self.overrides), "status": status, **values}
        self.path.mkdir(parents=True, exist_ok=True)
        with open(self.jobs, "a") as f:  # one short append per job: whole lines, also from parallel workers
            f.write(json.dumps(record) + "\n")

    @property
    def config(self) -> Path:
        """Hydra's record of the sweep: its config, with the command line's overrides as typed."""
        return self.path / "multirun.yaml"

    def varying(self, overrides: list[str]) -> list[str]:
        """A job's overrides less those every job of the sweep shares (as typed on the command line)."""
        try:
            shared = set(yaml.safe_load(self.config.read_text())["hydra"]["overrides"]["task"])
        except (OSError, KeyError, TypeError, yaml.YAMLError):
            return overrides
        return [o for o in overrides if o not in shared]

    def records(self) -> list[dict]:
        if not self.jobs.exists():
            return []
        return [json.loads(line) for line in self.jobs.read_text().splitlines() if line.strip()]


FLOOR_ENV = "CNNLAB_EXISTING_DIR"  # set before Hydra creates a run or sweep dir; inherited by launcher workers


def note_existing_ancestor(path: Path) -> Path:
    """Before Hydra creates `path`: remember its deepest existing ancestor (or itself), so that a refused run
    removes only the dirs Hydra made for it, never one the user made."""
    existing = path.resolve()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    os.environ[FLOOR_ENV] = str(existing)
    return existing


def remove_if_empty(path: Path) -> None:
    """Remove a dir Hydra created for a run that failed before writing anything into it, and its parents
    (outputs/runs, outputs) where that leaves them empty, down to the dir that existed before the launch (the
    launch dir where that is not known)."""
    floor = Path(os.environ.get(FLOOR_ENV) or Path.cwd()).resolve()
    path = path.resolve()
    while path != floor and floor in path.parents:
        try:
            path.rmdir()
        except OSError:
            return
        path = path.parent
