"""The clip-zoo command: bad input, classify, search, models, info, convert, --model in every format.

A tiny random ViT (32 px) stands in for a real model here; the bundled default model's accuracy and
the examples are checked in test_default_model.py.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import conversion
from clip_core import CLIPConfig, shapes
from clip_core.testing import random_weights, tiny_vit_config
from clip_zoo.__main__ import main

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """A canonical directory with a tiny random ViT CLIP (32 px images). Widths are 64 with one head
    each, as OpenAI's format (which stores no config) implies: heads = width // 64, MLP = 4 * width."""
    base = tiny_vit_config()
    cfg = CLIPConfig(text_config=base.text_config.replace(hidden_size=64, intermediate_size=256, num_attention_heads=1),
                     vision_config=base.vision_config.replace(hidden_size=64, intermediate_size=256,
                                                              num_attention_heads=1),
                     projection_dim=16)
    path = tmp_path_factory.mktemp("tiny") / "ckpt"
    conversion.save_checkpoint(path, cfg, random_weights(cfg, seed=1))
    return path


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory):
    """Six generated images, a corrupt .png and a text file."""
    d = tmp_path_factory.mktemp("images")
    data = shapes.generate(6, seed=7, size=48)
    for i, (im, k) in enumerate(zip(data.images, data.label_ids)):
        im.save(d / f"{i}_{shapes.label_names()[k].replace(' ', '_')}.png")
    (d / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not a png")
    (d / "notes.txt").write_text("not an image")
    return d


def run_cli(capsys, *argv):
    """Run ``main(argv)`` in-process → (exit status, stdout, stderr)."""
    rc = main([str(a) for a in argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


@pytest.mark.parametrize("argv, message", [
    (["classify", "missing.png", "--labels", "a,b"], "no such file or folder: missing.png"),
    (["classify", "{img}", "--labels", " , "], "label list is empty"),
    (["classify", "{img}", "--labels", "a,b", "--framework", "mxnet"], "unknown framework 'mxnet'"),
    (["classify", "{img}", "--labels", "a,b", "--model", "no-such-model"], "unknown model 'no-such-model'"),
    (["classify", "{img}", "--labels", "a,b", "--model", "ViT-B/32"], "never downloads"),
    (["classify", "{img}", "--labels", "a,b", "--templates", "nope"], "unknown template set"),
    (["classify", "nothing-*.png", "--labels", "a,b"], "no files match"),
    (["embed", "--out", "{tmp}/e.npy"], "nothing to embed"),
    (["embed", "{img}", "--out", "{tmp}/e.npy", "--texts", "{tmp}/missing.txt"], "no such texts file"),
    (["search", "{tmp}/none.npy", "query"], "not found"),
    (["models", "{tmp}/nothing"], "no such file or folder"),
    (["classify", "{img}"], "required: --labels"),
    (["frobnicate"], "invalid choice"),
])
def test_bad_input_is_one_line_error(capsys, tmp_path, image_dir, argv, message):
    img = sorted(image_dir.glob("0_*.png"))[0]
    argv = [a.format(img=img, tmp=tmp_path) for a in argv]
    try:
        rc = main(argv)
    except SystemExit as exit_:  # argparse usage errors exit directly
        rc = exit_.code
    err = capsys.readouterr().err
    assert rc != 0
    assert message in err
    assert len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err


def test_console_command_bad_model_has_no_traceback(tmp_path, image_dir):
    """The real entry point (`python -m clip_zoo`): a broken checkpoint is one line, exit status 1."""
    bad = tmp_path / "broken"
    bad.mkdir()
    (bad / "config.json").write_text("{not json")
    img = sorted(image_dir.glob("0_*.png"))[0]
    proc = subprocess.run([sys.executable, "-m", "clip_zoo", "classify", str(img), "--labels", "a,b",
                           "--model", str(bad)], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("clip-zoo")]
    assert len(lines) == 1 and "error" in lines[0]


def test_classify_table_json_and_skips(capsys, tiny_model, image_dir):
    labels = "red circle,blue square,green star"
    rc, out, err = run_cli(capsys, "classify", image_dir, "--labels", labels, "--model", tiny_model, "--json",
                           "--top-k", "2", "--templates", "openai7")
    assert rc == 1  # two inputs could not be read
    assert "corrupt.png" in err and "notes.txt" in err
    rows = json.loads(out)
    assert len(rows) == 6
    for row in rows:
        probs = [p["probability"] for p in row["predictions"]]
        assert len(probs) == 2 and probs[0] >= probs[1]
        assert {p["label"] for p in row["predictions"]} <= set(labels.split(","))
    rc, out, _ = run_cli(capsys, "classify", sorted(image_dir.glob("0_*.png"))[0], "--labels", labels,
                         "--model", tiny_model)
    assert rc == 0
    lines = out.splitlines()
    assert lines[0].endswith(".png") and len(lines) == 4 and lines[1].strip().startswith("1.")
    total = sum(float(ln.rsplit(None, 1)[1].rstrip("%")) for ln in lines[1:])
    np.testing.assert_allclose(total, 100.0, atol=0.05)


def test_search_finds_the_image_itself(capsys, tmp_path, tiny_model, image_dir):
    texts = tmp_path / "texts.txt"
    texts.write_text("a photo of a cat\n\na photo of a dog\n")
    out = tmp_path / "emb.npy"
    rc, _, err = run_cli(capsys, "embed", image_dir, "--texts", texts, "--out", out, "--model", tiny_model,
                         "--batch-size", "4", "--no-progress")
    assert rc == 0 and "2 skipped" in err
    emb = np.load(out)
    index = [json.loads(x) for x in out.with_suffix(".index.jsonl").read_text().splitlines()]
    assert emb.shape == (8, 16) and [r["kind"] for r in index] == ["image"] * 6 + ["text"] * 2
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    query = index[3]["path"]
    rc, out_text, _ = run_cli(capsys, "search", out, query, "--top-k", "3", "--json")
    hits = json.loads(out_text)
    assert rc == 0 and hits[0]["path"] == query and hits[0]["score"] == pytest.approx(1.0, abs=1e-4)
    assert all(h["kind"] == "image" for h in hits) and len(hits) == 3
    rc, out_text, _ = run_cli(capsys, "search", out, "a photo of a cat", "--top-k", "6")
    assert rc == 0 and len(out_text.splitlines()) == 6


def test_models_and_info(capsys, tiny_model):
    rc, out, _ = run_cli(capsys, "models")
    assert rc == 0 and "ViT-B/32" in out and "RN50" in out and "default" in out
    rc, out, _ = run_cli(capsys, "models", tiny_model)
    assert rc == 0 and "format:       hf-safetensors" in out and "ViT layers=2 width=64" in out
    rc, out, _ = run_cli(capsys, "info")
    assert rc == 0 and "torch" in out and "threads" in out and "\nprecision     bf16 " in out


@pytest.mark.parametrize("flags, expected", [
    (frozenset({"avx2"}), "bf16 emulated (slower than fp32 here); int8 with 7-bit activations (x86 without VNNI found)"),
    (frozenset({"avx512_bf16", "avx512_vnni"}), "bf16 native; int8 with 8-bit activations"),
    (None, "bf16 unknown (CPU flags not readable); int8 with 7-bit activations (x86 without VNNI found)")])
def test_info_says_what_the_cpu_makes_of_each_precision(flags, expected, monkeypatch):
    from clip_core import cpu
    from clip_zoo.inspect_cmds import precision_line

    monkeypatch.setattr(cpu, "cpu_flags", lambda: flags)
    monkeypatch.setattr(cpu.platform, "machine", lambda: "x86_64")
    assert precision_line() == expected


def test_convert_delegates_to_conversion(capsys, tmp_path, tiny_model):
    rc, _, _ = run_cli(capsys, "convert", tiny_model, tmp_path / "model.pt", "--to", "openai", "--quiet")
    assert rc == 0 and (tmp_path / "model.pt").is_file()


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, tiny_model):
    """The tiny model written in every format the conversion package supports."""
    cfg, weights = conversion.load_checkpoint(tiny_model)
    root = tmp_path_factory.mktemp("formats")
    out = {}
    for fmt in conversion.FORMATS_BY_FAMILY["clip"]:
        path = root / ("model.pt" if fmt == "openai" else fmt)
        conversion.save_checkpoint(path, cfg, weights, format=fmt)
        out[fmt] = path
    return out


@pytest.mark.parametrize("fmt", conversion.FORMATS_BY_FAMILY["clip"])
def test_model_flag_reads_every_checkpoint_format(capsys, tmp_path, image_dir, checkpoints, tiny_model, fmt):
    """classify / embed / search with --model in each format give the canonical model's results."""
    images = sorted(image_dir.glob("*_*.png"))[:3]

    def embed(model, name):
        rc, _, _ = run_cli(capsys, "embed", *images, "--out", tmp_path / name, "--model", model, "--no-progress")
        assert rc == 0
        return np.load(tmp_path / name)

    np.testing.assert_allclose(embed(checkpoints[fmt], "f.npy"), embed(tiny_model, "c.npy"), atol=1e-5)
    rc, out, _ = run_cli(capsys, "classify", *images, "--labels", "red,green", "--model", checkpoints[fmt], "--json")
    rc_ref, out_ref, _ = run_cli(capsys, "classify", *images, "--labels", "red,green", "--model", tiny_model, "--json")
    assert rc == rc_ref == 0
    got = [[p["probability"] for p in r["predictions"]] for r in json.loads(out)]
    ref = [[p["probability"] for p in r["predictions"]] for r in json.loads(out_ref)]
    np.testing.assert_allclose(got, ref, atol=1e-4)
    rc, out, _ = run_cli(capsys, "search", tmp_path / "f.npy", "red", "--model", checkpoints[fmt], "--json")
    assert rc == 0 and len(json.loads(out)) == 3


def test_flax_engine_keeps_text_trimming(monkeypatch):
    """The Flax engine calls the model's own (jit-cached) methods: its text path trims to the EOT
    bucket on concrete ids, and agrees with the untrimmed features."""
    pytest.importorskip("flax")
    import clip_flax.models as flax_models
    from clip_core import tokenize
    from clip_zoo.engines import load_encoder

    seen = []
    real = flax_models.trim_text_inputs
    def spy(*args):
        out = real(*args)
        seen.append(out[0].shape[1])  # the text length the model then runs
        return out

    monkeypatch.setattr(flax_models, "trim_text_inputs", spy)
    encoder = load_encoder("default", "flax")
    ids = tokenize(["a red circle", "a blue square"])
    mask = (ids > 0).astype(np.int32)
    trimmed = encoder._text_features(ids, mask)
    assert seen and seen[0] < ids.shape[1], f"text not trimmed (lengths run: {seen})"
    full = np.asarray(encoder.model.get_text_features(ids, mask, trim=False))
    np.testing.assert_allclose(trimmed, full, atol=1e-5)


def _probabilities(out: str) -> dict:
    return {row["file"] if "file" in row else row.get("input", str(i)): [p["probability"] for p in row["predictions"]]
            for i, row in enumerate(json.loads(out))}


@pytest.mark.parametrize("framework, precision", [("torch", "int8"), ("torch", "bf16"), ("flax", "bf16"), ("tf", "bf16")])
def test_classify_precision_stays_near_fp32(capsys, tiny_model, image_dir, framework, precision):
    """``--precision``: the same rows, probabilities within 0.02 of fp32's, and not identical to them."""
    argv = ["classify", *sorted(image_dir.glob("[0-9]_*.png")), "--labels", "red circle,blue square,green star",
            "--model", tiny_model, "--framework", framework, "--json"]
    rc, out, _ = run_cli(capsys, *argv)
    assert rc == 0
    rc, low_out, err = run_cli(capsys, *argv, "--precision", precision)
    assert rc == 0, err
    fp32, low = _probabilities(out), _probabilities(low_out)
    assert fp32.keys() == low.keys() and len(fp32) == 6
    diff = max(abs(a - b) for k in fp32 for a, b in zip(fp32[k], low[k]))
    assert 0 < diff <= 0.02, f"{framework} {precision}: largest probability change {diff}"


@pytest.mark.parametrize("precision", ["bf16", "int8"])
@pytest.mark.filterwarnings("ignore::clip_core.precision.PrecisionWarning")
def test_embed_precision_keeps_the_bound_and_records_it(capsys, tmp_path, tiny_model, image_dir, precision):
    """``embed --precision``: the same rows as fp32 (the corrupt file skipped in both), each within the precision's
    cosine bound of fp32's and not identical to it, and the precision written to the output's metadata."""
    from clip_core.precision import MIN_COSINE, min_cosine

    rows = {}
    for p in ("fp32", precision):
        out = tmp_path / f"{p}.npy"
        rc, _, err = run_cli(capsys, "embed", image_dir, "--out", out, "--model", tiny_model, "--framework", "torch",
                             "--precision", p, "--no-progress")
        assert rc == 0, err
        assert json.loads(out.with_suffix(".meta.json").read_text())["precision"] == p
        rows[p] = (np.load(out), out.with_suffix(".index.jsonl").read_text())
    (fp32, index), (low, low_index) = rows["fp32"], rows[precision]
    assert low_index == index and low.shape == fp32.shape == (6, 16) and low.dtype == np.float32
    assert MIN_COSINE[precision] <= min_cosine(fp32, low) < 1.0 - 1e-7


@pytest.mark.filterwarnings("default::clip_core.precision.PrecisionWarning")
def test_bf16_without_bf16_instructions_warns_in_one_line(capsys, tiny_model, image_dir, monkeypatch):
    """On a CPU that would emulate bf16, ``--precision bf16`` still runs, with one line saying it is slower there."""
    from clip_core import precision as P

    monkeypatch.setattr(P, "native_bf16", lambda: False)
    rc, out, err = run_cli(capsys, "classify", *sorted(image_dir.glob("[0-9]_*.png")), "--labels", "a,b",
                           "--model", tiny_model, "--framework", "torch", "--precision", "bf16")
    lines = [line for line in err.splitlines() if "bfloat16" in line]
    assert rc == 0 and out and len(lines) == 1, err
    assert lines[0].startswith("clip-zoo: warning: clip_torch: this CPU has no bfloat16 instructions")


def test_int8_outside_torch_is_one_line_error(capsys, tiny_model, image_dir):
    rc, _, err = run_cli(capsys, "classify", image_dir, "--labels", "a,b", "--model", tiny_model,
                         "--framework", "tf", "--precision", "int8")
    assert rc == 2 and err.count("\n") == 1 and "precision 'int8' is not offered by clip_tf" in err
