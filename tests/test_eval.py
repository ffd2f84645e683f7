"""`clip-zoo eval`: clip_benchmark 1.6.2's metrics on the same embeddings, the bundled model on the
generated suite (zero-shot equals `classify` counted one by one, the same top-1 and linear-probe
accuracy in torch, TF and Flax), the embedding cache, the dataset formats and bad datasets."""
from __future__ import annotations

import builtins
import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from clip_core import shapes
from clip_zoo import eval_data, eval_metrics, evaluate, synth_suite

from cli_helpers import run_cli

torch = pytest.importorskip("torch")
zsc = pytest.importorskip("clip_benchmark.metrics.zeroshot_classification")
zsr = pytest.importorskip("clip_benchmark.metrics.zeroshot_retrieval")
from sklearn.metrics import balanced_accuracy_score  # noqa: E402

N_SMALL = 240  # images of the fast zero-shot set (5 per class)
N_BIG = 2000


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    """A small suite: 240 test images, 96 pairs (+ a WebDataset shard), classes.txt, test.csv."""
    return synth_suite.write_suite(tmp_path_factory.mktemp("suite"), n=N_SMALL, n_train=0, n_pairs=96)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("eval-cache")


def _eval(capsys, *argv):
    return run_cli(capsys, "eval", *argv)


def _json(capsys, cache, *argv):
    rc, out, err = _eval(capsys, *argv, "--cache", cache, "--json", "--no-progress", "--threads", "2")
    assert rc == 0, err
    return json.loads(out), err


@pytest.fixture(scope="module")
def small_run(suite, cache):
    """The torch FrameworkRun and the small test set (embeddings cached once for the module)."""
    import argparse

    from clip_zoo.embed import model_fingerprint
    from clip_zoo.engines import resolve_model

    args = argparse.Namespace(model=None, threads=2, batch_size=64, progress=False, max_pixels=None)
    run = evaluate.FrameworkRun("torch", args, model_fingerprint(resolve_model(None)), cache)
    data = eval_data.load_classification(str(suite / "test"), "auto", None, cache)
    return run, data


# ----------------------------------------------------------------------------- metrics == clip_benchmark
def _reference_classification(logits: np.ndarray, targets: np.ndarray) -> dict:
    """clip_benchmark's own computation (its `evaluate` after `run_classification`).

    Its `accuracy` calls ``float()`` on a 1-element array, which numpy >= 2.3 refuses; the module-level
    name ``float`` is shadowed by one that takes the element first (the arithmetic is unchanged)."""
    lt, tt = torch.from_numpy(logits), torch.from_numpy(targets)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(zsc, "float", lambda x: builtins.float(np.asarray(x).reshape(-1)[0]), raising=False)
        acc1, acc5 = zsc.accuracy(lt, tt, topk=(1, 5))
    return {"acc1": acc1, "acc5": acc5, "mean_per_class_recall": balanced_accuracy_score(tt, lt.argmax(axis=1))}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_classification_metrics_equal_clip_benchmark_on_random_logits(seed):
    rng = np.random.default_rng(seed)
    n, c = 500, 12
    targets = rng.integers(0, c - 1, n)  # class c-1 has no samples: excluded from the mean recall
    logits = (rng.normal(size=(n, c)) + 1.5 * np.eye(c)[targets]).astype(np.float32)
    assert eval_metrics.classification_metrics(logits, targets) == _reference_classification(logits, targets)


def test_zeroshot_metrics_equal_clip_benchmark_on_the_models_embeddings(small_run):
    run, data = small_run
    logits, targets, _ = evaluate.zeroshot_scores(run, data, ("a photo of a {}.",))
    ours = eval_metrics.classification_metrics(logits, targets)
    assert ours == _reference_classification(logits, targets)
    assert 0.5 < ours["acc1"] < 1.0  # a real, imperfect classifier: the comparison means something


class _Identity(torch.nn.Module):
    """A 'model' whose encoders return their input: clip_benchmark scores our embeddings."""

    def encode_image(self, x):
        return x

    def encode_text(self, x):
        return x


def _reference_retrieval(images: np.ndarray, captions: list[list[np.ndarray]], ks) -> dict:
    """clip_benchmark's zeroshot_retrieval.evaluate on fixed embeddings (batches of 7 images)."""
    table = {f"t{i}": torch.from_numpy(v) for i, v in enumerate(c for caps in captions for c in caps)}
    names, k = [], 0
    for caps in captions:
        names.append([f"t{k + j}" for j in range(len(caps))])
        k += len(caps)
    loader = [(torch.from_numpy(images[s:s + 7]), names[s:s + 7]) for s in range(0, len(images), 7)]
    return zsr.evaluate(_Identity(), loader, lambda texts: torch.stack([table[t] for t in texts]), "cpu",
                        amp=False, recall_k_list=list(ks))


@pytest.mark.parametrize("seed", [0, 1])
def test_retrieval_recall_equals_clip_benchmark(seed):
    rng = np.random.default_rng(seed)
    unit = lambda x: (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)  # noqa: E731
    images = unit(rng.normal(size=(40, 16)))
    captions = [[unit(images[i] + rng.normal(scale=1.2, size=16)) for _ in range(1 + i % 3)] for i in range(40)]
    texts = np.stack([c for caps in captions for c in caps])
    owner = [i for i, caps in enumerate(captions) for _ in caps]
    ours = eval_metrics.retrieval_metrics(images, texts, owner, (1, 5, 10))
    ref = _reference_retrieval(images, captions, (1, 5, 10))
    assert ours == ref
    assert 0 < ours["image_retrieval_recall@1"] < ours["image_retrieval_recall@10"] < 1  # not degenerate


def test_retrieval_command_on_the_suite_equals_clip_benchmark(capsys, suite, cache, small_run):
    run, _ = small_run
    result, _ = _json(capsys, cache, "retrieval", suite / "pairs.jsonl", "--frameworks", "torch")
    assert result["task"] == "zeroshot_retrieval" and result["dataset"] == "pairs"
    data = eval_data.load_pairs(str(suite / "pairs.jsonl"), cache)
    emb = evaluate.embed_cached(run, data.name, data.paths, [c for caps in data.captions for c in caps])
    it, caps = iter(emb.texts), []
    for c in data.captions:
        caps.append([next(it) for _ in c])
    owner = [i for i, c in enumerate(caps) for _ in c]
    assert result["metrics"] == eval_metrics.retrieval_metrics(emb.images, emb.texts, owner, (1, 5, 10))
    ref = _reference_retrieval(emb.images, caps, (1, 5, 10))
    # clip_benchmark scores with torch's matmul and we with numpy's: on this suite (drawn shapes, repeated
    # captions) the two libraries can round a near-tie either way, so a recall@k may differ by the share of
    # queries whose k-th and (k+1)-th best scores lie within 1e-5 of each other, and by nothing more.
    scores = np.asarray(emb.texts, np.float32) @ np.asarray(emb.images, np.float32).T  # (T, I)
    for key, value in ref.items():
        k = int(key.rsplit("@", 1)[1])
        best = -np.sort(-(scores if key.startswith("image") else scores.T), axis=1)  # queries x candidates
        near = int((best[:, k - 1] - best[:, k] < 1e-5).sum()) if k < best.shape[1] else 0
        assert abs(result["metrics"][key] - value) <= near / len(best) + 1e-7, (key, result["metrics"][key], value, near)
    assert 0.2 < result["metrics"]["image_retrieval_recall@1"] < 1


# ----------------------------------------------------------------------------- zero-shot == classify
def _classify_top1(capsys, paths, classes_file):
    rc, out, err = run_cli(capsys, "classify", *paths, "--labels", classes_file, "--templates", "simple",
                           "--top-k", "1", "--json", "--framework", "torch", "--threads", "2")
    assert rc == 0, err
    return {r["image"]: r["predictions"][0]["label"] for r in json.loads(out)}


def test_zeroshot_equals_classify_one_by_one(capsys, suite, cache, small_run):
    """Every image's eval prediction is `clip-zoo classify`'s top label; acc1 is their count."""
    result, _ = _json(capsys, cache, "zeroshot", suite / "test", "--frameworks", "torch")
    run, data = small_run
    logits, targets, emb = evaluate.zeroshot_scores(run, data, shapes_templates())
    preds = {data.paths[i]: data.classes[p] for i, p in zip(emb.ok, np.argmax(logits, axis=1))}
    top1 = _classify_top1(capsys, data.paths, suite / "classes.txt")
    assert top1 == preds
    correct = sum(top1[p] == data.classes[t] for p, t in zip(data.paths, data.targets))
    assert result["metrics"]["acc1"] == correct / len(data.paths)
    assert correct < len(data.paths)


def shapes_templates():
    from clip_core.zero_shot import SIMPLE_TEMPLATES

    return SIMPLE_TEMPLATES


def _classify_count(paths, targets, classes, framework="torch") -> int:
    """Correct top-1 predictions counted with the library calls `clip-zoo classify` makes."""
    from clip_core import zero_shot as zs
    from clip_zoo.classify import LOGIT_SCALE
    from clip_zoo.engines import load_encoder
    from clip_zoo.images import ImageLoader

    encoder = load_encoder(None, framework, 2)
    weights = zs.build_zero_shot_weights(encoder.encode_texts, classes, zs.get_templates("simple"))
    loader, correct = ImageLoader(encoder.processor, 2), 0
    try:
        for s in range(0, len(paths), 32):
            batch = paths[s:s + 32]
            pixels, ok, errors = loader.collect(batch, loader.submit(batch))
            assert not errors and len(ok) == len(batch)
            probs = zs.softmax(zs.zero_shot_logits(encoder.encode_images(pixels), weights, LOGIT_SCALE))
            idx, _ = zs.top_k(probs, 1)
            correct += int((idx[:, 0] == targets[s:s + 32]).sum())
    finally:
        loader.close()
    return correct


def test_zeroshot_on_2000_images_same_top1_in_every_framework_and_equal_to_classify(capsys, tmp_path_factory):
    """The acceptance check: >= 2,000 generated images, torch / TF / Flax print the same top-1, which
    equals counting classify's predictions one by one."""
    for name in ("tensorflow", "flax"):
        pytest.importorskip(name)
    root = tmp_path_factory.mktemp("big")
    synth_suite.write_imagefolder(root, "test", N_BIG)
    (root / "classes.txt").write_text("".join(c + "\n" for c in synth_suite.class_names()))
    cache = tmp_path_factory.mktemp("big-cache")
    results, _ = _json(capsys, cache, "zeroshot", root / "test", "--frameworks", "torch,tf,flax")
    assert [r["framework"] for r in results] == ["torch", "tf", "flax"]
    printed = {f"{100 * r['metrics']['acc1']:.2f}" for r in results}
    assert len(printed) == 1, results
    rc, out, _ = _eval(capsys, "zeroshot", root / "test", "--frameworks", "torch,tf,flax", "--cache", cache)
    assert rc == 0 and out.count(f"{printed.pop()}%") == 3  # the text report, from the cache
    data = eval_data.load_classification(str(root / "test"), "auto", None, cache)
    assert len(data.paths) == N_BIG
    correct = _classify_count(data.paths, data.targets, data.classes)
    assert results[0]["metrics"]["acc1"] == correct / N_BIG
    assert 0.8 < correct / N_BIG < 1.0


# ----------------------------------------------------------------------------- linear probe
def test_linear_probe_same_accuracy_in_every_framework(capsys, tmp_path_factory):
    frameworks = ["torch"] + [f for f, m in (("tf", "tensorflow"), ("flax", "flax")) if _has(m)]
    root = tmp_path_factory.mktemp("probe")
    classes = list(range(0, 48, 4))  # 12 classes: a fast fit
    synth_suite.write_imagefolder(root, "train", 240, classes=classes)
    synth_suite.write_imagefolder(root, "test", 240, classes=classes)
    cache = tmp_path_factory.mktemp("probe-cache")
    results, _ = _json(capsys, cache, "linear-probe", root / "train", root / "test", "--C-grid", "0.1,10,1000",
                       "--frameworks", ",".join(frameworks))
    results = results if isinstance(results, list) else [results]
    acc = [r["metrics"]["acc1"] for r in results]
    assert all(r["task"] == "linear_probe" and r["metrics"]["C"] in (0.1, 10, 1000) for r in results)
    assert len({r["metrics"]["C"] for r in results}) == 1
    assert max(acc) - min(acc) <= 0.001, acc  # within 0.1 point
    assert 0.5 < acc[0] <= 1.0


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def test_linear_probe_picks_c_on_the_validation_split():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 8))
    y = rng.integers(0, 3, 300)
    x = centres[y] + rng.normal(scale=2.0, size=(300, 8))
    m = evaluate.linear_probe(x[:200], y[:200], x[200:], y[200:], 3, [1e-4, 1.0])
    assert m["C"] == 1.0 and m["acc1"] > 0.5  # C=1e-4 underfits to one class
    from sklearn.linear_model import LogisticRegression

    clf = LogisticRegression(random_state=0, C=1.0, max_iter=1000).fit(x[:200], y[:200])
    assert m["acc1"] == pytest.approx(float(np.mean(clf.predict(x[200:]) == y[200:])), abs=0)


# ----------------------------------------------------------------------------- cache, formats
def test_rerun_reuses_the_cache_without_loading_the_model(capsys, suite, cache, monkeypatch):
    first, _ = _json(capsys, cache, "zeroshot", suite / "test", "--frameworks", "torch")
    import clip_zoo.engines

    def refuse(*a, **k):
        raise AssertionError("the model was loaded although everything was cached")

    monkeypatch.setattr(clip_zoo.engines, "load_encoder", refuse)
    again, err = _json(capsys, cache, "zeroshot", suite / "test", "--frameworks", "torch")
    assert again == first and "embedded" not in err


def test_table_and_webdataset_inputs_give_the_folders_numbers(capsys, suite, cache):
    folder, _ = _json(capsys, cache, "zeroshot", suite / "test", "--frameworks", "torch")
    table, _ = _json(capsys, cache, "zeroshot", suite / "test.csv", "--frameworks", "torch")
    assert table["metrics"] == folder["metrics"] and table["dataset"] == "test"
    shard, _ = _json(capsys, cache, "zeroshot", suite / "shards", "--classes", suite / "classes.txt",
                     "--frameworks", "torch")
    assert 0.5 < shard["metrics"]["acc1"] <= 1  # the pairs' images as JPEG, labelled by .cls
    parquet = suite / "test.parquet"
    import pyarrow as pa
    import pyarrow.parquet as pq

    with open(suite / "test.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    pq.write_table(pa.Table.from_pylist(rows), parquet)
    assert _json(capsys, cache, "zeroshot", parquet, "--frameworks", "torch")[0]["metrics"] == folder["metrics"]


def test_synth_suite_is_deterministic_with_factors_and_phrasings(tmp_path):
    assert synth_suite.main([str(tmp_path / "a"), "--n", "12", "--train", "0", "--pairs", "6"]) == 0
    synth_suite.write_suite(tmp_path / "b", n=12, n_train=0, n_pairs=6)
    for rel in ("test.csv", "pairs.jsonl", "test/red_circle", "classes.txt"):
        a, b = tmp_path / "a" / rel, tmp_path / "b" / rel
        if a.is_dir():
            assert sorted(p.read_bytes() for p in a.iterdir()) == sorted(p.read_bytes() for p in b.iterdir())
        else:
            assert a.read_bytes() == b.read_bytes()
    rows = list(csv.DictReader(open(tmp_path / "a" / "test.csv")))
    assert {r["size"] for r in rows} == {"small", "large"} and len({r["background"] for r in rows}) > 1
    pairs = [json.loads(ln) for ln in (tmp_path / "a" / "pairs.jsonl").read_text().splitlines()]
    phrasings = {c.replace(p["label"].split()[0], "C").replace(p["label"].split()[1], "S")
                 for p in pairs for c in p["captions"]}
    assert len(phrasings) >= 4 and all(len(p["captions"]) == 3 for p in pairs)


# ----------------------------------------------------------------------------- bad datasets
def _tree(root: Path, per_class: dict) -> Path:
    for k, (name, n) in enumerate(per_class.items()):
        (root / name).mkdir(parents=True)
        for i in range(n):
            shapes.render_index(k, i, k * 6).save(root / name / f"{i}.png")
    return root


def test_empty_class_folder_is_reported_and_kept_as_a_label(capsys, tmp_path, cache):
    root = _tree(tmp_path / "ds", {"red_circle": 3, "orange_circle": 3, "blue_star": 0})
    result, err = _json(capsys, cache, "zeroshot", root, "--frameworks", "torch")
    assert "blue_star holds no images" in err and result["samples"] == 6
    assert result["metrics"]["acc5"] is None  # 3 classes: clip_benchmark reports no top-5 below 5 classes


def test_unreadable_image_is_reported_and_skipped(capsys, tmp_path, cache):
    root = _tree(tmp_path / "ds", {"red_circle": 3, "orange_circle": 3})
    (root / "red_circle" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    result, err = _json(capsys, cache, "zeroshot", root, "--frameworks", "torch")
    assert "broken.png" in err and "skipped" in err
    assert result["samples"] == 6 and result["skipped"] == 1


def test_pairs_with_missing_images_are_reported_and_skipped(capsys, tmp_path, suite, cache):
    rows = [json.loads(ln) for ln in (suite / "pairs.jsonl").read_text().splitlines()][:10]
    for r in rows:
        r["path"] = str(suite / r["path"])
    rows[3]["path"] = str(tmp_path / "gone.png")
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result, err = _json(capsys, cache, "retrieval", pairs, "--frameworks", "torch")
    assert "gone.png is missing" in err and result["samples"] == 9 and result["texts"] == 27
    for r in rows:
        r["path"] = str(tmp_path / "nothing" / Path(r["path"]).name)
    pairs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    rc, out, err = _eval(capsys, "retrieval", pairs, "--cache", cache)
    assert rc == 2 and out == "" and err.count("\n") == 1 and "no usable image-caption pairs" in err


def test_single_class_is_a_one_line_error(capsys, tmp_path, cache):
    root = _tree(tmp_path / "ds", {"red_circle": 2})
    for argv in (["zeroshot", root], ["linear-probe", root, root]):
        rc, out, err = _eval(capsys, *argv, "--cache", cache)
        assert rc == 2 and err.startswith("clip-zoo: error: ") and err.count("\n") == 1 and "single class" in err


@pytest.mark.parametrize("case", ["no-images", "int-labels", "no-path-column", "unknown-label", "bad-k", "flat"])
def test_other_bad_inputs_are_one_line_errors(capsys, tmp_path, cache, case):
    (tmp_path / "ds" / "a").mkdir(parents=True)
    table = tmp_path / "t.csv"
    img = tmp_path / "x.png"
    shapes.render_index(0, 0, 0).save(img)
    (tmp_path / "flat").mkdir()
    shutil.copy(img, tmp_path / "flat" / "x.png")
    argv = {"no-images": ["zeroshot", tmp_path / "ds"],
            "int-labels": ["zeroshot", table], "no-path-column": ["zeroshot", table],
            "unknown-label": ["zeroshot", table, "--classes", tmp_path / "names.txt"],
            "bad-k": ["retrieval", suite_free_pairs(tmp_path, img), "--k", "0"], "flat": ["zeroshot", tmp_path / "flat"]}[case]
    table.write_text({"int-labels": f"path,label\n{img},0\n{img},1\n", "no-path-column": "name,label\nx,a\n",
                      "unknown-label": f"path,label\n{img},cat\n"}.get(case, "path,label\n"))
    (tmp_path / "names.txt").write_text("dog\nbird\n")
    rc, out, err = _eval(capsys, *argv, "--cache", cache)
    assert rc == 2 and err.startswith("clip-zoo: error: ") and err.count("\n") == 1, err
    assert {"no-images": "holds no images", "int-labels": "integer labels", "no-path-column": "no path column",
            "unknown-label": "'cat'", "bad-k": "--k", "flat": "no class folders"}[case] in err


def suite_free_pairs(tmp_path: Path, img: Path) -> Path:
    p = tmp_path / "p.csv"
    p.write_text(f"path,caption\n{img},a red circle\n{img},a circle\n")
    return p
