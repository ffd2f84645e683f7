"""``python -m conversion SRC DST [--to F] [--dtype D] [--arch NAME] [--verify]`` and ``inspect SRC``.

:func:`main` gives a one-line ``error:`` message and exit status 1 for bad input (2 for usage
errors), never a traceback. ``clip-zoo convert`` calls :func:`run` with its own ``prog`` and prints
the errors it raises in its own style.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from clip_core.schema import WeightMismatchError

from .api import FORMATS, default_format, read, save_checkpoint
from .errors import ConversionError
from .tensors import cast, zero_copy_reads

__all__ = ["main", "run", "build_parser", "verify"]

PROG = "python -m conversion"


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line usage error (``<prog>: error: ...``), exit status 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}, see '{self.prog} --help'\n")


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    p = _Parser(prog=prog, description="Convert a CLIP or SigLIP checkpoint between formats "
                "(or `inspect SRC`), without any deep-learning framework.")
    p.add_argument("src", help="checkpoint file or directory (any supported format)")
    p.add_argument("dst", help="output path (directory, or a .pt / .h5 / .msgpack / big_vision .npz file)")
    p.add_argument("--to", choices=FORMATS, help="output format (default: from DST's suffix, else canonical)")
    p.add_argument("--dtype", choices=("fp32", "fp16", "bf16"), help="cast floating tensors on the way out")
    p.add_argument("--arch", help="architecture name for a bare state dict, e.g. ViT-B-32-quickgelu")
    p.add_argument("--verify", action="store_true", help="re-read the output and compare every tensor")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def _inspect_parser(prog: str = PROG) -> argparse.ArgumentParser:
    p = _Parser(prog=f"{prog} inspect", description="Describe a checkpoint.")
    p.add_argument("src")
    p.add_argument("--arch", help="architecture name for a bare state dict")
    return p


def _bar(total: int, quiet: bool):
    if quiet or total == 0:
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    # disable=None: no bar at all when stderr is not a terminal (no carriage-return redraws in a log)
    return tqdm(total=total, unit="tensor", desc="writing", file=sys.stderr, leave=False, disable=None)


def verify(dst: Path, reference: dict, config, dtype: Optional[str]) -> list[str]:
    """Names of tensors whose re-read value differs from ``reference`` (cast to ``dtype``)."""
    back = read(dst, config=config)
    bad = [n for n, a in reference.items() if n not in back.weights
           or not np.array_equal(np.asarray(back.weights[n]), cast(np.asarray(a), dtype))]
    return bad + sorted(set(back.weights) - set(reference))


def _convert(args: argparse.Namespace) -> int:
    with zero_copy_reads():  # the source arrays are only read: let writers copy them file-to-file
        src = read(args.src, arch=args.arch)  # read() resolves "default" and cached names
    fmt = args.to or default_format(args.dst)
    bar = _bar(len(src.weights), args.quiet)
    try:
        save_checkpoint(args.dst, src.config, src.weights, format=fmt, dtype=args.dtype,
                        progress=(lambda name: bar.update(1)) if bar else None,
                        tokenizer_from=args.src if Path(args.src).is_dir() else None)
    finally:  # cleared before anything else is printed, an error included
        if bar:
            bar.close()
    print(f"read {src.source} ({src.format}); wrote {args.dst} ({fmt}{', ' + args.dtype if args.dtype else ''}): "
          f"{len(src.weights)} tensors, {src.num_parameters:,} parameters; {src.config.summary()}")
    if args.verify:
        bad = verify(Path(args.dst), src.weights, src.config, args.dtype)
        if bad:
            raise ConversionError(f"verify failed: {len(bad)} tensor(s) differ in {args.dst}: {', '.join(bad[:5])}")
        print(f"verified: all {len(src.weights)} tensors identical")
    return 0


def _inspect(args: argparse.Namespace) -> int:
    ckpt = read(args.src, arch=args.arch)
    dtypes = sorted({np.dtype(a.dtype).name for a in ckpt.weights.values()})
    print(f"file:       {ckpt.source}\nformat:     {ckpt.format}\narchitecture: "
          f"{'ResNet' if ckpt.config.is_resnet else 'ViT'} — {ckpt.config.summary()}\n"
          f"tensors:    {len(ckpt.weights)} ({', '.join(dtypes)})\nparameters: {ckpt.num_parameters:,}")
    return 0


def run(argv: Sequence[str], prog: str = PROG) -> int:
    """Parse ``argv`` (usage errors exit with status 2) and run it; other errors are raised."""
    argv = list(argv)
    inspecting = bool(argv) and argv[0] == "inspect"
    args = (_inspect_parser(prog) if inspecting else build_parser(prog)).parse_args(argv[1:] if inspecting else argv)
    return _inspect(args) if inspecting else _convert(args)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        return run(argv)
    except (ConversionError, WeightMismatchError, FileNotFoundError, OSError, ValueError) as err:
        message = " ".join(line.strip() for line in str(err).splitlines() if line.strip())
        print(f"error: {message}", file=sys.stderr)
        return 1
