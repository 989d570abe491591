"""Where a run's figures go. The trainer talks to one small interface, `Logger`; the metrics file, the console
and W&B each implement it."""

from __future__ import annotations

from typing import Any, Protocol


class Logger(Protocol):
    def log(self, record: dict[str, Any]) -> None:
        """A record of kind 'step' (every log interval) or 'epoch' (after each evaluation)."""

    def summary(self, values: dict[str, Any]) -> None:
        """Figures of the whole run (parameter count, final and best accuracy, ...)."""

    def close(self, ok: bool = True) -> None:
        """End the run; `ok` is False when training failed."""


class Loggers:
    """Fans every call out to several loggers."""

    def __init__(self, *loggers: Logger) -> None:
        self.loggers = [lg for lg in loggers if lg is not None]

    def log(self, record: dict[str, Any]) -> None:
        for lg in self.loggers:
            lg.log(record)

    def summary(self, values: dict[str, Any]) -> None:
        for lg in self.loggers:
            lg.summary(values)

    def close(self, ok: bool = True) -> None:
        for lg in self.loggers:
            lg.close(ok)
