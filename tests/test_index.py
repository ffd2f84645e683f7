"""`clip-zoo index` (faiss) and `search --index`: the parameter rule, recall against exact search,
memory-mapped loading, and a flat index returning exactly the brute-force top 10."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest

import conversion
from clip_core import CLIPConfig, shapes
from clip_core.testing import random_weights, tiny_vit_config
from cli_helpers import run_cli

faiss = pytest.importorskip("faiss")
N_IMAGES = 300


@pytest.fixture(scope="module")
def collection(tmp_path_factory):
    """300 generated images embedded by a tiny random model, as .npy and as a Parquet folder (with captions)."""
    from clip_zoo.__main__ import main

    root = tmp_path_factory.mktemp("index")
    base = tiny_vit_config(image_size=16, patch_size=8)
    cfg = CLIPConfig(text_config=base.text_config, vision_config=base.vision_config, projection_dim=16)
    model = root / "tiny"
    conversion.save_checkpoint(model, cfg, random_weights(cfg, seed=3))
    (root / "imgs").mkdir()
    rows = []
    for i, im in enumerate(shapes.generate(N_IMAGES, seed=8, size=16).images):
        im.save(root / "imgs" / f"{i:04d}.png", compress_level=1)
        rows.append({"path": f"imgs/{i:04d}.png", "caption": f"picture {i}", "id": f"k{i}"})
    (root / "table.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    common = ["--model", str(model), "--framework", "torch", "--batch-size", "64", "--threads", "1", "--no-progress"]
    assert main(["embed", str(root / "imgs"), "--out", str(root / "emb.npy"), *common]) == 0
    assert main(["embed", str(root / "table.jsonl"), "--out", str(root / "pq"), "--format", "parquet", *common]) == 0
    return root, model


def _search(capsys, *argv):
    rc, out, err = run_cli(capsys, "search", *argv, "--json", "--threads", 1)
    assert rc == 0, err
    return json.loads(out)


@pytest.mark.parametrize("query", ["a red circle", "IMAGE"])
def test_search_on_a_flat_index_equals_brute_force(tmp_path, capsys, collection, query):
    root, _ = collection
    query = str(root / "imgs" / "0007.png") if query == "IMAGE" else query
    rc, _, err = run_cli(capsys, "index", root / "emb.npy", "--kind", "flat", "--out", tmp_path / "flat.faiss",
                         "--no-progress", "--queries", 50)
    assert rc == 0, err
    assert "recall@10 1.000" in err
    brute = _search(capsys, root / "emb.npy", query, "--top-k", 10)
    indexed = _search(capsys, root / "emb.npy", query, "--top-k", 10, "--index", tmp_path / "flat.faiss")
    assert [h["path"] for h in indexed] == [h["path"] for h in brute]
    np.testing.assert_allclose([h["score"] for h in indexed], [h["score"] for h in brute], atol=1e-5)
    if query.endswith(".png"):
        assert indexed[0]["path"].endswith("0007.png")


@pytest.mark.parametrize("kind", ["ivfpq", "hnsw"])
def test_parquet_index_search_carries_metadata(tmp_path, capsys, collection, kind):
    root, _ = collection
    out = tmp_path / f"{kind}.faiss"
    rc, _, err = run_cli(capsys, "index", root / "pq", "--kind", kind, "--out", out, "--no-progress", "--queries", 30)
    assert rc == 0, err
    info = json.loads(Path(f"{out}.json").read_text())
    assert info["count"] == N_IMAGES and info["kind"] == kind and 0 <= info["recall_at_10"] <= 1
    hits = _search(capsys, root / "pq", "a blue square", "--top-k", 5, "--index", out, "--nprobe", 4)
    assert len(hits) == 5 and all(h["caption"] == f"picture {h['id']}" and h["key"] == f"k{h['id']}" for h in hits)
    brute = _search(capsys, root / "pq", "a blue square", "--top-k", 5)  # streamed brute force over the folder
    assert [h["score"] for h in brute] == sorted((h["score"] for h in brute), reverse=True)
    assert len({h["id"] for h in hits} & {h["id"] for h in brute}) >= 3  # an approximate index, mostly right


def _clusters(n: int, d: int, seed: int = 0) -> np.ndarray:
    """Unit vectors around 100 random centres: neighbours worth finding (not uniform noise)."""
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((100, d))
    x = c[rng.integers(0, 100, n)] / np.sqrt(d) + 0.7 * rng.standard_normal((n, d)) / np.sqrt(d)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


class _Array:
    """An in-memory stand-in for an embed output (the Embeddings interface)."""

    def __init__(self, x):
        self.x, (self.n, self.dim), self.meta, self.source = x, x.shape, {}, "/nonexistent"

    def batches(self, size=65536):
        for s in range(0, self.n, size):
            yield s, self.x[s:s + size]

    def take(self, ids):
        return self.x[np.asarray(ids)]


@pytest.mark.parametrize("kind", ["flat", "ivfpq", "hnsw"])
def test_build_reports_true_recall_and_loads_memory_mapped(tmp_path, kind):
    from clip_zoo.index import build, choose, exact_top_k, load, recall_at_k, search

    x = _clusters(20_000, 64)
    info = build(_Array(x), choose(kind, len(x), 64, 2 ** 30), tmp_path / "i.faiss", queries=200, batch=4096)
    assert info["recall_at_10"] >= 0.9, info["tuning"]
    index, info = load(str(tmp_path / "i.faiss"))
    q = x[np.random.default_rng(5).choice(len(x), 100, replace=False)]
    _, ids = search(index, info, q, 10)
    exact = exact_top_k(_Array(x), q, 10, batch=3000)
    np.testing.assert_array_equal(exact, np.argsort(-(q @ x.T), axis=1, kind="stable")[:, :10])
    assert recall_at_k(ids, exact) >= 0.85
    assert recall_at_k(exact[:, ::-1], exact) == 1.0 and recall_at_k(exact + 1, exact) < 1.0


def test_parameter_rule():
    from clip_zoo.errors import CLIZooError
    from clip_zoo.index import choose, parse_memory

    gb = parse_memory("1GB")
    assert gb == 2 ** 30 and parse_memory("512mb") == 2 ** 29 and parse_memory("1.5G") == int(1.5 * 2 ** 30)
    with pytest.raises(argparse.ArgumentTypeError):
        parse_memory("lots")
    big = choose("ivfpq", 1_000_000, 512, gb)
    assert big["factory"] == "IVF1024,PQ128x4fs,Refine(SQ8)" and big["bytes"] <= 0.8 * gb
    assert choose("ivfpq", 1_000_000, 512, 2 ** 28)["refine"] is False  # 256 MB: no room for re-ranking vectors
    assert choose("ivfpq", 1000, 16, gb)["nlist"] == 16  # >= 39 training points a list
    assert choose("hnsw", 1_000_000, 512, gb)["factory"] == "HNSW32,SQ8"
    assert choose("hnsw", 100_000, 512, gb)["factory"] == "HNSW32,Flat"
    with pytest.raises(CLIZooError, match="--kind ivfpq"):
        choose("flat", 1_000_000, 512, gb)


def test_search_with_an_index_of_other_embeddings_is_an_error(tmp_path, capsys, collection):
    root, _ = collection
    assert run_cli(capsys, "index", root / "pq", "--kind", "flat", "--out", tmp_path / "f.faiss", "--no-progress",
                   "--queries", 20)[0] == 0
    rc, _, err = run_cli(capsys, "search", root / "emb.npy", "x", "--index", tmp_path / "f.faiss")
    assert rc == 2 and "was built from" in err and "Traceback" not in err
