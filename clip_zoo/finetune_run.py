"""The run loop of ``clip-zoo finetune``: trainer, checkpoints, resume, metrics log, validation.

``OUT/`` holds ``run.json`` (the plan: model, data digest, batch, seed, steps, options, framework,
devices; a resumed run must match it), ``metrics.jsonl`` (one JSON object per step and per
validation), ``checkpoints/step-NNNNNNNN/`` (the last checkpoint: canonical model files + optimizer
state + ``trainer_state.json``, written by the backend's ``Trainer.save`` into a temp dir that is
fsynced and renamed) with ``checkpoints/latest`` naming it, and at the end the fine-tuned model
itself (``config.json``, ``model.safetensors``, tokenizer and preprocessor files), which every
backend, ``clip-zoo`` and transformers load. Only rank 0 writes.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

import numpy as np

from conversion.folders import sync_dir, sync_tree

from .errors import CLIZooError

__all__ = ["train", "make_trainer", "save_checkpoint", "latest_checkpoint", "write_final", "validate",
           "memory_encoder", "BACKENDS"]

BACKENDS = {"torch": "clip_torch", "tf": "clip_tf", "flax": "clip_flax"}
_SIDE_FILES = ("vocab.json", "merges.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
               "spiece.model", "tokenizer.model", "preprocessor_config.json")  # CLIP's BPE, SigLIP's SentencePiece
#: Internal test hook, never read from the environment: seconds to sleep after each step (a test sets
#: it through ``tests/hooked.py`` to kill a run halfway).
_test_step_pause = 0.0


# ----------------------------------------------------------------------------- trainer
def make_trainer(framework: str, model_path: Path, options, replicas: int = 1):
    """Load the checkpoint in ``framework`` and wrap it in that backend's ``finetune.Trainer``."""
    from .console import import_framework

    backend = import_framework(BACKENDS[framework])
    try:
        finetune = importlib.import_module(f"{BACKENDS[framework]}.finetune")
    except ModuleNotFoundError as err:
        if err.name != f"{BACKENDS[framework]}.finetune":
            raise
        raise CLIZooError(f"this clip-zoo has no fine-tuning trainer for {framework}, "
                          "use another --framework") from None
    from .engines import checkpoint_family

    cls = backend.SiglipModel if checkpoint_family(Path(model_path)) == "siglip" else backend.CLIPModel
    return finetune.Trainer(cls.from_pretrained(model_path), options, replicas)


# ----------------------------------------------------------------------------- files
def latest_checkpoint(out: Path) -> Optional[Path]:
    """The checkpoint ``OUT/checkpoints/latest`` names, if it exists."""
    pointer = out / "checkpoints" / "latest"
    if not pointer.is_file():
        return None
    path = out / "checkpoints" / pointer.read_text(encoding="utf-8").strip()
    return path if (path / "trainer_state.json").is_file() else None


def save_checkpoint(trainer, out: Path, step: int) -> Path:
    """``trainer.save`` into a temp dir beside the checkpoints, fsync, rename, point ``latest`` at it,
    then remove the older checkpoints (a crash at any point leaves a complete checkpoint behind)."""
    from clip_core.io import atomic_write_bytes, dir_mode

    folder = out / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    name = f"step-{step:08d}"
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".tmp", dir=folder))
    try:
        os.chmod(tmp, dir_mode())
        with _no_tokenizer_warning():
            trainer.save(str(tmp))
        sync_tree(tmp)
        final = folder / name
        if final.exists():
            shutil.rmtree(final)
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    sync_dir(folder)
    atomic_write_bytes(folder / "latest", (name + "\n").encode("utf-8"))
    for old in folder.iterdir():
        if old.name != name and old.is_dir() and (old.name.startswith("step-") or old.name.endswith(".tmp")):
            shutil.rmtree(old, ignore_errors=True)
    return final


@contextlib.contextmanager
def _no_tokenizer_warning():
    """A SigLIP model saved alone warns that it wrote no tokenizer files; the run copies the source's itself."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="no SigLIP tokenizer files written")
        yield


def write_final(model, out: Path, source: Path) -> None:
    """The fine-tuned model into ``out`` (canonical files, each renamed into place from a temp dir)."""
    tmp = Path(tempfile.mkdtemp(prefix=".final.", suffix=".tmp", dir=out))
    try:
        with _no_tokenizer_warning():  # the side files are copied just below
            model.save_pretrained(tmp)
        src = source if source.is_dir() else None
        for name in _SIDE_FILES:  # tokenizer and preprocessor files the backend did not write
            if src is not None and (src / name).is_file() and not (tmp / name).exists():
                shutil.copyfile(src / name, tmp / name)
        sync_tree(tmp)
        for f in sorted(tmp.iterdir(), key=lambda p: p.name == "config.json"):  # config.json last
            os.replace(f, out / f.name)
        sync_dir(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


class RunLock:
    """An exclusive non-blocking ``flock`` on ``OUT/.lock``: one run per output directory."""

    def __init__(self, out: Path) -> None:
        self.path, self.fd = out / ".lock", None

    def __enter__(self) -> "RunLock":
        import fcntl

        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self.fd)
            raise CLIZooError(f"{self.path.parent} is being written by another clip-zoo finetune, "
                              "wait for it or choose another --out") from None
        return self

    def __exit__(self, *exc) -> None:
        os.close(self.fd)


# ----------------------------------------------------------------------------- the plan of a run
def data_digest(pairs) -> str:
    """SHA-256 of the image paths and captions (a changed dataset cannot be resumed)."""
    h = hashlib.sha256()
    for p, caps in zip(pairs.paths, pairs.captions):
        h.update(json.dumps([p, caps]).encode("utf-8"))
    return h.hexdigest()


def check_out(out: Path, plan: dict, resume: bool) -> None:
    """Refuse an ``--out`` that holds something else or another run; with ``--resume`` the plans must match."""
    if out.exists() and not out.is_dir():
        raise CLIZooError(f"--out {out} is a file, pass a new or empty folder")
    run_file = out / "run.json"
    if run_file.is_file():
        try:
            old = json.loads(run_file.read_text(encoding="utf-8"))
        except ValueError:
            raise CLIZooError(f"{run_file} is not valid JSON, choose another --out") from None
        if not resume:
            raise CLIZooError(f"--out {out} holds a fine-tuning run already, pass --resume to continue it or "
                              "choose another --out")
        diff = [k for k in sorted(set(plan) | set(old)) if plan.get(k) != old.get(k)]
        if diff:
            raise CLIZooError(f"--out {out} holds a run with another {diff[0]} ({old.get(diff[0])!r}, now "
                              f"{plan.get(diff[0])!r}), resume with the same options or choose another --out")
    elif out.is_dir() and any(p.name != ".lock" for p in out.iterdir()):
        raise CLIZooError(f"--out {out} is not empty and holds no clip-zoo finetune run, "
                          "choose a new or empty folder")


class MetricsLog:
    """``OUT/metrics.jsonl``: one JSON line per record, flushed; on resume the records after the
    checkpoint's step are dropped (they are redone)."""

    def __init__(self, path: Path, keep_upto: int, enabled: bool) -> None:
        self.path, self.fh = path, None
        if not enabled:
            return
        kept = []
        if path.is_file() and keep_upto > 0:
            for line in path.read_text(encoding="utf-8").splitlines():
                with contextlib.suppress(ValueError):
                    rec = json.loads(line)
                    if isinstance(rec, dict) and rec.get("step", 0) <= keep_upto:
                        kept.append(line + "\n")
        from clip_core.io import atomic_write_bytes

        atomic_write_bytes(path, "".join(kept).encode("utf-8"))
        self.fh = open(path, "a", encoding="utf-8")

    def write(self, record: dict) -> None:
        if self.fh is not None:
            self.fh.write(json.dumps(record) + "\n")
            self.fh.flush()

    def close(self) -> None:
        if self.fh is not None:
            self.fh.close()


# ----------------------------------------------------------------------------- validation
def memory_encoder(framework: str, model, path: Path, processor):
    """A :class:`clip_zoo.engines.Encoder` around an already loaded (training) model."""
    from .engines import _ENCODERS

    class InMemory(_ENCODERS[framework]):
        def _load(self, _path: Path):
            return model  # the training model itself, weights current

    return InMemory(Path(path), None, processor)


def validate(trainer, maker, val, framework: str, model_path: Path, templates, rank: int) -> dict:
    """Validation loss over ``val``'s full batches (no augmentation, file order) and, when ``val`` is
    labelled, zero-shot top-1 with ``templates`` (as ``clip-zoo eval zeroshot`` computes it)."""
    n = len(val)
    size = min(maker.batch_size, n)
    losses = []
    for s in range(0, n - size + 1, size):
        samples = [maker.sample(0, i) for i in range(s, s + size)]
        losses.append(float(trainer.eval_loss(maker.assemble(samples))))
    out = {"val_loss": float(np.mean(losses))}
    if val.classes is not None and rank == 0:
        from clip_core import zero_shot as zs

        from .classify import LOGIT_SCALE
        from .eval_metrics import topk_accuracy

        enc = memory_encoder(framework, trainer.model, model_path, maker.processor)
        weights = zs.build_zero_shot_weights(enc.encode_texts, val.classes, templates)  # (D, L)
        images = np.concatenate([enc.encode_images(np.stack([maker.sample(0, i)[0] for i in range(s, min(s + 64, n))]))
                                 for s in range(0, n, 64)])  # (N, D)
        logits = zs.zero_shot_logits(images, weights, LOGIT_SCALE)
        out["val_top1"] = topk_accuracy(logits, val.targets, 1)
    return out


# ----------------------------------------------------------------------------- the loop
def _progress(total: int, initial: int, enabled: bool):
    if not enabled:
        from .embed import _NoProgress

        return _NoProgress()
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit="step", desc="finetune", file=sys.stderr, dynamic_ncols=True,
                disable=None)


def train(job: dict, rank: int = 0, replicas: int = 1) -> dict:
    """Run (or resume) the fine-tuning ``job`` (see :func:`clip_zoo.finetune.plan_job`) as ``rank`` of
    ``replicas``; returns the last metrics."""
    from .finetune_data import BatchMaker, BatchStream

    out, writer = Path(job["out"]), rank == 0
    trainer = make_trainer(job["framework"], Path(job["model_path"]), job["options"], replicas)
    start = 0
    ckpt = latest_checkpoint(out) if job["resume"] else None
    if ckpt is not None:
        trainer.restore(str(ckpt))
        start = int(trainer.step_count)
    trim = job["config"].family != "siglip"
    maker = BatchMaker(job["pairs"], job["tokenizer"], job["processor"], job["batch_size"], job["seed"],
                       job["context_length"], trim=trim)
    val_maker = None
    if job["val"] is not None:
        val_maker = BatchMaker(job["val"], job["tokenizer"], job["processor"], min(job["batch_size"], len(job["val"])),
                               job["seed"], job["context_length"], augment=False, trim=trim)
    total, spe = job["options"].total_steps, maker.steps_per_epoch
    log = MetricsLog(out / "metrics.jsonl", start, writer)
    last: dict = {}
    stream = BatchStream(maker, start, total, job["workers"])
    pause = _test_step_pause
    try:
        with _progress(total, start, job["progress"] and writer) as bar:
            t0, seen = time.perf_counter(), 0
            for step, epoch, batch in stream:
                res = trainer.step(batch)
                seen += len(batch["pixel_values"])
                rate = seen / max(time.perf_counter() - t0, 1e-9)
                last = {"step": step + 1, "epoch": epoch, "loss": float(res["loss"]), "lr": float(res["lr"]),
                        "logit_scale": float(res["logit_scale"]), "img_per_s": round(rate, 2)}
                log.write(last)
                bar.update(1)
                if hasattr(bar, "set_postfix"):
                    bar.set_postfix(loss=f"{last['loss']:.4f}", lr=f"{last['lr']:.2e}", img_s=f"{rate:.1f}")
                done = step + 1
                if val_maker is not None and (done % spe == 0 or done == total):
                    last.update(validate(trainer, val_maker, job["val"], job["framework"], Path(job["model_path"]),
                                         job["templates"], rank))
                    log.write({"step": done, "epoch": epoch, **{k: v for k, v in last.items() if k.startswith("val")}})
                if writer and job["save_every"] and done % job["save_every"] == 0 and done < total:
                    save_checkpoint(trainer, out, done)
                if pause:
                    time.sleep(pause)
    finally:
        stream.close()
        log.close()
    if writer:
        if start < total:
            save_checkpoint(trainer, out, total)
        write_final(trainer.model, out, Path(job["model_path"]))
    return last


def options_dict(options) -> dict:
    """The options as JSON-able values (for ``run.json``)."""
    d = dataclasses.asdict(options)
    d["betas"] = list(d["betas"])
    return d
