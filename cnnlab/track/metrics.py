"""metrics.jsonl: one JSON object per logged step or epoch, plus summary.json; written by the trainer's
logger and read back by `cnnlab.compare` and the tests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cnnlab.atomic import atomic_write_text

METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"


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


class MetricsFile:
    """Appends records to `<run_dir>/metrics.jsonl`. On resume from a checkpoint taken after `step` steps with
    `next_epoch` to run, records the stopped run wrote after that checkpoint are dropped, so the file reads as
    if the run had never stopped."""

    def __init__(self, run_dir: str | Path, resume_at: tuple[int, int] | None = None) -> None:
        self.path = Path(run_dir) / METRICS_FILE
        self.summary_path = Path(run_dir) / SUMMARY_FILE
        self.summary_values: dict[str, Any] = {}
        if resume_at is not None and self.path.exists():
            step, next_epoch = resume_at
            kept = [r for r in read_metrics(self.path)
                    if (r["step"] <= step if r["kind"] == "step" else r["epoch"] < next_epoch)]
            atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))
            if self.summary_path.exists():
                self.summary_values = json.loads(self.summary_path.read_text())
        elif self.path.exists():
            self.path.unlink()
        self.file = open(self.path, "a")  # noqa: SIM115 - open for the whole run, closed in close()

    def log(self, record: dict[str, Any]) -> None:
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()

    def summary(self, values: dict[str, Any]) -> None:
        self.summary_values.update(values)
        atomic_write_text(self.summary_path, json.dumps(self.summary_values, indent=2) + "\n")

    def close(self, ok: bool = True) -> None:
        self.summary({"status": "finished" if ok else "failed"})
        self.file.close()
