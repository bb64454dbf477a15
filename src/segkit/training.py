"""The former name of ``segkit.tasks.train``, kept as the same module for code that still imports it."""

import sys

from segkit.tasks import train as _train

sys.modules[__name__] = _train
