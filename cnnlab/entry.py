"""What the command-line entry points (`cnnlab.run`, `cnnlab.evaluate`) share: the config's composition checked
before Hydra starts, and one line with its exit code for a user error or a stop: 1 for an error, 128 + the signal
for Ctrl-C or SIGTERM (also while the process starts up or reads its data)."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import TypeVar

from cnnlab import CnnlabError, Interrupted
from cnnlab.config.compose_errors import check_composes
from cnnlab.rundir import RunDir, SweepDir, remove_if_empty

log = logging.getLogger("cnnlab")
T = TypeVar("T")


def command(main: Callable[[], object], config_name: str) -> None:
    """Run a Hydra app from the command line: `--version` answered, the composition checked, stops in one line."""
    if "--version" in sys.argv[1:]:
        from cnnlab.track.provenance import version_line

        print(version_line())
        return
    check_composes(sys.argv[1:], config_name)

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise Interrupted(signum)

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, interrupt)  # until a Runtime takes the signals over
    try:
        main()
    except (KeyboardInterrupt, Interrupted) as e:
        stop = e if isinstance(e, Interrupted) else Interrupted(signal.SIGINT)
        print(stop, file=sys.stderr)
        sys.exit(stop.exit_code)


def reported(work: Callable[[], T], out_dir: Path, sweep: SweepDir | None = None) -> T | None:
    """A task's work, with its faults in one line: a CnnlabError exits 1 (in a sweep, the job's failure is logged
    and recorded in the sweep's jobs.jsonl, and the sweep goes on: a sweeper sees a job that returned nothing); a
    stop exits 128 + its signal, saying how to continue. A dir made for the task and left empty is removed."""
    try:
        result = work()
    except CnnlabError as e:
        remove_if_empty(out_dir)
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        if sweep is None:
            sys.exit(f"error: {e}")
        log.error("error: %s", e)
        sweep.record_job("failed", error=str(e))
        return None
    except Interrupted as e:
        remove_if_empty(out_dir)
        last = RunDir(out_dir).last
        held = f"; {last} holds the run: continue it with checkpoints.resume=auto hydra.run.dir={out_dir}" \
            if last.exists() else ""
        print(f"{e}{held}", file=sys.stderr)
        if e.then is not None:
            e.then()  # submitit's preemption handling: requeue this job into the same run dir, and exit
        sys.exit(e.exit_code)
    if sweep is not None:
        sweep.record_job("finished", objective=result)
    return result

