"""Interrupted or concurrent runs and careless input never give silently wrong results.

- `embed`: a second run on the same --out stops at once (lock); resume re-embeds exactly the inputs
  whose content changed, everything when the model changed, and redoes truncated or corrupt shards,
  always ending equal to a fresh run.
- `convert` into an existing folder: `kill -9` at 20 random points leaves the old or the new complete
  checkpoint, and the next run removes what killed runs left beside it.
- Input limits: --threads, --max-pixels, empty inputs, non-UTF-8 text, a non-embeddings .npy, NaN.

The bundled default model (64 px, torch) keeps the in-process runs fast; subprocesses are used only
where a second process is the point (a concurrent run, a killed conversion).
"""
from __future__ import annotations

import json
import os
import random
import re
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import conversion
from clip_core import shapes
from clip_core.default_model import default_model_path
from clip_core.testing import random_weights, tiny_vit_config
from cli_helpers import run_cli

ROOT = Path(__file__).resolve().parent.parent
N_IMAGES = 30
SUMMARY = re.compile(r"^embedded (\d+) of (\d+) inputs \((\d+) skipped; (\d+) computed, (\d+) reused\)", re.MULTILINE)
NON_FINITE = "the model produced non-finite outputs (NaN/Inf) for "


def computed(err: str) -> tuple[int, int]:
    """(computed, reused) from an embed summary line."""
    match = SUMMARY.search(err)
    assert match, err
    return int(match.group(4)), int(match.group(5))


def _outputs(out: Path):
    return np.load(out), out.with_suffix(".index.jsonl").read_text().splitlines()


def assert_same_output(a: Path, b: Path) -> None:
    emb_a, index_a = _outputs(a)
    emb_b, index_b = _outputs(b)
    assert index_a == index_b
    np.testing.assert_allclose(emb_a, emb_b, rtol=0, atol=1e-6)


def _save(image: Image.Image, path: Path) -> None:
    image.save(path, compress_level=1) if path.suffix == ".png" else image.save(path)


@pytest.fixture(scope="module")
def source_images(tmp_path_factory):
    """30 generated 32-px images: 24 PNG and 6 BMP (a BMP keeps its size when its pixels change)."""
    root = tmp_path_factory.mktemp("source")
    data = shapes.generate(N_IMAGES, seed=3, size=32)
    for i, im in enumerate(data.images):
        _save(im, root / f"{i:03d}.{'bmp' if i % 5 == 4 else 'png'}")
    return root


@pytest.fixture
def images(tmp_path, source_images):
    """A private copy of the images (tests change them)."""
    return Path(shutil.copytree(source_images, tmp_path / "images"))


def _embed(capsys, inputs, out, *extra):
    return run_cli(capsys, "embed", inputs, "--out", out, "--no-progress", "--threads", "2", *extra)


# ----------------------------------------------------------------------------- embed: one run per --out
def test_second_run_on_the_same_out_stops_at_once(tmp_path, images, capsys):
    out = tmp_path / "e.npy"
    lock = Path(f"{out}.lock")
    first = subprocess.Popen([sys.executable, str(ROOT / "tests" / "hooked.py"), "clip_zoo.embed:_test_shard_pause=0.2",
                              "-m", "clip_zoo", "embed", str(images), "--out", str(out),
                              "--batch-size", "5", "--no-progress"], cwd=ROOT,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while not (lock.is_file() and lock.read_text().strip() == str(first.pid)):
            assert first.poll() is None and time.time() < deadline, "the first run never locked its output"
            time.sleep(0.02)
        # a second run, with other inputs, on the same --out
        texts = tmp_path / "t.txt"
        texts.write_text("a red circle\na blue square\n")
        start = time.monotonic()
        rc, _, err = _embed(capsys, images / "000.png", out, "--texts", texts)
        assert time.monotonic() - start < 5
        assert rc == 2
        assert err == (f"clip-zoo: error: {out} is being written by another clip-zoo embed (pid {first.pid}), "
                       "wait for it or choose another --out\n")
        _, first_err = first.communicate(timeout=300)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert first.returncode == 0, first_err
    assert computed(first_err) == (N_IMAGES, 0)
    assert not lock.exists() and not Path(f"{out}.work").exists()
    rc, _, _ = _embed(capsys, images, tmp_path / "fresh.npy")
    assert rc == 0
    assert_same_output(out, tmp_path / "fresh.npy")


# ----------------------------------------------------------------------------- embed: resume checks content
def _change(path: Path, seed: int, keep_mtime: bool = False) -> None:
    """New pixels in place; ``keep_mtime``: same size (BMP) and mtime, only the bytes differ."""
    st = path.stat()
    _save(shapes.generate(1, seed=seed, size=32).images[0], path)
    if keep_mtime:
        assert path.stat().st_size == st.st_size
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_resume_re_embeds_exactly_the_changed_inputs(tmp_path, images, capsys):
    out = tmp_path / "e.npy"
    rc, _, err = _embed(capsys, images, out, "--batch-size", "8", "--keep-work")
    assert rc == 0 and computed(err) == (N_IMAGES, 0)
    rc, _, err = _embed(capsys, images, out, "--batch-size", "8", "--keep-work")  # nothing changed
    assert rc == 0 and computed(err) == (0, N_IMAGES)

    # 10% of the inputs change: in place, in place with the same size and mtime, replaced by a rename
    _change(images / "003.png", seed=101)
    _change(images / "014.bmp", seed=102, keep_mtime=True)
    _save(shapes.generate(1, seed=103, size=32).images[0], tmp_path / "new.png")
    os.replace(tmp_path / "new.png", images / "027.png")
    rc, _, err = _embed(capsys, images, out, "--batch-size", "8", "--keep-work")
    assert rc == 0 and computed(err) == (3, N_IMAGES - 3)
    rc, _, _ = _embed(capsys, images, tmp_path / "fresh.npy", "--batch-size", "8")
    assert rc == 0
    assert_same_output(out, tmp_path / "fresh.npy")


def test_a_changed_model_re_embeds_everything(tmp_path, images, capsys):
    model = Path(shutil.copytree(default_model_path(), tmp_path / "model"))
    out = tmp_path / "e.npy"
    rc, _, err = _embed(capsys, images, out, "--model", model, "--keep-work")
    assert rc == 0 and computed(err) == (N_IMAGES, 0)

    # another model at the same path (same architecture and file names)
    config, weights = conversion.load_checkpoint(model)
    rng = np.random.default_rng(0)
    weights = dict(weights, **{"visual_projection.weight": weights["visual_projection.weight"]
                               + rng.normal(0, 0.05, weights["visual_projection.weight"].shape).astype(np.float16)})
    conversion.save_checkpoint(tmp_path / "model2", config, weights, dtype="fp16")
    shutil.rmtree(model)
    os.rename(tmp_path / "model2", model)

    rc, _, err = _embed(capsys, images, out, "--model", model, "--keep-work")
    assert rc == 0 and computed(err) == (N_IMAGES, 0)
    rc, _, _ = _embed(capsys, images, tmp_path / "fresh.npy", "--model", model)
    assert rc == 0
    assert_same_output(out, tmp_path / "fresh.npy")


def test_truncated_or_corrupt_shards_and_a_missing_plan_are_redone(tmp_path, images, capsys):
    out = tmp_path / "e.npy"
    work = Path(f"{out}.work")
    rc, _, _ = _embed(capsys, images, out, "--batch-size", "8", "--keep-work")
    assert rc == 0 and sorted(p.name for p in work.iterdir()) == [
        "plan.json", "shard-000000.npz", "shard-000001.npz", "shard-000002.npz", "shard-000003.npz"]
    shard = work / "shard-000001.npz"
    shard.write_bytes(shard.read_bytes()[:shard.stat().st_size // 2])  # truncated
    (work / "shard-000002.npz").write_bytes(b"PK\x03\x04 not a zip")  # corrupt
    (work / "plan.json").unlink()  # a work dir left without its plan
    (work / ".shard-000003.npz.abcd1234.tmp").write_bytes(b"left by a killed write")
    rc, _, err = _embed(capsys, images, out, "--batch-size", "8", "--keep-work")
    assert rc == 0, err
    assert computed(err) == (16, N_IMAGES - 16)
    assert not (work / ".shard-000003.npz.abcd1234.tmp").exists()
    rc, _, _ = _embed(capsys, images, tmp_path / "fresh.npy", "--batch-size", "8")
    assert rc == 0
    assert_same_output(out, tmp_path / "fresh.npy")


def test_skipped_inputs_are_tried_again_on_resume(tmp_path, capsys):
    folder = tmp_path / "img"
    folder.mkdir()
    Image.new("RGB", (100, 100), (200, 30, 30)).save(folder / "a.png")  # 10,000 pixels
    Image.new("RGB", (30, 30), (30, 30, 200)).save(folder / "b.png")  # 4,096 once resized to 64 px
    out = tmp_path / "e.npy"
    rc, _, err = _embed(capsys, folder, out, "--keep-work", "--max-pixels", "5000")
    assert rc == 0 and f"clip-zoo: skipped {folder / 'a.png'}: 100x100 pixels" in err and np.load(out).shape[0] == 1
    rc, _, err = _embed(capsys, folder, out, "--keep-work")
    assert rc == 0 and computed(err) == (1, 1) and np.load(out).shape[0] == 2


def test_a_mixed_output_set_is_refused_by_search(tmp_path, images, capsys):
    a, b = tmp_path / "a.npy", tmp_path / "b.npy"
    assert _embed(capsys, images, a)[0] == 0
    assert run_cli(capsys, "embed", images / "000.png", images / "001.png", "--out", b, "--no-progress")[0] == 0
    shutil.copy(b, a)  # as a crash between the renames of two runs would leave them
    rc, _, err = run_cli(capsys, "search", a, "a red circle")
    assert rc == 2 and "are not from the same run" in err and "rerun `clip-zoo embed`" in err


# ----------------------------------------------------------------------------- convert: all or nothing
def _tree(path: Path) -> tuple:
    config, weights = conversion.load_checkpoint(path)
    return config.to_dict(), weights


def _equal(a: tuple, b: tuple) -> bool:
    return (a[0] == b[0] and set(a[1]) == set(b[1])
            and all(a[1][k].dtype == b[1][k].dtype and np.array_equal(a[1][k], b[1][k]) for k in a[1]))


def test_kill_9_during_convert_into_an_existing_folder(tmp_path):
    pristine = tmp_path / "pristine"
    config = tiny_vit_config()
    conversion.save_canonical(pristine, config, random_weights(config, seed=5))
    old, new = _tree(pristine), _tree(default_model_path())
    work = tmp_path / "work"
    work.mkdir()
    dst = work / "EXISTING"
    cmd = [sys.executable, str(ROOT / "tests" / "hooked.py"), "conversion.api:_test_tick_delay=0.003",
           "-m", "clip_zoo", "convert", "default", str(dst), "--to", "hf", "--quiet"]

    def reset() -> None:
        """Put the old checkpoint back (unless it is there)."""
        if dst.exists() and _equal(_tree(dst), old):
            return
        shutil.rmtree(dst, ignore_errors=True)
        shutil.copytree(pristine, dst)

    reset()
    start = time.monotonic()
    subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True)
    duration = time.monotonic() - start
    assert _equal(_tree(dst), new)

    rng = random.Random(20)
    outcomes, leftovers = [], 0
    for _ in range(20):
        reset()
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.2, 1.0) * duration)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        now = _tree(dst)  # always loads ...
        assert _equal(now, old) or _equal(now, new)  # ... and is one complete checkpoint or the other
        outcomes.append("old" if _equal(now, old) else "new")
        leftovers += any(p.name.startswith(".EXISTING.") for p in work.iterdir())
    assert "old" in outcomes and leftovers, (outcomes, leftovers)  # some kills landed mid-write

    subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True)  # cleans what the kills left
    assert _equal(_tree(dst), new)
    assert [p.name for p in work.iterdir()] == ["EXISTING"]


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_stale_temps_beside_the_destination_are_removed(tmp_path):
    config = tiny_vit_config()
    weights = random_weights(config, seed=1)
    work = tmp_path / "work"
    dst = work / "ckpt"
    conversion.save_checkpoint(dst, config, weights)
    (dst / "README.md").write_text("kept")
    dead, live, hour_ago = _dead_pid(), os.getpid(), time.time() - 2 * 3600

    def entry(name: str, files: dict, age: float = 0) -> Path:
        path = work / name
        path.mkdir()
        for n, text in files.items():
            (path / n).write_text(text)
        if age:
            os.utime(path, (age, age))
            for child in path.iterdir():
                os.utime(child, (age, age))
        return path

    stale = [entry(f".ckpt.new.{dead}.abcd1234.tmp", {".clip-zoo-incoming": "", "model.safetensors": "partial"}),
             entry(f".ckpt.old.{dead}.abcd1234.tmp", {"config.json": "{}", "notes.txt": "carried"}),
             entry(".ckpt.x1y2z3w4.tmp", {"config.json": "{}"}, age=hour_ago),  # an older version's, an hour old
             entry(f".ckpt.new.{live}.efgh5678.tmp", {".clip-zoo-incoming": ""}, age=hour_ago)]
    (work / ".ckpt.abcdefgh.tmp").write_bytes(b"a killed atomic write")
    stale.append(work / ".ckpt.abcdefgh.tmp")
    kept = [entry(f".ckpt.new.{live}.ijkl9012.tmp", {".clip-zoo-incoming": ""}),  # a live writer's
            entry(".ckpt.m5n6o7p8.tmp", {})]  # no pid and recent: maybe a live writer's
    (work / ".ckpt.qrstuvwx.tmp").write_bytes(b"being written")
    kept.append(work / ".ckpt.qrstuvwx.tmp")
    other = entry(f".ckpt2.new.{dead}.abcd1234.tmp", {})  # another destination's
    with open(work / ".ckpt.qrstuvwx.tmp", "ab"):  # held open by a live process (this one)
        conversion.save_checkpoint(dst, config, weights)
    assert not [p.name for p in stale if p.exists()]
    assert all(p.exists() for p in kept) and other.exists()
    assert _equal(_tree(dst), (config.to_dict(), weights))
    assert (dst / "README.md").read_text() == "kept" and (dst / "notes.txt").read_text() == "carried"
    assert not (dst / ".clip-zoo-incoming").exists()

    # killed between the two renames of the fallback swap: the old folder is put back
    moved = work / f".back.old.{dead}.abcd1234.tmp"
    shutil.copytree(dst, moved)
    conversion.folders.clean_beside(work / "back")
    assert not moved.exists() and _equal(_tree(work / "back"), (config.to_dict(), weights))


def test_replacing_a_folder_keeps_other_files_but_drops_shadowing_weights(tmp_path):
    config = tiny_vit_config()
    first, second = random_weights(config, seed=1), random_weights(config, seed=2)
    dst = tmp_path / "ckpt"
    conversion.save_checkpoint(dst, config, first, format="open_clip")
    (dst / "sub").mkdir()
    (dst / "sub" / "f.txt").write_text("x")
    mode = 0o750
    os.chmod(dst, mode)
    conversion.save_checkpoint(dst, config, second, format="hf")
    assert not (dst / "open_clip_model.safetensors").exists()  # it would be read instead of the new weights
    assert (dst / "sub" / "f.txt").read_text() == "x"
    assert oct(dst.stat().st_mode & 0o777) == oct(mode)
    assert _equal(_tree(dst), (config.to_dict(), second))
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]


# ----------------------------------------------------------------------------- input limits
@pytest.mark.parametrize("value", ["100000", "20000", "0", "-1"])
def test_threads_out_of_range_is_a_usage_error(capsys, value):
    rc, _, err = run_cli(capsys, "classify", ROOT / "examples", "--labels", "a,b", "--threads", value)
    limit = 4 * (os.cpu_count() or 1)
    assert rc == 2
    assert err == (f"clip-zoo classify: error: argument --threads: must be between 1 and {limit} "
                   f"(4 x {os.cpu_count()} CPUs), got {value}, see 'clip-zoo classify --help'\n")


def test_an_image_too_large_to_decode_is_refused_from_its_header(tmp_path, capsys):
    strip = tmp_path / "strip.png"
    Image.new("L", (1, 100000)).save(strip)  # a few hundred bytes, 6.4 billion pixels once resized
    small = tmp_path / "small.png"
    Image.new("RGB", (40, 40), (200, 30, 30)).save(small)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rc, out, err = run_cli(capsys, "classify", strip, small, "--labels", "red,blue")
    assert rc == 1 and "small.png" in out
    assert err == (f"clip-zoo: skipped {strip}: 1x100000 pixels would be resized to 64x6400000 (409,600,000 pixels), "
                   "more than --max-pixels 40,000,000; crop the image or pass a larger --max-pixels\n")
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak < 300_000  # KiB: nothing was decoded

    rc, _, err = run_cli(capsys, "classify", small, "--labels", "red,blue", "--max-pixels", "1000")
    assert rc == 1
    assert err == (f"clip-zoo: skipped {small}: 40x40 pixels (1,600) is more than --max-pixels 1,000, "
                   "shrink the image or pass a larger --max-pixels\n")
    rc, _, err = run_cli(capsys, "embed", small, "--out", tmp_path / "e.npy", "--max-pixels", "1000")
    assert rc == 2 and "40x40 pixels (1,600) is more than --max-pixels 1,000" in err
    assert "none of the 1 inputs could be embedded" in err and not (tmp_path / "e.npy").exists()


def test_empty_inputs_are_errors_naming_what_was_searched(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    rc, _, err = run_cli(capsys, "classify", empty, "--labels", "a,b")
    assert rc == 2 and err.startswith(f"clip-zoo: error: no image files found in {empty} (no files; image files end in")
    (empty / "notes.txt").write_text("not an image")
    rc, _, err = run_cli(capsys, "embed", empty, "--out", tmp_path / "e.npy")
    assert rc == 2 and err.startswith(f"clip-zoo: error: no image files found in {empty} (only 1 other file;")
    (tmp_path / "t.txt").write_text("\n  \n")
    rc, _, err = run_cli(capsys, "embed", "--texts", tmp_path / "t.txt", "--out", tmp_path / "e.npy")
    assert rc == 2 and err == f"clip-zoo: error: texts file {tmp_path / 't.txt'} holds no text, write one text per line\n"
    assert not list(tmp_path.glob("e.*"))


def test_text_inputs_must_be_utf8(tmp_path, capsys):
    labels = tmp_path / "labels.txt"
    labels.write_bytes(b"cat\n\xe9t\xe9\n")
    rc, _, err = run_cli(capsys, "classify", ROOT / "examples", "--labels", labels)
    assert (rc, err) == (2, f"clip-zoo: error: labels file {labels} is not UTF-8 text (byte 0xE9 at offset 4), "
                            "save it as UTF-8\n")
    templates = tmp_path / "templates.txt"
    templates.write_bytes(b"a photo of a {}\n\xff{}\n")
    rc, _, err = run_cli(capsys, "classify", ROOT / "examples", "--labels", "a,b", "--templates", templates)
    assert (rc, err) == (2, f"clip-zoo: error: templates file {templates} is not UTF-8 text (byte 0xFF at offset 16), "
                            "save it as UTF-8\n")
    rc, _, err = run_cli(capsys, "embed", "--texts", labels, "--out", tmp_path / "e.npy")
    assert (rc, err) == (2, f"clip-zoo: error: texts file {labels} is not UTF-8 text (byte 0xE9 at offset 4), "
                            "save it as UTF-8\n")
    # argv bytes that are not UTF-8 reach Python as lone surrogates
    rc, _, err = run_cli(capsys, "classify", ROOT / "examples", "--labels", "caf\udce9,dog")
    assert rc == 2 and err.startswith("clip-zoo: error: the --labels value is not UTF-8 text (byte 0xE9 at offset 3)")


@pytest.mark.parametrize("content", ["pickled", "garbage", "vector", "integers", "npz"])
def test_search_refuses_a_file_that_is_not_embeddings(tmp_path, capsys, content):
    npy = tmp_path / "e.npy"
    if content == "pickled":
        np.save(npy, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    elif content == "garbage":
        npy.write_bytes(b"garbage " * 20)
    elif content == "vector":
        np.save(npy, np.ones(5, np.float32))
    elif content == "integers":
        np.save(npy, np.ones((3, 4), np.int64))
    else:
        with open(npy, "wb") as fh:
            np.savez(fh, a=np.ones((3, 4), np.float32))
    (tmp_path / "e.index.jsonl").write_text('{"row": 0, "kind": "image", "path": "x.png"}\n')
    (tmp_path / "e.meta.json").write_text(json.dumps({"model": "default", "framework": "torch", "dim": 4}))
    rc, _, err = run_cli(capsys, "search", npy, "a red circle")
    assert rc == 2
    assert err.startswith(f"clip-zoo: error: {npy} is not an embeddings file written by clip-zoo embed")
    assert err.endswith(", pass the --out file of a finished `clip-zoo embed` run\n") and "pickle" not in err


@pytest.fixture(scope="module")
def nan_model(tmp_path_factory):
    """The default model with one NaN in its image projection."""
    config, weights = conversion.load_checkpoint(default_model_path())
    projection = weights["visual_projection.weight"].copy()
    projection[0, 0] = np.nan
    path = tmp_path_factory.mktemp("nan") / "model"
    conversion.save_checkpoint(path, config, dict(weights, **{"visual_projection.weight": projection}))
    return path


def test_non_finite_weights_are_refused_at_load(capsys, nan_model):
    image = sorted((ROOT / "examples").glob("*.png"))[0]
    rc, out, err = run_cli(capsys, "classify", image, "--labels", "a,b", "--model", nan_model, "--json")
    assert rc != 0 and out == "" and len(err.splitlines()) == 1
    assert "1 tensor(s) hold NaN or Inf values (visual_projection.weight)" in err


def test_non_finite_outputs_are_an_error_never_nan_json(tmp_path, capsys, nan_model, monkeypatch):
    """Finite weights can still overflow; with the load-time check out of the way, the output guard acts."""
    monkeypatch.setattr(conversion.api, "_check_finite", lambda weights, path: None)
    image = sorted((ROOT / "examples").glob("*.png"))[0]
    rc, out, err = run_cli(capsys, "classify", image, "--labels", "a,b", "--model", nan_model, "--json")
    assert rc == 2 and "NaN" not in out
    assert err == (f"clip-zoo: error: {NON_FINITE}image {image}; the checkpoint's weights may be corrupt, "
                   "check them or use another --model\n")
    rc, _, err = run_cli(capsys, "embed", image, "--out", tmp_path / "e.npy", "--model", nan_model)
    assert rc == 2 and err.startswith(f"clip-zoo: error: {NON_FINITE}image {image};")
    assert not (tmp_path / "e.npy").exists()
