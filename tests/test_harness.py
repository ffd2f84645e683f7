"""The shared test harness (``conftest.py``) itself."""
from __future__ import annotations

import subprocess
import sys

import pytest


def test_xdist_workers_share_the_cores():
    """Each pytest-xdist worker's torch runs on its share of the cores, here and in the subprocesses tests
    start, and in-process commands run with ``--threads N`` by earlier modules did not keep theirs."""
    from conftest import TORCH_THREADS

    if TORCH_THREADS is None:
        pytest.skip("not under pytest-xdist, or OMP_NUM_THREADS was set by the caller")
    torch = pytest.importorskip("torch")
    assert torch.get_num_threads() == TORCH_THREADS
    out = subprocess.run([sys.executable, "-c", "import torch; print(torch.get_num_threads())"],
                         capture_output=True, text=True, check=True, timeout=120)
    assert int(out.stdout) == TORCH_THREADS
