"""clip_tf's ModifiedResNet vs OpenAI's ``clip.model.ModifiedResNet`` and vs clip_torch (every field)."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
clip_model = pytest.importorskip("clip.model")
tf = pytest.importorskip("tensorflow")

import clip_tf  # noqa: E402
import conversion  # noqa: E402
from clip_core.testing import random_weights, tiny_resnet_config  # noqa: E402
from tests.backend_harness import assert_embeds_close, assert_outputs_close, pixel_inputs, text_inputs  # noqa: E402


def _np(x):
    return np.asarray(x.detach().numpy() if hasattr(x, "detach") else x.numpy() if hasattr(x, "numpy") else x)


@pytest.fixture(scope="module")
def resnet(tmp_path_factory):
    """(dir, canonical weights, clip_tf CLIPModel) for the tiny ResNet."""
    cfg = tiny_resnet_config()
    weights = random_weights(cfg, seed=5)
    path = tmp_path_factory.mktemp("tf_rn")
    conversion.save_canonical(path, cfg, weights)
    return path, weights, clip_tf.CLIPModel.from_pretrained(path)


def openai_resnet(config, weights) -> "torch.nn.Module":
    """OpenAI's ModifiedResNet with the canonical ``vision_model.*`` weights (strict but for BN counters)."""
    v = config.vision_config
    net = clip_model.ModifiedResNet(layers=list(v.layers), output_dim=v.projection_dim, heads=v.num_attention_heads,
                                    input_resolution=v.image_size, width=v.width).eval()
    state = {k[len("vision_model."):]: torch.from_numpy(np.asarray(a)) for k, a in weights.items()
             if k.startswith("vision_model.")}
    missing, unexpected = net.load_state_dict(state, strict=False)
    assert not unexpected and all(m.endswith("num_batches_tracked") for m in missing), (missing, unexpected)
    return net


def openai_stages(net, pixels: np.ndarray) -> list:
    """OpenAI's stem output and the four stage outputs (NCHW), then the attention-pool output."""
    with torch.no_grad():
        x = torch.from_numpy(pixels)
        for conv, bn, relu in ((net.conv1, net.bn1, net.relu1), (net.conv2, net.bn2, net.relu2),
                               (net.conv3, net.bn3, net.relu3)):
            x = relu(bn(conv(x)))
        outs = [net.avgpool(x)]
        for stage in (net.layer1, net.layer2, net.layer3, net.layer4):
            outs.append(stage(outs[-1]))
        return [_np(o) for o in outs] + [_np(net.attnpool(outs[-1]))]


def test_vision_tower_matches_openai(resnet):
    path, weights, model = resnet
    ref = openai_stages(openai_resnet(model.config, weights), pixel_inputs(model.config, batch=2))
    out = clip_tf.CLIPVisionModel.from_pretrained(path)(pixel_values=pixel_inputs(model.config, batch=2),
                                                         output_hidden_states=True, output_attentions=True)
    assert len(out.hidden_states) == 5 and out.attentions == ()
    for ours, theirs in zip(out.hidden_states, ref[:5]):
        np.testing.assert_allclose(_np(ours), theirs, atol=1e-4, rtol=0)
    np.testing.assert_allclose(_np(out.last_hidden_state), ref[4], atol=1e-4, rtol=0)
    np.testing.assert_allclose(_np(out.pooler_output), ref[5], atol=1e-4, rtol=0)
    assert_embeds_close(_np(model.get_image_features(pixel_inputs(model.config, batch=2))), ref[5])


def test_clip_model_matches_clip_torch(resnet):
    clip_torch = pytest.importorskip("clip_torch")
    path, _, model = resnet
    ref = clip_torch.CLIPModel.from_pretrained(path).eval()
    text = text_inputs(model.config, batch=2, length=16, padding=True)
    pixels = pixel_inputs(model.config, batch=2)
    flags = dict(output_hidden_states=True, output_attentions=True, return_loss=True)
    ours = model(input_ids=text["input_ids"].astype(np.int32), attention_mask=text["attention_mask"].astype(np.int32),
                 pixel_values=pixels, **flags)
    with torch.no_grad():
        theirs = ref(input_ids=torch.from_numpy(text["input_ids"]),
                     attention_mask=torch.from_numpy(text["attention_mask"]), pixel_values=torch.from_numpy(pixels),
                     **flags)
    names = assert_outputs_close(ours, theirs, to_numpy=_np)
    assert "vision_model_output.hidden_states[4]" in names and "loss" in names


def test_batchnorm_training_mode_uses_batch_statistics(resnet):
    """training=True normalises with batch statistics (outputs change) and updates the running stats."""
    path, _, _ = resnet
    model = clip_tf.CLIPVisionModel.from_pretrained(path)
    pixels = pixel_inputs(model.config, batch=4)
    bn = model.vision_model.bn1
    before = bn.moving_mean.numpy().copy()
    eval_out = _np(model(pixel_values=pixels).pooler_output)
    train_out = _np(model(pixel_values=pixels, training=True).pooler_output)
    assert np.abs(eval_out - train_out).max() > 1e-3
    assert np.abs(bn.moving_mean.numpy() - before).max() > 0
