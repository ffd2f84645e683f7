"""The fine-tuning trainers (clip_{torch,tf,flax}.finetune.Trainer) and their shared plan (clip_core.finetune_plan).

One tiny random CLIP and 20 numpy batches (tests/finetune_helpers.py) drive every framework: the
losses agree step by step, a save / restore resumes bit-identically, the saved directory loads
everywhere, frozen parameters stay put, weight decay touches only the decay set, and 2 replicas
reproduce 1 device on the same global batch.
"""
from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from clip_core.finetune_plan import (LOGIT_SCALE_MAX, FinetuneOptions, decays, lr_at, read_trainer_state,
                                     trainable, trainable_names, write_trainer_state)
from clip_core.testing import tiny_resnet_config, tiny_vit_config
from tests.conftest import BACKEND_MODULES, backend_module
from tests.finetune_helpers import LENGTH, STEPS, _losses, make_batches, new_model, tiny_run, trainer_class

FRAMEWORKS = sorted(BACKEND_MODULES)
ROOT = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- the plan (no framework)
def test_lr_schedule_warmup_then_cosine_or_constant():
    o = FinetuneOptions(total_steps=10, lr=1.0, warmup=4)
    np.testing.assert_allclose([lr_at(o, s) for s in range(4)], [0.25, 0.5, 0.75, 1.0], rtol=1e-12)
    assert lr_at(o, 4) == 1.0  # cosine starts at the base lr after warmup
    np.testing.assert_allclose(lr_at(o, 7), 0.5 * (1 + math.cos(math.pi * 3 / 6)), rtol=1e-12)
    assert lr_at(o, 10) == 0.0 and lr_at(o, 50) == 0.0
    c = FinetuneOptions(total_steps=10, lr=2.0, warmup=2, schedule="constant")
    assert [lr_at(c, s) for s in (0, 1, 2, 9)] == [1.0, 2.0, 2.0, 2.0]


@pytest.mark.parametrize("bad", [dict(total_steps=0), dict(schedule="linear"), dict(freeze="layers"),
                                 dict(freeze="everything"), dict(precision="fp16"), dict(lr=0.0),
                                 dict(betas=(0.9, 1.0)), dict(warmup=-1)])
def test_options_are_validated(bad):
    with pytest.raises(ValueError):
        FinetuneOptions(**{"total_steps": 10, **bad})


def test_decay_rules_by_canonical_name():
    for name in ("text_model.encoder.layers.0.mlp.fc1.weight", "visual_projection.weight",
                 "vision_model.embeddings.patch_embedding.weight", "vision_model.layer1.0.conv2.weight"):
        assert decays(name), name
    for name in ("text_model.encoder.layers.0.mlp.fc1.bias", "logit_scale", "text_model.final_layer_norm.weight",
                 "text_model.embeddings.token_embedding.weight", "vision_model.embeddings.position_embedding.weight",
                 "vision_model.embeddings.class_embedding", "vision_model.layer1.0.bn2.weight",
                 "vision_model.attnpool.positional_embedding", "vision_model.pre_layrnorm.bias"):
        assert not decays(name), name


def test_freeze_rules():
    cfg = tiny_vit_config()  # 2 layers per tower
    names = set(trainable_names(cfg, FinetuneOptions(10)))
    text = {n for n in names if n.startswith(("text_model.", "text_projection."))}
    vision = {n for n in names if n.startswith(("vision_model.", "visual_projection."))}
    assert names == text | vision | {"logit_scale"}
    assert set(trainable_names(cfg, FinetuneOptions(10, freeze="text"))) == vision | {"logit_scale"}
    assert set(trainable_names(cfg, FinetuneOptions(10, freeze="vision"))) == text | {"logit_scale"}
    assert set(trainable_names(cfg, FinetuneOptions(10, lock_image=True))) == text | {"logit_scale"}
    last = set(trainable_names(cfg, FinetuneOptions(10, freeze="layers1")))
    assert not any(".layers.0." in n for n in last) and any(".layers.1." in n for n in last)
    assert {"text_model.final_layer_norm.weight", "vision_model.post_layernorm.bias", "text_projection.weight",
            "visual_projection.weight", "logit_scale"} <= last
    assert "text_model.embeddings.token_embedding.weight" not in last
    rn = tiny_resnet_config()  # layers (1, 2, 1, 1): layers1 keeps only layer4.0 + the attention pool
    res = [n for n in trainable_names(rn, FinetuneOptions(10, freeze="layers2")) if n.startswith("vision_model.")]
    assert {n.split(".")[1] + "." + n.split(".")[2] for n in res if ".layer" in n} == {"layer3.0", "layer4.0"}
    assert "vision_model.attnpool.c_proj.weight" in res and "vision_model.conv1.weight" not in res
    assert not trainable("vision_model.attnpool.c_proj.weight", FinetuneOptions(10, lock_image=True), rn)


def test_trainer_state_names_its_framework(tmp_path):
    write_trainer_state(str(tmp_path), 7, "torch")
    assert read_trainer_state(str(tmp_path), "torch")["step"] == 7
    with pytest.raises(ValueError, match="torch optimizer state"):
        read_trainer_state(str(tmp_path), "flax")
    with pytest.raises(FileNotFoundError):
        read_trainer_state(str(tmp_path / "nothing"), "torch")


# ----------------------------------------------------------------------------- one run per framework
def _weights(trainer) -> dict:
    """A copy of the canonical weights (torch's are views of the live parameters)."""
    return {k: np.array(v, copy=True) for k, v in trainer.model.canonical_weights().items()}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Per framework: 20 losses, the weights after 10 and 20 steps, a checkpoint saved after 5 steps."""
    cfg, weights, options, batches = tiny_run()
    out = {}
    for fw in FRAMEWORKS:
        try:
            backend_module(fw)
        except pytest.skip.Exception:
            continue
        model = new_model(fw, cfg, weights)
        trainer = trainer_class(fw)(model, options)
        losses, saved, at10 = [], None, None
        for i, batch in enumerate(batches):
            if i == 5:
                saved = tmp_path_factory.mktemp(f"ckpt_{fw}")
                trainer.save(str(saved))
            if i == 10:
                at10 = _weights(trainer)
            losses.append(trainer.step(batch))
        final_dir = tmp_path_factory.mktemp(f"final_{fw}")
        trainer.save(str(final_dir))
        out[fw] = {"losses": [m["loss"] for m in losses], "metrics": losses, "saved": saved, "at10": at10,
                   "final": _weights(trainer), "final_dir": final_dir}
    if not out:
        pytest.skip("no framework installed")
    return out


def test_losses_and_weights_agree_across_frameworks(runs):
    if len(runs) < 2:
        pytest.skip("needs two frameworks")
    ref = runs["torch"] if "torch" in runs else next(iter(runs.values()))
    assert ref["losses"][-1] < ref["losses"][0] - 0.1  # it learns something
    for fw, run in runs.items():
        np.testing.assert_allclose(run["losses"], ref["losses"], atol=1e-4, rtol=0, err_msg=fw)
        worst = max(float(np.abs(run["final"][n] - ref["final"][n]).max()) for n in ref["final"])
        assert worst <= 1e-4, (fw, worst)
        np.testing.assert_allclose([m["lr"] for m in run["metrics"]], [lr_at(tiny_run()[2], s) for s in range(STEPS)])


def test_logit_scale_reported_and_clamped(runs):
    for fw, run in runs.items():
        scales = [m["logit_scale"] for m in run["metrics"]]
        np.testing.assert_allclose(scales[-1], float(run["final"]["logit_scale"]), rtol=1e-6, err_msg=fw)
        assert all(0.0 <= s <= LOGIT_SCALE_MAX + 1e-6 for s in scales), fw


@pytest.mark.parametrize("fw", FRAMEWORKS)
def test_restore_resumes_bit_identically(runs, fw):
    if fw not in runs:
        pytest.skip(f"{fw} not installed")
    cfg, weights, options, batches = tiny_run()
    trainer = trainer_class(fw)(new_model(fw, cfg, weights), options)  # fresh model: the restore must load all
    trainer.restore(str(runs[fw]["saved"]))
    assert trainer.step_count == 5
    losses = [trainer.step(b)["loss"] for b in batches[5:10]]
    assert losses == runs[fw]["losses"][5:10]
    resumed = _weights(trainer)
    for name, value in runs[fw]["at10"].items():
        np.testing.assert_array_equal(resumed[name], value, err_msg=name)


def _features(fw_or_hf: str, directory: Path, batch: dict) -> tuple[np.ndarray, np.ndarray]:
    ids, mask, pix = batch["input_ids"], batch["attention_mask"], batch["pixel_values"]
    if fw_or_hf == "transformers":
        import torch
        import transformers

        model = transformers.CLIPModel.from_pretrained(directory).eval()
        with torch.no_grad():
            t = model.get_text_features(input_ids=torch.as_tensor(ids), attention_mask=torch.as_tensor(mask))
            i = model.get_image_features(pixel_values=torch.as_tensor(pix))
        t, i = t.numpy(), i.numpy()
    else:
        module = backend_module(fw_or_hf)
        model = module.CLIPModel.from_pretrained(directory)
        if fw_or_hf == "torch":
            import torch

            ids, mask, pix = torch.as_tensor(ids), torch.as_tensor(mask), torch.as_tensor(pix)
        else:
            ids, mask = ids.astype(np.int32), mask.astype(np.int32)
        t = model.get_text_features(ids, attention_mask=mask)
        i = model.get_image_features(pix)
        t, i = (x.detach().numpy() if hasattr(x, "detach") else np.asarray(x) for x in (t, i))
    return (t / np.linalg.norm(t, axis=-1, keepdims=True), i / np.linalg.norm(i, axis=-1, keepdims=True))


def test_saved_directory_loads_everywhere_with_equal_embeddings(runs):
    pytest.importorskip("transformers")
    batch = make_batches(tiny_vit_config(), 1, seed=9)[0]
    loaders = [fw for fw in FRAMEWORKS if fw in runs] + ["transformers"]
    for fw, run in runs.items():
        directory = run["saved"]
        assert {"config.json", "model.safetensors", "trainer_state.json"} <= {p.name for p in directory.iterdir()}
        ref = _features(loaders[0], directory, batch)
        for loader in loaders[1:]:
            got = _features(loader, directory, batch)
            for a, b in zip(got, ref):
                np.testing.assert_allclose(a, b, atol=1e-5, rtol=0, err_msg=f"{fw} checkpoint in {loader}")


def test_final_checkpoints_pass_parity_across_backends(runs):
    """The final checkpoint of each framework's run loads in every installed backend with outputs within
    the parity bounds (`clip-zoo parity`'s battery and comparison)."""
    from clip_zoo.parity import parity

    if len(runs) < 2:
        pytest.skip("needs two frameworks")
    for fw, run in runs.items():
        report = parity(str(run["final_dir"]), list(runs))
        assert report["passed"], (fw, [c for c in report["comparisons"] if not c["passed"]][:3])
        assert len(report["comparisons"]) > 20


# ----------------------------------------------------------------------------- freezing and decay
def _short_run(fw: str, steps: int = 2, **options):
    cfg, weights, _, batches = tiny_run()
    opts = FinetuneOptions(total_steps=10, lr=1e-3, **options)
    trainer = trainer_class(fw)(new_model(fw, cfg, weights), opts)
    for b in batches[:steps]:
        trainer.step(b)
    return cfg, weights, opts, _weights(trainer)


@pytest.mark.parametrize("freeze", [dict(freeze="text"), dict(freeze="layers1", lock_image=True)])
def test_frozen_parameters_do_not_move(backend, freeze):
    fw = backend.__name__.split("_")[1]
    cfg, before, opts, after = _short_run(fw, **freeze)
    frozen = [n for n in before if not trainable(n, opts, cfg)]
    moved = [n for n in before if trainable(n, opts, cfg) and decays(n)]
    assert frozen and moved
    for n in frozen:
        np.testing.assert_array_equal(after[n], before[n], err_msg=n)
    for n in moved:
        assert np.abs(after[n] - before[n]).max() > 1e-5, n


def test_weight_decay_only_on_the_decay_set(backend):
    """One step with weight_decay 0.5 vs 0: the difference is -lr * wd * w0 on decaying weights, exactly
    nothing elsewhere; unused position rows (zero gradient, no decay) never move."""
    fw = backend.__name__.split("_")[1]
    _, w0, _, decayed = _short_run(fw, steps=1, weight_decay=0.5)
    _, _, _, plain = _short_run(fw, steps=1, weight_decay=0.0)
    lr = 1e-3  # lr_at(step 0) with no warmup
    for n in w0:
        if decays(n):
            np.testing.assert_allclose(decayed[n] - plain[n], -lr * 0.5 * w0[n], atol=2e-6, rtol=0, err_msg=n)
        else:
            np.testing.assert_array_equal(decayed[n], plain[n], err_msg=n)
    pos = "text_model.embeddings.position_embedding.weight"
    np.testing.assert_array_equal(decayed[pos][LENGTH:], w0[pos][LENGTH:])


def test_torch_uses_the_fused_adamw_kernel_on_cpu():
    """torch's per-tensor AdamW loop costs ~15% of a CPU step; the fused kernel does the same arithmetic (the
    cross-framework and resume tests above hold with it)."""
    pytest.importorskip("torch")
    cfg, weights, options, _ = tiny_run()
    trainer = trainer_class("torch")(new_model("torch", cfg, weights), options)
    assert [g["fused"] for g in trainer.optimizer.param_groups] == [True, True]


# ----------------------------------------------------------------------------- precision, checkpointing
def test_bf16_close_to_fp32(runs, backend):
    fw = backend.__name__.split("_")[1]
    cfg, weights, options, batches = tiny_run(precision="bf16")
    trainer = trainer_class(fw)(new_model(fw, cfg, weights), options)
    losses = [trainer.step(b)["loss"] for b in batches[:2]]
    np.testing.assert_allclose(losses, runs[fw]["losses"][:2], atol=5e-2)
    assert losses != runs[fw]["losses"][:2]  # it really ran in bfloat16


def test_grad_checkpointing(runs, backend):
    fw = backend.__name__.split("_")[1]
    cfg, weights, options, batches = tiny_run(grad_checkpointing=True)
    if fw != "torch":
        with pytest.raises(NotImplementedError, match="grad-checkpointing"):
            trainer_class(fw)(new_model(fw, cfg, weights), options)
        return
    trainer = trainer_class(fw)(new_model(fw, cfg, weights), options)
    encoders = [m for m in trainer.model.modules() if hasattr(m, "gradient_checkpointing")]
    assert encoders and all(m.gradient_checkpointing for m in encoders)
    losses = [trainer.step(b)["loss"] for b in batches[:3]]
    np.testing.assert_allclose(losses, runs[fw]["losses"][:3], atol=1e-6)


# ----------------------------------------------------------------------------- data parallel
@pytest.mark.parametrize("fw", FRAMEWORKS)
def test_two_replicas_match_one_device(runs, fw):
    """torch: 2 gloo ranks; JAX: 2 forced host devices; TF: 2 logical CPUs — each in a fresh interpreter."""
    if fw not in runs:
        pytest.skip(f"{fw} not installed")
    proc = subprocess.run([sys.executable, "-m", "tests.finetune_helpers", fw, "2", "4"], capture_output=True,
                          text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [x for x in proc.stdout.splitlines() if x.startswith("LOSSES ")][-1]
    import json

    np.testing.assert_allclose(json.loads(line[7:]), runs[fw]["losses"][:4], atol=1e-5, rtol=0)


@pytest.mark.parametrize("fw", FRAMEWORKS)
def test_two_replicas_match_one_device_siglip(fw):
    """SigLIP's sigmoid loss over features gathered from 2 replicas equals one device's on the global batch."""
    backend_module(fw)
    proc = subprocess.run([sys.executable, "-m", "tests.finetune_helpers", fw, "2", "3", "siglip"],
                          capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    import json

    line = [x for x in proc.stdout.splitlines() if x.startswith("LOSSES ")][-1]
    np.testing.assert_allclose(json.loads(line[7:]), _losses(fw, 1, 3, "siglip"), atol=1e-5, rtol=0)
