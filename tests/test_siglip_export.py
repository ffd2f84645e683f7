"""``clip-zoo export`` on SigLIP: a tiny SigLIP and a SigLIP 2 written by transformers 4.57 with a trained
SentencePiece / Gemma tokenizer (the ``siglip_dir`` fixture of tests/test_siglip_cli.py) exported from torch
to ONNX and run by the framework-free engine (embeddings and sigmoid probabilities equal to torch's); the
other format x framework cells (SigLIP only) in the slow tier; the cells no toolchain writes fail with a
one-line error."""
from __future__ import annotations

import json

import numpy as np
import pytest

from cli_helpers import run_cli
from test_siglip_cli import EXAMPLES, LABELS, siglip_dir  # noqa: F401  (the shared module fixture)

pytest.importorskip("onnxruntime")

TEXTS = ["a", "a photo of a dog", "Hello, World! 123", "the quick brown fox jumps over the lazy dog",
         "two cats sleeping on a red sofa next to an open window in the afternoon sun with a cup of tea"]


def _export(source, out, fmt: str, framework: str) -> dict:
    """Run the export command (output captured here: module fixtures have no ``capsys``); model.json."""
    import contextlib
    import io

    from clip_zoo.__main__ import main
    from tests.conftest import backend_module

    backend_module(framework)
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        rc = main(["export", str(source), str(out), "--to", fmt, "--framework", framework])
    assert rc == 0, stderr.getvalue()[-3000:]
    assert "text_embeds: worst" in stdout.getvalue() and "image_embeds: worst" in stdout.getvalue()
    return json.loads((out / "model.json").read_text())


@pytest.fixture(scope="module")
def onnx_export(siglip_dir, tmp_path_factory):  # noqa: F811
    """``clip-zoo export SIGLIP_DIR OUT --to onnx --framework torch`` (one export for the module)."""
    out = tmp_path_factory.mktemp("siglip_export") / "onnx"
    return out, _export(siglip_dir, out, "onnx", "torch")


@pytest.fixture(scope="module")
def encoders(siglip_dir, onnx_export):  # noqa: F811
    from clip_zoo.engines import load_encoder

    return load_encoder(str(siglip_dir), "torch"), load_encoder(str(onnx_export[0]), runtime="onnx")


def test_model_json_records_family_logits_inputs_and_side_files(siglip_dir, onnx_export, encoders):  # noqa: F811
    from clip_zoo.export import SIDE_FILES

    out, meta = onnx_export
    assert meta["family"] == "siglip" and meta["context_length"] == 16
    ids = ["int64", ["batch", 16]]  # fixed length; the mask as the tokenizer gives it
    assert meta["inputs"]["text"] == {"input_ids": ids, "attention_mask": ids}
    scale, bias = encoders[0].probability_params
    np.testing.assert_allclose([np.exp(meta["logit_scale"]), meta["logit_bias"]], [scale, bias], rtol=1e-6)
    # SigLIP's spiece.model or SigLIP 2's tokenizer.model + tokenizer.json, configs, the image processor's
    source = {n for n in SIDE_FILES if (siglip_dir / n).is_file()}
    assert {"tokenizer_config.json", "preprocessor_config.json"} <= source
    assert source & {"spiece.model", "tokenizer.model"}
    assert {n for n in SIDE_FILES if (out / n).is_file()} == source
    report = meta["verification"]
    assert report["ok"] and report["bound"] == 1e-5
    assert set(report["parts"]["text"]["cases"]) == {"text short B=1", "text long B=1", "text mixed B=5"}
    assert max(v for p in report["parts"].values() for v in p["cases"].values()) <= 1e-5


def test_onnx_embeddings_equal_torch(encoders):
    torch_enc, onnx_enc = encoders
    assert onnx_enc.family == "siglip" and type(onnx_enc.tokenizer) is type(torch_enc.tokenizer)
    for texts in ([TEXTS[1]], [TEXTS[4]], TEXTS):  # batch 1 (short, truncated past 16 tokens) and 5
        np.testing.assert_allclose(onnx_enc.encode_texts(texts), torch_enc.encode_texts(texts), atol=1e-5)
    rng = np.random.default_rng(0)
    for batch in (1, 4):
        pixels = rng.standard_normal((batch, 3, 32, 32)).astype(np.float32)
        np.testing.assert_allclose(onnx_enc.encode_images(pixels), torch_enc.encode_images(pixels), atol=1e-5)
    pixels = onnx_enc.processor(EXAMPLES, return_tensors="np")["pixel_values"]  # the SigLIP processor
    np.testing.assert_allclose(pixels, torch_enc.processor(EXAMPLES, return_tensors="np")["pixel_values"], atol=1e-6)
    np.testing.assert_allclose(onnx_enc.probability_params, torch_enc.probability_params, rtol=1e-6)


def _probs(stdout: str) -> np.ndarray:
    rows = json.loads(stdout)
    got = np.zeros((len(rows), len(LABELS)))
    for row, item in enumerate(rows):
        for pred in item["predictions"]:
            got[row, LABELS.index(pred["label"])] = pred["probability"]
    return got


def test_classify_onnx_runtime_gives_torch_sigmoid_probabilities(capsys, siglip_dir, onnx_export):  # noqa: F811
    common = ("classify", *EXAMPLES, "--labels", ",".join(LABELS), "--templates", "none", "--json",
              "--top-k", len(LABELS))
    rc, ref, err = run_cli(capsys, *common, "--model", siglip_dir, "--framework", "torch")
    assert rc == 0, err
    rc, got, err = run_cli(capsys, *common, "--model", onnx_export[0], "--runtime", "onnx")
    assert rc == 0, err
    assert not np.allclose(_probs(got).sum(axis=1), 1.0, atol=1e-3)  # independent sigmoids, not a softmax
    np.testing.assert_allclose(_probs(got), _probs(ref), atol=1e-5)


# the other cells: 25-80 s each on 2 busy cores (tf2onnx, jax2onnx, the LiteRT converter): slow tier
CELLS = [("onnx", "tf"), ("onnx", "flax"), ("pt2", "torch"), ("savedmodel", "tf"), ("stablehlo", "flax"),
         ("litert", "tf")]


@pytest.mark.parametrize("siglip_dir", ["siglip"], indirect=True)  # the towers are the same in SigLIP 2
@pytest.mark.parametrize("fmt,framework", CELLS, ids=["-".join(c) for c in CELLS])
def test_siglip_export_cell_reloads_within_the_fp32_bound(tmp_path, siglip_dir, fmt, framework):  # noqa: F811
    meta = _export(siglip_dir, tmp_path / "out", fmt, framework)
    report = meta["verification"]
    assert report["ok"] and meta["family"] == "siglip" and set(meta["files"]) == {"text", "image"}
    assert len(report["parts"]["text"]["cases"]) == 3 and len(report["parts"]["image"]["cases"]) == 2
    assert max(v for p in report["parts"].values() for v in p["cases"].values()) <= 1e-5


@pytest.mark.parametrize("fmt,framework,expected", [
    ("litert", "torch", "--to litert cannot be written from torch, pass --framework tf"),
    ("stablehlo", "tf", "--to stablehlo cannot be written from tf, pass --framework flax"),
    ("pt2", "flax", "--to pt2 cannot be written from flax, pass --framework torch")])
def test_unsupported_cells_are_one_line_errors(capsys, tmp_path, siglip_dir, fmt, framework, expected):  # noqa: F811
    rc, out, err = run_cli(capsys, "export", siglip_dir, tmp_path / "out", "--to", fmt, "--framework", framework)
    assert rc != 0 and not (tmp_path / "out").exists()
    assert err.strip().splitlines()[-1] == f"clip-zoo: error: {expected}"
