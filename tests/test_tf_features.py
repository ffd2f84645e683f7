"""clip_tf fast paths: length bucketing without retracing, mixed precision, channels-last, interpolated
position embeddings, and the OpenAI-style API."""
from __future__ import annotations

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

import clip_tf  # noqa: E402
import conversion  # noqa: E402
from clip_core.testing import random_weights, tiny_vit_config  # noqa: E402
from clip_tf.models import text_bucket  # noqa: E402
from tests.backend_harness import assert_embeds_close, pixel_inputs, text_inputs  # noqa: E402


@pytest.fixture(scope="module")
def vit(tmp_path_factory):
    cfg = tiny_vit_config()
    path = tmp_path_factory.mktemp("tf_feat")
    conversion.save_canonical(path, cfg, random_weights(cfg, seed=11))
    return path, clip_tf.CLIPModel.from_pretrained(path)


def _full_length_features(model, ids, mask):
    out = model.text_model(tf.constant(ids), attention_mask=tf.constant(mask))
    return model.text_projection(out.pooler_output).numpy()


def test_text_bucket():
    assert [text_bucket(n, 77) for n in (1, 8, 9, 16, 17, 33, 64, 65, 77)] == [8, 8, 16, 16, 32, 64, 64, 77, 77]


def test_bucketed_text_features_equal_full_length_without_retracing(vit):
    _, model = vit
    for length_seed in range(3):  # different real lengths -> different buckets, one trace
        text = text_inputs(model.config, batch=3, padding=True, seed=length_seed)
        ids, mask = text["input_ids"].astype(np.int32), text["attention_mask"].astype(np.int32)
        ids[0, 40:] = 0  # a long row in one round forces the largest bucket
        if length_seed == 2:
            ids[0, 70], mask[0, :71] = model.config.text_config.eos_token_id, 1
        got = model.get_text_features(ids, mask).numpy()
        np.testing.assert_allclose(got, _full_length_features(model, ids, mask), atol=1e-5, rtol=0)
        no_mask = model.get_text_features(ids).numpy()  # the padding mask cannot change the pooled EOT state
        np.testing.assert_allclose(no_mask, got, atol=1e-5, rtol=0)
    assert model._fns["text"].experimental_get_tracing_count() == 1


@pytest.mark.parametrize("jit", [True, "auto"])
def test_image_features_trace_once(vit, jit):
    path, model = vit
    compiled = clip_tf.CLIPModel.from_pretrained(path, jit_compile=jit)
    for batch in (1, 3, 3):
        px = pixel_inputs(model.config, batch=batch)
        assert_embeds_close(compiled.get_image_features(px).numpy(), model(pixel_values=px,
                            input_ids=np.array([[1, 2]], np.int32)).image_embeds.numpy())
    assert compiled._fns["image"].experimental_get_tracing_count() == 1


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
def test_mixed_precision(vit, policy):
    path, model = vit
    low = clip_tf.CLIPModel.from_pretrained(path, dtype=policy, jit_compile=False)
    text = text_inputs(model.config, batch=2, length=16, padding=True)
    kwargs = dict(input_ids=text["input_ids"].astype(np.int32), attention_mask=text["attention_mask"].astype(np.int32),
                  pixel_values=pixel_inputs(model.config, batch=2))
    out, ref = low(**kwargs, output_hidden_states=True), model(**kwargs)
    compute = policy.split("_")[1]
    assert out.vision_model_output.hidden_states[1].dtype == compute
    assert low.vision_model.pre_layrnorm.gamma.dtype == "float32"  # norms keep float32 weights and math
    assert low.vision_model.encoder.layers[0].mlp.fc1.kernel.dtype == "float32"  # master weights
    np.testing.assert_allclose(out.image_embeds.numpy(), ref.image_embeds.numpy(), atol=3e-2, rtol=0)
    np.testing.assert_allclose(out.text_embeds.numpy(), ref.text_embeds.numpy(), atol=3e-2, rtol=0)


def test_channels_last(vit):
    path, model = vit
    nhwc = clip_tf.CLIPModel.from_pretrained(path, data_format="channels_last")
    px = pixel_inputs(model.config, batch=2)
    np.testing.assert_allclose(nhwc.get_image_features(px.transpose(0, 2, 3, 1)).numpy(),
                               model.get_image_features(px).numpy(), atol=1e-5, rtol=0)


def test_interpolate_pos_encoding_matches_clip_torch(vit):
    torch = pytest.importorskip("torch")
    clip_torch = pytest.importorskip("clip_torch")
    path, model = vit
    ref = clip_torch.CLIPVisionModel.from_pretrained(path).eval()
    px = pixel_inputs(model.config, batch=2, size=48)
    ours = clip_tf.CLIPVisionModel.from_pretrained(path)(pixel_values=px, interpolate_pos_encoding=True)
    with torch.no_grad():
        theirs = ref(pixel_values=torch.from_numpy(px), interpolate_pos_encoding=True)
    assert ours.last_hidden_state.shape == (2, 37, 48)
    np.testing.assert_allclose(ours.pooler_output.numpy(), theirs.pooler_output.numpy(), atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="interpolate_pos_encoding"):
        model.vision_model(px)


def test_reshape_with_one_unknown_dimension_has_a_constant_shape():
    """``primitives.reshape`` turns a lone unknown dimension into -1, so the target shape is a constant."""
    from clip_tf.primitives import reshape, shape_list

    @tf.function(input_signature=[tf.TensorSpec([None, 6, 4], tf.float32), tf.TensorSpec([None, None, 4], tf.float32)])
    def split(x, y):
        return reshape(x, shape_list(x)[:2] + [2, 2]), reshape(y, shape_list(y)[:2] + [2, 2])

    graph = split.get_concrete_function().graph
    shapes = [op.inputs[1].op.type for op in graph.get_operations() if op.type == "Reshape"]
    assert shapes == ["Const", "Pack"]  # two unknown dimensions: the shape is computed
    x = np.arange(48, dtype=np.float32).reshape(2, 6, 4)
    np.testing.assert_array_equal(split(x, x)[0].numpy(), x.reshape(2, 6, 2, 2))


def test_litert_image_graph_has_no_computed_shapes(vit, tmp_path, capsys):
    """The exported image graph of a ViT (static size, dynamic batch) reshapes to constant shapes only:
    LiteRT's XNNPACK delegate runs no SHAPE / PACK, and each one splits the graph (ViT-B/32's int8 image
    graph ran as 64 delegated pieces with 51 SHAPE ops, 5-6% slower than as 3 pieces)."""
    import re
    from collections import Counter

    from clip_tf.export import export_litert

    export_litert(vit[1], tmp_path, parts=("image",))
    capsys.readouterr()
    tf.lite.experimental.Analyzer.analyze(model_path=str(tmp_path / "image.tflite"))
    ops = Counter(re.findall(r"Op#\d+ (\w+)\(", capsys.readouterr().out))
    assert ops["FULLY_CONNECTED"] > 0, ops  # the analyzer's listing was read
    assert ops["SHAPE"] <= 1 and ops["PACK"] <= 1, ops  # the class token's broadcast to the batch
