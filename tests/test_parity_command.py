"""`python -m clip_zoo.parity CKPT`: passes on a good checkpoint, fails naming the field on a corrupted
backend, `--json` validates against `JSON_SCHEMA`, bad input exits 2 with a one-line error."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import conversion
from clip_core.testing import random_weights, tiny_vit_config
from clip_zoo import parity as P

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def vit_checkpoint(tmp_path_factory) -> Path:
    config = tiny_vit_config()
    path = tmp_path_factory.mktemp("parity_cmd") / "vit"
    conversion.save_checkpoint(path, config, random_weights(config, seed=3))
    return path


def test_command_passes_and_json_validates(vit_checkpoint):
    """One subprocess run of the real command (all three backends), JSON output checked against the schema."""
    import jsonschema

    proc = subprocess.run([sys.executable, "-m", "clip_zoo.parity", str(vit_checkpoint), "--json"], cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout)
    jsonschema.validate(report, P.JSON_SCHEMA)
    assert report["passed"] and sorted(report["frameworks"]) == ["flax", "tf", "torch"]
    fields = {r["field"] for r in report["comparisons"]}
    assert {"padded/text_embeds", "padded/image_embeds", "padded/logits_per_image"} <= fields


def _perturb_torch_bias(framework, model) -> None:
    """Add 0.05 to one text attention bias in the torch backend only."""
    if framework == "torch":
        import torch

        with torch.no_grad():
            model.text_model.encoder.layers[0].self_attn.q_proj.bias.add_(0.05)


def test_corrupted_backend_fails_naming_the_field(vit_checkpoint, monkeypatch, capsys):
    load = P.load_model

    def corrupted_load(framework, checkpoint, dtype="fp32"):
        model = load(framework, checkpoint, dtype)
        _perturb_torch_bias(framework, model)
        return model

    monkeypatch.setattr(P, "load_model", corrupted_load)
    assert P.main([str(vit_checkpoint), "--frameworks", "torch,flax"]) == 1
    out = capsys.readouterr().out
    failing = [line for line in out.splitlines() if line.endswith("FAIL")]
    assert any("padded/text_embeds" in line for line in failing), out
    assert not any("image_embeds" in line for line in failing)  # the image tower was not touched
    assert "FAILED" in out.splitlines()[-1]


def test_perturb_hook_reports_the_diverged_fields(vit_checkpoint):
    report = P.parity(str(vit_checkpoint), ["torch", "flax"], perturb=_perturb_torch_bias)
    bad = {r["field"] for r in report["comparisons"] if not r["passed"]}
    assert not report["passed"] and "padded/text_embeds" in bad and "unpadded/logits_per_text" in bad
    worst = max(r["max_abs"] for r in report["comparisons"])
    np.testing.assert_array_less(1e-3, worst)


@pytest.mark.parametrize("argv,needle", [
    (["/nonexistent/ckpt"], "/nonexistent/ckpt"),
    (["{ckpt}", "--frameworks", "torch,mxnet"], "mxnet"),
])
def test_bad_input_exits_2_with_one_line(vit_checkpoint, capsys, argv, needle):
    argv = [a.format(ckpt=vit_checkpoint) for a in argv]
    assert P.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err and err.startswith("clip-zoo parity: error:")
