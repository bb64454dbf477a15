"""Fixtures of the model tests: one CPU thread, and a local ResNet-50 weights file for ``weights_path``."""

from __future__ import annotations

import pytest
import torch
import torchvision


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """The tensors here are small: one thread skips OpenMP barrier waits, several times faster on busy shared
    cores (under xdist every worker already runs one thread)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def resnet50_file(tmp_path_factory):
    """A torchvision ResNet-50 state dict on disk (random init): what ``weights_path`` points at offline."""
    path = tmp_path_factory.mktemp("weights") / "resnet50.pth"
    torch.save(torchvision.models.resnet50().state_dict(), path)
    return path
