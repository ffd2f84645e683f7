"""`clip-zoo embed` at scale: table and WebDataset inputs, Parquet output (read back by pyarrow and
DuckDB), and the Ray engine (same embeddings as the in-process engine, a killed actor, a resumed driver)."""
from __future__ import annotations

import csv
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest

from clip_core import shapes
from cli_helpers import run_cli, tiny_pipeline_model

N_IMAGES = 200
BATCH = 16


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """A tiny random ViT at 16 px (patch 8): the tests are about the pipeline, not the model."""
    return tiny_pipeline_model(tmp_path_factory.mktemp("model"))


def _make_images(root: Path, n: int, seed: int = 5) -> list[Path]:
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, im in enumerate(shapes.generate(n, seed=seed, size=16).images):
        paths.append(root / f"{i:05d}.png")
        im.save(paths[-1], compress_level=1)
    return paths


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return _make_images(tmp_path_factory.mktemp("imgs") / "folder", N_IMAGES)


def _embed(capsys, model, out, *inputs, extra=()):
    rc, _, err = run_cli(capsys, "embed", *inputs, "--out", out, "--model", model, "--framework", "torch",
                         "--batch-size", BATCH, "--threads", 1, "--no-progress", *extra)
    assert rc == 0, err
    return err


def _read_parquet(folder: Path):
    import pyarrow.parquet as pq

    table = pq.read_table(sorted(folder.glob("part-*.parquet")))
    emb = np.asarray(table.column("embedding").combine_chunks().values.to_numpy(zero_copy_only=False))
    return table, emb.reshape(table.num_rows, -1)


@pytest.fixture(scope="module")
def folder_npy(tmp_path_factory, images, model):
    """The reference: the image folder embedded in-process to the .npy layout."""
    out = tmp_path_factory.mktemp("ref") / "ref.npy"
    from clip_zoo.__main__ import main

    assert main(["embed", str(images[0].parent), "--out", str(out), "--model", str(model), "--framework", "torch",
                 "--batch-size", str(BATCH), "--threads", "1", "--no-progress"]) == 0
    return np.load(out)


def test_parquet_output_matches_npy_and_duckdb_reads_it(tmp_path, capsys, images, model, folder_npy):
    out = tmp_path / "emb"
    _embed(capsys, model, out, images[0].parent, extra=("--format", "parquet"))
    table, emb = _read_parquet(out)
    np.testing.assert_array_equal(emb, folder_npy)  # same pipeline, same bytes
    assert table.column_names[:3] == ["id", "kind", "path"] and "model" in table.column_names
    emb_type = table.schema.field("embedding").type
    assert emb_type.list_size == 16 and str(emb_type.value_type) == "float"
    manifest = json.loads((out / "_manifest.json").read_text())
    assert manifest["count"] == N_IMAGES and manifest["skipped"] == [] and len(manifest["model_sha256"]) == 64
    assert manifest["preprocessing"] is None or "image_mean" in manifest["preprocessing"]
    import duckdb

    glob = str(out / "part-*.parquet")
    n, avg_self, avg_first = duckdb.connect().execute(
        f"SELECT count(*), avg(list_dot_product(embedding::FLOAT[], embedding::FLOAT[])), "
        f"avg(list_dot_product(embedding::FLOAT[], (SELECT embedding::FLOAT[] FROM '{glob}' WHERE id = 0))) "
        f"FROM '{glob}'").fetchall()[0]
    assert n == N_IMAGES
    assert avg_self == pytest.approx(1.0, abs=1e-5)  # L2-normalized rows
    assert avg_first == pytest.approx(float((folder_npy @ folder_npy[0]).mean()), abs=1e-5)


def test_float16_parquet(tmp_path, capsys, images, model, folder_npy):
    out = tmp_path / "emb16"
    _embed(capsys, model, out, images[0].parent, extra=("--format", "parquet", "--dtype", "float16"))
    table, emb = _read_parquet(out)
    assert emb.dtype == np.float16
    np.testing.assert_allclose(emb.astype(np.float32), folder_npy, atol=1e-3)


def test_table_input_gives_the_folder_embeddings_with_captions_and_ids(tmp_path, capsys, images, model, folder_npy):
    rows = [{"image": p.name, "caption": f"shape {i}", "id": f"id-{i}"} for i, p in enumerate(images)]
    for suffix in ("csv", "jsonl"):
        table_path = images[0].parent / f"table.{suffix}"
        if suffix == "csv":
            with open(table_path, "w", newline="") as fh:
                w = csv.DictWriter(fh, fieldnames=["image", "caption", "id"])
                w.writeheader()
                w.writerows(rows)
        else:
            table_path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        out = tmp_path / f"from_{suffix}"
        _embed(capsys, model, out, table_path, extra=("--format", "parquet"))
        table_path.unlink()
        table, emb = _read_parquet(out)
        np.testing.assert_array_equal(emb, folder_npy)
        assert table.column("caption").to_pylist()[3] == "shape 3" and table.column("key").to_pylist()[3] == "id-3"


def test_parquet_of_paths_input(tmp_path, capsys, images, model, folder_npy):
    import pyarrow as pa
    import pyarrow.parquet as pq

    table_path = tmp_path / "paths.parquet"
    pq.write_table(pa.table({"path": [str(p) for p in images]}), table_path)
    out = tmp_path / "from_parquet.npy"
    _embed(capsys, model, out, table_path)
    np.testing.assert_array_equal(np.load(out), folder_npy)


def _write_shards(root: Path, images: list[Path], per_shard: int) -> Path:
    root.mkdir()
    for s in range(0, len(images), per_shard):
        with tarfile.open(root / f"{s // per_shard:05d}.tar", "w") as tar:
            for i, p in enumerate(images[s:s + per_shard], start=s):
                for name, data in ((f"{i:09d}.png", p.read_bytes()), (f"{i:09d}.txt", f"caption {i}".encode()),
                                   (f"{i:09d}.json", json.dumps({"key": i}).encode())):
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    return root


def test_webdataset_input_gives_the_folder_embeddings(tmp_path, capsys, images, model, folder_npy):
    shards = _write_shards(tmp_path / "shards", images, 64)
    out = tmp_path / "wds"
    _embed(capsys, model, out, shards, extra=("--format", "parquet", "--cache", tmp_path / "cache"))
    table, emb = _read_parquet(out)
    np.testing.assert_array_equal(emb, folder_npy)
    assert table.column("key").to_pylist()[65] == "00001/000000065"
    assert table.column("caption").to_pylist()[65] == "caption 65"


def test_parquet_resume_keeps_finished_shards(tmp_path, capsys, images, model, folder_npy, monkeypatch):
    """A run that dies after some batches resumes without recomputing them, to the same output."""
    from clip_zoo import embed

    out = tmp_path / "resume"
    calls = {"n": 0}
    real = embed.encode_batch

    def dying(*a, **k):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(embed, "encode_batch", dying)
    rc, _, _ = run_cli(capsys, "embed", images[0].parent, "--out", out, "--model", model, "--framework", "torch",
                       "--batch-size", BATCH, "--threads", 1, "--no-progress", "--format", "parquet")
    assert rc == 130 and len(list(Path(f"{out}.work").glob("shard-*.npz"))) == 4
    monkeypatch.setattr(embed, "encode_batch", real)
    err = _embed(capsys, model, out, images[0].parent, extra=("--format", "parquet"))
    assert f"{N_IMAGES - 4 * BATCH} computed, {4 * BATCH} reused" in err
    np.testing.assert_array_equal(_read_parquet(out)[1], folder_npy)


def test_open_embeddings_reads_both_layouts(tmp_path, capsys, images, model, folder_npy):
    from clip_zoo.embed_io import open_embeddings

    out = tmp_path / "both"
    _embed(capsys, model, out, images[0].parent, extra=("--format", "parquet"))
    _embed(capsys, model, tmp_path / "both.npy", images[0].parent)
    for src in (open_embeddings(str(out)), open_embeddings(str(tmp_path / "both.npy"))):
        assert (src.n, src.dim) == folder_npy.shape
        got = np.concatenate([x for _, x in src.batches(37)])
        np.testing.assert_array_equal(got, folder_npy)
        np.testing.assert_array_equal(src.take([5, 150, 2]), folder_npy[[5, 150, 2]])
        assert src.rows([7])[0]["path"] == str(images[7])


# ----------------------------------------------------------------------------- Ray engine
@pytest.fixture(scope="module")
def ray_session():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True,
             object_store_memory=100 * 2 ** 20, logging_level="ERROR")
    yield ray
    ray.shutdown()


def test_ray_engine_gives_identical_embeddings(tmp_path, capsys, ray_session, images, model, folder_npy):
    out = tmp_path / "ray"
    _embed(capsys, model, out, images[0].parent, extra=("--format", "parquet", "--engine", "ray", "--workers", 2))
    table, emb = _read_parquet(out)
    np.testing.assert_array_equal(emb, folder_npy)
    assert table.column("path").to_pylist() == [str(p) for p in images]
    assert json.loads((out / "_manifest.json").read_text())["engine"] == "ray"


def test_ray_actor_killed_mid_run_every_input_exactly_once(tmp_path, capsys, ray_session, images, model, folder_npy,
                                                           monkeypatch):
    from clip_zoo import embed_ray

    monkeypatch.setattr(embed_ray, "_test_kill_shard", 6)
    out = tmp_path / "killed"
    _embed(capsys, model, out, images[0].parent, extra=("--format", "parquet", "--engine", "ray", "--workers", 2,
                                                       "--keep-work"))
    assert (Path(f"{out}.work") / ".test-killed").is_file()  # an actor did die
    table, emb = _read_parquet(out)
    paths = table.column("path").to_pylist()
    assert sorted(paths) == sorted(str(p) for p in images) and len(set(paths)) == N_IMAGES
    np.testing.assert_array_equal(emb, folder_npy)


def test_ray_driver_resumes_finished_shards(tmp_path, capsys, ray_session, images, model, folder_npy):
    """A driver that died after some shards (simulated: a kept work dir missing shards) redoes only the rest."""
    out = tmp_path / "driver"
    _embed(capsys, model, out, images[0].parent, extra=("--format", "parquet", "--engine", "ray", "--keep-work"))
    work = Path(f"{out}.work")
    for k in (2, 9):
        (work / f"shard-{k:06d}.npz").unlink()
    err = _embed(capsys, model, out, images[0].parent, extra=("--format", "parquet", "--engine", "ray"))
    assert f"{2 * BATCH} computed, {N_IMAGES - 2 * BATCH} reused" in err
    np.testing.assert_array_equal(_read_parquet(out)[1], folder_npy)


def test_ray_engine_on_2000_images_identical_to_local(tmp_path, capsys, ray_session, model):
    """The acceptance size (slow tier): 2,000 images, both engines, batch 100, bit-identical Parquet."""
    folder = tmp_path / "many"
    _make_images(folder, 2000, seed=9)
    args = ("--format", "parquet", "--batch-size", 100)
    _embed(capsys, model, tmp_path / "local", folder, extra=args)
    _embed(capsys, model, tmp_path / "ray", folder, extra=args + ("--engine", "ray", "--workers", 2))
    local, ray_ = _read_parquet(tmp_path / "local"), _read_parquet(tmp_path / "ray")
    assert local[0].num_rows == 2000
    np.testing.assert_array_equal(ray_[1], local[1])
    assert ray_[0].column("path").to_pylist() == local[0].column("path").to_pylist()


def test_ray_driver_killed_and_restarted_resumes(tmp_path, capsys, ray_session, images, model, folder_npy):
    """SIGKILL a driver (a subprocess on this test's Ray cluster) once some shards exist; the rerun
    redoes only the rest and the output equals an uninterrupted run's."""
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "killed_driver"
    work = Path(f"{out}.work")
    address = ray_session.get_runtime_context().gcs_address
    root = Path(__file__).resolve().parent.parent
    proc = subprocess.Popen([sys.executable, str(root / "tests" / "hooked.py"), "clip_zoo.embed_ray:_test_batch_pause=0.5",
                             "-m", "clip_zoo", "embed", str(images[0].parent), "--out", str(out), "--model", str(model),
                             "--framework", "torch", "--batch-size", str(BATCH), "--threads", "1", "--no-progress",
                             "--format", "parquet", "--engine", "ray", "--address", address, "--workers", "1"],
                            cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 300
        while len(list(work.glob("shard-*.npz"))) < 3:
            assert proc.poll() is None, "the run ended before it could be killed"
            assert time.time() < deadline
            time.sleep(0.1)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    done = len(list(work.glob("shard-*.npz")))
    assert 3 <= done < N_IMAGES // BATCH + 1
    err = _embed(capsys, model, out, images[0].parent, extra=("--format", "parquet", "--engine", "ray"))
    reused = int(err.split(" computed, ")[1].split(" reused")[0])
    assert reused >= 3 * BATCH
    np.testing.assert_array_equal(_read_parquet(out)[1], folder_npy)
