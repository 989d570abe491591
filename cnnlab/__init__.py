"""cnnlab: train, sweep and compare convolutional networks on CIFAR-style image data."""

__version__ = "0.1.0"


class CnnlabError(Exception):
    """A problem the user can fix (bad config, missing data, bad checkpoint): reported in one line."""
