"""Helpers shared by the command-line tests."""
from __future__ import annotations

from clip_zoo.__main__ import main


def run_cli(capsys, *argv):
    """``main(argv)`` in-process → (exit status, stdout, stderr); a SystemExit's code is the status."""
    try:
        rc = main([str(a) for a in argv])
    except SystemExit as exit_:
        rc = exit_.code
    out = capsys.readouterr()
    return rc, out.out, out.err
