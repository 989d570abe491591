"""cnnlab: train, sweep and compare convolutional networks on CIFAR-style image data."""

from pathlib import Path

__version__ = "0.1.0"

# conf/ beside the package: a checkout and an editable install (`pip install -e .`) both have it there.
CONF_DIR = str(Path(__file__).resolve().parent.parent / "conf")


class CnnlabError(Exception):
    """A problem the user can fix (bad config, missing data, bad checkpoint): reported in one line."""
