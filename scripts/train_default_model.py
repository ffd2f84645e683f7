#!/usr/bin/env python3
"""Train the bundled default model: a small CLIP on procedurally generated coloured shapes.

    python scripts/train_default_model.py [--steps 6000] [--seed 0] [--threads 1] [--out DIR]

The defaults are the recipe of the shipped model (``training.json`` records the exact command).

Deterministic for a given seed and thread count. Uses the project's own code end to end:
``clip_core.shapes`` (data), ``clip_core.tokenize`` and ``CLIPImageProcessor`` (inputs),
``clip_torch.CLIPModel(..., return_loss=True)`` (the contrastive loss), ``torch.optim.AdamW`` and
``save_pretrained`` (the canonical directory), then writes ``training.json`` beside the weights.

Every step sees one image of each of the 48 colour × shape classes (so the contrastive targets
``arange(48)`` have no duplicate captions). Captions are ``"a photo of a {colour} {shape}"`` half of
the time and a random OpenAI / simple prompt template otherwise, so prompt ensembling works too.

Compact vocabulary: only ~200 of the 49,408 BPE tokens ever occur in the captions, so training runs
with a token table of just those rows (ids remapped; the rest of the model is the real
architecture) and the trained rows are scattered back into the full 49,408-row table at save time.
The unused rows are exactly zero (they never receive a gradient), which keeps the optimizer step
cheap and the shipped file highly compressible.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from clip_core import shapes  # noqa: E402
from clip_core import zero_shot as zs  # noqa: E402
from clip_core.config import CLIPConfig, CLIPTextConfig, CLIPVisionConfig  # noqa: E402

TRAIN_TEMPLATES = tuple(zs.OPENAI_IMAGENET_TEMPLATES) + tuple(zs.SIMPLE_TEMPLATES)
EVAL_SEED = 10_001  # held-out images for the metrics recorded here (tests use other seeds)
IMAGE_SIZE = 64


ARCH = {"patch_size": 16, "vision_width": 128, "vision_layers": 4}  # set from the command line


def model_config(vocab_size: int = 49408, eos: int = 49407, bos: int = 49406, pad: int = 1) -> CLIPConfig:
    """The default model's architecture (ViT 64 px, ``ARCH`` patch / width / layers; text width 64 × 4)."""
    text = CLIPTextConfig(vocab_size=vocab_size, hidden_size=64, intermediate_size=256, projection_dim=64,
                          num_hidden_layers=4, num_attention_heads=4, max_position_embeddings=77,
                          eos_token_id=eos, bos_token_id=bos, pad_token_id=pad)
    width = ARCH["vision_width"]
    vision = CLIPVisionConfig(hidden_size=width, intermediate_size=4 * width, projection_dim=64,
                              num_hidden_layers=ARCH["vision_layers"], num_attention_heads=4, image_size=IMAGE_SIZE,
                              patch_size=ARCH["patch_size"])
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=64)


class CompactVocab:
    """Maps real BPE ids to a dense table of the tokens the training prompts use (0 = pad kept)."""

    def __init__(self, texts: list[str]) -> None:
        from clip_core import tokenize

        used = np.unique(np.concatenate([[0], tokenize(texts).ravel()]))
        used = np.concatenate([used[~np.isin(used, [49406, 49407])], [49406, 49407]])  # BOS, EOS last
        self.real_ids = used.astype(np.int64)  # compact id -> real id
        self.lookup = np.full(49408, -1, np.int64)
        self.lookup[self.real_ids] = np.arange(len(used))

    def __len__(self) -> int:
        return len(self.real_ids)

    def encode(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Compact ids and attention mask, cut to the longest prompt (causal: the rest is padding)."""
        from clip_core import tokenize

        ids = tokenize(texts)
        length = int((ids != 0).sum(1).max())
        ids = ids[:, :length]
        compact = self.lookup[ids]
        if (compact < 0).any():
            raise ValueError("a prompt uses a token outside the training vocabulary")
        return compact, (ids != 0).astype(np.int64)


def sincos_2d(grid: int, dim: int, scale: float = 0.5) -> np.ndarray:
    """2-D sine-cosine position table ``(1 + grid**2, dim)``: half the channels encode the row, half
    the column (class-token row zero), as in MAE; ``scale`` keeps it near the patch embeddings' size."""
    if dim % 4:
        raise ValueError(f"a 2-D sine-cosine table needs a width divisible by 4, got {dim}")
    quarter = dim // 4
    omega = 1.0 / 10000 ** (np.arange(quarter) / quarter)  # (D/4,)
    rows, cols = np.meshgrid(np.arange(grid), np.arange(grid), indexing="ij")

    def encode(pos: np.ndarray) -> np.ndarray:
        angle = pos.reshape(-1, 1) * omega  # (grid², D/4)
        return np.concatenate([np.sin(angle), np.cos(angle)], 1)

    table = np.concatenate([encode(rows), encode(cols)], 1)  # (grid², D)
    return (scale * np.concatenate([np.zeros((1, dim)), table])).astype(np.float32)


def init_weights(config: CLIPConfig, seed: int, pos_init: str = "random") -> dict[str, np.ndarray]:
    """Canonical initial weights: fan-in scaled linears, small embeddings, unit norms, zero biases;
    ``pos_init="sincos"`` starts the vision position embedding from a 2-D sine-cosine table."""
    from clip_core.testing import random_weights

    w = random_weights(config, seed=seed)
    for name, value in w.items():
        leaf = name.rsplit(".", 1)[-1]
        if leaf == "bias":
            w[name] = np.zeros_like(value)
        elif ("norm" in name or "layrnorm" in name) and leaf == "weight":
            w[name] = np.ones_like(value)
    if pos_init == "sincos":
        vision = config.vision_config
        w["vision_model.embeddings.position_embedding.weight"] = sincos_2d(
            vision.image_size // vision.patch_size, vision.hidden_size)
    return w


def make_batch(step: int, seed: int, rng: np.random.Generator, proc, vocab: CompactVocab):
    """One image of each class (shuffled) and one caption each → torch tensors."""
    import torch

    order = rng.permutation(len(shapes.LABELS))
    images = [shapes.render_index(seed, step * len(order) + i, int(k), IMAGE_SIZE) for i, k in enumerate(order)]
    names = shapes.label_names()
    use_caption = rng.random(len(order)) < 0.5
    picks = rng.integers(len(TRAIN_TEMPLATES), size=len(order))
    texts = [shapes.CAPTION_TEMPLATE.format(names[k]) if c else TRAIN_TEMPLATES[p].format(names[k])
             for k, c, p in zip(order, use_caption, picks)]
    ids, mask = vocab.encode(texts)
    pixels = proc(images, return_tensors="np")["pixel_values"]  # (48, 3, 64, 64)
    return torch.from_numpy(pixels), torch.from_numpy(ids), torch.from_numpy(mask)


def evaluate(model, vocab: CompactVocab, proc, n: int, seed: int, templates) -> float:
    """Zero-shot top-1 over the 48 labels on ``n`` fresh images (prompt ensemble ``templates``)."""
    import torch

    data = shapes.generate(n, seed=seed, size=IMAGE_SIZE)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        img = np.concatenate([model.get_image_features(torch.from_numpy(
            proc(data.images[i:i + 250], return_tensors="np")["pixel_values"])).numpy() for i in range(0, n, 250)])

        def encode(texts):
            ids, mask = vocab.encode(texts)
            return model.get_text_features(torch.from_numpy(ids), torch.from_numpy(mask)).numpy()

        weights = zs.build_zero_shot_weights(encode, shapes.label_names(), templates)
    model.train(was_training)
    return float((zs.zero_shot_logits(img, weights).argmax(1) == data.label_ids).mean())


def lr_at(step: int, steps: int, peak: float, warmup: int) -> float:
    """Linear warm-up then cosine decay to zero."""
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))


def train(args: argparse.Namespace) -> dict:
    """Run the training loop; returns the trained compact model and the vocabulary."""
    import torch

    import clip_torch
    from clip_core import CLIPImageProcessor

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    vocab = CompactVocab([t.format(n) for n in shapes.label_names() for t in TRAIN_TEMPLATES + (shapes.CAPTION_TEMPLATE,)])
    compact_cfg = model_config(len(vocab), eos=len(vocab) - 1, bos=len(vocab) - 2, pad=0)
    model = clip_torch.CLIPModel.from_canonical(compact_cfg, init_weights(compact_cfg, args.seed, args.pos_init))
    model.train()
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=args.lr, betas=(0.9, 0.98), eps=1e-6)
    proc = CLIPImageProcessor(mode="openai", size=IMAGE_SIZE, crop_size=IMAGE_SIZE, num_threads=args.threads)
    rng = np.random.default_rng(args.seed)
    history, t0 = [], time.time()
    for step in range(args.steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, args.steps, args.lr, args.warmup)
        pixels, ids, mask = make_batch(step, args.seed, rng, proc, vocab)
        loss = model(input_ids=ids, pixel_values=pixels, attention_mask=mask, return_loss=True).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if (step + 1) % args.log_every == 0 or step + 1 == args.steps:
            acc = evaluate(model, vocab, proc, 240, EVAL_SEED + 1, (shapes.CAPTION_TEMPLATE,))
            history.append({"step": step + 1, "loss": round(loss.item(), 4), "top1_240": acc,
                            "seconds": round(time.time() - t0, 1)})
            print(json.dumps(history[-1]), flush=True)
    return {"model": model, "vocab": vocab, "proc": proc, "history": history, "seconds": time.time() - t0}


def expand_vocab(model, vocab: CompactVocab):
    """The full-vocabulary model: trained token rows scattered to their real ids, other rows zero."""
    import clip_torch

    weights = model.canonical_weights()
    table = weights["text_model.embeddings.token_embedding.weight"]
    full = np.zeros((49408, table.shape[1]), table.dtype)
    full[vocab.real_ids] = table
    full[0] = 0.0  # pad: never attended to before EOT
    weights["text_model.embeddings.token_embedding.weight"] = full
    return clip_torch.CLIPModel.from_canonical(model_config(), weights)


EXAMPLES_SEED = 4242


def write_examples(directory: Path, n: int = 8, size: int = 128) -> list[Path]:
    """``n`` generated images of distinct classes (seed ``EXAMPLES_SEED``), named by their label."""
    data = shapes.generate(n, seed=EXAMPLES_SEED, size=size)
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for image, k in zip(data.images, data.label_ids):
        path = directory / (shapes.label_names()[k].replace(" ", "_") + ".png")
        image.save(path)
        paths.append(path)
    return paths


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=6000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lr", type=float, default=6e-4)
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--log-every", type=int, default=250)
    p.add_argument("--eval-images", type=int, default=1000)
    p.add_argument("--patch-size", type=int, default=16)
    p.add_argument("--vision-width", type=int, default=128)
    p.add_argument("--vision-layers", type=int, default=4)
    p.add_argument("--pos-init", choices=("random", "sincos"), default="sincos",
                   help="initial vision position embedding")
    p.add_argument("--examples", default=str(ROOT / "examples"), help="where to write the example images")
    p.add_argument("--out", default=str(ROOT / "clip_core" / "data" / "default"))
    args = p.parse_args(argv)
    ARCH.update(patch_size=args.patch_size, vision_width=args.vision_width, vision_layers=args.vision_layers)

    import torch

    import clip_torch

    run = train(args)
    full = expand_vocab(run["model"], run["vocab"])
    metrics = {
        "zero_shot_top1_caption_template": evaluate_full(full, run["proc"], args.eval_images, (shapes.CAPTION_TEMPLATE,)),
        "zero_shot_top1_simple_templates": evaluate_full(full, run["proc"], args.eval_images, zs.SIMPLE_TEMPLATES),
        "zero_shot_top1_openai_templates": evaluate_full(full, run["proc"], args.eval_images, zs.OPENAI_IMAGENET_TEMPLATES),
    }
    print(json.dumps(metrics), flush=True)
    out = Path(args.out)
    half = clip_torch.CLIPModel.from_canonical(model_config(), full.canonical_weights(), dtype=torch.float16)
    half.save_pretrained(out)
    run["proc"].save_pretrained(out)
    record = {
        "model": (f"clip-zoo default: ViT {IMAGE_SIZE}px/{args.patch_size} width {args.vision_width} x{args.vision_layers}, "
                  "text width 64 x4, embed 64, real 49,408-token vocabulary"),
        "command": "python scripts/train_default_model.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "config_summary": model_config().summary(),
        "stored_dtype": "float16",
        "data": {
            "generator": "clip_core.shapes (procedural coloured shapes)",
            "colours": list(shapes.COLOURS), "shapes": list(shapes.SHAPES), "image_size": IMAGE_SIZE,
            "radius_range": list(shapes.RADIUS_RANGE), "centre_jitter": shapes.CENTRE_JITTER,
            "rotation_degrees": [-shapes.ROTATION_DEGREES, shapes.ROTATION_DEGREES], "background": "two-colour linear gradient, >=110 RGB distance from the shape",
            "noise_sigma": "uniform 0..12 (of 255)",
            "caption": "a photo of a {colour} {shape}",
            "caption_mix": "50% the caption template, 50% uniform over the 80 OpenAI ImageNet + 4 simple templates",
            "batch": "one image of each of the 48 classes per step (balanced), images never repeated",
            "train_seed": args.seed, "eval_seed": EVAL_SEED, "eval_images": args.eval_images,
        },
        "training": {
            "framework": f"clip_torch (torch {torch.__version__})", "loss": "CLIPModel(return_loss=True)",
            "optimizer": "torch.optim.AdamW", "lr": args.lr, "warmup_steps": args.warmup, "schedule": "cosine",
            "weight_decay": args.weight_decay, "vision_position_init": args.pos_init, "betas": [0.9, 0.98], "eps": 1e-6, "steps": args.steps,
            "batch_size": len(shapes.LABELS), "threads": args.threads, "seed": args.seed,
            "compact_vocabulary_rows": len(run["vocab"]), "seconds": round(run["seconds"], 1),
            "machine": f"{platform.machine()} {os.cpu_count()} cpus",
        },
        "history": run["history"],
        "metrics": metrics,
    }
    from clip_core.io import atomic_write_bytes

    atomic_write_bytes(out / "training.json", (json.dumps(record, indent=2) + "\n").encode())
    examples = write_examples(Path(args.examples))
    print(f"wrote {out} and {len(examples)} examples in {args.examples}", flush=True)
    return 0


def evaluate_full(model, proc, n: int, templates) -> float:
    """Zero-shot top-1 of the full-vocabulary model (real token ids, 77-token context)."""
    import torch

    from clip_core import tokenize

    data = shapes.generate(n, seed=EVAL_SEED, size=IMAGE_SIZE)
    with torch.no_grad():
        img = model.get_image_features(torch.from_numpy(proc(data.images, return_tensors="np")["pixel_values"])).numpy()
        weights = zs.build_zero_shot_weights(
            lambda texts: model.get_text_features(torch.from_numpy(tokenize(texts)).long()).numpy(),
            shapes.label_names(), templates)
    return float((zs.zero_shot_logits(img, weights).argmax(1) == data.label_ids).mean())


if __name__ == "__main__":
    sys.exit(main())
