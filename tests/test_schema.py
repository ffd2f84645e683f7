"""The weight schema and the one mapping table, checked against the reference packages' own names."""
from __future__ import annotations

import numpy as np
import pytest

from clip_core import available_models, get_config
from clip_core.schema import BACKENDS, PARTS, WeightMismatchError, canonical_name, check_weights, from_backend, schema, to_backend
from clip_core.testing import random_weights, tiny_resnet_config, tiny_vit_config

# Parameter counts of the OpenAI models (sum of state-dict sizes without BN counters / buffers).
PARAM_COUNTS_M = {"RN50": 102.007, "ViT-B/32": 151.28, "ViT-B/16": 149.62, "ViT-L/14": 427.62}


@pytest.mark.parametrize("name", available_models())
def test_names_unique_and_paths_invertible(name):
    entries = schema(get_config(name))
    for backend in BACKENDS:
        paths = [e.path(backend) for e in entries.values()]
        assert len(set(paths)) == len(paths), backend


@pytest.mark.parametrize("name,millions", sorted(PARAM_COUNTS_M.items()))
def test_parameter_counts(name, millions):
    entries = schema(get_config(name))
    total = sum(int(np.prod(e.shape)) for e in entries.values() if not e.name.endswith(("running_mean", "running_var")))
    assert total / 1e6 == pytest.approx(millions, abs=0.01)


@pytest.mark.parametrize("make", [tiny_vit_config, tiny_resnet_config])
@pytest.mark.parametrize("part", sorted(PARTS))
@pytest.mark.parametrize("backend", BACKENDS)
def test_to_backend_then_from_backend_is_identity(make, part, backend):
    cfg = make()
    w = random_weights(cfg, part, num_labels=5)
    back = from_backend(to_backend(w, cfg, backend, part, num_labels=5), cfg, backend, part, num_labels=5)
    assert list(back) == list(w)
    for k in w:
        np.testing.assert_array_equal(back[k], w[k])


def test_layout_transforms():
    cfg = tiny_vit_config()
    w = random_weights(cfg)
    flax = to_backend(w, cfg, "flax")
    tf = to_backend(w, cfg, "tf")
    q = w["text_model.encoder.layers.0.self_attn.q_proj.weight"]
    np.testing.assert_array_equal(flax["params/text_model/encoder/layers/0/self_attn/q_proj/kernel"], q.T)
    patch = w["vision_model.embeddings.patch_embedding.weight"]  # OIHW
    np.testing.assert_array_equal(tf["vision_model/embeddings/patch_embedding/kernel"], patch.transpose(2, 3, 1, 0))
    assert tf["logit_scale"].shape == (1,) and flax["params/logit_scale"].shape == ()
    assert canonical_name("text_model/final_layer_norm/gamma", "tf", cfg) == "text_model.final_layer_norm.weight"


def test_strict_check_names_every_problem():
    cfg = tiny_vit_config()
    w = random_weights(cfg)
    del w["text_projection.weight"]
    w["vision_model.extra.weight"] = np.zeros(3)
    w["logit_scale"] = np.zeros(2)
    with pytest.raises(WeightMismatchError) as err:
        check_weights(w, cfg, source="ckpt.safetensors")
    msg = str(err.value)
    assert "ckpt.safetensors" in msg
    assert "- text_projection.weight" in msg and "+ vision_model.extra.weight" in msg
    assert "~ logit_scale: expected shape (), got (2,)" in msg


def test_from_backend_reports_backend_paths():
    cfg = tiny_resnet_config()
    params = to_backend(random_weights(cfg), cfg, "flax")
    params.pop("batch_stats/vision_model/bn1/mean")
    with pytest.raises(WeightMismatchError, match="- batch_stats/vision_model/bn1/mean"):
        from_backend(params, cfg, "flax")


def test_resnet_has_no_visual_projection():
    names = schema(tiny_resnet_config())
    assert "visual_projection.weight" not in names
    assert names["vision_model.attnpool.c_proj.weight"].shape == (24, 256)


# ------------------------------------------------------------------ against the reference packages
def _hf_tiny_config(transformers, cfg):
    return transformers.CLIPConfig.from_dict(cfg.to_dict())


def test_torch_names_match_transformers_state_dict():
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("torch")
    cfg = tiny_vit_config()
    model = transformers.CLIPModel(_hf_tiny_config(transformers, cfg))
    ref = {k: tuple(v.shape) for k, v in model.state_dict().items() if not k.endswith("position_ids")}
    assert {n: e.shape for n, e in schema(cfg).items()} == ref
    for part, cls in [("text", "CLIPTextModel"), ("vision", "CLIPVisionModel"),
                      ("text_with_projection", "CLIPTextModelWithProjection"),
                      ("vision_with_projection", "CLIPVisionModelWithProjection")]:
        hf_cfg = _hf_tiny_config(transformers, cfg)
        sub = hf_cfg.text_config if part.startswith("text") else hf_cfg.vision_config
        sub.projection_dim = cfg.projection_dim
        m = getattr(transformers, cls)(sub)
        ref = {k: tuple(v.shape) for k, v in m.state_dict().items() if not k.endswith("position_ids")}
        assert {n: e.shape for n, e in schema(cfg, part).items()} == ref, part


def test_classification_names_match_transformers():
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("torch")
    cfg = tiny_vit_config()
    hf_cfg = _hf_tiny_config(transformers, cfg)
    hf_cfg.num_labels = 5
    m = transformers.CLIPForImageClassification(hf_cfg)
    ref = {k: tuple(v.shape) for k, v in m.state_dict().items() if not k.endswith("position_ids")}
    assert {n: e.shape for n, e in schema(cfg, "classification", num_labels=5).items()} == ref


def test_flax_paths_match_transformers_flax():
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("flax")
    from flax.traverse_util import flatten_dict

    cfg = tiny_vit_config()
    model = transformers.FlaxCLIPModel(_hf_tiny_config(transformers, cfg), _do_init=True)
    ref = {"params/" + "/".join(k): tuple(v.shape) for k, v in flatten_dict(model.params).items()}
    ours = {e.flax: e.backend_shape("flax") for e in schema(cfg).values()}
    assert ours == ref


def test_tf_paths_match_transformers_tf():
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("tensorflow")
    cfg = tiny_vit_config()
    model = transformers.TFCLIPModel(_hf_tiny_config(transformers, cfg))
    model(model.dummy_inputs)
    ref = {}
    for w in model.weights:
        name = w.name.split(":")[0]
        name = name.split("clip/", 1)[1] if "clip/" in name else name
        ref[name] = tuple(w.shape)
    ours = {e.tf: e.backend_shape("tf") for e in schema(cfg).values()}
    assert ours == ref


@pytest.mark.parametrize("make", [tiny_resnet_config, lambda: get_config("RN50")])
def test_resnet_names_match_openai_model(make):
    """Canonical ResNet names are OpenAI's under ``vision_model.``; shapes must match build_model's."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("clip")
    from clip.model import CLIP

    cfg = make()
    v, t = cfg.vision_config, cfg.text_config
    with torch.device("meta"):
        model = CLIP(cfg.projection_dim, v.image_size, v.layers, v.width, None, t.max_position_embeddings,
                     t.vocab_size, t.hidden_size, t.num_attention_heads, t.num_hidden_layers)
    sd = {k: tuple(p.shape) for k, p in model.state_dict().items() if k.startswith("visual.")
          and not k.endswith("num_batches_tracked")}
    ours = {n.replace("vision_model.", "visual.", 1): e.shape for n, e in schema(cfg, "vision").items()}
    assert ours == sd
