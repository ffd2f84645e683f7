"""The ``clip-zoo`` command: ``classify``, ``embed``, ``search``, ``convert``, ``parity``, ``models``, ``info``.

``main(argv)`` returns the exit status. Every error (missing file, empty label list, unknown
framework or model, unreadable checkpoint, missing framework ...) is one line on stderr,
``clip-zoo: error: <what>, <what to do>``, and a non-zero status, never a traceback; set
``CLIP_ZOO_DEBUG=1`` to see the traceback. The frameworks' own log lines and warnings are hidden
unless ``--verbose`` is given (before or after COMMAND); see :mod:`clip_zoo.console`.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Optional, Sequence

from . import classify, console, embed, inspect_cmds, search
from .errors import CLIZooError

__all__ = ["main", "build_parser", "version"]

VERBOSE_FLAG = "--verbose"


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line usage error (``clip-zoo classify: error: ...``), exit status 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}, see '{self.prog} --help'\n")


def version() -> str:
    """The installed distribution's version, else the package's ``__version__`` (a source checkout)."""
    from importlib import metadata

    try:
        return metadata.version("clip-zoo")
    except metadata.PackageNotFoundError:
        from . import __version__

        return __version__


class _VersionAction(argparse.Action):
    """``--version``: print ``clip-zoo <version>`` and exit (the version is looked up only then)."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings, dest, nargs=0, default=default, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"clip-zoo {version()}")
        parser.exit(0)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None,
                   help="checkpoint path (OpenAI .pt, Hugging Face dir, open_clip, canonical dir) or 'default' "
                        "(the bundled model)")
    p.add_argument("--framework", default=None,
                   help="torch, flax or tf (default: $CLIP_ZOO_FRAMEWORK, else the first installed of torch, flax, tf)")
    from .engines import threads_arg
    from .images import DEFAULT_MAX_PIXELS, max_pixels_arg

    p.add_argument("--runtime", choices=("framework", "onnx"), default="framework",
                   help="framework: run the checkpoint in --framework; onnx: run a `clip-zoo export --to onnx` "
                        "directory (--model) with onnxruntime, no framework needed")
    p.add_argument("--precision", choices=("fp32", "bf16", "int8"), default="fp32",
                   help="inference precision: fp32 (default), bf16 (every framework) or int8 (torch); a lower "
                        "precision is refused when its embeddings leave its cosine bound to fp32")
    p.add_argument("--threads", type=threads_arg, default=None,
                   help="threads for the framework and the image loader (1 to 4 per CPU)")
    p.add_argument("--max-pixels", type=max_pixels_arg, default=DEFAULT_MAX_PIXELS, metavar="N",
                   help=f"refuse images with more pixels than N, before or after resizing "
                        f"(default {DEFAULT_MAX_PIXELS:,})")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="clip-zoo", description="CLIP in PyTorch, TensorFlow and Flax: "
                                     "zero-shot classification, embedding and search.")
    parser.add_argument("--version", action=_VersionAction, help="print the version and exit")
    parser.add_argument(VERBOSE_FLAG, action="store_true",
                        help="show the frameworks' own log lines and warnings (hidden by default); "
                             "may also come after COMMAND")
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
    from . import index

    index.add_parser(sub)  # `clip-zoo index`: a faiss index for `search --index`
    from . import export

    export.add_parser(sub)
    from . import evaluate

    evaluate.add_parser(sub)  # `clip-zoo eval zeroshot|retrieval|linear-probe`
    from . import serve

    serve.add_parser(sub)  # `clip-zoo serve`: the HTTP service
    _common(sub.choices["serve"])
    from . import finetune

    finetune.add_parser(sub)  # `clip-zoo finetune`: contrastive fine-tuning (torch, tf, flax)
    return parser


def _add_parity(sub) -> None:
    from . import parity

    p = sub.add_parser("parity", help="compare one checkpoint's outputs across the installed frameworks",
                       description=parity.__doc__.splitlines()[0])
    parity.add_arguments(p)
    p.set_defaults(run=parity.run)


def _split_verbose(argv: list[str]) -> tuple[list[str], bool]:
    """``argv`` without ``--verbose`` (accepted anywhere before a ``--``), and whether it was there."""
    end = argv.index("--") if "--" in argv else len(argv)
    kept = [a for a in argv[:end] if a != VERBOSE_FLAG] + argv[end:]
    return kept, len(kept) != len(argv)


def _dispatch(argv: list[str]) -> int:
    if argv and argv[0] == "convert":  # the conversion package's own parser, under our name
        from conversion.cli import run as convert

        return convert(argv[1:], prog="clip-zoo convert")
    args = build_parser().parse_args(argv)
    if getattr(args, "runtime", None) == "onnx":  # the engines know the onnx runtime as a framework name
        args.framework = "onnx"
    return args.run(args)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command line ``argv`` (default ``sys.argv[1:]``); returns the exit status."""
    argv, verbose = _split_verbose(list(sys.argv[1:] if argv is None else argv))
    debug = bool(os.environ.get(console.DEBUG_ENV))
    with console.cli_session(verbose):
        try:
            return _dispatch(argv)
        except BrokenPipeError:  # e.g. `clip-zoo models | head`: stop quietly
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            return 1
        except KeyboardInterrupt:
            console.close_bars()
            print("clip-zoo: interrupted", file=sys.stderr)
            return 130
        except Exception as err:  # a user error, a bad checkpoint, an I/O error ...: one line, no traceback
            if debug:
                raise
            console.print_error(err)
            return 2 if isinstance(err, CLIZooError) else 1


if __name__ == "__main__":
    sys.exit(main())
