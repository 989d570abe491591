"""metrics.jsonl (one JSON object per logged step or epoch) and summary.json; written by the trainer's logger and
read back by `cnnlab.compare` and the tests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cnnlab.atomic import atomic_write_text
from cnnlab.rundir import RunDir
from cnnlab.track import Status


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """All complete records of a metrics file (a line cut short by a crash is skipped)."""
    records = []
    with open(path) as f:
        for line in f:
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return records


def read_summary(path: Path) -> dict[str, Any]:
    """A run's summary so far; a missing or damaged one (a crash mid-write of an older version) starts afresh."""
    try:
        values = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return values if isinstance(values, dict) else {}


class MetricsFile:
    """Appends records to the run dir's metrics.jsonl and keeps its summary.json. On resume from a checkpoint at
    `resume_at`, the records the stopped run wrote after that checkpoint are dropped, so the file reads as if the
    run had never stopped, and the summary so far is kept. `resume_at` is the checkpoint's (step, next epoch)."""

    def __init__(self, run_dir: RunDir, resume_at: tuple[int, int] | None = None) -> None:
        self.path, self.summary_path = run_dir.metrics, run_dir.summary
        self.summary_values: dict[str, Any] = {}
        self.kept: list[dict[str, Any]] = []  # the records that came before this process
        if resume_at is not None and self.path.exists():
            step, next_epoch = resume_at
            self.kept = [r for r in read_metrics(self.path) if isinstance(r, dict) and (
                r.get("kind") == "step" and isinstance(r.get("step"), int) and r["step"] <= step
                or r.get("kind") == "epoch" and isinstance(r.get("epoch"), int) and r["epoch"] < next_epoch)]
            atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in self.kept))
            self.summary_values = read_summary(self.summary_path)
        elif self.path.exists():
            self.path.unlink()
        self.file = open(self.path, "a")  # noqa: SIM115 - open for the whole run, closed in close()

    def log(self, record: dict[str, Any]) -> None:
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()

    def summary(self, values: dict[str, Any]) -> None:
        self.summary_values.update(values)
        atomic_write_text(self.summary_path, json.dumps(self.summary_values, indent=2) + "\n")

    def close(self, status: Status = "finished") -> None:
        self.summary({"status": status})
        self.file.close()
