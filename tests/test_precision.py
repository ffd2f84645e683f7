"""Inference precisions (``from_pretrained(..., precision=...)``): each offered precision keeps its cosine
bound to the fp32 embeddings on random ViT-B/32 and RN50 weights, on the tiny test architectures and on the
bundled model, agrees with fp32's zero-shot top-1 on 1,000 generated images, and is refused — with a
message — where it is not offered or misses its bound."""
from __future__ import annotations

import warnings

import numpy as np
import pytest

import conversion
from clip_core import precision as P
from clip_core.presets import get_config
from clip_core.testing import random_weights, tiny_resnet_config, tiny_vit_config
from tests.backend_harness import as_tensors, framework_name, pixel_inputs, text_inputs, to_numpy
from tests.conftest import backend_module

OFFERED = {"torch": ("bf16", "int8"), "tf": ("bf16",), "flax": ("bf16",)}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """name -> canonical directory: the tiny ViT / ResNet and random full-size ViT-B/32 / RN50."""
    root = tmp_path_factory.mktemp("precision")
    out = {"default": "default"}
    for name, cfg in (("tiny-vit", tiny_vit_config()), ("tiny-resnet", tiny_resnet_config()),
                      ("ViT-B/32", get_config("ViT-B/32")), ("RN50", get_config("RN50"))):
        out[name] = root / name.replace("/", "")
        conversion.save_canonical(out[name], cfg, random_weights(cfg, seed=7))
    return out


def _features(backend, model, cfg, batch=6):
    """(text, image) features of a held-out batch (not the load-time probe batch)."""
    text = text_inputs(cfg, batch=batch, padding=True, seed=99)
    x = as_tensors(backend, model, input_ids=text["input_ids"], pixel_values=pixel_inputs(cfg, batch, seed=99))
    return (to_numpy(model.get_text_features(input_ids=x["input_ids"])),
            to_numpy(model.get_image_features(pixel_values=x["pixel_values"])))


@pytest.mark.parametrize("name", ["tiny-vit", "tiny-resnet", "default",
                                  pytest.param("ViT-B/32", marks=pytest.mark.fullsize),
                                  pytest.param("RN50", marks=pytest.mark.fullsize)])
@pytest.mark.parametrize("precision", ["bf16", "int8"])
def test_precision_keeps_its_cosine_bound(backend, checkpoints, name, precision):
    fw = framework_name(backend)
    if precision not in OFFERED[fw]:
        with pytest.raises(P.PrecisionError, match=f"not offered by clip_{fw}"):
            backend.CLIPModel.from_pretrained(checkpoints[name], precision=precision)
        return
    ref = backend.CLIPModel.from_pretrained(checkpoints[name])
    low = backend.CLIPModel.from_pretrained(checkpoints[name], precision=precision)
    assert (ref.precision, low.precision) == ("fp32", precision)
    for tower, a, b in zip(("text", "image"), _features(backend, ref, ref.config), _features(backend, low, ref.config)):
        cos = P.min_cosine(a, b)
        assert cos >= P.MIN_COSINE[precision], f"{name} {precision} {tower}: min cosine {cos}"
        if not (precision == "int8" and tower == "image" and ref.config.is_resnet):  # ResNet convs stay fp32
            assert cos < 1.0 - 1e-9, f"{name} {precision} {tower}: identical to fp32, the precision was not applied"


def test_a_missed_bound_refuses(backend, checkpoints, monkeypatch):
    """A precision whose embeddings fall below the bound is refused instead of loaded."""
    monkeypatch.setitem(P.MIN_COSINE, "bf16", 1.0)  # no lower precision can reach it
    with pytest.raises(P.PrecisionError, match=r"below the bound 1\.0; use precision='fp32'"):
        backend.CLIPModel.from_pretrained(checkpoints["tiny-vit"], precision="bf16")


X86_AVX2 = "processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu sse2 avx avx2 fma\n\nprocessor\t: 1\n"
X86_BF16 = "processor\t: 0\nflags\t\t: avx2 avx512f avx512bw avx512_vnni avx512_bf16 amx_tile\n"
ARM_BF16 = "processor\t: 0\nFeatures\t: fp asimd asimddp sve i8mm bf16\nCPU implementer\t: 0x41\n"
ARM_PLAIN = "processor\t: 0\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32\n"


@pytest.mark.parametrize("text, native", [(X86_AVX2, False), (X86_BF16, True), (ARM_BF16, True), (ARM_PLAIN, False),
                                          ("processor\t: 0\n", None)])
def test_bf16_support_is_read_from_the_cpu_flags(text, native):
    from clip_core import cpu

    assert cpu.has_bf16(cpu.parse_cpuinfo(text)) is native


@pytest.mark.parametrize("text, name", [(X86_AVX2, "AMD EPYC"), (ARM_PLAIN, "fallback"), (None, "fallback")])
def test_the_cpu_name_is_read_from_cpuinfo(text, name, monkeypatch):
    from clip_core import cpu

    monkeypatch.setattr(cpu, "_cpuinfo", lambda: text)
    monkeypatch.setattr(cpu.platform, "processor", lambda: "fallback")
    assert cpu.cpu_name() == name
    assert cpu.cpu_flags() == (None if text is None else cpu.parse_cpuinfo(text))


@pytest.mark.parametrize("native", [False, True, None])
def test_bf16_warns_where_the_cpu_would_emulate_it(backend, checkpoints, monkeypatch, native):
    """bf16 on a CPU without bfloat16 instructions loads (within its bound) with a :class:`PrecisionWarning` that
    says it runs slower than fp32 there; a CPU with them, or one whose flags are unknown, gets no warning."""
    monkeypatch.setattr(P, "native_bf16", lambda: native)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        model = backend.CLIPModel.from_pretrained(checkpoints["tiny-vit"], precision="bf16")
    ours = [w for w in seen if issubclass(w.category, P.PrecisionWarning)]
    assert model is not None and len(ours) == (native is False), [str(w.message) for w in ours]
    if ours:
        assert f"clip_{framework_name(backend)}: this CPU has no bfloat16 instructions" in str(ours[0].message)
        assert "slower than fp32" in str(ours[0].message) and ours[0].filename == __file__  # the caller's line


def test_int8_does_not_warn_without_bf16(checkpoints, monkeypatch):
    torch_backend = backend_module("torch")
    monkeypatch.setattr(P, "native_bf16", lambda: False)
    with warnings.catch_warnings():
        warnings.simplefilter("error", P.PrecisionWarning)
        torch_backend.CLIPModel.from_pretrained(checkpoints["tiny-vit"], precision="int8")


def test_unknown_precision_is_named():
    with pytest.raises(P.PrecisionError, match="unknown precision 'fp8', choose one of fp32, bf16, int8"):
        P.check_precision("fp8")


@pytest.mark.slow
@pytest.mark.parametrize("framework,precision", [(fw, p) for fw, offered in OFFERED.items() for p in offered])
def test_zero_shot_agrees_with_fp32_on_1000_images(framework, precision):
    """The bundled model's zero-shot top-1 on 1,000 generated shape images: >= 99% the same as fp32."""
    from clip_core import CLIPImageProcessor, CLIPTokenizer
    from clip_core.default_model import default_model_path
    from clip_core.shapes import label_names, render_index

    backend = backend_module(framework)
    path = default_model_path()
    processor, tokenizer = CLIPImageProcessor.from_pretrained(path), CLIPTokenizer.from_pretrained(path)
    labels = label_names()
    images = [render_index(11, i, i % len(labels)) for i in range(1000)]
    pixels = processor(images, return_tensors="np")["pixel_values"]
    ids = tokenizer([f"a photo of a {label}" for label in labels], padding=True, return_tensors="np")["input_ids"]
    preds = {}
    for name, kwargs in (("fp32", {}), (precision, {"precision": precision})):
        model = backend.CLIPModel.from_pretrained(path, **kwargs)
        text = to_numpy(model.get_text_features(**as_tensors(backend, model, input_ids=ids)))
        image = np.concatenate([to_numpy(model.get_image_features(**as_tensors(backend, model, pixel_values=pixels[i:i + 250])))
                                for i in range(0, 1000, 250)])
        preds[name] = np.argmax(image @ text.T, axis=1)
    agree = float(np.mean(preds["fp32"] == preds[precision]))
    assert agree >= 0.99, f"{precision}: zero-shot top-1 agrees with fp32 on {agree:.1%} of 1,000 images"


# ---------------------------------------------------------------- torch's int8 kernels
def _int8_kernels():
    from clip_torch import precision as TP

    return [k for k, ok in (("onednn", TP._onednn_available()), ("fbgemm", TP._fbgemm_available())) if ok]


@pytest.mark.parametrize("act", ["quick_gelu", "gelu", "gelu_pytorch_tanh", "relu"])
@pytest.mark.parametrize("kernel", ["onednn", "fbgemm"])
def test_int8_mlp_matches_the_float_mlp(act, kernel):
    """Int8MLP (the activation fused into fc1's oneDNN kernel, quick_gelu's 1.702 folded into fc2) computes the
    float MLP up to int8 rounding: relative error <= 4%, and not exactly (the weights really are int8)."""
    torch = pytest.importorskip("torch")
    from clip_torch.layers import CLIPMLP
    from clip_torch.precision import Int8MLP

    if kernel not in _int8_kernels():
        pytest.skip(f"this torch has no {kernel} int8 kernel")
    torch.manual_seed(0)
    mlp = CLIPMLP(64, 256, act)
    for p in mlp.parameters():
        p.data.normal_(0.0, 0.1)
    x = torch.randn(2, 50, 64)
    with torch.inference_mode():
        ref, out = mlp(x), Int8MLP(mlp, kernel)(x)
    err = float((out - ref).norm() / ref.norm())
    assert 1e-4 < err <= 0.04, f"{act} through {kernel}: relative error {err}"


def _ops(fn) -> set:
    """Names of the aten / mkldnn ops ``fn()`` runs (torch's profiler)."""
    torch = pytest.importorskip("torch")

    with torch.profiler.profile() as prof:
        fn()
    return {e.name for e in prof.events()}


def _need_bf16_onednn():
    from clip_torch.layers import onednn_bf16

    if not onednn_bf16():
        pytest.skip("oneDNN has no bf16 kernels on this CPU: the bf16 MLP keeps its separate activation")


@pytest.mark.parametrize("act", ["quick_gelu", "gelu", "gelu_pytorch_tanh", "relu"])
def test_a_bf16_mlp_runs_its_activation_inside_fc1(act):
    """bf16 on oneDNN: ``CLIPMLP.of_norm`` applies the activation inside fc1's kernel (quick_gelu as swish of
    1.702·h, the 1.702 taken from the norm's affine parameters and fc1's bias), with no separate activation
    op, and computes the float32 block up to bf16 rounding (relative error <= 1.5%); the parameters are
    left as they were."""
    torch = pytest.importorskip("torch")
    from clip_torch.layers import CLIPMLP, LayerNorm

    _need_bf16_onednn()
    torch.manual_seed(0)
    norm, mlp = LayerNorm(64), CLIPMLP(64, 256, act)
    for p in (*norm.parameters(), *mlp.parameters()):
        p.data.normal_(0.0, 0.3)
    x = torch.randn(2, 7, 64)
    with torch.inference_mode():
        ref = mlp(norm(x))  # float32
        mlp.to(torch.bfloat16)  # as precision="bf16": the norm stays float32
        before = [p.clone() for p in (*norm.parameters(), *mlp.parameters())]
        xb = x.bfloat16()
        out = mlp.of_norm(norm, xb)
        ops = _ops(lambda: mlp.of_norm(norm, xb))
    assert out.dtype == torch.bfloat16 and out.shape == ref.shape
    err = float((out.float() - ref).norm() / ref.norm())
    assert err <= 0.015, f"{act}: relative error {err}"
    assert not ops & {"aten::sigmoid", "aten::sigmoid_", "aten::gelu", "aten::relu", "aten::relu_"}, sorted(ops)
    assert all(torch.equal(a, b) for a, b in zip(before, (*norm.parameters(), *mlp.parameters())))


def test_a_bf16_layer_norm_makes_no_float32_copies():
    """A float32 LayerNorm on a bf16 input (CPU, inference) reads the bf16 values directly and gives the
    float32 result rounded to bf16 (to one bf16 step), with no dtype copy around it."""
    torch = pytest.importorskip("torch")
    from clip_torch.layers import LayerNorm

    torch.manual_seed(0)
    norm = LayerNorm(64)
    norm.weight.data.normal_(1.0, 0.3)
    norm.bias.data.normal_(0.0, 0.3)
    x = torch.randn(4, 9, 64).bfloat16()
    with torch.inference_mode():
        ref = norm(x.float())
        out = norm(x)
        ops = _ops(lambda: norm(x))
    assert out.dtype == torch.bfloat16
    np.testing.assert_allclose(out.float().numpy(), ref.numpy(), rtol=2 ** -7, atol=1e-6)
    assert not ops & {"aten::to", "aten::_to_copy"}, sorted(ops)


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("tokens, elements, computes_in", [
    (7, None, "float32"), (50, None, "float32"), (51, None, "bfloat16"),
    (7, 3 * 7 * 64, "float32"), (7, 3 * 7 * 64 - 1, "bfloat16")])
def test_a_short_bf16_attention_runs_in_float32(tokens, elements, computes_in, masked, monkeypatch):
    """bf16 attention over at most ``SHORT_KEYS`` keys (50: a ViT-B/32 image) and ``SHORT_ELEMENTS``
    query values runs SDPA on float32 copies (torch's bf16 SDPA is ~1.6x slower at 7 keys, ~1.1x at 50);
    longer or larger ones stay bf16 (``elements`` moves the bound around this batch's 3 x 7 x 64 values).
    Either way the output is bf16 and within bf16 rounding of the float32 module's, also with an additive
    padding mask in the model's dtype (a text batch with an ``attention_mask``)."""
    torch = pytest.importorskip("torch")
    import clip_torch.layers as L
    from clip_torch.layers import causal_mask
    from clip_torch.text import padding_mask

    seen = []
    sdpa = L.F.scaled_dot_product_attention

    def spy(q, *args, **kwargs):
        seen.append(str(q.dtype).replace("torch.", ""))
        return sdpa(q, *args, **kwargs)

    monkeypatch.setattr(L.F, "scaled_dot_product_attention", spy)
    if elements is not None:
        monkeypatch.setattr(L, "SHORT_ELEMENTS", elements)
    torch.manual_seed(0)
    attn = L.CLIPAttention(64, 4)
    for p in attn.parameters():
        p.data.normal_(0.0, 0.2)
    x = torch.randn(3, tokens, 64)
    keep = torch.ones(3, tokens)
    keep[0, tokens // 2:] = 0  # the first row padded after half its tokens

    def mask(dtype):
        return (padding_mask(keep, dtype) + causal_mask(tokens, dtype, "cpu")) if masked else None

    with torch.inference_mode():
        ref = attn(x, mask(torch.float32), is_causal=not masked)[0]
        seen.clear()
        out = attn.to(torch.bfloat16)(x.bfloat16(), mask(torch.bfloat16), is_causal=not masked)[0]
    assert seen == [computes_in] and out.dtype == torch.bfloat16
    err = float((out.float() - ref).norm() / ref.norm())
    assert err <= 0.01, f"{tokens} tokens: relative error {err}"


@pytest.mark.parametrize("flags, machine, saturates", [
    (frozenset({"avx2", "fma"}), "x86_64", True), (frozenset({"avx2", "avx_vnni"}), "x86_64", False),
    (frozenset({"avx512f", "avx512_vnni"}), "x86_64", False), (None, "x86_64", True),
    (frozenset({"asimd"}), "aarch64", False)])
def test_int8_saturation_is_read_from_the_cpu(flags, machine, saturates, monkeypatch):
    from clip_core import cpu

    assert cpu.int8_saturates_on(flags, machine) is saturates
    monkeypatch.setattr(cpu, "cpu_flags", lambda: flags)
    monkeypatch.setattr(cpu.platform, "machine", lambda: machine)
    assert cpu.int8_saturates() is saturates


def test_int8_activations_use_7_bits_where_int8_products_saturate(monkeypatch):
    """On x86 without VNNI, oneDNN adds u8 x s8 pairs into int16 with saturation: 8-bit activations against
    large weights of the same sign (255·127·2 > 32767) come out clipped. The 7-bit codes used there keep the
    product within 2% of float32, whatever the CPU; the codes themselves stay within 0..127."""
    torch = pytest.importorskip("torch")
    from clip_torch import precision as TP
    from clip_torch.layers import Linear

    if "onednn" not in _int8_kernels():
        pytest.skip("this torch has no oneDNN int8 kernel")
    torch.manual_seed(0)
    linear = Linear(256, 32)
    linear.weight.data.uniform_(0.5, 1.0)  # int8 codes near +127 ...
    x = torch.rand(64, 256)  # ... against activations spread over every code: the worst case for int16 pairs
    monkeypatch.setattr(TP, "int8_saturates", lambda: True)
    q = TP.Int8Linear(linear)
    codes = TP._quantize_u8(x, 0.0, 1.0, q._top)[0]
    with torch.inference_mode():
        ref, out = linear(x), q(x)
    err = float((out - ref).norm() / ref.norm())
    assert q._top == 127 and int(codes.max()) == 127 and err <= 0.02, (q._top, int(codes.max()), err)
    monkeypatch.setattr(TP, "int8_saturates", lambda: False)
    assert TP.Int8Linear(linear)._top == 255  # all 8 bits where the CPU accumulates into int32


@pytest.mark.parametrize("kernel", ["onednn", "fbgemm"])
def test_each_int8_kernel_keeps_the_bound(checkpoints, kernel, monkeypatch):
    """The whole tiny model in int8 through either kernel (oneDNN where torch has it, fbgemm the fallback)."""
    pytest.importorskip("torch")
    import clip_torch
    from clip_torch import precision as TP

    if kernel not in _int8_kernels():
        pytest.skip(f"this torch has no {kernel} int8 kernel")
    monkeypatch.setattr(TP, "_int8_kernel", lambda: kernel)
    ref = clip_torch.CLIPModel.from_pretrained(checkpoints["tiny-vit"])
    low = clip_torch.CLIPModel.from_pretrained(checkpoints["tiny-vit"], precision="int8")
    assert {m.kernel for m in low.modules() if isinstance(m, TP.Int8Linear)} == {kernel}
    for a, b in zip(_features(clip_torch, ref, ref.config), _features(clip_torch, low, ref.config)):
        assert P.MIN_COSINE["int8"] <= P.min_cosine(a, b) < 1.0 - 1e-9


@pytest.mark.parametrize("kernel", ["onednn", "fbgemm"])
def test_an_int8_vit_embeds_its_patches_in_int8(checkpoints, kernel, monkeypatch):
    """The patch embedding (a stride = kernel conv run as a matmul) is an int8 linear too: its output within
    int8 rounding of the float32 conv's (relative error <= 2%, and not exact), the conv itself kept."""
    torch = pytest.importorskip("torch")
    import clip_torch
    from clip_torch import precision as TP

    if kernel not in _int8_kernels():
        pytest.skip(f"this torch has no {kernel} int8 kernel")
    monkeypatch.setattr(TP, "_int8_kernel", lambda: kernel)
    low = clip_torch.CLIPModel.from_pretrained(checkpoints["tiny-vit"], precision="int8")
    emb = low.vision_model.embeddings
    assert isinstance(emb.patch_proj, TP.Int8Linear) and emb.patch_proj.kernel == kernel
    assert emb.patch_embedding.weight.dtype == torch.float32
    px = torch.from_numpy(pixel_inputs(low.config, 3))
    with torch.inference_mode():
        out = emb.patchify(px)  # (B, N, D)
        emb.patch_proj = None
        ref = emb.patchify(px)  # the float32 conv
    err = float((out - ref).norm() / ref.norm())
    assert 1e-5 < err <= 0.02, f"patch embedding through {kernel}: relative error {err}"


@pytest.mark.parametrize("kernel", ["onednn", "fbgemm"])
def test_int8_linear_takes_empty_and_non_finite_rows(kernel):
    """No rows give no rows; a row holding NaN or inf comes out NaN (as in float32) and the other rows are
    what they are without it (it does not widen their quantization range)."""
    torch = pytest.importorskip("torch")
    from clip_torch.layers import Linear
    from clip_torch.precision import Int8Linear

    if kernel not in _int8_kernels():
        pytest.skip(f"this torch has no {kernel} int8 kernel")
    torch.manual_seed(0)
    q = Int8Linear(Linear(64, 32), kernel=kernel)
    with torch.inference_mode():
        assert q(torch.zeros(2, 0, 64)).shape == (2, 0, 32)
        x = torch.randn(6, 64)
        x[2, 5], x[4, 0] = float("nan"), float("inf")
        out = q(x)
        good = [0, 1, 3, 5]
        alone = q(x[good])
    assert torch.isnan(out[[2, 4]]).all()
    np.testing.assert_array_equal(out[good].numpy(), alone.numpy())


def test_an_int8_model_gives_a_nan_image_a_nan_row(checkpoints):
    """One NaN image in an int8 batch: its row is NaN (the CLI's finite check then names it), the others stay
    within the int8 bound of float32."""
    torch = pytest.importorskip("torch")
    import clip_torch

    ref = clip_torch.CLIPModel.from_pretrained(checkpoints["tiny-vit"])
    low = clip_torch.CLIPModel.from_pretrained(checkpoints["tiny-vit"], precision="int8")
    px = torch.from_numpy(pixel_inputs(ref.config, 4))
    px[1, 0, 3, 3] = float("nan")
    with torch.inference_mode():
        a, b = ref.get_image_features(pixel_values=px).numpy(), low.get_image_features(pixel_values=px).numpy()
    assert np.isnan(b[1]).all() and np.isfinite(b[[0, 2, 3]]).all()
    assert P.min_cosine(a[[0, 2, 3]], b[[0, 2, 3]]) >= P.MIN_COSINE["int8"]


def test_activation_quantization_fallback_matches_the_fused_one(monkeypatch):
    """Without ``torch.quantize_per_tensor`` (deprecated) the plain-op quantization gives the same codes (±1 at ties)."""
    torch = pytest.importorskip("torch")
    from clip_torch import precision as TP

    if not TP._check_fused_quantize():
        pytest.skip("this torch has no torch.quantize_per_tensor")
    x = torch.randn(64, 96) * 3 + 0.5
    monkeypatch.setattr(TP, "_QUANTIZE_FUSED", True)
    lo, hi = (float(v) for v in torch.aminmax(x))
    fused = TP._quantize_u8(x, lo, hi)
    monkeypatch.setattr(TP, "_QUANTIZE_FUSED", False)
    plain = TP._quantize_u8(x, lo, hi)
    assert fused[1:] == plain[1:]
    assert int((fused[0].int() - plain[0].int()).abs().max()) <= 1
    restored = (plain[0].float() - plain[2]) * plain[1]
    np.testing.assert_allclose(restored.numpy(), x.numpy(), atol=plain[1] * 0.51 + 1e-6)


@pytest.mark.filterwarnings("ignore:no SigLIP tokenizer files")  # random weights, no tokenizer: not the point here
@pytest.mark.parametrize("precision", ["bf16", "int8"])
def test_siglip_precisions_keep_the_bound(backend, tmp_path_factory, precision):
    """SigLIP goes through the same conversion (its gelu-tanh MLP fused into oneDNN's int8 kernel in torch)."""
    from clip_core.testing import tiny_siglip_config

    fw = framework_name(backend)
    cfg = tiny_siglip_config()
    path = tmp_path_factory.mktemp("siglip_precision") / "ckpt"
    conversion.save_canonical(path, cfg, random_weights(cfg, seed=3))
    if precision not in OFFERED[fw]:
        with pytest.raises(P.PrecisionError, match=f"not offered by clip_{fw}"):
            backend.SiglipModel.from_pretrained(path, precision=precision)
        return
    inputs = P.probe_inputs(cfg, batch=6, seed=99)  # held out: not the load-time probe batch
    feats = []
    for kwargs in ({}, {"precision": precision}):
        model = backend.SiglipModel.from_pretrained(path, **kwargs)
        x = as_tensors(backend, model, input_ids=inputs["input_ids"].astype(np.int32), pixel_values=inputs["pixel_values"])
        feats.append((to_numpy(model.get_text_features(input_ids=x["input_ids"])),
                      to_numpy(model.get_image_features(pixel_values=x["pixel_values"]))))
    for a, b in zip(*feats):
        assert P.MIN_COSINE[precision] <= P.min_cosine(a, b) < 1.0 - 1e-9


def _dtype(x) -> str:
    """A framework tensor's dtype as a plain name (``bfloat16``, ``float32``)."""
    return getattr(x.dtype, "name", None) or str(x.dtype).replace("torch.", "")


@pytest.mark.filterwarnings("ignore:no SigLIP tokenizer files")  # random weights, no tokenizer: not the point here
@pytest.mark.parametrize("name", ["tiny-vit", "tiny-resnet", "tiny-siglip"])
def test_bf16_outputs_have_the_same_dtypes_in_every_backend(backend, checkpoints, tmp_path_factory, name):
    """In bf16 the full model call (hidden states and attentions asked for) runs for every architecture;
    features, embeddings, logits and the outputs of a final projection (ResNet's attention pool, SigLIP's
    heads) are float32; every other tower output is bfloat16; logits use the float32 logit scale (and bias)."""
    from clip_core.testing import tiny_siglip_config

    if name == "tiny-siglip":
        cfg = tiny_siglip_config()
        path = tmp_path_factory.mktemp("siglip_dtypes") / "ckpt"
        conversion.save_canonical(path, cfg, random_weights(cfg, seed=7))
        model = backend.SiglipModel.from_pretrained(path, precision="bf16")
    else:
        path, model = checkpoints[name], backend.CLIPModel.from_pretrained(checkpoints[name], precision="bf16")
    assert model.precision == "bf16"
    cfg, weights = model.config, random_weights(model.config, seed=7)
    inputs = P.probe_inputs(cfg, batch=3, seed=99)
    x = as_tensors(backend, model, input_ids=inputs["input_ids"].astype(np.int32), pixel_values=inputs["pixel_values"])
    out = model(input_ids=x["input_ids"], pixel_values=x["pixel_values"], output_hidden_states=True,
                output_attentions=True)
    floats = {"text_embeds": out.text_embeds, "image_embeds": out.image_embeds, "logits": out.logits_per_text,
              "text features": model.get_text_features(input_ids=x["input_ids"]),
              "image features": model.get_image_features(pixel_values=x["pixel_values"])}
    projected = {"text": name == "tiny-siglip", "vision": name != "tiny-vit"}
    halves = {}
    for tower in ("text", "vision"):
        o = getattr(out, f"{tower}_model_output")
        halves[f"{tower} last_hidden_state"] = o.last_hidden_state
        halves.update({f"{tower} hidden_states[{i}]": h for i, h in enumerate(o.hidden_states)})
        halves.update({f"{tower} attentions[{i}]": a for i, a in enumerate(o.attentions or ())})
        (floats if projected[tower] else halves)[f"{tower} pooler_output"] = o.pooler_output
    assert {k: _dtype(v) for k, v in floats.items()} == {k: "float32" for k in floats}
    assert {k: _dtype(v) for k, v in halves.items()} == {k: "bfloat16" for k in halves}
    text, image = to_numpy(out.text_embeds).astype(np.float64), to_numpy(out.image_embeds).astype(np.float64)
    expected = text @ image.T * np.exp(float(weights["logit_scale"].reshape(-1)[0]))
    expected += float(weights["logit_bias"].reshape(-1)[0]) if "logit_bias" in weights else 0.0
    np.testing.assert_allclose(to_numpy(out.logits_per_text), expected, rtol=1e-5, atol=1e-4)
    if name == "tiny-siglip":
        return
    text_model = backend.CLIPTextModelWithProjection.from_pretrained(path, precision="bf16")
    image_model = backend.CLIPVisionModelWithProjection.from_pretrained(path, precision="bf16")
    embeds = {"text_embeds": text_model(input_ids=x["input_ids"]).text_embeds,
              "image_embeds": image_model(pixel_values=x["pixel_values"]).image_embeds}
    assert {k: _dtype(v) for k, v in embeds.items()} == {k: "float32" for k in embeds}


@pytest.mark.parametrize("precision", ["bf16", "int8"])
def test_an_image_classifier_takes_a_precision(backend, checkpoints, tmp_path, precision):
    """An image classifier has no pooled output: the load-time check compares its last hidden state; the logits
    come out float32 and close to fp32's."""
    fw = framework_name(backend)
    if precision not in OFFERED[fw]:
        pytest.skip(f"clip_{fw} does not offer {precision} (test_precision_keeps_its_cosine_bound checks the refusal)")
    ref = backend.CLIPForImageClassification.from_pretrained(checkpoints["tiny-vit"], num_labels=3)
    ref.save_pretrained(tmp_path / "classifier")
    low = backend.CLIPForImageClassification.from_pretrained(tmp_path / "classifier", precision=precision)
    px = as_tensors(backend, low, pixel_values=pixel_inputs(ref.config, 6, seed=99))["pixel_values"]
    a, b = (m(pixel_values=px, output_hidden_states=True) for m in (ref, low))
    assert (low.precision, _dtype(b.logits)) == (precision, "float32")
    states = [to_numpy(o.hidden_states[-1]).astype(np.float32).reshape(6, -1) for o in (a, b)]
    assert P.MIN_COSINE[precision] <= P.min_cosine(*states) < 1.0 - 1e-9
    logits = to_numpy(a.logits)
    np.testing.assert_allclose(to_numpy(b.logits), logits, atol=0.03 * np.abs(logits).max())


# ---------------------------------------------------------------- TF and Flax bf16 layouts
def test_flax_bf16_stores_its_matrices_in_bf16_without_changing_an_output(checkpoints):
    """``precision="bf16"`` keeps kernels and embedding tables in bfloat16 (no per-call cast), LayerNorm and
    biases in float32, and computes exactly what a bfloat16 model over float32 parameters computes."""
    pytest.importorskip("jax")
    import jax
    import jax.numpy as jnp
    import clip_flax

    low = clip_flax.CLIPModel.from_pretrained(checkpoints["tiny-vit"], precision="bf16")
    cast = clip_flax.CLIPModel.from_pretrained(checkpoints["tiny-vit"], dtype=jnp.bfloat16)
    dtypes = {jax.tree_util.keystr(p): v.dtype for p, v in jax.tree_util.tree_leaves_with_path(low.params)}
    by_leaf = {}
    for path, dtype in dtypes.items():
        by_leaf.setdefault(path.rsplit("'", 2)[-2], set()).add(str(dtype))
    assert by_leaf["kernel"] == by_leaf["embedding"] == {"bfloat16"}
    assert by_leaf["scale"] == by_leaf["bias"] == {"float32"}
    for a, b in zip(_features(clip_flax, low, low.config), _features(clip_flax, cast, cast.config)):
        np.testing.assert_array_equal(a, b)


def _traced_ops(fn) -> set:
    return {op.type for op in fn.get_concrete_function().graph.get_operations()}


def test_tf_bf16_compiles_float32_accumulating_products_for_xla_only(checkpoints):
    """bf16 text and ViT image paths compile with XLA, their products as ``BatchMatMulV3`` asked for float32
    (only XLA has that kernel); a plain graph (``jit_compile=False``) and a bf16 ResNet keep ``MatMul``.
    Both give the same embeddings to bf16 rounding."""
    pytest.importorskip("tensorflow")
    import clip_tf

    xla = clip_tf.CLIPModel.from_pretrained(checkpoints["tiny-vit"], precision="bf16")
    graph = clip_tf.CLIPModel.from_pretrained(checkpoints["tiny-vit"], precision="bf16", jit_compile=False)
    outs = [_features(clip_tf, m, m.config) for m in (xla, graph)]
    for key in ("text", "image"):
        assert "BatchMatMulV3" in _traced_ops(xla._fns[key]), key
        assert "BatchMatMulV3" not in _traced_ops(graph._fns[key]), key
    for a, b in zip(*outs):
        assert P.min_cosine(a, b) >= 0.999
    rn = clip_tf.CLIPModel.from_pretrained(checkpoints["tiny-resnet"], precision="bf16")
    _features(clip_tf, rn, rn.config)
    assert "BatchMatMulV3" not in _traced_ops(rn._fns["image"])
    assert "BatchMatMulV3" in _traced_ops(rn._fns["text"])
