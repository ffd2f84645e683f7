"""The framework-free engine: ``--runtime onnx --model EXPORTED_DIR`` runs the exported graphs with onnxruntime,
gives the framework engine's outputs, and works with torch, TensorFlow and JAX blocked."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.cli_helpers import run_cli
from tests.conftest import backend_module
from tests.test_no_framework import run_blocked

pytest.importorskip("onnxruntime")
ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
LABELS = "circle,cross,star,triangle,hexagon"
TEXTS = ["a photo of a star", "x", "a blue triangle " * 12]


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    """The bundled model exported by torch to ONNX, once for the module."""
    backend_module("torch")
    from clip_zoo.__main__ import main

    out = tmp_path_factory.mktemp("onnx_engine") / "default-onnx"
    assert main(["export", "default", str(out), "--to", "onnx", "--framework", "torch"]) == 0
    return out


@pytest.fixture(scope="module")
def torch_encoder():
    backend_module("torch")
    from clip_zoo.engines import load_encoder

    return load_encoder("default", "torch")


def test_encoder_matches_the_torch_engine(exported, torch_encoder):
    from clip_zoo.engines import load_encoder
    from clip_zoo.onnx_engine import OnnxEncoder

    enc = load_encoder(str(exported), runtime="onnx")
    assert isinstance(enc, OnnxEncoder) and enc.dim == torch_encoder.dim and enc.context_length == 77
    np.testing.assert_allclose(enc.encode_texts(TEXTS), torch_encoder.encode_texts(TEXTS), atol=1e-5, rtol=0)
    pixels = np.random.default_rng(0).standard_normal((3, 3, 64, 64)).astype(np.float32)
    np.testing.assert_allclose(enc.encode_images(pixels), torch_encoder.encode_images(pixels), atol=1e-5, rtol=0)


def test_one_session_takes_1_20_and_77_tokens(exported, torch_encoder):
    """One InferenceSession runs every text length, no re-export and no new session."""
    from clip_zoo.onnx_engine import OnnxEncoder

    enc = OnnxEncoder(exported)
    session = enc._text
    eot = enc.config.text_config.eos_token_id
    for length in (1, 20, 77):
        ids = np.full((2, length), 400, np.int32)
        ids[:, -1] = eot
        mask = np.ones_like(ids)
        got = enc._text_features(ids, mask)
        want = torch_encoder._text_features(ids, mask)
        np.testing.assert_allclose(got / np.linalg.norm(got, axis=-1, keepdims=True),
                                   want / np.linalg.norm(want, axis=-1, keepdims=True), atol=1e-5, rtol=0)
    assert enc._text is session


def test_text_is_cut_after_the_last_eot():
    """The engine feeds a CLIP text graph only the columns up to the last row's pooled position (its first
    EOT), whatever the mask says about the rest."""
    from clip_core.testing import tiny_vit_config
    from clip_zoo.onnx_engine import trim_text

    cfg = tiny_vit_config().text_config
    ids = np.zeros((3, 12), np.int64)
    ids[:, 0] = 49406
    for row, eot in enumerate((3, 6, 2)):
        ids[row, 1:eot] = 400
        ids[row, eot] = cfg.eos_token_id
    ids[0, 9] = cfg.eos_token_id  # a later EOT is not pooled
    cut, mask = trim_text(ids, np.ones_like(ids), cfg)
    assert cut.shape == mask.shape == (3, 7)
    np.testing.assert_array_equal(cut, ids[:, :7])


def _classify(capsys, *extra) -> list:
    rc, out, err = run_cli(capsys, "classify", EXAMPLES, "--labels", LABELS, "--json", *extra)
    assert rc == 0, err
    return json.loads(out)


def _assert_same_predictions(got: list, want: list) -> None:
    assert [g["image"] for g in got] == [w["image"] for w in want]
    for g, w in zip(got, want):
        assert [p["label"] for p in g["predictions"]] == [p["label"] for p in w["predictions"]]
        np.testing.assert_allclose([p["probability"] for p in g["predictions"]],
                                   [p["probability"] for p in w["predictions"]], atol=1e-4, rtol=0)


def test_classify_examples_same_as_the_torch_engine(capsys, exported):
    backend_module("torch")
    want = _classify(capsys, "--framework", "torch")
    _assert_same_predictions(_classify(capsys, "--runtime", "onnx", "--model", exported), want)


def test_classify_embed_search_with_every_framework_blocked(capsys, tmp_path, exported):
    """`pip install clip-zoo[onnx]` is enough: the commands run with torch, TensorFlow and JAX unimportable."""
    backend_module("torch")
    want = _classify(capsys, "--framework", "torch")
    emb = tmp_path / "emb.npy"
    proc = run_blocked(f"""
        import json, sys
        from clip_zoo.__main__ import main
        common = ["--runtime", "onnx", "--model", {str(exported)!r}]
        assert main(["embed", {str(EXAMPLES)!r}, "--out", {str(emb)!r}, "--no-progress", *common]) == 0
        assert main(["search", {str(emb)!r}, "a yellow star", "--json", *common]) == 0
        print("\\nCLASSIFY")
        assert main(["classify", {str(EXAMPLES)!r}, "--labels", {LABELS!r}, "--json", *common]) == 0
        blocked = [m for m in sys.modules if m.split(".")[0] in ("torch", "tensorflow", "jax", "flax", "keras")]
        assert not blocked, blocked
    """)
    assert proc.returncode == 0, proc.stderr[-3000:]
    search_out, classify_out = proc.stdout.split("\nCLASSIFY\n")
    _assert_same_predictions(json.loads(classify_out), want)
    hits = json.loads(search_out)
    assert len(hits) == 5 and hits[0]["rank"] == 1
    assert np.load(emb).shape == (8, json.loads((exported / "model.json").read_text())["config"]["projection_dim"])


def test_not_an_export_is_a_one_line_error(capsys, tmp_path):
    rc, _, err = run_cli(capsys, "classify", EXAMPLES, "--labels", LABELS, "--runtime", "onnx", "--model", tmp_path)
    assert rc == 2 and "has no model.json" in err and "clip-zoo export" in err
    assert len(err.strip().splitlines()) == 1


def test_an_export_of_another_format_is_refused(capsys, tmp_path):
    (tmp_path / "model.json").write_text(json.dumps({"format": "litert"}))
    rc, _, err = run_cli(capsys, "embed", EXAMPLES, "--out", tmp_path / "e.npy", "--runtime", "onnx",
                         "--model", tmp_path, "--no-progress")
    assert rc == 2 and "holds a litert export" in err and "--to onnx" in err
