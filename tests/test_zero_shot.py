"""clip_core.zero_shot (prompt ensembling on numpy embeddings) and clip_core.shapes (the generator)."""
from __future__ import annotations

import numpy as np
import pytest

from clip_core import shapes
from clip_core import zero_shot as zs


def test_template_sets():
    assert len(zs.OPENAI_IMAGENET_TEMPLATES) == 80
    assert len(set(zs.OPENAI_IMAGENET_TEMPLATES)) == 80
    assert set(zs.OPENAI_SELECTED_TEMPLATES) <= set(zs.OPENAI_IMAGENET_TEMPLATES)
    for name, templates in zs.TEMPLATE_SETS.items():
        assert all(t.count("{}") == 1 for t in templates), name
    assert zs.get_templates("openai") is zs.OPENAI_IMAGENET_TEMPLATES


def test_templates_from_file(tmp_path):
    f = tmp_path / "t.txt"
    f.write_text("# comment\nan {} here\n\nthe {}!\n")
    assert zs.get_templates(f) == ("an {} here", "the {}!")
    f.write_text("no placeholder\n")
    with pytest.raises(ValueError, match="placeholder"):
        zs.get_templates(f)
    with pytest.raises(ValueError, match="unknown template set"):
        zs.get_templates("nonexistent-set")


def test_parse_labels(tmp_path):
    assert zs.parse_labels(" cat, dog ,,bird ") == ["cat", "dog", "bird"]
    f = tmp_path / "labels.txt"
    f.write_text("red circle\nblue square\n")
    assert zs.parse_labels(str(f)) == ["red circle", "blue square"]
    for bad in ("", " , ", []):
        with pytest.raises(ValueError, match="empty"):
            zs.parse_labels(bad)
    with pytest.raises(ValueError, match="duplicate"):
        zs.parse_labels("a,b,a")


def test_weights_are_normalized_template_means():
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(3, 5, 8)).astype(np.float32)  # (L, T, D)
    w = zs.zero_shot_weights_from_embeddings(emb)
    assert w.shape == (8, 3)
    np.testing.assert_allclose(np.linalg.norm(w, axis=0), 1.0, atol=1e-6)
    unit = emb / np.linalg.norm(emb, axis=-1, keepdims=True)
    ref = unit.mean(1) / np.linalg.norm(unit.mean(1), axis=-1, keepdims=True)
    np.testing.assert_allclose(w.T, ref, atol=1e-6)


def test_build_zero_shot_weights_batches_in_prompt_order():
    labels, templates = ["a", "b", "c"], ["x {}", "y {}"]
    vocab = {p: i for i, p in enumerate(zs.build_prompts(labels, templates))}
    assert list(vocab) == ["x a", "y a", "x b", "y b", "x c", "y c"]

    def encode(texts):  # one-hot prompt embeddings: the classifier column of a label mixes its prompts
        out = np.zeros((len(texts), 6), np.float32)
        out[np.arange(len(texts)), [vocab[t] for t in texts]] = 1
        return out

    w = zs.build_zero_shot_weights(encode, labels, templates, batch_size=4)
    expect = np.zeros((6, 3), np.float32)
    for j in range(3):
        expect[2 * j:2 * j + 2, j] = 2 ** -0.5
    np.testing.assert_allclose(w, expect, atol=1e-6)


def test_logits_softmax_top_k():
    w = np.eye(3, dtype=np.float32)  # (D, L)
    img = np.array([[0.0, 2.0, 1.0], [5.0, 0.0, 0.0]], np.float32)
    logits = zs.zero_shot_logits(img, w, scale=10.0)
    np.testing.assert_allclose(logits[1], [10.0, 0.0, 0.0], atol=1e-5)
    probs = zs.softmax(logits)
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-6)
    idx, val = zs.top_k(probs, 2)
    assert idx.tolist() == [[1, 2], [0, 1]]
    np.testing.assert_allclose(val, np.take_along_axis(probs, idx, 1))
    assert zs.top_k(probs, 99)[0].shape == (2, 3)


def test_shapes_labels_and_captions():
    assert len(shapes.SHAPES) >= 6 and len(shapes.COLOURS) == 8
    assert len(shapes.LABELS) == 48 == len(set(shapes.label_names()))
    assert shapes.caption(0) == f"a photo of a {shapes.label_names()[0]}"


def test_shapes_deterministic_balanced_and_varied():
    a = shapes.generate(96, seed=3)
    b = shapes.generate(96, seed=3)
    c = shapes.generate(96, seed=4)
    assert all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(a.images, b.images))
    assert not np.array_equal(np.asarray(a.images[0]), np.asarray(c.images[0]))
    for k in range(2):  # every run of 48 holds each class once
        assert sorted(a.label_ids[48 * k:48 * (k + 1)].tolist()) == list(range(48))
    assert a.captions[5] == shapes.caption(int(a.label_ids[5]))
    arr = np.stack([np.asarray(im) for im in a.images])
    assert arr.shape == (96, 64, 64, 3) and arr.dtype == np.uint8
    assert arr.reshape(96, -1).std(1).min() > 5  # never a blank image


def test_shape_colour_dominates_its_pixels():
    """The shape's colour is where the mask is: the pixel at the shape centre is close to it."""
    img = np.asarray(shapes.render("red", "circle", np.random.default_rng(0), size=64)).astype(float)
    assert (np.abs(img - shapes.COLOURS["red"]).sum(-1) < 90).mean() > 0.08
    with pytest.raises(ValueError, match="unknown shape"):
        shapes.render("red", "blob", np.random.default_rng(0))
