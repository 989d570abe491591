"""Where a run's figures go. The trainer talks to one small interface, `Logger`; the metrics file, the console
and W&B each implement it."""

from __future__ import annotations

from typing import Any, Literal, Protocol

Status = Literal["finished", "pruned", "failed", "interrupted", "preempted"]  # pruned: a search stopped it


class Logger(Protocol):
    def log(self, record: dict[str, Any]) -> None:
        """A record of kind 'step' (every log interval) or 'epoch' (after each epoch)."""

    def summary(self, values: dict[str, Any]) -> None:
        """Figures of the whole run (parameter count, final and best accuracy, ...), added to what it has."""

    def close(self, status: Status = "finished") -> None:
        """End the run, saying how it ended."""


class Loggers:
    """Fans every call out to several loggers."""

    def __init__(self, *loggers: Logger) -> None:
        self.loggers = list(loggers)
        self.wandb_id: str | None = None  # the W&B run's id, kept in checkpoints so that a resumed run continues it
        self.outcome: Status = "finished"  # how the run ends if nothing goes wrong (a search may prune it)

    def add(self, logger: Logger, wandb_id: str | None = None) -> None:
        self.loggers.append(logger)
        self.wandb_id = wandb_id or self.wandb_id

    def log(self, record: dict[str, Any]) -> None:
        for lg in self.loggers:
            lg.log(record)

    def summary(self, values: dict[str, Any]) -> None:
        for lg in self.loggers:
            lg.summary(values)

    def close(self, status: Status = "finished") -> None:
        for lg in self.loggers:
            lg.close(status)
