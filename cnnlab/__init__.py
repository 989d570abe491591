"""cnnlab: train, sweep and compare convolutional networks on CIFAR-style image data."""

from pathlib import Path

__version__ = "0.2.0"

# The configs: cnnlab/conf/ in an installed wheel (setup.py copies them there), else conf/ beside the package
# (a checkout, or an editable install).
_PACKAGED = Path(__file__).resolve().parent / "conf"
CONF_DIR = str(_PACKAGED if _PACKAGED.is_dir() else _PACKAGED.parent.parent / "conf")


class CnnlabError(Exception):
    """A problem the user can fix (bad config, missing data, bad checkpoint): reported in one line."""
