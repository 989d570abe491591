"""cnnlab: train, sweep and compare convolutional networks on CIFAR-style image data."""

import signal
from collections.abc import Callable
from pathlib import Path

__version__ = "0.2.0"

# The configs: cnnlab/conf/ in an installed wheel (setup.py copies them there), else conf/ beside the package
# (a checkout, or an editable install).
_PACKAGED = Path(__file__).resolve().parent / "conf"
CONF_DIR = str(_PACKAGED if _PACKAGED.is_dir() else _PACKAGED.parent.parent / "conf")
SWEEPS = Path(__file__).resolve().parent / "sweeps"  # W&B sweep definitions: wandb sweep <SWEEPS>/wandb_lr_wd.yaml


class CnnlabError(Exception):
    """A problem the user can fix (bad config, missing data, bad checkpoint): reported in one line."""


PREEMPTION_SIGNAL = signal.SIGUSR2  # submitit's: SLURM sends it before a preemption or the time limit


class Interrupted(BaseException):  # noqa: N818 - like KeyboardInterrupt: no `except Exception` may swallow it
    """A run asked to stop by a signal; `status` says why and `exit_code` is the process's (128 + the signal)."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        self.status = "preempted" if signum == PREEMPTION_SIGNAL else "interrupted"
        self.exit_code = 128 + signum
        self.then: Callable[[], None] | None = None  # what the signal's previous handler would have done
        super().__init__(f"{self.status} by {signal.Signals(signum).name}")
