"""Console output: a one-line progress bar on a terminal, plain log lines otherwise (never needs a TTY)."""

from __future__ import annotations

import logging
import sys
from typing import Any, TextIO

from cnnlab.track import Status

log = logging.getLogger("cnnlab")


class ConsoleLogger:
    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()

    def log(self, record: dict[str, Any]) -> None:
        if record["kind"] == "step":
            if self.tty:
                done = record["batch"] / record["batches"]
                bar = "#" * int(done * 30)
                self.stream.write(f"\repoch {record['epoch']} [{bar:<30}] {record['batch']}/{record['batches']} "
                                  f"loss {record['train_loss']:.4f} acc {record['train_acc']:.4f} "
                                  f"{record['images_per_second']:.0f} img/s")
                self.stream.flush()
            return
        if self.tty:
            self.stream.write("\r\033[K")
        evaluated = "".join(f" | {split} loss {record[f'{split}_loss']:.4f} acc {record[f'{split}_acc']:.4f}"
                            for split in ("val", "test") if f"{split}_acc" in record)
        log.info("epoch %d | train loss %.4f acc %.4f%s | lr %.3g | %.1f s, %.0f img/s", record["epoch"],
                 record["train_loss"], record["train_acc"], evaluated, record["lr"], record["epoch_seconds"],
                 record["images_per_second"])

    def summary(self, values: dict[str, Any]) -> None:
        pass

    def close(self, status: Status = "finished") -> None:
        pass
