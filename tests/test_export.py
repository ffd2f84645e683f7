"""``clip-zoo export``: every format x framework cell exports a tiny random ViT, a tiny random ResNet and the
bundled model (slow tier, except ONNX from torch), reloads each graph in its runtime (one session /
interpreter / module for texts of 1, 20 and 77 tokens, batch 1 and 5, and images) and holds the bound;
the cells no toolchain supports fail clearly.

Set ``CLIP_ZOO_EXPORT_RESULTS=DIR`` to keep one JSON record per cell there for ``scripts/export_matrix.py``.
"""
from __future__ import annotations

import importlib
import json
import os
from pathlib import Path

import numpy as np
import pytest

from clip_core.testing import random_weights, tiny_resnet_config, tiny_vit_config
from tests.cli_helpers import run_cli
from tests.conftest import backend_module
from tests.test_backend_surface import assert_same_signatures

CELLS = [("onnx", "torch"), ("onnx", "tf"), ("onnx", "flax"), ("litert", "tf"), ("stablehlo", "flax"),
         ("pt2", "torch"), ("savedmodel", "tf")]
ARCHS = ("vit", "resnet", "default")
RESULTS_ENV = "CLIP_ZOO_EXPORT_RESULTS"


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict:
    """The tiny random ViT and ResNet as canonical directories, and ``default`` (the bundled model)."""
    import conversion

    root = tmp_path_factory.mktemp("export_ckpts")
    out = {"default": "default"}
    for name, cfg in (("vit", tiny_vit_config()), ("resnet", tiny_resnet_config())):
        conversion.save_canonical(root / name, cfg, random_weights(cfg))
        out[name] = str(root / name)
    return out


def _record(fmt: str, framework: str, arch: str, meta: dict) -> None:
    folder = os.environ.get(RESULTS_ENV)
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        record = {"format": fmt, "framework": framework, "arch": arch, "int8": meta["int8"],
                  "dtype": meta["dtype"], "verification": meta["verification"]}
        suffix = "-int8" if meta["int8"] else "" if meta["dtype"] == "fp32" else f"-{meta['dtype']}"
        (Path(folder) / f"{fmt}-{framework}-{arch}{suffix}.json").write_text(json.dumps(record, indent=1))


def _export(capsys, tmp_path, checkpoints, fmt, framework, arch, *extra) -> dict:
    from clip_zoo import engines

    backend_module(framework)
    out = tmp_path / f"{fmt}-{framework}-{arch}"
    encoders, load = [], engines.load_encoder
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(engines, "load_encoder", lambda *a, **k: encoders.append(load(*a, **k)) or encoders[-1])
        rc, stdout, err = run_cli(capsys, "export", checkpoints[arch], out, "--to", fmt, "--framework", framework,
                                  *extra)
    assert rc == 0, err[-3000:]
    if framework == "tf":  # the reference ran TF's plain graph, not one XLA compile per shape of the battery
        assert [e.model.jit_compile for e in encoders] == [False]
    meta = json.loads((out / "model.json").read_text())
    assert "text_embeds: worst" in stdout and "image_embeds: worst" in stdout
    return meta


# every cell on the tiny ViT and ResNet; the bundled model (4 + 4 layers, ~2x the time) in the slow tier,
# except ONNX from torch, the path of the framework-free engine
FAST = [(f, fw, a) for f, fw in CELLS for a in ARCHS if a != "default" or (f, fw) == ("onnx", "torch")]
SLOW = [(f, fw, a) for f, fw in CELLS for a in ARCHS if (f, fw, a) not in FAST]


@pytest.mark.parametrize("fmt,framework,arch", FAST, ids=["-".join(c) for c in FAST])
def test_export_cell_reloads_within_the_fp32_bound(capsys, tmp_path, checkpoints, fmt, framework, arch):
    _check_cell(capsys, tmp_path, checkpoints, fmt, framework, arch)


@pytest.mark.parametrize("fmt,framework,arch", SLOW, ids=["-".join(c) for c in SLOW])
def test_export_bundled_model_cell_reloads_within_the_fp32_bound(capsys, tmp_path, checkpoints, fmt, framework,
                                                                 arch):
    _check_cell(capsys, tmp_path, checkpoints, fmt, framework, arch)


def _check_cell(capsys, tmp_path, checkpoints, fmt, framework, arch) -> None:
    meta = _export(capsys, tmp_path, checkpoints, fmt, framework, arch)
    _record(fmt, framework, arch, meta)
    report = meta["verification"]
    assert report["ok"] and report["metric"] == "max_abs_diff" and report["bound"] == 1e-5
    text = report["parts"]["text"]["cases"]
    # texts of 1, 20 and 77 tokens, batch 1 and 5, all through one loaded runtime
    assert {k.split()[1] for k in text} == {"T=1", "T=20", "T=77"} and len(text) == 6
    for part in ("text", "image"):
        values = report["parts"][part]["cases"].values()
        assert max(values) <= 1e-5
    assert meta["context_length"] == 77 and set(meta["files"]) == {"text", "image"}
    assert len(meta["source"]["sha256"]) == 64


def test_onnx_int8_holds_the_cosine_bound(capsys, tmp_path, checkpoints):
    meta = _export(capsys, tmp_path, checkpoints, "onnx", "torch", "default", "--int8")
    _record("onnx", "torch", "default", meta)
    report = meta["verification"]
    assert report["metric"] == "min_cosine" and report["bound"] == 0.99 and report["ok"]
    assert min(min(p["cases"].values()) for p in report["parts"].values()) >= 0.99
    text_params = sum(int(np.prod(shape)) for shape in _text_shapes(meta["config"]))
    assert report["parts"]["text"]["size_bytes"] < 0.5 * 4 * text_params  # int8 weights, not float32


def test_litert_int8_holds_the_cosine_bound(capsys, tmp_path, checkpoints):
    """TensorFlow's int8: LiteRT's dynamic-range quantization, checked like the ONNX int8 export."""
    meta = _export(capsys, tmp_path, checkpoints, "litert", "tf", "default", "--int8")
    _record("litert", "tf", "default", meta)
    report = meta["verification"]
    assert meta["int8"] and report["metric"] == "min_cosine" and report["bound"] == 0.99 and report["ok"]
    assert min(min(p["cases"].values()) for p in report["parts"].values()) >= 0.99
    text_params = sum(int(np.prod(shape)) for shape in _text_shapes(meta["config"]))
    assert report["parts"]["text"]["size_bytes"] < 0.5 * 4 * text_params  # int8 weights, not float32


def _text_shapes(config: dict) -> list[tuple]:
    """Shapes of the text tower's weight matrices (embeddings and per-layer projections)."""
    t = config["text_config"]
    d, f, n = t["hidden_size"], t["intermediate_size"], t["num_hidden_layers"]
    return [(t["vocab_size"], d)] + [(d, d)] * 4 * n + [(d, f), (f, d)] * n


@pytest.mark.parametrize("fmt,dtype", [("onnx", "fp16"), ("pt2", "bf16")])
def test_half_precision_torch_exports_hold_the_cosine_bound(capsys, tmp_path, checkpoints, fmt, dtype):
    meta = _export(capsys, tmp_path, checkpoints, fmt, "torch", "default", "--dtype", dtype)
    _record(fmt, "torch", "default", meta)
    report = meta["verification"]
    assert meta["dtype"] == dtype and report["metric"] == "min_cosine" and report["ok"]
    assert report["bound"] == {"fp16": 0.999, "bf16": 0.99}[dtype]
    assert min(min(p["cases"].values()) for p in report["parts"].values()) >= report["bound"]


def test_past_the_bound_exits_1_and_writes_nothing(capsys, tmp_path, checkpoints, monkeypatch):
    backend_module("torch")
    from clip_zoo import export_verify

    monkeypatch.setattr(export_verify, "FP32_BOUND", 0.0)  # any rounding difference now fails
    out = tmp_path / "out"
    rc, stdout, err = run_cli(capsys, "export", checkpoints["vit"], out, "--to", "onnx", "--framework", "torch",
                              "--parts", "image")
    assert rc == 1 and "FAILED" in stdout and "past the bound" in err
    assert not out.exists() and not any(p.name.startswith(".out.") for p in tmp_path.iterdir())


@pytest.mark.parametrize("fmt,framework,expected", [
    ("litert", "torch", "--framework tf"), ("litert", "flax", "--framework tf"),
    ("stablehlo", "torch", "--framework flax"), ("pt2", "tf", "--framework torch"),
    ("savedmodel", "flax", "--framework tf")])
def test_unsupported_cells_say_which_framework_can(capsys, tmp_path, fmt, framework, expected):
    rc, _, err = run_cli(capsys, "export", "default", tmp_path / "o", "--to", fmt, "--framework", framework)
    assert rc == 2 and err.startswith("clip-zoo: error:") and expected in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("argv,expected", [
    (["--to", "onnx", "--parts", "audio"], "--parts 'audio' is not valid"),
    (["--to", "pt2", "--int8"], "--int8 works with --to onnx or litert and fp32 only"),
    (["--to", "keras"], "invalid choice"),
    (["--to", "onnx", "--dtype", "bf16"], "do not run bf16 graphs"),
    (["--to", "onnx", "--dtype", "fp16", "--framework", "tf"], "pass --framework torch"),
    (["--to", "onnx", "--dtype", "fp16", "--int8"], "--int8 works with --to onnx or litert and fp32 only"),
])
def test_bad_arguments_are_one_line_errors(capsys, tmp_path, argv, expected):
    rc, _, err = run_cli(capsys, "export", "default", tmp_path / "o", *argv)
    assert rc == 2 and expected in err and len(err.strip().splitlines()) == 1


def test_existing_output_is_refused(capsys, tmp_path):
    (tmp_path / "o").mkdir()
    rc, _, err = run_cli(capsys, "export", "default", tmp_path / "o", "--to", "onnx")
    assert rc == 2 and "already exists" in err


def test_litert_is_tensorflow_only_in_the_backend_api():
    for name in ("torch", "flax"):
        module = importlib.import_module(f"{backend_module(name).__name__}.export")
        with pytest.raises(NotImplementedError, match="--framework tf"):
            module.export_litert(None, ".")


@pytest.mark.parametrize("function", ["export_onnx", "export_native", "export_litert", "load_exported"])
def test_backend_export_functions_have_one_signature(function):
    backends = {fw: importlib.import_module(f"{backend_module(fw).__name__}.export") for fw in ("torch", "tf", "flax")}
    assert_same_signatures(lambda mod, fw: getattr(mod, function), backends, f"export.{function}()")


def test_torch_eager_text_still_trims_while_export_runs_full_length():
    """The eager path trims to the last EOT (speed); the exported path runs all T positions: same pooled state."""
    torch = pytest.importorskip("torch")
    import clip_torch
    from clip_torch.export import _TextEmbeds

    cfg = tiny_vit_config()
    model = clip_torch.CLIPModel(cfg).eval()
    ids = torch.zeros(2, 77, dtype=torch.long)
    ids[:, :5] = 7
    ids[:, 5] = cfg.text_config.eos_token_id
    mask = (torch.arange(77) <= 5).long().expand(2, 77)
    seen = []
    hook = model.text_model.embeddings.register_forward_hook(lambda m, a, out: seen.append(out.shape[1]))
    with torch.no_grad():
        eager = model.get_text_features(ids, mask).numpy()
        full = _TextEmbeds(model)(ids, mask).numpy()
    hook.remove()
    assert seen == [6, 77]
    np.testing.assert_allclose(full, eager, atol=1e-5, rtol=0)


def test_docs_matrix_lists_every_cell_and_model_within_the_bound():
    from scripts.export_matrix import END, START

    doc = (Path(__file__).resolve().parents[1] / "docs" / "export.md").read_text(encoding="utf-8")
    rows = [r.split("|")[1:-1] for r in doc.split(START)[1].split(END)[0].strip().splitlines()[2:]]
    cells = {(r[0].strip(), r[1].strip(), r[2].strip()) for r in rows}
    models = {"bundled ViT", "tiny ViT", "tiny ResNet"}
    assert cells >= {(f, fw, m) for f, fw in CELLS for m in models}
    assert all("✅" in r[3] and "✅" in r[4] for r in rows) and any(r[0].strip() == "onnx int8" for r in rows)


def test_matrix_script_renders_a_record(tmp_path):
    from scripts.export_matrix import END, START, load, render

    part = {"worst": 2.5e-7, "ok": True, "size_bytes": 2_000_000, "load_seconds": 0.25, "cases": {}}
    bad = {**part, "worst": 3e-4, "ok": False}
    record = {"format": "onnx", "framework": "tf", "arch": "resnet", "int8": False,
              "verification": {"metric": "max_abs_diff", "parts": {"text": part, "image": bad}}}
    (tmp_path / "r.json").write_text(json.dumps(record))
    page = render(f"# t\n{START}\nold\n{END}\ntail\n", load(tmp_path))
    assert "| onnx | tf | tiny ResNet | ✅ 2.5e-07 | ❌ 0.0003 | 2.00 | 2.00 | 0.25 / 0.25 |" in page
    assert "old" not in page and page.endswith(f"{END}\ntail\n")


def test_onnx_int8_weights_do_not_saturate_without_vnni(tmp_path):
    """On x86 without VNNI onnxruntime adds u8 x s8 pairs into int16 with saturation, and an exported file
    runs wherever it is copied: the quantized weights use 7 bits, so a worst-case product (activations over
    every code against large weights of one sign) stays within 2% of float32 on any CPU."""
    pytest.importorskip("onnxruntime")
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from clip_zoo.export import quantize_onnx

    rng = np.random.default_rng(0)
    w = rng.uniform(0.5, 1.0, (256, 32)).astype(np.float32)
    x = rng.uniform(0.0, 1.0, (64, 256)).astype(np.float32)
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "worst_case",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 256])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 32])],
                              [numpy_helper.from_array(w, "w")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "linear.onnx")
    quantize_onnx(tmp_path, {"linear": "linear.onnx"})
    quantized = onnx.load(tmp_path / "linear.onnx")
    assert not any(t.data_type == TensorProto.FLOAT and t.name == "w" for t in quantized.graph.initializer)
    y = ort.InferenceSession(str(tmp_path / "linear.onnx"), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    err = float(np.linalg.norm(y - x @ w) / np.linalg.norm(x @ w))
    assert err <= 0.02, f"relative error {err}"


def test_onnx_int8_keeps_convolutions_in_float(capsys, tmp_path, checkpoints):
    """Only products are quantized: onnxruntime's dynamic int8 convolution ran RN50 ~4x slower than fp32."""
    import onnx

    meta = _export(capsys, tmp_path, checkpoints, "onnx", "torch", "resnet", "--int8")
    ops = {node.op_type for node in onnx.load(tmp_path / "onnx-torch-resnet" / meta["files"]["image"]).graph.node}
    assert "Conv" in ops and "ConvInteger" not in ops and ops & {"MatMulInteger", "DynamicQuantizeMatMul"}, ops
    assert meta["verification"]["ok"]
