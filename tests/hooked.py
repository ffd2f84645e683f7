"""Run a module as ``python -m`` would, after setting internal test hooks (module attributes).

    python tests/hooked.py conversion.api:_test_tick_delay=0.05 -m conversion SRC DST

Shipped code reads no test knobs from the environment; a test that must slow a subprocess down (to
kill it halfway) sets the module attribute here instead. Values are parsed as floats.
"""
from __future__ import annotations

import importlib
import runpy
import sys


def main(argv: list[str]) -> None:
    split = argv.index("-m")
    for hook in argv[:split]:
        target, value = hook.split("=", 1)
        module, attr = target.split(":")
        mod = importlib.import_module(module)
        if not hasattr(mod, attr):
            raise SystemExit(f"hooked.py: {module} has no attribute {attr}")
        setattr(mod, attr, float(value))
    sys.argv = [argv[split + 1], *argv[split + 2:]]
    runpy.run_module(argv[split + 1], run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main(sys.argv[1:])
