"""clip_core and conversion import and work with torch, tensorflow and jax blocked (they import no framework)."""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

BLOCKER = textwrap.dedent("""
    import sys, importlib.abc
    BLOCKED = {"torch", "tensorflow", "jax", "jaxlib", "flax", "keras", "optax", "tf_keras", "torchvision"}
    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"{name} is blocked in this test")
            return None
    sys.meta_path.insert(0, Block())
""")


def run_blocked(code: str) -> subprocess.CompletedProcess:
    script = BLOCKER + textwrap.dedent(code)
    return subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_blocker_really_blocks():
    proc = run_blocked("import torch")
    assert proc.returncode != 0 and "blocked in this test" in proc.stderr


def test_core_and_conversion_import_without_frameworks(tmp_path):
    proc = run_blocked(f"""
        import importlib, pkgutil
        import clip_core, conversion
        for pkg in (clip_core, conversion):
            for info in pkgutil.iter_modules(pkg.__path__):
                if info.name != "__main__":
                    importlib.import_module(pkg.__name__ + "." + info.name)
        from clip_core.testing import tiny_resnet_config, random_weights
        cfg = tiny_resnet_config()
        conversion.save_canonical({str(tmp_path)!r}, cfg, random_weights(cfg))
        cfg2, w = conversion.load_checkpoint({str(tmp_path)!r})
        assert cfg2 == cfg and len(w) == len(random_weights(cfg))
        print("ok", len(w))
    """)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("ok")
