"""`clip-zoo embed` over 2,000 generated images: killed halfway (SIGKILL) and restarted, the output
equals an uninterrupted run's; a corrupt file and a non-image are reported and skipped."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from clip_core import shapes
from clip_zoo.__main__ import main
from cli_helpers import tiny_pipeline_model

ROOT = Path(__file__).resolve().parent.parent
N_IMAGES = 2000
BATCH = 100


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """2,000 small generated PNGs in two sub-folders, plus a corrupt .jpg and a .txt."""
    root = tmp_path_factory.mktemp("shapes")
    data = shapes.generate(N_IMAGES, seed=11, size=16)
    for i, im in enumerate(data.images):
        sub = root / ("a" if i % 2 else "b")
        sub.mkdir(exist_ok=True)
        im.save(sub / f"{i:05d}.png", compress_level=1)
    (root / "a" / "00100_corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated jpeg")
    (root / "b" / "readme.txt").write_text("not an image")
    return root


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """A tiny random ViT at 16 px (patch 8): the tests are about the pipeline, not the model."""
    return tiny_pipeline_model(tmp_path_factory.mktemp("model"))


def _outputs(out: Path):
    emb = np.load(out)
    index = out.with_suffix(".index.jsonl").read_text().splitlines()
    meta = json.loads(out.with_suffix(".meta.json").read_text())
    return emb, index, meta


def _args(folder, model, out):
    return ["embed", str(folder), "--out", str(out), "--model", str(model), "--batch-size", str(BATCH),
            "--threads", "1", "--no-progress"]


def test_killed_run_resumes_to_the_same_output(tmp_path, folder, model, capsys):
    full = tmp_path / "full.npy"
    assert main(_args(folder, model, full)) == 0
    err = capsys.readouterr().err
    assert "00100_corrupt.jpg" in err and "readme.txt" in err  # reported ...
    emb, index, meta = _outputs(full)
    assert emb.shape == (N_IMAGES, 16) and len(index) == N_IMAGES  # ... and skipped
    assert sorted(s["path"].rsplit("/", 1)[1] for s in meta["skipped"]) == ["00100_corrupt.jpg", "readme.txt"]
    assert not Path(f"{full}.work").exists()

    # Run again in a subprocess, slowed down per shard, and SIGKILL it once some shards exist.
    out = tmp_path / "resumed.npy"
    work = Path(f"{out}.work")
    proc = subprocess.Popen([sys.executable, str(ROOT / "tests" / "hooked.py"), "clip_zoo.embed:_test_shard_pause=0.5",
                             "-m", "clip_zoo", *_args(folder, model, out)[0:]], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 600
        while len(list(work.glob("shard-*.npz"))) < 5:
            assert proc.poll() is None, "the run ended before it could be killed"
            assert time.time() < deadline, "no shards written"
            time.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finished = {p.name: p.stat().st_mtime_ns for p in work.glob("shard-*.npz")}
    assert 5 <= len(finished) < N_IMAGES // BATCH + 1
    assert not out.exists()  # nothing assembled yet

    assert main(_args(folder, model, out) + ["--keep-work"]) == 0
    capsys.readouterr()
    for name, mtime in finished.items():  # finished shards were not redone
        assert (work / name).stat().st_mtime_ns == mtime
    emb2, index2, meta2 = _outputs(out)
    np.testing.assert_allclose(emb2, emb, rtol=0, atol=1e-6)
    assert index2 == index
    assert meta2["skipped"] == meta["skipped"]


def test_other_inputs_refuse_a_foreign_work_dir(tmp_path, folder, model, capsys):
    out = tmp_path / "e.npy"
    work = Path(f"{out}.work")
    work.mkdir()
    (work / "plan.json").write_text(json.dumps({"digest": "something else"}))
    assert main(_args(folder / "b", model, out)) == 2
    assert "--restart" in capsys.readouterr().err
    assert main(_args(folder / "b", model, out) + ["--restart"]) == 0
    assert np.load(out).shape == (N_IMAGES // 2, 16)


def _nice() -> int:
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="nice is per thread on Linux only")
def test_embed_decodes_at_a_lower_priority(tmp_path, model, monkeypatch):
    """embed's decoding threads raise their nice value by ``BACKGROUND_NICE`` (the forward wins the
    cores); the calling thread keeps its priority, and a loader that is not ``background`` the caller's."""
    from clip_zoo import images
    from clip_zoo.engines import early_processor

    base = _nice()
    if base + images.BACKGROUND_NICE > 19:
        pytest.skip(f"this process already runs at nice {base}")
    (tmp_path / "in").mkdir()
    for i, im in enumerate(shapes.generate(3, seed=5, size=16).images):
        im.save(tmp_path / "in" / f"{i}.png")
    seen = []
    decode = images.ImageLoader._decode
    monkeypatch.setattr(images.ImageLoader, "_decode", lambda self, path: (seen.append(_nice()), decode(self, path))[1])
    assert main(["embed", str(tmp_path / "in"), "--out", str(tmp_path / "e.npy"), "--model", str(model),
                 "--threads", "2", "--no-progress"]) == 0
    assert np.load(tmp_path / "e.npy").shape[0] == 3
    assert seen == [base + images.BACKGROUND_NICE] * 3 and _nice() == base
    seen.clear()
    loader = images.ImageLoader(early_processor(model), 1)
    try:
        assert not isinstance(loader.submit([str(tmp_path / "in" / "0.png")])[0].result()[0], str)
    finally:
        loader.close()
    assert seen == [base]


def test_lane_split_shares_threads_evenly():
    from clip_zoo.engines import MAX_LANES, lane_split

    assert [lane_split(n) for n in (1, 2, 3, 4, 5, 6, 7, 8, 16)] == [
        (1, 1), (2, 1), (3, 1), (4, 1), (1, 5), (3, 2), (1, 7), (4, 2), (4, 4)]
    assert all(lanes <= MAX_LANES and lanes * per == n for n in range(1, 65) for lanes, per in [lane_split(n)])


def test_lanes_give_the_one_thread_output(tmp_path, folder, model, capsys, monkeypatch):
    """With two torch threads, embed encodes each batch as chunks of ``LANE_CHUNK`` on two single-threaded
    lanes: the output (rows, index, skipped files, in plan order) equals a ``--threads 1`` run's, and torch's
    thread count is restored afterwards."""
    import torch

    from clip_zoo import embed

    one = tmp_path / "one.npy"
    assert main(_args(folder, model, one)) == 0
    calls = []
    real = embed.encode_batch

    def spy(encoder, loader, kind, values, futures=None):
        calls.append((threading.current_thread().name, len(values), torch.get_num_threads()))
        return real(encoder, loader, kind, values, futures)

    monkeypatch.setattr(embed, "encode_batch", spy)
    two = tmp_path / "two.npy"
    args = _args(folder, model, two)
    args[args.index("--threads") + 1] = "2"
    assert main(args) == 0
    capsys.readouterr()
    assert torch.get_num_threads() == 2  # --threads 2, restored after the lanes ran at 1 each
    assert {n for n, _, _ in calls} <= {"clip-zoo-lane_0", "clip-zoo-lane_1"}
    assert max(size for _, size, _ in calls) == embed.LANE_CHUNK and {t for _, _, t in calls} == {1}
    assert len(calls) == sum(-(-min(BATCH, N_IMAGES + 2 - s) // embed.LANE_CHUNK) for s in range(0, N_IMAGES + 2, BATCH))
    emb1, index1, meta1 = _outputs(one)
    emb2, index2, meta2 = _outputs(two)
    np.testing.assert_allclose(emb2, emb1, rtol=0, atol=1e-6)
    assert index2 == index1 and meta2["skipped"] == meta1["skipped"] and len(meta1["skipped"]) == 2


@pytest.mark.parametrize("chunk", [1000, 16 << 20])
def test_model_fingerprint_reads_in_chunks_to_the_same_digest(tmp_path, model, monkeypatch, chunk):
    """The fingerprint's own chunked read gives the SHA-256 of each whole file, whatever the read size
    (the weights end in half a 1,000-byte chunk, or fit in one partial 16 MB chunk); one changed byte
    changes it."""
    import hashlib

    from clip_zoo import embed

    ck = tmp_path / "ck"
    ck.mkdir()
    for f in Path(model).iterdir():
        (ck / f.name).write_bytes(f.read_bytes())
    weights = sorted(p for p in ck.iterdir() if p.suffix == ".safetensors")[0]
    with open(weights, "ab") as fh:  # padding after the safetensors data: a size ending in 500
        fh.write(b"\x01" * (3500 - weights.stat().st_size % 1000))
    monkeypatch.setattr(embed, "_HASH_CHUNK", chunk)
    want = hashlib.sha256()
    for f in embed._model_files(ck):
        data = f.read_bytes()
        want.update(f"{f.name}\0{len(data)}\0".encode() + hashlib.sha256(data).digest())
    assert weights in embed._model_files(ck)
    assert embed.model_fingerprint(ck) == want.hexdigest()
    weights.write_bytes(weights.read_bytes()[:-1] + b"\x02")
    assert embed.model_fingerprint(ck) != want.hexdigest()
