"""Helpers for ``.ci/run``, so that CI runs what the README and pyproject.toml say, never a copy.

``python .ci/readme_commands.py N`` prints the README's N-th set-up command (the N-th fenced
``bash`` block under "## Set up on a fresh machine"); ``--lower-bound DIST`` prints the lowest
version the base dependencies allow for DIST (its ``>=`` bound).
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def setup_commands() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## Set up on a fresh machine", 1)[1].split("\n## ", 1)[0]
    return [block.strip() for block in re.findall(r"```bash\n(.*?)```", section, flags=re.S)]


def lower_bound(dist: str) -> str:
    import tomllib

    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    for req in deps:
        match = re.match(rf"{re.escape(dist)}\s*>=\s*([\w.]+)", req)
        if match:
            return match.group(1)
    raise SystemExit(f"{dist} has no >= bound in pyproject.toml's dependencies")


if __name__ == "__main__":
    if sys.argv[1] == "--lower-bound":
        print(lower_bound(sys.argv[2]))
    else:
        commands = setup_commands()
        if len(commands) != 2:
            raise SystemExit(f"README.md: expected 2 set-up commands, found {len(commands)}")
        print(commands[int(sys.argv[1]) - 1])
