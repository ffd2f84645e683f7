"""The first hour of a new user of `clip-zoo`: one error style, no framework noise, `--version`,
aligned columns, no progress-bar redraws in a log, and output files that follow the umask.

The bundled default model (64 px, torch) keeps the in-process runs fast; the subprocess runs are
the ones that need a fresh process (framework noise at import, umask, a stderr that is a pipe).
"""
from __future__ import annotations

import errno
import glob
import importlib.util
import json
import logging
import os
import re
import stat
import subprocess
import sys
import warnings
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest

import clip_zoo
from clip_zoo import console
from clip_zoo.__main__ import main
from cli_helpers import run_cli

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted(glob.glob(str(ROOT / "examples" / "*.png")))
SHAPES = "black cross,blue triangle,green star,orange circle,purple cross,white hexagon,yellow star"
CLASS_NAME = re.compile(r"\b[A-Z]\w*(Error|Exception|Warning)\b")


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


# ----------------------------------------------------------------------------- 1. one error style
def _block_tf(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "tensorflow", None)
    monkeypatch.setitem(sys.modules, "clip_tf", None)


def _block_h5py(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "h5py", None)


def _break_models(monkeypatch, tmp_path):
    from clip_zoo import inspect_cmds

    def broken(args):
        raise RuntimeError("the widget broke")

    monkeypatch.setattr(inspect_cmds, "run_models", broken)


def _garbage_checkpoint(monkeypatch, tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"not a checkpoint at all")


TF_MISSING = "clip-zoo: error: the tf framework is not installed, install it with: pip install 'clip-zoo[tf]'"


@pytest.mark.parametrize("setup, argv, status, expected", [
    (_block_tf, ["classify", EXAMPLES[0], "--labels", "a,b", "--framework", "tf"], 2, TF_MISSING),
    (_block_tf, ["parity", "default", "--frameworks", "tf,torch"], 1, TF_MISSING),
    (_block_h5py, ["convert", "default", "{tmp}/m.h5", "--quiet"], 1,
     "clip-zoo: error: writing {tmp}/m.h5 (TF .h5 weights) needs the 'h5py' package, which is not installed; "
     "install it with: pip install 'clip-zoo[tf-files]'"),
    (_break_models, ["models"], 1,
     "clip-zoo: error: the widget broke, set CLIP_ZOO_DEBUG=1 to see the traceback and report it"),
    (None, ["parity", "default", "--frameworks", "torch,mxnet"], 2,
     "clip-zoo: error: unknown framework(s) mxnet, choose from flax, tf, torch"),
    (None, ["classify", "missing.png", "--labels", "a,b"], 2,
     "clip-zoo: error: no such file or folder: missing.png, check the path"),
    (None, ["convert", "{tmp}/nothing", "{tmp}/out"], 1,
     re.compile(r"clip-zoo: error: [^\n]*\S+/nothing[^\n]*, check the path")),
    (_garbage_checkpoint, ["classify", EXAMPLES[0], "--labels", "a,b", "--model", "{tmp}"], 1,
     re.compile(r"clip-zoo: error: \S+/model\.safetensors: .+, "
                r"check that it is a complete CLIP checkpoint in a supported format")),
], ids=["framework-missing", "framework-import-fails", "h5py-missing", "unexpected", "parity-usage",
        "classify-missing-file", "convert-missing-source", "broken-checkpoint"])
def test_every_command_has_one_error_style(capsys, monkeypatch, tmp_path, setup, argv, status, expected):
    """`clip-zoo: error: <what>, <what to do>`: one line on stderr, no class names, non-zero status."""
    if setup is not None:
        setup(monkeypatch, tmp_path)
    rc, out, err = run_cli(capsys, *[a.format(tmp=tmp_path) for a in argv])
    assert rc == status
    assert err.count("\n") == 1 and err.endswith("\n"), err
    if isinstance(expected, str):
        assert err == expected.format(tmp=tmp_path) + "\n"
    else:
        assert expected.fullmatch(err.rstrip("\n")), err
    assert not CLASS_NAME.search(err), err
    assert "Traceback" not in err


def test_debug_env_shows_the_traceback(capsys, monkeypatch, tmp_path):
    _break_models(monkeypatch, tmp_path)
    monkeypatch.setenv("CLIP_ZOO_DEBUG", "1")
    with pytest.raises(RuntimeError, match="the widget broke"):
        main(["models"])


def test_convert_help_and_usage_errors_use_the_clip_zoo_name(capsys):
    rc, out, _ = run_cli(capsys, "convert", "--help")
    assert rc == 0 and out.startswith("usage: clip-zoo convert ")
    rc, _, err = run_cli(capsys, "convert", "inspect", "--help")
    assert rc == 0
    rc, _, err = run_cli(capsys, "convert", "only-src")
    assert rc == 2
    assert err == ("clip-zoo convert: error: the following arguments are required: dst, "
                   "see 'clip-zoo convert --help'\n")


class _FakeTerminal:
    """A stderr that says it is a terminal, so tqdm draws its bar (with carriage returns)."""

    def __init__(self) -> None:
        self.chunks: list[str] = []

    def write(self, text: str) -> int:
        self.chunks.append(text)
        return len(text)

    def flush(self) -> None:
        return None

    def isatty(self) -> bool:
        return True

    @property
    def text(self) -> str:
        return "".join(self.chunks)


def _screen(text: str) -> list[str]:
    """The lines a terminal shows for ``text``: each ``\\r`` returns to column 0 and overwrites."""
    lines = []
    for raw in text.split("\n"):
        line = ""
        for segment in raw.split("\r"):
            line = segment + line[len(segment):]
        lines.append(line.rstrip())
    return lines


def test_error_is_never_printed_on_the_progress_bar_line(monkeypatch, tmp_path):
    """`convert` fails mid-write with its bar on screen: the error gets a clean line of its own."""
    import conversion.cli

    def fail_midway(path, config, weights, format, dtype, progress, **kwargs):
        for name in list(weights)[:3]:
            progress(name)
        raise OSError(errno.ENOSPC, "No space left on device", f"{path}/model.safetensors")

    monkeypatch.setattr(conversion.cli, "save_checkpoint", fail_midway)
    terminal = _FakeTerminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    assert main(["convert", "default", str(tmp_path / "out")]) == 1
    assert "writing:" in terminal.text  # the bar was drawn ...
    screen = _screen(terminal.text)
    assert f"clip-zoo: error: {tmp_path}/out/model.safetensors: no space left on device, free some disk space" \
        in screen, screen  # ... and the error is alone on its line
    assert not [line for line in screen if "writing:" in line and "error" in line]


# ----------------------------------------------------------------------------- 2. framework noise
@pytest.mark.parametrize("framework, module", [("tf", "tensorflow"), ("flax", "flax")])
def test_classify_prints_no_framework_noise(framework, module):
    """A new user's shell (no TF_CPP_MIN_LOG_LEVEL, no JAX_PLATFORMS): stdout has the tables, stderr nothing."""
    if not _installed(module):
        pytest.skip(f"{module} is not installed")
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "JAX_PLATFORMS")}
    proc = subprocess.run([sys.executable, "-m", "clip_zoo", "classify", *EXAMPLES, "--labels", SHAPES,
                           "--framework", framework, "--top-k", "1"], capture_output=True, text=True, cwd=ROOT,
                          env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    assert len(proc.stdout.splitlines()) == 2 * len(EXAMPLES)


def _record_state(monkeypatch) -> list:
    """Make `clip-zoo models` record (TF_CPP_MIN_LOG_LEVEL, quiet?) instead of listing models."""
    from clip_zoo import inspect_cmds

    seen = []
    monkeypatch.setattr(inspect_cmds, "run_models",
                        lambda args: seen.append((os.environ.get("TF_CPP_MIN_LOG_LEVEL"), console.is_quiet())) or 0)
    return seen


def test_verbose_flag_before_or_after_the_command(capsys, monkeypatch):
    seen = _record_state(monkeypatch)
    monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL", raising=False)
    for argv in (["models"], ["--verbose", "models"], ["models", "--verbose"]):
        assert run_cli(capsys, *argv)[0] == 0
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "1")  # the user's own choice is kept
    assert run_cli(capsys, "models")[0] == 0
    assert seen == [("3", True), (None, False), (None, False), ("1", True)]
    assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "1"  # and nothing leaks out of main()


def _noisy_command(monkeypatch) -> None:
    """`clip-zoo models` replaced by one that warns and logs like a framework, and warns like clip-zoo."""
    from clip_zoo import inspect_cmds

    def noisy(args):
        exec(compile("import warnings; warnings.warn('tf noise', FutureWarning)",
                     "/site-packages/tensorflow/python/fake.py", "exec"), {})
        exec(compile("import warnings; warnings.warn('check your labels')", str(ROOT / "clip_core" / "fake.py"),
                     "exec"), {})
        logging.getLogger("jax._src.xla_bridge").warning("An NVIDIA GPU may be present on this machine")
        logging.getLogger("absl").warning("absl noise")
        return 0

    monkeypatch.setattr(inspect_cmds, "run_models", noisy)


def test_warnings_and_logs_are_hidden_unless_verbose(capsys, caplog, monkeypatch):
    _noisy_command(monkeypatch)
    caplog.set_level(logging.INFO)
    rc, out, err = run_cli(capsys, "models")
    assert rc == 0 and err == "clip-zoo: warning: check your labels\n"
    assert caplog.records == []
    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("always")
        assert run_cli(capsys, "--verbose", "models")[0] == 0
    assert sorted(str(w.message) for w in shown) == ["check your labels", "tf noise"]
    assert [r.getMessage() for r in caplog.records] == ["An NVIDIA GPU may be present on this machine", "absl noise"]


def test_cpp_log_lines_below_the_level_are_dropped():
    text = ("WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
            "I0000 00:00:1795829244.823300    6477 port.cc:153] oneDNN custom operations are on.\n"
            "I0000 00:00:1795829244.824033    6477 cudart_stub.cc:31] Could not find cuda drivers\n"
            "W0401 12:00:00.000001    6477 cpu_feature_guard.cc:227] This TensorFlow binary is optimized\n"
            "E0000 00:00:1795829249.627949    6477 cuda_platform.cc:52] failed call to cuInit\n"
            "a line of the program's own\n")
    assert console._drop_cpp_logs(text, 3) == "a line of the program's own\n"
    assert console._drop_cpp_logs(text, 2) == text.splitlines(keepends=True)[4] + "a line of the program's own\n"
    assert console._drop_cpp_logs(text, 0) == text


# ----------------------------------------------------------------------------- 3. --version
def test_version(capsys, monkeypatch):
    rc, out, err = run_cli(capsys, "--version")
    assert rc == 0 and err == "" and out == f"clip-zoo {metadata.version('clip-zoo')}\n"

    def not_installed(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "version", not_installed)
    rc, out, _ = run_cli(capsys, "--version")
    assert rc == 0 and out == f"clip-zoo {clip_zoo.__version__}\n" and re.fullmatch(r"clip-zoo \d+\.\d+\S*\n", out)


# ----------------------------------------------------------------------------- 4. columns, progress
def test_models_are_listed_in_aligned_columns(capsys):
    from clip_core import available_models

    rc, out, _ = run_cli(capsys, "models")
    assert rc == 0
    names = ["default", *available_models()]
    rows = {line.split()[0]: line for line in out.splitlines() if line.split() and line.split()[0] in names}
    assert set(rows) == set(names)
    starts = {name: len(line) - len(line[len(name):].lstrip()) for name, line in rows.items()}
    width = max(map(len, names)) + 2  # "ViT-L/14@336px" + two spaces
    assert set(starts.values()) == {width}, starts


def test_classify_table_columns_line_up_across_images(capsys):
    rc, out, _ = run_cli(capsys, "classify", *EXAMPLES, "--labels", SHAPES, "--top-k", "1", "--framework", "torch")
    assert rc == 0
    rows = [line for line in out.splitlines() if line.startswith("   1. ")]
    assert len(rows) == len(EXAMPLES)
    assert len({row.index("%") for row in rows}) == 1, rows
    assert len({row.rstrip("%").rsplit(None, 1)[1] for row in rows}) >= 2  # different top labels


def test_search_prints_negative_scores_in_the_same_column(capsys, tmp_path):
    """Rows q, -q and 0.6 q + 0.8 u (u orthogonal to q), searched with q's own image."""
    rc, _, _ = run_cli(capsys, "embed", EXAMPLES[0], "--out", tmp_path / "q.npy", "--framework", "torch",
                       "--no-progress")
    assert rc == 0
    q = np.load(tmp_path / "q.npy")[0]
    u = np.roll(q, 1) - q * float(np.roll(q, 1) @ q)
    u /= np.linalg.norm(u)
    np.save(tmp_path / "e.npy", np.stack([q, -q, 0.6 * q + 0.8 * u]).astype(np.float32))
    names = ["same.png", "opposite.png", "between.png"]
    (tmp_path / "e.index.jsonl").write_text(
        "".join(json.dumps({"row": i, "kind": "image", "path": n}) + "\n" for i, n in enumerate(names)))
    (tmp_path / "e.meta.json").write_text(json.dumps({"model": "default", "framework": "torch", "dim": len(q)}))
    rc, out, _ = run_cli(capsys, "search", tmp_path / "e.npy", EXAMPLES[0], "--top-k", "3")
    assert rc == 0
    assert out.splitlines() == ["1.  1.0000  same.png", "2.  0.6000  between.png", "3. -1.0000  opposite.png"]


# ----------------------------------------------------------------------------- 5. umask (and 4. no redraws)
_SCRIPT = """
import sys
from clip_zoo.__main__ import main
out = sys.argv[1]
sys.exit(max(main(argv) for argv in (
    ["convert", "default", out + "/hf", "--to", "hf"],
    ["convert", "default", out + "/tf", "--to", "tf"],
    ["embed", "examples", "--out", out + "/emb/x.npy", "--framework", "torch", "--batch-size", "2"])))
"""


@pytest.fixture(scope="module")
def umask_runs(tmp_path_factory):
    """`convert --to hf`, `convert --to tf` and `embed` in one process per umask, stdout/stderr piped."""
    runs = {}
    for mask in ("022", "027"):
        out = tmp_path_factory.mktemp(f"umask{mask}")
        proc = subprocess.run(["sh", "-c", f'umask {mask} && exec "$0" "$@"', sys.executable, "-c", _SCRIPT,
                               str(out)], capture_output=True, text=True, cwd=ROOT, timeout=300)
        assert proc.returncode == 0, proc.stderr
        runs[mask] = (out, proc)
    return runs


@pytest.mark.parametrize("mask, file_mode, dir_mode", [("022", 0o644, 0o755), ("027", 0o640, 0o750)])
def test_outputs_follow_the_umask(umask_runs, mask, file_mode, dir_mode):
    out, _ = umask_runs[mask]
    dirs = [out / "hf", out / "tf", out / "emb"]
    files = [p for d in dirs for p in d.iterdir()]
    assert {p.name for p in files} >= {"model.safetensors", "config.json", "tf_model.h5", "x.npy",
                                       "x.index.jsonl", "x.meta.json"}
    modes = {str(p.relative_to(out)): oct(stat.S_IMODE(p.stat().st_mode)) for p in dirs + files}
    assert modes == {**{str(d.relative_to(out)): oct(dir_mode) for d in dirs},
                     **{str(p.relative_to(out)): oct(file_mode) for p in files}}


def test_no_progress_bar_redraws_when_stderr_is_a_pipe(umask_runs):
    _, proc = umask_runs["022"]
    assert "\r" not in proc.stderr and "\r" not in proc.stdout
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"embedded {len(EXAMPLES)} of {len(EXAMPLES)} inputs"), lines
