"""The calls a new user makes first, after ``pip install "clip-zoo[torch]"`` and nothing else.

Run by ``.ci/run`` (stage *user*) from a directory outside the repository, so that the installed
package — not the source tree — is what gets imported. Usage: ``python smoke_user.py REPO_DIR``.
Every check raises on failure; the last line printed is ``smoke: N checks passed``.
"""
from __future__ import annotations

import importlib.metadata as md
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

CHECKS: list[str] = []


def check(name: str):
    def wrap(fn):
        fn()
        CHECKS.append(name)
        print(f"smoke: ok  {name}", flush=True)
        return fn
    return wrap


def run(*args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run(["clip-zoo", *args], capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise SystemExit(f"smoke: `clip-zoo {' '.join(args)}` exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


REPO = Path(sys.argv[1]).resolve()
WORK = Path(tempfile.mkdtemp(prefix="clip-zoo-smoke-"))
IMAGES = sorted(str(p) for p in (REPO / "examples").glob("*.png"))

import clip_core  # noqa: E402
import clip_torch  # noqa: E402
import torch  # noqa: E402

def _version(dist: str) -> str:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return "NOT INSTALLED"


print("smoke: versions " + ", ".join(f"{d} {_version(d)}" for d in ("clip-zoo", "tokenizers", "torch", "numpy",
                                                                    "pillow", "safetensors")), flush=True)
print(f"smoke: clip_core from {Path(clip_core.__file__).parent}", flush=True)


@check("clip_torch.tokenize (the README snippet)")
def _():
    ids = clip_torch.tokenize(["a photo of a cat", "a dog"])
    assert tuple(ids.shape) == (2, 77) and int(ids[0, 0]) == 49406, ids[:, :8]
    assert np.array_equal(np.asarray(ids), clip_core.tokenize(["a photo of a cat", "a dog"]))


@check("CLIPTokenizer()")
def _():
    batch = clip_core.CLIPTokenizer()(["a photo of a cat", "a dog"], padding=True, return_tensors="np")
    assert batch["input_ids"].shape == batch["attention_mask"].shape == (2, 7), batch["input_ids"].shape
    assert batch["input_ids"][0, -1] == 49407


@check("CLIPProcessor()")
def _():
    from PIL import Image

    out = clip_core.CLIPProcessor()(text=["a red circle"], images=[Image.open(IMAGES[0])], return_tensors="np",
                                    padding=True)
    assert out["pixel_values"].shape == (1, 3, 224, 224) and out["input_ids"].shape[0] == 1


def _embeds(model, ids, pixels):
    with torch.no_grad():
        t = model.get_text_features(input_ids=torch.as_tensor(ids))
        i = model.get_image_features(pixel_values=torch.as_tensor(pixels))
    return t.numpy(), i.numpy()


@check("CLIPModel.from_pretrained + save_pretrained round trip")
def _():
    from PIL import Image

    model, preprocess = clip_torch.load("default")
    pixels = preprocess(Image.open(IMAGES[0])).unsqueeze(0).numpy()
    ids = clip_core.tokenize(["a red circle", "a blue square"])
    ref = _embeds(model, ids, pixels)
    hf = clip_torch.CLIPModel.from_pretrained(str(clip_core.default_model_path()))
    for a, b in zip(ref, _embeds(hf, ids, pixels)):
        np.testing.assert_allclose(a, b, atol=1e-6)
    hf.save_pretrained(str(WORK / "saved"))
    again = clip_torch.CLIPModel.from_pretrained(str(WORK / "saved"))
    for a, b in zip(ref, _embeds(again, ids, pixels)):
        np.testing.assert_array_equal(a, b)


@check("clip-zoo convert default OUT --to hf, and the result loads")
def _():
    run("convert", "default", str(WORK / "hf"), "--to", "hf")
    assert (WORK / "hf" / "model.safetensors").is_file() and (WORK / "hf" / "tokenizer_config.json").is_file()
    a = clip_torch.CLIPModel.from_pretrained(str(WORK / "hf"))
    b = clip_torch.CLIPModel.from_pretrained("default")
    ids = clip_core.tokenize(["a green star"])
    with torch.no_grad():
        np.testing.assert_array_equal(a.get_text_features(input_ids=torch.as_tensor(ids)).numpy(),
                                      b.get_text_features(input_ids=torch.as_tensor(ids)).numpy())


@check("clip-zoo convert --to tf without h5py names the extra")
def _():
    proc = subprocess.run(["clip-zoo", "convert", "default", str(WORK / "tf"), "--to", "tf"],
                          capture_output=True, text=True, timeout=600)
    try:
        import h5py  # noqa: F401
    except ImportError:
        assert proc.returncode != 0 and "clip-zoo[tf-files]" in proc.stderr, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    else:
        assert proc.returncode == 0, proc.stderr


@check("clip-zoo embed examples/ and search")
def _():
    out = WORK / "emb.npy"
    run("embed", str(REPO / "examples"), "--out", str(out))
    emb = np.load(out)
    assert emb.shape[0] == len(IMAGES) and np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-4), emb.shape
    found = run("search", str(out), "a photo of a yellow star", "--top-k", "3").stdout
    assert "yellow_star.png" in found.splitlines()[0] or "yellow_star.png" in found, found


@check("clip-zoo classify puts each example's true label first")
def _():
    labels = ",".join(f"{c} {s}" for c in ("red", "orange", "yellow", "green", "blue", "purple", "white", "black")
                      for s in ("circle", "square", "triangle", "star", "hexagon", "cross"))
    import json

    results = json.loads(run("classify", *IMAGES, "--labels", labels, "--json", "--top-k", "1").stdout)
    for item in results:
        truth = Path(item["image"]).stem.replace("_", " ")
        assert item["predictions"][0]["label"] == truth, item


shutil.rmtree(WORK, ignore_errors=True)
print(f"smoke: {len(CHECKS)} checks passed", flush=True)
