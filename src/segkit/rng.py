"""The random number generators' states, as a checkpoint holds them: plain types and tensors only (so it loads with
``weights_only=True``), restored on resume so a resumed run continues exactly (dropout, augmentation outside the
sampler, GPU randomness)."""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from segkit import SegkitError


def rng_states() -> dict[str, Any]:
    """The states of torch's, NumPy's and Python's generators (and CUDA's, once it is in use)."""
    states = {
        "torch": torch.get_rng_state(),
        "numpy": _numpy_state_to_plain(np.random.get_state()),
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():  # GPU dropout/augmentation resume exactly too
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: Mapping[str, Any]) -> None:
    """Set the generators to ``states`` (``rng_states`` of the run being resumed); CUDA's only with as many devices
    as it was saved with. Malformed states (a file not written by segkit) are one line."""
    try:
        torch.set_rng_state(states["torch"])
        np.random.set_state(_plain_to_numpy_state(states["numpy"]))
        random.setstate(tuple(states["python"]))
        cuda = states.get("cuda")
        if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
    except (TypeError, ValueError, KeyError, IndexError, RuntimeError, AttributeError) as err:
        raise SegkitError(
            f"the checkpoint's rng_states are malformed ({type(err).__name__}); resume from a last.ckpt "
            "written by src/train.py"
        ) from None


def _numpy_state_to_plain(state: tuple) -> tuple:
    """NumPy's RNG state with plain types, so checkpoints load with ``weights_only=True``."""
    name, keys, pos, has_gauss, cached = state
    return name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)


def _plain_to_numpy_state(state: tuple) -> tuple:
    name, keys, pos, has_gauss, cached = state
    return name, keys.numpy().astype(np.uint32), pos, has_gauss, cached
