"""Test-wide fixtures: no network, one torch thread per worker, deterministic seeds."""

from __future__ import annotations

import os
import socket

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

# pytest-xdist runs one worker per core; each worker uses one torch thread so they do not fight.
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)


class NetworkAccessError(RuntimeError):
    pass


def _refuse(*args, **kwargs):
    raise NetworkAccessError(
        "a test tried to open a network connection; the book runs offline (load from the wheels or a local path)."
    )


_ALLOWED_FAMILIES = (socket.AF_UNIX,)


class _GuardedSocket(socket.socket):
    """Sockets for local IPC (Unix domain) are fine; anything that connects to a host is refused."""

    def connect(self, address):  # noqa: D401
        if self.family in _ALLOWED_FAMILIES:
            return super().connect(address)
        _refuse()

    def connect_ex(self, address):
        if self.family in _ALLOWED_FAMILIES:
            return super().connect_ex(address)
        _refuse()


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Fail any test that opens a network connection (the socket guard)."""
    monkeypatch.setattr(socket, "socket", _GuardedSocket)
    monkeypatch.setattr(socket, "create_connection", _refuse)
    monkeypatch.setattr(socket, "getaddrinfo", _refuse)
    yield


@pytest.fixture(autouse=True)
def seeded():
    torch.manual_seed(0)
    yield
