"""The console and metrics-file loggers (the W&B logger is read back in test_run.py)."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import pytest

from cnnlab.rundir import RunDir
from cnnlab.track.console import ConsoleLogger
from cnnlab.track.metrics import MetricsFile, read_metrics

EPOCH = {"kind": "epoch", "epoch": 1, "step": 10, "train_loss": 1.5, "train_acc": 0.4, "lr": 0.1,
         "epoch_seconds": 2.0, "images_per_second": 500.0}
STEP = {"kind": "step", "epoch": 1, "step": 5, "batch": 5, "batches": 10, "train_loss": 1.6, "train_acc": 0.3,
        "lr": 0.1, "images_per_second": 480.0}


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_console_without_a_terminal_prints_plain_epoch_lines(caplog: pytest.LogCaptureFixture) -> None:
    stream = io.StringIO()
    console = ConsoleLogger(stream)
    with caplog.at_level(logging.INFO, logger="cnnlab"):
        console.log(STEP)
        console.log(EPOCH)
        console.log({**EPOCH, "epoch": 2, "val_loss": 1.1, "val_acc": 0.6, "test_loss": 1.2, "test_acc": 0.55})
    assert stream.getvalue() == ""  # no progress bar without a TTY
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0].startswith("epoch 1 | train loss 1.5000 acc 0.4000 | lr 0.1")
    assert "| val loss 1.1000 acc 0.6000 | test loss 1.2000 acc 0.5500 |" in lines[1]


def test_console_on_a_terminal_draws_a_progress_bar() -> None:
    stream = Tty()
    ConsoleLogger(stream).log(STEP)
    assert stream.getvalue().startswith("\repoch 1 [###############               ] 5/10")


def test_metrics_file_on_resume_drops_what_came_after_the_checkpoint(tmp_path: Path) -> None:
    first = MetricsFile(RunDir(tmp_path))
    for record in (STEP, EPOCH, {**STEP, "epoch": 2, "step": 15}, {**EPOCH, "epoch": 2, "step": 20},
                   {**STEP, "epoch": 3, "step": 25}):
        first.log(record)
    first.close("failed")
    # the checkpoint was taken at step 20, but before epoch 2's record reached it (next_epoch still 2)
    resumed = MetricsFile(RunDir(tmp_path), resume_at=(20, 2))
    assert [r["step"] for r in resumed.kept] == [5, 10, 15]
    resumed.close()
    kept = read_metrics(tmp_path / "metrics.jsonl")
    assert [(r["kind"], r["epoch"], r["step"]) for r in kept] == [("step", 1, 5), ("epoch", 1, 10), ("step", 2, 15)]


def test_a_line_cut_by_a_crash_is_skipped(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"kind": "step", "step": 1}\n{"kind": "ep')
    assert read_metrics(path) == [{"kind": "step", "step": 1}]
