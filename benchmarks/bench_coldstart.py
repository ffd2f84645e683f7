"""Cold start: process start -> the first L2-normalized image embedding of one 224x224 JPEG (ViT-B/32).

Run: ``python -m benchmarks.bench_coldstart [--quick] [--repeats R] [--dir DIR]``.

Every contender runs in a fresh interpreter. The parent notes the wall clock just before spawning
it; the child notes it after its imports, after loading the model + image processor, and after
the first embedding, so the total splits into ``import`` (interpreter start included), ``load`` and
``first`` (decode, preprocess, forward, normalize). Pairs, all from one canonical directory of
random weights (``conversion.save_canonical``; transformers reads it as it is):

- ``clip_torch`` vs ``hf_torch`` (``transformers.CLIPModel``), and in full mode also ``open_clip``
  and OpenAI ``clip`` (``clip.load``), which read the same weights saved in their own formats;
- ``clip_tf`` vs ``hf_tf`` (``TFCLIPModel`` from its native ``tf_model.h5``);
- ``clip_flax`` vs ``hf_flax`` (``FlaxCLIPModel`` from its native ``flax_model.msgpack``).

The TF and Flax references read their own weight files (written by ``conversion`` from the same
weights): their fastest path; ``from_pt=True`` on the canonical directory is much slower (it converts
in Python and, for Flax, imports torch), so it would flatter us.

Each side uses its own library's image processor only (no tokenizer). The embeddings are checked to
agree (max abs <= 1e-4; 1e-3 for OpenAI ``clip``, which rounds weights to fp16) before times are
reported. Rounds are interleaved; medians and min-max. ``--quick``: one round of the torch pair only.
Ratio = ours / reference median total (< 1: ours starts faster); no target is set for cold start.
Writes ``benchmarks/results/coldstart.json`` (``coldstart_quick.json`` with ``--quick``).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from .common import write_result
from .model_inputs import checkpoint

ROOT = Path(__file__).resolve().parents[1]
TOLERANCE = 1e-4
#: ``clip.load`` rounds the weights to fp16 (``build_model`` -> ``convert_weights``) before ``.float()``.
TOLERANCE_OPENAI = 1e-3

_TEMPLATE = """
import sys, time, json
T0, ckpt, image, extra = float(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
{imports}
t_import = time.time()
{load}
t_load = time.time()
{embed}
t_first = time.time()
import numpy as _np
e = _np.asarray(e, _np.float32).reshape(-1)
print(json.dumps({{"import": t_import - T0, "load": t_load - t_import, "first": t_first - t_load,
                  "total": t_first - T0, "embedding": e.tolist()}}))
"""

_OUR_TORCH = dict(
    imports="import torch\nimport clip_torch\nfrom clip_core import CLIPImageProcessor",
    load="model = clip_torch.CLIPModel.from_pretrained(ckpt)\nproc = CLIPImageProcessor.from_pretrained(ckpt)",
    embed="with torch.inference_mode():\n"
          "    f = model.get_image_features(pixel_values=torch.from_numpy(proc(image)['pixel_values']))\n"
          "    e = (f / f.norm(dim=-1, keepdim=True)).numpy()",
)
_HF_TORCH = dict(
    imports="import torch\nfrom PIL import Image\nfrom transformers import CLIPModel, CLIPImageProcessor",
    load="model = CLIPModel.from_pretrained(ckpt).eval()\nproc = CLIPImageProcessor.from_pretrained(ckpt)",
    embed="with torch.no_grad():\n"
          "    f = model.get_image_features(**proc(images=Image.open(image).convert('RGB'), return_tensors='pt'))\n"
          "    e = (f / f.norm(dim=-1, keepdim=True)).numpy()",
)
_OPEN_CLIP = dict(
    imports="import torch\nfrom PIL import Image\nimport open_clip",
    load="model, _, proc = open_clip.create_model_and_transforms('ViT-B-32-quickgelu', pretrained=extra)\nmodel.eval()",
    embed="with torch.no_grad():\n"
          "    f = model.encode_image(proc(Image.open(image)).unsqueeze(0))\n"
          "    e = (f / f.norm(dim=-1, keepdim=True)).numpy()",
)
_OPENAI = dict(
    imports="import torch\nfrom PIL import Image\nimport clip",
    load="model, proc = clip.load(extra, device='cpu', jit=False)",
    embed="with torch.no_grad():\n"
          "    f = model.encode_image(proc(Image.open(image)).unsqueeze(0)).float()\n"
          "    e = (f / f.norm(dim=-1, keepdim=True)).numpy()",
)
_OUR_TF = dict(
    imports="import numpy as np\nimport tensorflow as tf\nimport clip_tf\nfrom clip_core import CLIPImageProcessor",
    load="model = clip_tf.CLIPModel.from_pretrained(ckpt)\nproc = CLIPImageProcessor.from_pretrained(ckpt)",
    embed="f = model.get_image_features(pixel_values=tf.constant(proc(image)['pixel_values']))\n"
          "e = (f / tf.norm(f, axis=-1, keepdims=True)).numpy()",
)
_HF_TF = dict(
    # transformers' CLIPImageProcessor import pulls in torchvision, which must precede tensorflow (segfault)
    imports="from PIL import Image\nfrom transformers import CLIPImageProcessor, TFCLIPModel\nimport tensorflow as tf",
    load="model = TFCLIPModel.from_pretrained(extra)\nproc = CLIPImageProcessor.from_pretrained(extra)",
    embed="f = model.get_image_features(**proc(images=Image.open(image).convert('RGB'), return_tensors='tf'))\n"
          "e = (f / tf.norm(f, axis=-1, keepdims=True)).numpy()",
)
_OUR_FLAX = dict(
    imports="import jax.numpy as jnp\nimport clip_flax\nfrom clip_core import CLIPImageProcessor",
    load="model = clip_flax.CLIPModel.from_pretrained(ckpt)\nproc = CLIPImageProcessor.from_pretrained(ckpt)",
    embed="f = model.get_image_features(proc(image)['pixel_values'])\n"
          "e = f / jnp.linalg.norm(f, axis=-1, keepdims=True)",
)
_HF_FLAX = dict(
    imports="import jax.numpy as jnp\nfrom PIL import Image\n"
            "from transformers import FlaxCLIPModel, CLIPImageProcessor",
    load="model = FlaxCLIPModel.from_pretrained(extra)\nproc = CLIPImageProcessor.from_pretrained(extra)",
    embed="f = model.get_image_features(**proc(images=Image.open(image).convert('RGB'), return_tensors='np'))\n"
          "e = f / jnp.linalg.norm(f, axis=-1, keepdims=True)",
)

# name: (snippets, modules it needs, extra argument (path in the work dir), env)
_NO_TF = {"USE_TF": "0", "USE_FLAX": "0", "USE_JAX": "0"}
_NO_TORCH = {"USE_TORCH": "0", "USE_FLAX": "0", "USE_JAX": "0"}
_NO_TORCH_TF = {"USE_TORCH": "0", "USE_TF": "0"}
CONTENDERS = {
    "clip_torch": (_OUR_TORCH, ("torch",), "", _NO_TF),
    "hf_torch": (_HF_TORCH, ("torch", "transformers"), "", _NO_TF),
    "open_clip": (_OPEN_CLIP, ("open_clip",), "open_clip/open_clip_model.safetensors", _NO_TF),
    "openai_clip": (_OPENAI, ("clip",), "openai.pt", _NO_TF),
    "clip_tf": (_OUR_TF, ("tensorflow",), "", _NO_TORCH),
    "hf_tf": (_HF_TF, ("tensorflow", "transformers"), "hf_tf", _NO_TORCH),
    "clip_flax": (_OUR_FLAX, ("flax",), "", _NO_TORCH_TF),
    "hf_flax": (_HF_FLAX, ("flax", "transformers"), "hf_flax", _NO_TORCH_TF),
}
PAIRS = {"torch": ("clip_torch", ["hf_torch", "open_clip", "openai_clip"]), "tf": ("clip_tf", ["hf_tf"]),
         "flax": ("clip_flax", ["hf_flax"])}
QUICK_SKIP = ("open_clip", "openai_clip", "clip_tf", "hf_tf", "clip_flax", "hf_flax")  # --quick: torch pair only


def make_inputs(workdir: Path, names: list[str]) -> tuple[Path, Path]:
    """The canonical checkpoint, the same weights in each reference's own format that ``names`` need
    (transformers TF / Flax directories, open_clip, OpenAI), and one 224x224 JPEG."""
    from PIL import Image

    import conversion

    config, weights, ckpt = checkpoint("ViT-B/32", workdir)
    formats = {"hf_tf": "tf", "hf_flax": "flax", "open_clip": "open_clip", "openai_clip": "openai"}
    for name in names:
        if name in formats:
            target = workdir / CONTENDERS[name][2].split("/")[0]
            conversion.save_checkpoint(target, config, weights, format=formats[name])
    rng = np.random.default_rng(0)
    image = workdir / "image.jpg"
    Image.fromarray(rng.integers(0, 256, (224, 224, 3), dtype=np.uint8)).save(image, quality=95)
    return ckpt, image


def _env(extra: dict) -> dict:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", TRANSFORMERS_NO_ADVISORY_WARNINGS="1", HF_HUB_OFFLINE="1",
               TRANSFORMERS_OFFLINE="1", **extra)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in [env.get("PYTHONPATH")] if p])
    return env


def _run_child(name: str, ckpt: Path, image: Path, workdir: Path) -> dict:
    snippets, _, extra, env = CONTENDERS[name]
    script = _TEMPLATE.format(**snippets)
    extra_path = str(workdir / extra) if extra else ""
    start = time.time()
    proc = subprocess.run([sys.executable, "-c", script, repr(start), str(ckpt), str(image), extra_path],
                          cwd=workdir, env=_env(env), capture_output=True, text=True)
    wall = time.time() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{name} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["wall"] = wall  # includes interpreter shutdown
    return out


def _summary(runs: list[dict]) -> dict:
    keys = ("total", "import", "load", "first", "wall")
    return {k: {"median": statistics.median(r[k] for r in runs), "min": min(r[k] for r in runs),
                "max": max(r[k] for r in runs)} for k in keys}


def run(quick: bool, repeats: int, workdir: Path) -> dict:
    names = [n for n, (_, modules, _, _) in CONTENDERS.items()
             if all(importlib.util.find_spec(m) for m in modules) and not (quick and n in QUICK_SKIP)]
    ckpt, image = make_inputs(workdir, names)
    runs: dict[str, list[dict]] = {n: [] for n in names}
    for _ in range(repeats):
        for name in names:
            runs[name].append(_run_child(name, ckpt, image, workdir))
    embeds = {n: np.asarray(r[0]["embedding"], np.float32) for n, r in runs.items()}
    stats = {n: _summary(r) for n, r in runs.items()}
    ratios, diffs = {}, {}
    for fw, (ours, refs) in PAIRS.items():
        for ref in refs:
            if ours in stats and ref in stats:
                diffs[f"{ours}_vs_{ref}"] = float(np.abs(embeds[ours] - embeds[ref]).max())
                ratios[f"{ours}_vs_{ref}"] = stats[ours]["total"]["median"] / stats[ref]["total"]["median"]
    bad = {k: v for k, v in diffs.items() if v > (TOLERANCE_OPENAI if k.endswith("openai_clip") else TOLERANCE)}
    if bad:
        raise RuntimeError(f"first embeddings disagree by more than {TOLERANCE}: {bad}")
    return {"model": "ViT-B/32", "repeats": repeats, "seconds": stats,
            "runs": {n: [{k: v for k, v in r.items() if k != "embedding"} for r in rs] for n, rs in runs.items()},
            "max_abs_diff": diffs, "tolerance": TOLERANCE, "tolerance_openai_clip": TOLERANCE_OPENAI, "ratios": ratios,
            "ratio_meaning": "ours / reference median seconds to the first embedding (< 1: ours is faster)"}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="1 round, torch pair only (TF, Flax take 15-40 s each)")
    p.add_argument("--repeats", type=int, help="interleaved rounds (default 3; 1 with --quick)")
    p.add_argument("--dir", help="work directory (default: a temp dir)")
    args = p.parse_args(argv)
    repeats = args.repeats or (1 if args.quick else 3)
    workdir = Path(tempfile.mkdtemp(prefix="bench_coldstart.", dir=args.dir))
    try:
        result = run(args.quick, repeats, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    for name, s in result["seconds"].items():
        print(f"{name:>12}: {s['total']['median']:.2f} s to first embedding ({s['total']['min']:.2f}-"
              f"{s['total']['max']:.2f}); import {s['import']['median']:.2f}, load {s['load']['median']:.2f}, "
              f"first call {s['first']['median']:.2f}")
    print(f"max abs diff: {result['max_abs_diff']}")
    path = write_result("coldstart_quick" if args.quick else "coldstart", result)
    print(f"wrote {path}")
    print(json.dumps(result["ratios"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
