"""SigLIP through the application: `classify`, `embed` and `parity` on a checkpoint written by transformers
4.57 (weights, config, SentencePiece tokenizer and image-processor files), in every installed framework."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cli_helpers import run_cli
from clip_core.testing import random_weights, tiny_siglip_config

transformers = pytest.importorskip("transformers")
torch = pytest.importorskip("torch")
pytest.importorskip("sentencepiece")

EXAMPLES = sorted(str(p) for p in (Path(__file__).resolve().parent.parent / "examples").glob("*.png"))
LABELS = ["orange circle", "blue triangle", "green star", "a cross", "white hexagon"]


def _tokenizer(kind: str, root: Path):
    """SigLIP's SentencePiece tokenizer, or SigLIP 2's Gemma tokenizer, on a small trained model."""
    from test_siglip_tokenizer import train_spm

    spm_file = root / f"{kind}_src.model"
    if kind == "siglip":
        spm_file.write_bytes(train_spm("unigram"))
        return transformers.SiglipTokenizer(str(spm_file), model_max_length=16)
    spm_file.write_bytes(train_spm("bpe"))
    return transformers.GemmaTokenizerFast(vocab_file=str(spm_file), model_max_length=16)


@pytest.fixture(scope="module", params=["siglip", "siglip2"])
def siglip_dir(request, tmp_path_factory) -> Path:
    """A tiny random SigLIP saved by transformers with its own tokenizer (a trained SentencePiece model);
    ``siglip2``: the fixed-resolution SigLIP 2 layout (the same model classes, Gemma's tokenizer)."""
    root = tmp_path_factory.mktemp(request.param)
    tok = _tokenizer(request.param, root)
    config = tiny_siglip_config(vocab_size=len(tok), max_position_embeddings=16)
    weights = random_weights(config, seed=3)
    weights["logit_bias"] = np.zeros(1, np.float32)  # probabilities spread over (0, 1), not all ~0
    model = transformers.SiglipModel(transformers.SiglipConfig.from_dict(config.to_dict()))
    model.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()}, strict=True)
    out = root / request.param
    model.save_pretrained(out)
    tok.save_pretrained(out)
    size = config.vision_config.image_size
    transformers.SiglipImageProcessor(size={"height": size, "width": size}).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def reference(siglip_dir):
    """transformers' sigmoid probabilities ``(images, labels)`` for :data:`LABELS` (prompts = the labels)."""
    from PIL import Image

    model = transformers.SiglipModel.from_pretrained(siglip_dir).eval()
    tok = transformers.AutoTokenizer.from_pretrained(siglip_dir)  # SiglipTokenizer / GemmaTokenizerFast
    proc = transformers.SiglipImageProcessor.from_pretrained(siglip_dir)
    text = tok(LABELS, padding="max_length", max_length=16, truncation=True, return_tensors="pt")
    pixels = proc([Image.open(p).convert("RGB") for p in EXAMPLES], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        out = model(**text, pixel_values=pixels)
    return {"probs": torch.sigmoid(out.logits_per_image).numpy(), "text": out.text_embeds.numpy(),
            "image": out.image_embeds.numpy()}


def _frameworks():
    from clip_zoo.engines import installed_frameworks

    return installed_frameworks()


@pytest.mark.parametrize("framework", ["torch", "tf", "flax"])
def test_classify_gives_transformers_sigmoid_probabilities(capsys, siglip_dir, reference, framework):
    if framework not in _frameworks():
        pytest.skip(f"{framework} is not installed")
    rc, out, err = run_cli(capsys, "classify", *EXAMPLES, "--labels", ",".join(LABELS), "--templates", "none",
                           "--model", siglip_dir, "--framework", framework, "--json", "--top-k", len(LABELS))
    assert rc == 0, err
    got = np.zeros_like(reference["probs"])
    for row, item in enumerate(json.loads(out)):
        assert item["image"] == EXAMPLES[row]
        for pred in item["predictions"]:
            got[row, LABELS.index(pred["label"])] = pred["probability"]
    assert not np.allclose(got.sum(axis=1), 1.0, atol=1e-3)  # independent sigmoids, not a softmax
    np.testing.assert_allclose(got, reference["probs"], atol=2e-6)


@pytest.mark.parametrize("framework", ["torch", "tf", "flax"])
def test_encoder_embeddings_equal_transformers(siglip_dir, reference, framework):
    from clip_zoo.engines import load_encoder

    if framework not in _frameworks():
        pytest.skip(f"{framework} is not installed")
    encoder = load_encoder(str(siglip_dir), framework)
    np.testing.assert_allclose(encoder.encode_texts(LABELS), reference["text"], atol=1e-5)
    pixels = encoder.processor(EXAMPLES, return_tensors="np")["pixel_values"]
    np.testing.assert_allclose(encoder.encode_images(pixels), reference["image"], atol=1e-5)
    scale, bias = encoder.probability_params
    np.testing.assert_allclose([scale, bias], [10.0, 0.0], rtol=1e-6, atol=1e-6)


def test_parity_passes_on_siglip(capsys, siglip_dir, tmp_path):
    frameworks = _frameworks()
    if len(frameworks) < 2:
        pytest.skip("parity needs two frameworks")
    rc, out, err = run_cli(capsys, "parity", siglip_dir, "--frameworks", ",".join(frameworks), "--json")
    assert rc == 0, out + err
    data = json.loads(out)
    assert data["passed"] and len(data["comparisons"]) > 50
    assert {c["field"].split("/")[1].split(".")[0] for c in data["comparisons"]} >= {"logits_per_image", "text_embeds"}


def test_finetune_command_trains_a_siglip_checkpoint(capsys, siglip_dir, tmp_path):
    """`clip-zoo finetune` on SigLIP: the full padded context, the sigmoid loss, the tokenizer files carried over;
    the result loads in transformers and classifies."""
    import shutil

    data = tmp_path / "data"
    for path in EXAMPLES:  # an ImageFolder: the colour is the class
        folder = data / Path(path).stem.split("_")[0]
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, folder / Path(path).name)
    out = tmp_path / "ft"
    rc, _, err = run_cli(capsys, "finetune", "--model", siglip_dir, "--train", data, "--out", out, "--steps", 3,
                         "--batch-size", 4, "--lr", "1e-3", "--framework", "torch", "--no-progress")
    assert rc == 0, err
    steps = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if "loss" in line]
    assert len(steps) == 3 and steps[-1]["loss"] < steps[0]["loss"]
    tuned = transformers.SiglipModel.from_pretrained(out).eval()
    assert not torch.equal(tuned.logit_bias, transformers.SiglipModel.from_pretrained(siglip_dir).logit_bias)
    assert {p.name for p in siglip_dir.iterdir() if "token" in p.name or p.suffix == ".model"} <= \
        {p.name for p in out.iterdir()}
    rc, _, err = run_cli(capsys, "classify", EXAMPLES[0], "--labels", "a,b", "--model", out, "--framework", "torch")
    assert rc == 0, err


def test_embed_search_and_eval_run_on_siglip(capsys, siglip_dir, reference, tmp_path):
    """`embed` + `search` rank by SigLIP's embeddings (transformers' order and cosines); `eval zeroshot` scores
    the same top-1 as transformers' logits."""
    out = tmp_path / "emb.npy"
    rc, _, err = run_cli(capsys, "embed", *EXAMPLES, "--out", out, "--model", siglip_dir, "--framework", "torch",
                         "--no-progress")
    assert rc == 0, err
    np.testing.assert_allclose(np.load(out), reference["image"], atol=1e-5)
    rc, text, err = run_cli(capsys, "search", out, LABELS[1], "--model", siglip_dir, "--framework", "torch",
                            "--top-k", len(EXAMPLES), "--json")
    assert rc == 0, err
    cosines = reference["image"] @ reference["text"][1]
    hits = json.loads(text)
    assert [h["path"] for h in hits] == [EXAMPLES[i] for i in np.argsort(-cosines, kind="stable")]
    np.testing.assert_allclose([h["score"] for h in hits], np.sort(cosines)[::-1], atol=1e-4)
    data = tmp_path / "data"
    for path, label in zip(EXAMPLES, np.argmax(reference["probs"], axis=1)):  # transformers' top-1 as the truth
        folder = data / LABELS[label]  # the folders present hold the best label, so it stays top-1 among them
        folder.mkdir(parents=True, exist_ok=True)
        (folder / Path(path).name).write_bytes(Path(path).read_bytes())
    rc, text, err = run_cli(capsys, "eval", "zeroshot", data, "--templates", "none", "--model", siglip_dir, "--frameworks", "torch", "--cache", tmp_path / "cache",
                            "--json", "--no-progress")
    assert rc == 0, err
    assert json.loads(text)["metrics"]["acc1"] == pytest.approx(1.0)
