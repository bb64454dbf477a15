"""segkit: semantic-segmentation training with PyTorch Lightning and Hydra."""

import re

__version__ = "0.1.0"


class SegkitError(Exception):
    """A user-facing error: the message names the file or config key at fault and says what to do.

    Entry points print it as one line instead of a traceback. Raised in a DataLoader worker, it comes back through
    torch's ``ExceptionWrapper``, which rebuilds it from one string holding the worker's whole traceback; the message
    is cut back here to what was raised (the traceback stays in ``worker_traceback``), so the user reads one line.
    """

    def __init__(self, *args: object) -> None:
        self.worker_traceback: str | None = None
        if len(args) == 1 and isinstance(args[0], str) and _WORKER_HEADER.match(args[0]):
            self.worker_traceback = args[0]
            args = (_raised_message(args[0], type(self)),)
        super().__init__(*args)


class NonFiniteLossError(SegkitError):
    """Training produced a NaN/inf loss (or weights): the run stops with its last good checkpoint kept. In a sweep
    the trial counts as failed rather than ending the sweep."""


# torch.utils.data's worker error: "Caught <Type> in DataLoader worker process <n>.\nOriginal Traceback ..."
_WORKER_HEADER = re.compile(r"Caught \w+ in DataLoader worker process \d+\.\nOriginal Traceback")


def _raised_message(wrapped: str, kind: type) -> str:
    """The message of the exception raised in the worker: what follows the last ``<module>.<Type>: `` line of its
    formatted traceback (the error itself comes last, after any chained causes)."""
    for prefix in (f"\n{kind.__module__}.{kind.__qualname__}: ", f"\n{kind.__qualname__}: "):
        start = wrapped.rfind(prefix)
        if start != -1:
            return wrapped[start + len(prefix) :].rstrip("\n")
    return wrapped


def register_net(builder, name=None):
    """Let eval, predict and export rebuild checkpoints of your own net: ``segkit.register_net(MyNet)`` once, in
    the module that defines it (see ``segkit.safe_config.register_net``)."""
    from segkit.safe_config import register_net as register

    return register(builder, name)
