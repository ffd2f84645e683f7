"""``clip-zoo finetune``: contrastive fine-tuning on image-caption data in torch, TensorFlow or JAX.

    clip-zoo finetune --model default --train DATA [--val DATA] --out DIR [--framework torch|tf|flax]
                      [--epochs N | --steps N] [--batch-size B] [--lr LR] [--warmup N] ...

The data pipeline is :mod:`clip_zoo.finetune_data`, the run loop (checkpoints, resume, metrics,
validation) :mod:`clip_zoo.finetune_run`, the trainers ``clip_{torch,tf,flax}.finetune.Trainer``
and their options :class:`clip_core.finetune_plan.FinetuneOptions`. ``--devices N`` trains data
parallel on one machine: torch spawns N processes joined by gloo on 127.0.0.1; JAX gets N host
devices (``XLA_FLAGS`` set before jax is imported); TensorFlow N logical CPUs for a
``MirroredStrategy``. Every replica builds the same global batches; only rank 0 writes.
"""
from __future__ import annotations

import argparse
import os
import socket
import sys
from pathlib import Path

from .errors import CLIZooError

__all__ = ["add_parser", "run", "plan_job"]

_DEFAULT_TEMPLATES = "a photo of a {}."


def _positive(kind):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not value > 0:
            raise argparse.ArgumentTypeError(f"{text} must be positive")
        return value
    return parse


def _non_negative(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} must be 0 or more")
    return value


def _freeze(text: str) -> str:
    import re

    if not re.fullmatch(r"none|text|vision|layers\d+", text):
        raise argparse.ArgumentTypeError(f"{text!r} is not none, text, vision or layers<k> (e.g. layers2)")
    return text


def add_parser(sub) -> None:
    p = sub.add_parser("finetune", help="fine-tune a CLIP model on your image-caption data (torch, tf or flax)",
                       description="Contrastive fine-tuning (CLIP loss, AdamW, warmup + cosine) on an ImageFolder "
                                   "tree, a CSV/JSONL/Parquet table of path,caption or WebDataset shards. Writes "
                                   "checkpoints, metrics.jsonl and the fine-tuned model (canonical format) to --out.")
    p.add_argument("--model", default="default", help="checkpoint to start from (default: the bundled model)")
    p.add_argument("--train", required=True, metavar="DATA", help="training data: ImageFolder, table or shards")
    p.add_argument("--val", metavar="DATA", help="validation data: loss every epoch, and zero-shot top-1 when "
                                                 "labelled (ImageFolder or a label column)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (new or empty, or a run to --resume)")
    p.add_argument("--framework", choices=("torch", "tf", "flax"), default=None,
                   help="default: $CLIP_ZOO_FRAMEWORK, else the first installed of torch, flax, tf")
    length = p.add_mutually_exclusive_group()
    length.add_argument("--epochs", type=_positive(int), default=None, help="passes over --train (default 1)")
    length.add_argument("--steps", type=_positive(int), default=None, help="optimizer steps (instead of --epochs)")
    p.add_argument("--batch-size", type=_positive(int), default=64, help="global batch (default 64)")
    p.add_argument("--lr", type=_positive(float), default=1e-5, help="peak learning rate (default 1e-5)")
    p.add_argument("--warmup", type=_non_negative, default=0, help="linear warmup steps (default 0)")
    p.add_argument("--schedule", choices=("cosine", "constant"), default="cosine")
    p.add_argument("--weight-decay", type=float, default=0.2, help="AdamW decay of weight matrices (default 0.2)")
    p.add_argument("--freeze", type=_freeze, default="none", metavar="none|text|vision|layers<k>",
                   help="what does not train: a tower, or all but the last k layers of each tower")
    p.add_argument("--lock-image", action="store_true", help="LiT: keep the whole image tower fixed")
    p.add_argument("--grad-checkpointing", action="store_true", help="recompute activations (less memory)")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32", help="compute precision")
    p.add_argument("--devices", type=_positive(int), default=1, help="data-parallel replicas on this machine")
    p.add_argument("--save-every", type=_non_negative, default=100, metavar="N",
                   help="checkpoint every N steps (0: only at the end; default 100)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--seed", type=int, default=0, help="data order, augmentation and caption choice")
    p.add_argument("--workers", type=_positive(int), default=2, help="image decoding threads (default 2)")
    p.add_argument("--templates", default=None, metavar="NAME|FILE",
                   help="caption templates for class folders / labels: simple, openai, openai7, none or a file "
                        f"(default: {_DEFAULT_TEMPLATES!r})")
    p.add_argument("--cache", default=None, metavar="DIR", help="where WebDataset shards are unpacked")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    p.set_defaults(run=run)


def _templates(spec) -> tuple[str, ...]:
    if spec is None:
        return (_DEFAULT_TEMPLATES,)
    from clip_core.zero_shot import get_templates

    try:
        return get_templates(spec)
    except (ValueError, OSError) as err:
        raise CLIZooError(f"bad --templates {spec} ({err}), pass simple, openai, openai7, none or a file") from None


def plan_job(args: argparse.Namespace) -> dict:
    """Everything a run needs, checked: data, tokenizer, processor, options, the ``run.json`` plan."""
    from clip_core.finetune_plan import FinetuneOptions

    from .embed_io import _default_cache
    from .engines import _processor_for, _tokenizer_for, resolve_framework, resolve_model
    from .finetune_data import load_training_pairs
    from .finetune_run import check_out, data_digest, options_dict

    if not 0 <= args.weight_decay < 10:
        raise CLIZooError(f"--weight-decay {args.weight_decay} is out of range, pass a value from 0 (e.g. 0.2)")
    framework = resolve_framework(args.framework)
    model_path = resolve_model(args.model)
    templates = _templates(args.templates)
    cache = Path(args.cache) if args.cache else _default_cache()
    pairs = load_training_pairs(args.train, templates, cache)
    val = load_training_pairs(args.val, templates, cache) if args.val else None
    import conversion

    try:
        config = conversion.read(model_path).config
    except Exception as err:
        raise CLIZooError(f"cannot read --model {args.model} ({str(err)[:160]}), pass a CLIP checkpoint") from None
    directory = model_path if model_path.is_dir() else None
    processor = _processor_for(directory, config, 1)
    spe = len(pairs) // args.batch_size
    if spe < 1:
        raise CLIZooError(f"{args.train} has {len(pairs)} images, fewer than --batch-size {args.batch_size}, "
                          "pass a smaller --batch-size")
    if args.batch_size % args.devices:
        raise CLIZooError(f"--batch-size {args.batch_size} does not split over --devices {args.devices}, "
                          "pass a multiple of the device count")
    total = args.steps if args.steps else spe * (args.epochs or 1)
    try:
        options = FinetuneOptions(total_steps=total, lr=args.lr, warmup=args.warmup, schedule=args.schedule,
                                  weight_decay=args.weight_decay, freeze=args.freeze, lock_image=args.lock_image,
                                  precision=args.precision, grad_checkpointing=args.grad_checkpointing, seed=args.seed)
    except ValueError as err:
        raise CLIZooError(f"{err}, check the options") from None
    out = Path(args.out)
    plan = {"model": str(model_path.resolve()), "train": str(Path(args.train).resolve()), "images": len(pairs),
            "data_sha256": data_digest(pairs), "batch_size": args.batch_size, "framework": framework,
            "devices": args.devices, "options": options_dict(options)}
    check_out(out, plan, args.resume)
    return {"out": str(out), "plan": plan, "framework": framework, "model_path": str(model_path), "pairs": pairs,
            "val": val, "templates": templates, "tokenizer": _tokenizer_for(directory, config.family), "processor": processor,
            "config": config,
            "context_length": config.text_config.max_position_embeddings, "batch_size": args.batch_size,
            "seed": args.seed, "options": options, "resume": args.resume, "save_every": args.save_every,
            "workers": args.workers, "progress": args.progress, "devices": args.devices}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torch_rank(rank: int, job: dict, port: int, replicas: int) -> None:
    """One DDP process: join the gloo group, train, leave."""
    import torch
    import torch.distributed as dist

    from .engines import _processor_for, _tokenizer_for
    from .finetune_run import train

    directory = Path(job["model_path"]) if Path(job["model_path"]).is_dir() else None
    job = dict(job, tokenizer=_tokenizer_for(directory, job["config"].family), processor=_processor_for(directory, job["config"], 1))
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // replicas))
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=replicas)
    try:
        train(job, rank, replicas)
    finally:
        dist.destroy_process_group()


def _prepare_devices(framework: str, n: int) -> None:
    """Make ``n`` devices visible to JAX / TensorFlow before they initialise."""
    if framework == "flax":
        if "jax" not in sys.modules:
            flags = os.environ.get("XLA_FLAGS", "")
            os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={n}".strip()
        import jax

        if jax.local_device_count() < n:
            raise CLIZooError(f"JAX started with {jax.local_device_count()} device(s) before --devices {n} could "
                              "apply, run clip-zoo finetune in a fresh process")
    elif framework == "tf":
        import tensorflow as tf

        from .console import import_framework

        import_framework("clip_tf")
        from clip_tf.finetune import split_cpu

        try:
            split_cpu(n)
        except RuntimeError:  # already initialised
            if len(tf.config.list_logical_devices("CPU")) < n:
                raise CLIZooError(f"TensorFlow started with fewer CPUs than --devices {n}, "
                                  "run clip-zoo finetune in a fresh process") from None


def _write_plan(job: dict) -> None:
    import json

    from clip_core.io import atomic_write_bytes

    out = Path(job["out"])
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / "run.json", (json.dumps(job["plan"], indent=1) + "\n").encode("utf-8"))


def run(args: argparse.Namespace) -> int:
    from .finetune_run import RunLock, train

    job = plan_job(args)
    out = Path(job["out"])
    out.mkdir(parents=True, exist_ok=True)
    with RunLock(out):
        _write_plan(job)
        n = job["devices"]
        if job["framework"] == "torch" and n > 1:
            import torch.multiprocessing as mp

            try:
                light = {k: v for k, v in job.items() if k not in ("tokenizer", "processor")}  # rebuilt per rank
                mp.spawn(_torch_rank, args=(light, _free_port(), n), nprocs=n, join=True)
            except mp.ProcessRaisedException as err:
                lines = [ln for ln in str(err).strip().splitlines() if ln.strip()]
                raise CLIZooError(f"a training process failed: {lines[-1] if lines else err}") from None
            last = _read_last(out)
        else:
            if n > 1:
                _prepare_devices(job["framework"], n)
            last = train(job, 0, n)
    summary = ", ".join(f"{k} {v:.4g}" for k, v in last.items() if k in ("loss", "val_loss", "val_top1"))
    print(f"fine-tuned {job['plan']['images']} images for {job['options'].total_steps} steps in {job['framework']}"
          f"{f' ({summary})' if summary else ''} -> {out}", file=sys.stderr)
    return 0


def _read_last(out: Path) -> dict:
    """The last step record of ``metrics.jsonl`` merged with the last validation."""
    import json

    last: dict = {}
    path = out / "metrics.jsonl"
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            last.update(json.loads(line))
    return last
