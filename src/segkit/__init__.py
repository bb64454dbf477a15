"""segkit: semantic-segmentation training with PyTorch Lightning and Hydra."""

__version__ = "0.1.0"


class SegkitError(Exception):
    """A user-facing error: the message names the file or config key at fault and says what to do.

    Entry points print it as one line instead of a traceback.
    """


class NonFiniteLossError(SegkitError):
    """Training produced a NaN/inf loss (or weights): the run stops with its last good checkpoint kept. In a sweep
    the trial counts as failed rather than ending the sweep."""
