"""clip_zoo.memory: the allocator tuning the application applies when it loads a model."""
import os
import subprocess
import sys

import pytest

from clip_zoo import memory

# malloc, fill and free 48 MB 8 times; prints the minor page faults of the last 4 rounds.
_FAULTS = """
import ctypes, resource, sys
if sys.argv[1] == "tuned":
    from clip_zoo.memory import tune_allocator
    assert tune_allocator()
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for i in range(8):
    if i == 4:
        start = faults()
    p = libc.malloc(48 << 20)  # above glibc's largest dynamic mmap threshold (32 MiB)
    ctypes.memset(p, 1, 48 << 20)
    libc.free(p)
print(faults() - start)
"""

glibc_only = pytest.mark.skipif(not memory._glibc(), reason="the tuning applies to glibc's malloc only")


def _faults(mode: str) -> int:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
    out = subprocess.run([sys.executable, "-c", _FAULTS, mode], capture_output=True, text=True, env=env, check=True)
    return int(out.stdout)


@glibc_only
def test_freed_large_buffers_are_reused_not_faulted_in_again():
    untuned, tuned = _faults("plain"), _faults("tuned")
    assert untuned >= 4 * 24  # each round faults its pages in again: 12,288 of 4 KiB (24 of 2 MiB with huge pages)
    assert tuned <= untuned // 20, (tuned, untuned)


@pytest.mark.parametrize("environ", [{"MALLOC_MMAP_THRESHOLD_": "131072"}, {"MALLOC_TRIM_THRESHOLD_": "0"},
                                     {"GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=131072"}])
def test_the_users_own_malloc_settings_stand(monkeypatch, environ):
    monkeypatch.setattr(memory, "_done", [])
    monkeypatch.setattr(memory.ctypes, "CDLL", lambda *a: pytest.fail("mallopt called despite the user's setting"))
    assert memory.tune_allocator(environ) is False
    assert memory.tune_allocator({}) is False  # decided once per process


def test_loading_a_model_tunes_the_allocator(monkeypatch, tiny_vit, tmp_path):
    import conversion
    from clip_core.testing import random_weights
    from clip_zoo.engines import load_encoder

    conversion.save_canonical(tmp_path / "ckpt", tiny_vit, random_weights(tiny_vit))
    calls = []
    monkeypatch.setattr(memory, "tune_allocator", lambda: calls.append(1) or True)
    load_encoder(str(tmp_path / "ckpt"), "torch")
    assert calls == [1]
