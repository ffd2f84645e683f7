"""The ``clip-zoo`` command: ``classify``, ``embed``, ``search``, ``convert``, ``parity``, ``models``, ``info``.

``main(argv)`` returns the exit status. A user error (missing file, empty label list, unknown
framework or model, unreadable checkpoint ...) is one line on stderr and a non-zero status, never a
traceback; set ``CLIP_ZOO_DEBUG=1`` to see the traceback.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Optional, Sequence

from . import classify, embed, inspect_cmds, search
from .errors import CLIZooError

__all__ = ["main", "build_parser"]


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line usage error (``clip-zoo classify: error: ...``), exit status 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None,
                   help="checkpoint path (OpenAI .pt, Hugging Face dir, open_clip, canonical dir) or 'default' "
                        "(the bundled model)")
    p.add_argument("--framework", default=None,
                   help="torch, flax or tf (default: $CLIP_ZOO_FRAMEWORK, else the first installed of torch, flax, tf)")
    p.add_argument("--threads", type=int, default=None, help="threads for the framework and the image loader")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="clip-zoo", description="CLIP in PyTorch, TensorFlow and Flax: "
                                     "zero-shot classification, embedding and search.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for module in (classify, embed, search):
        module.add_parser(sub)
    for name in ("classify", "embed", "search"):
        _common(sub.choices[name])
    sub.add_parser("convert", help="convert a checkpoint between formats (see `clip-zoo convert --help`)",
                   add_help=False)
    inspect_cmds.add_parsers(sub)
    _add_parity(sub)
    return parser


def _add_parity(sub) -> None:
    from . import parity

    p = sub.add_parser("parity", help="compare one checkpoint's outputs across the installed frameworks",
                       description=parity.__doc__.splitlines()[0])
    parity.add_arguments(p)
    p.set_defaults(run=parity.run)


def _one_line(err: BaseException) -> str:
    text = " ".join(line.strip() for line in str(err).splitlines() if line.strip())
    return text or type(err).__name__


def _convert(argv: list[str]) -> int:
    from conversion.cli import main as convert_main

    return convert_main(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command line ``argv`` (default ``sys.argv[1:]``); returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = bool(os.environ.get("CLIP_ZOO_DEBUG"))
    try:
        if argv and argv[0] == "convert":
            return _convert(argv[1:])
        args = build_parser().parse_args(argv)
        return args.run(args)
    except CLIZooError as err:
        if debug:
            raise
        print(f"clip-zoo: error: {_one_line(err)}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # e.g. `clip-zoo models | head`: stop quietly
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    except KeyboardInterrupt:
        print("clip-zoo: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # a bad checkpoint, an I/O error ...: one line, no traceback
        if debug:
            raise
        print(f"clip-zoo: error: {type(err).__name__}: {_one_line(err)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
