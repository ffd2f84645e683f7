"""conversion: round trips through every format, safe pickles, bad input, CLI, crash safety."""
from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

import conversion
from clip_core.schema import WeightMismatchError
from clip_core.testing import random_weights
from conversion.torch_zip import read_torch_zip

from test_conversion_helpers import assert_same, openai_tiny, torchscript_archive  # noqa: F401

ROOT = Path(__file__).resolve().parents[1]
FILE_FORMATS = {"canonical": "ckpt", "hf": "hf", "open_clip": "oc", "openai": "model.pt", "tf": "tf", "flax": "fx"}


@pytest.fixture(params=["vit", "resnet"])
def model(request):
    config = openai_tiny(request.param)
    return config, random_weights(config, seed=1)


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "conversion", *map(str, args), "--quiet"] if args[0] != "inspect"
                          else [sys.executable, "-m", "conversion", *map(str, args)],
                          cwd=ROOT, capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=300)


@pytest.mark.parametrize("fmt", sorted(FILE_FORMATS))
def test_round_trip_every_format_is_bit_exact(tmp_path, model, fmt):
    config, weights = model
    first = tmp_path / FILE_FORMATS[fmt]
    conversion.save_checkpoint(first, config, weights, format=fmt)
    got_config, got = conversion.load_checkpoint(first)
    assert got_config == config  # every hyperparameter stored or (OpenAI) inferred
    assert_same(got, weights)
    # format -> canonical -> the same format again: identical tensors
    conversion.save_checkpoint(tmp_path / "canon", got_config, got)
    again = conversion.load_checkpoint(tmp_path / "canon")[1]
    second = tmp_path / ("again_" + FILE_FORMATS[fmt])
    conversion.save_checkpoint(second, config, again, format=fmt)
    assert_same(conversion.load_checkpoint(second)[1], weights)
    if fmt == "openai":
        assert_same(read_torch_zip(second)[1], read_torch_zip(first)[1])


@pytest.mark.parametrize("dtype, np_name", [("fp16", "float16"), ("bf16", "bfloat16"), ("fp32", "float32")])
def test_output_dtype(tmp_path, dtype, np_name):
    config = openai_tiny("resnet")
    weights = random_weights(config)
    conversion.save_checkpoint(tmp_path / "m.pt", config, weights, format="openai", dtype=dtype)
    got = conversion.load_checkpoint(tmp_path / "m.pt")[1]
    assert {np.dtype(a.dtype).name for a in got.values()} == {np_name}
    a = weights["text_projection.weight"]
    np.testing.assert_allclose(got["text_projection.weight"].astype(np.float32), a, rtol=1e-2, atol=1e-3)
    counters = read_torch_zip(tmp_path / "m.pt")[1]
    assert counters["visual.bn1.num_batches_tracked"].dtype == np.int64  # integers are never cast


def test_torch_save_dtypes_strides_and_training_checkpoint(tmp_path):
    """torch.save'd tensors of every dtype, non-contiguous views, a ``{"state_dict": {"module.*"}}`` wrapper."""
    import ml_dtypes
    import torch

    config = openai_tiny("vit")
    weights = random_weights(config, seed=5)
    from conversion.openai import canonical_to_openai
    sd = {k: torch.from_numpy(np.array(v)) for k, v in canonical_to_openai(weights, config).items()}
    sd["text_projection"] = sd["text_projection"].T.contiguous().T  # same values, transposed strides
    assert not sd["text_projection"].is_contiguous()
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in sd.items()}}, tmp_path / "epoch_3.pt")
    assert_same(conversion.load_checkpoint(tmp_path / "epoch_3.pt", config)[1], weights)
    torch.save(sd, tmp_path / "old.pt", _use_new_zipfile_serialization=False)  # legacy pre-1.6 format
    legacy = conversion.read(tmp_path / "old.pt")
    assert legacy.format == "openai-legacy_state_dict" and legacy.config == config
    assert_same(legacy.weights, weights)
    (tmp_path / "cut.pt").write_bytes((tmp_path / "old.pt").read_bytes()[:-64])
    with pytest.raises(conversion.ConversionError, match="cut.pt: truncated"):
        conversion.read(tmp_path / "cut.pt")
    extra = {"h": torch.randn(3, 4).half(), "b": torch.randn(4, 3).bfloat16().T, "i": torch.arange(6).view(2, 3)[:, 1:]}
    torch.save(extra, tmp_path / "x.bin")
    _, got = read_torch_zip(tmp_path / "x.bin")
    np.testing.assert_array_equal(got["h"], extra["h"].numpy())
    assert got["b"].dtype == ml_dtypes.bfloat16
    np.testing.assert_array_equal(got["b"].astype(np.float32), extra["b"].float().numpy())
    np.testing.assert_array_equal(got["i"], extra["i"].numpy())


def test_legacy_position_ids_and_sharded_index(tmp_path):
    import json

    from conversion.safetensors_io import write_safetensors
    config = openai_tiny("vit")
    weights = random_weights(config)
    names = list(weights)
    shards = {"a.safetensors": names[: len(names) // 2], "b.safetensors": names[len(names) // 2:]}
    for shard, members in shards.items():
        tensors = {n: weights[n] for n in members}
        if shard == "a.safetensors":
            tensors["text_model.embeddings.position_ids"] = np.arange(77, dtype=np.int64)[None]
        write_safetensors(tmp_path / shard, tensors)
    index = {"weight_map": {n: s for s, members in shards.items() for n in members}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    config.save_pretrained(tmp_path)
    ckpt = conversion.read(tmp_path)
    assert ckpt.format == "hf-sharded-safetensors"
    assert_same(ckpt.weights, weights)


def test_open_clip_arch_name_decides_quick_gelu(tmp_path):
    config = openai_tiny("resnet")
    weights = random_weights(config)
    conversion.save_checkpoint(tmp_path / "oc", config.replace(
        text_config=config.text_config.replace(hidden_act="gelu")), weights, format="open_clip")
    assert conversion.load_checkpoint(tmp_path / "oc")[0].text_config.hidden_act == "gelu"
    conversion.save_checkpoint(tmp_path / "oc2", config, weights, format="open_clip")
    assert conversion.load_checkpoint(tmp_path / "oc2")[0].text_config.hidden_act == "quick_gelu"
    with pytest.raises(conversion.ConversionError, match="unknown architecture"):
        conversion.load_checkpoint(tmp_path / "oc2" / "open_clip_model.safetensors", arch="ViT-Z-99")
    with pytest.raises(WeightMismatchError, match="expected shape"):  # a real name, the wrong shapes
        conversion.load_checkpoint(tmp_path / "oc2" / "open_clip_model.safetensors", arch="RN50-quickgelu")


def test_openai_refuses_gelu(tmp_path):
    config = openai_tiny("vit")
    gelu = config.replace(text_config=config.text_config.replace(hidden_act="gelu"))
    with pytest.raises(conversion.ConversionError, match="QuickGELU"):
        conversion.save_checkpoint(tmp_path / "m.pt", gelu, random_weights(gelu), format="openai")
    assert not (tmp_path / "m.pt").exists()


# ----------------------------------------------------------------------------- safety
class _Payload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _malicious_zip(path: Path, marker: Path) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", pickle.dumps({"x": _Payload(marker)}, protocol=2))
        zf.writestr("archive/version", "3\n")
    return path


def test_malicious_pickle_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    evil = _malicious_zip(tmp_path / "evil.pt", marker)
    with pytest.raises(pickle.UnpicklingError, match=r"refusing to load global '(posix|os)\.system'"):
        conversion.load_checkpoint(evil)
    assert not marker.exists()
    (tmp_path / "evil.pkl").write_bytes(pickle.dumps(_Payload(marker)))
    with pytest.raises(conversion.ConversionError, match="evil.pkl"):
        conversion.load_checkpoint(tmp_path / "evil.pkl")
    assert not marker.exists()


def _truncated(tmp_path, config, weights):
    conversion.save_canonical(tmp_path / "src", config, weights)
    f = tmp_path / "src" / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-1000])
    return tmp_path / "src", "truncated safetensors file: tensor"


def _missing_record(tmp_path, config, weights):
    conversion.save_checkpoint(tmp_path / "full.pt", config, weights, format="openai")
    with zipfile.ZipFile(tmp_path / "full.pt") as src, zipfile.ZipFile(tmp_path / "src.pt", "w") as dst:
        for info in src.infolist():
            if not info.filename.endswith("/data/3"):
                dst.writestr(info, src.read(info))
    return tmp_path / "src.pt", "has no record 'full/data/3' (storage of tensor '"


def _wrong_shape(tmp_path, config, weights):
    bad = dict(weights, **{"text_model.final_layer_norm.bias": np.zeros(5, np.float32)})
    from conversion.safetensors_io import write_safetensors
    write_safetensors(tmp_path / "src" / "model.safetensors", bad)
    config.save_pretrained(tmp_path / "src")
    return tmp_path / "src", "text_model.final_layer_norm.bias: expected shape (64,), got (5,)"


def _missing_tensor(tmp_path, config, weights):
    from conversion.safetensors_io import write_safetensors
    write_safetensors(tmp_path / "src" / "model.safetensors",
                      {k: v for k, v in weights.items() if k != "logit_scale"})
    config.save_pretrained(tmp_path / "src")
    return tmp_path / "src", "- logit_scale  (missing)"


def _unknown_arch(tmp_path, config, weights):
    conversion.save_checkpoint(tmp_path / "src.pt", config, weights, format="openai")
    return tmp_path / "src.pt", "unknown CLIP model name 'ViT-Z-99'"


def _malicious(tmp_path, config, weights):
    return _malicious_zip(tmp_path / "src.pt", tmp_path / "pwned"), "refusing to load global"


@pytest.mark.parametrize("make_bad", [_truncated, _missing_record, _wrong_shape, _missing_tensor, _unknown_arch,
                                      _malicious], ids=lambda f: f.__name__.strip("_"))
def test_bad_input_gives_one_line_error_and_no_output(tmp_path, make_bad):
    config = openai_tiny("vit")
    src, expected = make_bad(tmp_path, config, random_weights(config))
    extra = ["--arch", "ViT-Z-99"] if make_bad is _unknown_arch else []
    for dst in (tmp_path / "out", tmp_path / "out.pt"):
        result = run_cli(src, dst, *extra)
        assert result.returncode == 1
        err = result.stderr.strip()
        assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err
        assert expected in err
        assert not dst.exists()
    assert not (tmp_path / "pwned").exists()


def test_cli_convert_verify_and_inspect(tmp_path):
    config = openai_tiny("resnet")
    conversion.save_checkpoint(tmp_path / "m.pt", config, random_weights(config), format="openai")
    result = run_cli(tmp_path / "m.pt", tmp_path / "out", "--to", "flax", "--dtype", "fp16", "--verify")
    assert result.returncode == 0, result.stderr
    assert "verified: all" in result.stdout and (tmp_path / "out" / "flax_model.msgpack").exists()
    result = run_cli("inspect", tmp_path / "out")
    assert result.returncode == 0, result.stderr
    assert "hf-flax" in result.stdout and "ResNet layers=[1, 2, 1, 1]" in result.stdout
    assert f"{sum(a.size for a in random_weights(config).values()):,}" in result.stdout
    assert run_cli("inspect", tmp_path / "nothing").returncode == 1


# ----------------------------------------------------------------------------- no framework, crash safety
_BLOCKER = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('torch', 'tensorflow', 'jax', 'flax', 'keras'):
            raise ImportError('blocked: ' + name)
sys.meta_path.insert(0, Block())
import conversion
for src, dst in zip(sys.argv[1::2], sys.argv[2::2]):
    ckpt = conversion.read(src)
    conversion.save_checkpoint(dst, ckpt.config, ckpt.weights)
    print(ckpt.format)
for fmt, name in (("openai", "m.pt"), ("open_clip", "oc"), ("tf", "tf"), ("flax", "fx")):  # every writer too
    conversion.save_checkpoint(sys.argv[2] + "_" + name, ckpt.config, ckpt.weights, format=fmt)
    assert conversion.read(sys.argv[2] + "_" + name).format.split("-")[0] in ("openai", "open_clip", "hf")
assert not any(m.split('.')[0] in ('torch', 'tensorflow', 'jax', 'flax') for m in sys.modules)
"""


def test_reads_torchscript_and_bin_with_torch_blocked(tmp_path, torchscript_archive):
    import torch
    from transformers import CLIPModel

    jit_path, openai_sd, config = torchscript_archive
    conversion.save_canonical(tmp_path / "hf", config, random_weights(config, seed=3))
    model = CLIPModel.from_pretrained(tmp_path / "hf")
    model.save_pretrained(tmp_path / "bin", safe_serialization=False)
    assert (tmp_path / "bin" / "pytorch_model.bin").exists()
    result = subprocess.run([sys.executable, "-c", _BLOCKER, str(jit_path), str(tmp_path / "a"),
                             str(tmp_path / "bin"), str(tmp_path / "b")], cwd=ROOT, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["openai-torchscript", "hf-state_dict"]
    from conversion.openai import openai_to_canonical
    want = {k: v.numpy() for k, v in openai_sd.items()}
    assert_same(conversion.load_checkpoint(tmp_path / "a")[1], openai_to_canonical(want, config, "ref"))
    want = {k: v.numpy() for k, v in model.state_dict().items() if not k.endswith("position_ids")}
    assert_same(conversion.load_checkpoint(tmp_path / "b")[1], want)
    assert torch  # the reference side may use torch; the subprocess may not


def _wait_for_temp(directory: Path, proc: subprocess.Popen) -> None:
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if any(p.name.startswith(".") and ".tmp" in p.name for p in directory.iterdir()):
            time.sleep(0.3)  # well into the write
            return
        time.sleep(0.02)
    raise AssertionError("the conversion never started writing")


@pytest.mark.parametrize("dst_name, previous", [("out.pt", False), ("out.pt", True), ("outdir", False)])
def test_kill_9_mid_write_leaves_nothing_or_previous(tmp_path, dst_name, previous):
    config = openai_tiny("vit")
    conversion.save_canonical(tmp_path / "src", config, random_weights(config))
    work = tmp_path / "work"
    work.mkdir()
    dst = work / dst_name
    if previous:
        conversion.save_checkpoint(dst, config, random_weights(config, seed=9), format="openai")
        before = dst.read_bytes()
    proc = subprocess.Popen([sys.executable, str(ROOT / "tests" / "hooked.py"), "conversion.api:_test_tick_delay=0.05",
                             "-m", "conversion", str(tmp_path / "src"), str(dst), "--quiet"],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for_temp(work, proc)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    if previous:
        assert dst.read_bytes() == before
    else:
        assert not dst.exists()


@pytest.mark.parametrize("fmt", ["canonical", "flax"])
@pytest.mark.parametrize("part", ["text", "vision_with_projection", "classification"])
def test_tower_and_classification_parts(tmp_path, part, fmt):
    config = openai_tiny("vit")
    weights = random_weights(config, part, num_labels=3 if part == "classification" else None)
    conversion.save_checkpoint(tmp_path / "p", config, weights, format=fmt, part=part)
    assert_same(conversion.load_checkpoint(tmp_path / "p", part=part)[1], weights)
    with pytest.raises(WeightMismatchError, match="(missing)"):  # not a whole model
        conversion.load_checkpoint(tmp_path / "p")
    with pytest.raises(conversion.ConversionError, match="only a whole CLIP model"):
        conversion.save_checkpoint(tmp_path / "p.pt", config, weights, format="openai", part=part)


def test_load_for_part_takes_a_whole_model_or_exactly_the_part(tmp_path):
    config = openai_tiny("vit")
    whole, text = random_weights(config, seed=2), random_weights(config, "text", seed=3)
    conversion.save_checkpoint(tmp_path / "whole", config, whole)
    conversion.save_checkpoint(tmp_path / "text", config, text, part="text")
    assert_same(conversion.load_for_part(tmp_path / "whole", "text")[1], whole)  # every tensor; caller selects
    assert_same(conversion.load_for_part(tmp_path / "text", "text")[1], text)
    with pytest.raises(WeightMismatchError, match="missing"):  # a whole model wanted: the part is not enough
        conversion.load_for_part(tmp_path / "text", "model")
    with pytest.raises(WeightMismatchError, match="missing"):  # a text tower is not a vision tower
        conversion.load_for_part(tmp_path / "text", "vision")


@pytest.mark.parametrize("arch", ["vit", "resnet"])
def test_openai_hyperparameters_inferred_from_shapes(tmp_path, arch):
    """A plain torch.save'd OpenAI state dict: every hyperparameter comes from names and shapes."""
    import torch

    from conversion.openai import canonical_to_openai
    config = openai_tiny(arch)
    weights = random_weights(config, seed=11)
    torch.save({k: torch.from_numpy(np.array(v)) for k, v in canonical_to_openai(weights, config).items()},
               tmp_path / "RN.pt")
    ckpt = conversion.read(tmp_path / "RN.pt")
    assert ckpt.format == "openai-state_dict" and ckpt.config == config
    assert_same(ckpt.weights, weights)


def test_openai_pt_keeps_a_non_openai_shaped_config(tmp_path):
    from clip_core.testing import tiny_vit_config
    config = tiny_vit_config()  # 4 heads at width 32: OpenAI's rules would infer 1
    with pytest.warns(UserWarning, match="does not follow OpenAI's rules"):
        conversion.save_checkpoint(tmp_path / "m.pt", config, random_weights(config), format="openai")
    assert conversion.load_checkpoint(tmp_path / "m.pt")[0] == config
