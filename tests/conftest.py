"""Shared test setup: every test runs torch on one thread (the problems are small, and one thread is faster
and steadier on a shared 2-core machine); no progress bars."""

import os

import pytest

from repspec_utils.training import torch_threads

os.environ["REPSPEC_PROGRESS"] = "0"


@pytest.fixture(autouse=True)
def _one_thread():
    with torch_threads(1):
        yield
