"""``clip-zoo models`` (presets and what a checkpoint holds) and ``clip-zoo info`` (environment)."""
from __future__ import annotations

import argparse
import os
import platform
import sys

__all__ = ["add_parsers"]


def add_parsers(sub) -> None:
    p = sub.add_parser("models", help="list model names, or describe a checkpoint",
                       description="Without PATH: the bundled default model and the known architecture names "
                                   "(which need a local checkpoint). With PATH: what the checkpoint holds.")
    p.add_argument("path", nargs="?", metavar="PATH", help="a checkpoint file or directory (any supported format)")
    p.set_defaults(run=run_models)
    q = sub.add_parser("info", help="installed frameworks, versions, threads, CPU")
    q.set_defaults(run=run_info)


def _describe_checkpoint(path: str) -> int:
    import conversion

    from .errors import CLIZooError

    if not os.path.exists(path):
        raise CLIZooError(f"no such file or folder: {path}, check the path")
    ckpt = conversion.read(path)
    n = ckpt.num_parameters
    dtypes = sorted({str(a.dtype) for a in ckpt.weights.values()})
    print(f"path:         {ckpt.source}")
    print(f"format:       {ckpt.format}")
    print(f"architecture: {'ResNet' if ckpt.config.is_resnet else 'ViT'}: {ckpt.config.summary()}")
    print(f"parameters:   {n:,} in {len(ckpt.weights)} tensors ({', '.join(dtypes)})")
    return 0


def _default_rows() -> list[tuple[str, str]]:
    """``(name, description)`` rows of the bundled model (a continuation row has no name)."""
    import json

    from clip_core.default_model import default_model_path

    try:
        path = default_model_path()
        info = json.loads((path / "training.json").read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError) as err:
        return [("default", f"(bundled model missing: {err})")]
    top1 = info.get("metrics", {}).get("zero_shot_top1_caption_template")
    return [("default", f"(bundled) {info.get('config_summary', '')}"),
            ("", f"{path}; zero-shot top-1 on coloured shapes: {top1}")]


def _columns(rows: list[tuple[str, str]], width: int) -> str:
    """Names left-aligned in ``width`` characters, descriptions after them."""
    return "\n".join(f"{name:<{width}}{text}".rstrip() for name, text in rows)


def run_models(args: argparse.Namespace) -> int:
    from clip_core import available_models, get_config

    if args.path:
        return _describe_checkpoint(args.path)
    names = list(available_models())
    width = max(len(n) for n in ["default", *names]) + 2
    print(_columns(_default_rows(), width))
    print("\nknown architectures (need a local checkpoint: pass --model PATH):")
    print(_columns([(name, get_config(name).summary()) for name in names], width))
    print("\nHugging Face ids (openai/clip-vit-base-patch32 ...) and open_clip names (ViT-B-32, "
          "ViT-B-32-quickgelu, RN50 ...) are accepted as aliases.")
    return 0


def _version(dist: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def precision_line() -> str:
    """What this CPU makes of ``--precision``: bf16 native or emulated, int8 with 8- or 7-bit activations."""
    from clip_core.cpu import int8_saturates, native_bf16

    bf16 = {True: "bf16 native", False: "bf16 emulated (slower than fp32 here)",
            None: "bf16 unknown (CPU flags not readable)"}[native_bf16()]
    int8 = "int8 with 7-bit activations (x86 without VNNI found)" if int8_saturates() else "int8 with 8-bit activations"
    return f"{bf16}; {int8}"


def run_info(args: argparse.Namespace) -> int:
    from clip_core.cpu import cpu_name

    from .engines import ENV_FRAMEWORK, installed_frameworks

    found = installed_frameworks()
    print(f"clip-zoo      {_version('clip-zoo')}")
    print(f"python        {sys.version.split()[0]} ({platform.platform()})")
    print(f"numpy         {_version('numpy')}")
    for label, dist in (("torch", "torch"), ("tensorflow", "tensorflow"), ("keras", "keras"), ("jax", "jax"),
                        ("flax", "flax"), ("optax", "optax")):
        print(f"{label:<14}{_version(dist)}")
    print(f"frameworks    {', '.join(found) or 'none'} (default: {os.environ.get(ENV_FRAMEWORK) or (found[0] if found else '-')})")
    print(f"cpu           {cpu_name()}; {os.cpu_count()} logical cores")
    print(f"precision     {precision_line()}")
    try:
        avail = len(os.sched_getaffinity(0))
    except AttributeError:
        avail = os.cpu_count()
    print(f"threads       {avail} usable; OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}; "
          f"--threads N sets the framework's and the image loader's threads")
    return 0
