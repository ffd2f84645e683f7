"""What the ``clip-zoo`` command writes on stderr: one-line errors, no framework noise, clean bars.

Everything here acts on the command's own process (``clip_zoo.__main__``), never on import: the
libraries (``clip_torch``, ``clip_tf``, ``clip_flax``, ``conversion``) log and warn as usual when
used from Python.

* :func:`describe` turns any exception into ``<what>, <what to do>`` (no exception class names);
  :func:`print_error` prints it as ``clip-zoo: error: ...`` after closing any progress bar.
* :func:`cli_session` (without ``--verbose``) silences the frameworks: ``TF_CPP_MIN_LOG_LEVEL=3``
  (unless the user set it), Python logging below ERROR (TensorFlow, absl, JAX's "An NVIDIA GPU may
  be present ..."), and Python warnings except clip-zoo's own (one line each).
  :func:`import_framework` also drops the C++ log lines TensorFlow/XLA print while loading, before
  they read ``TF_CPP_MIN_LOG_LEVEL`` (oneDNN notice, "Could not find cuda drivers", absl's
  "All log messages before absl::InitializeLog() ..."), honouring the same level.
"""
from __future__ import annotations

import contextlib
import errno
import importlib
import logging
import os
import re
import sys
import tempfile
import warnings
from pathlib import Path
from types import ModuleType
from typing import Iterator, Optional

__all__ = ["cli_session", "import_framework", "describe", "print_error", "close_bars", "is_quiet",
           "DEBUG_ENV", "TF_LOG_ENV"]

DEBUG_ENV = "CLIP_ZOO_DEBUG"
TF_LOG_ENV = "TF_CPP_MIN_LOG_LEVEL"
#: The packages whose warnings the command still shows (as ``clip-zoo: warning: ...``) when quiet.
OWN_PACKAGES = ("clip_zoo", "clip_core", "clip_torch", "clip_tf", "clip_flax", "conversion")
_ROOT = Path(__file__).resolve().parent.parent
#: absl/glog-style C++ log line: severity letter, MMDD, time (``00:00:<epoch>.us`` before absl is
#: initialised), thread id, file:line].
_CPP_LOG = re.compile(r"^([IWEF])\d{4} [\d:.]+\s+\d+ [^\]\s]+:\d+\] ")
_ABSL_PREAMBLE = "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR"
_SEVERITY = "IWEF"
#: An exception class name that starts a message part (``JSONDecodeError: ...``), dropped from errors.
_CLASS_PREFIX = re.compile(r"\b(?:[A-Za-z_]\w*\.)*[A-Z]\w*(?:Error|Exception|Warning): ")
#: Words of a message that already says what to do.
_ADVICE = re.compile(r"\b(pass|install|check|rerun|retry|download|use|see|choose)\b", re.IGNORECASE)
_quiet = False

# Import name -> the clip-zoo extra that installs it (frameworks are named by their --framework name).
_EXTRAS = {"torch": "torch", "clip_torch": "torch", "tensorflow": "tf", "keras": "tf", "tf_keras": "tf",
           "clip_tf": "tf", "jax": "flax", "jaxlib": "flax", "flax": "flax", "optax": "flax", "clip_flax": "flax",
           "h5py": "tf-files", "msgpack": "tf-files"}
_PIP_NAMES = {"PIL": "pillow", "yaml": "pyyaml"}


def is_quiet() -> bool:
    """True inside a :func:`cli_session` without ``--verbose``."""
    return _quiet


def _show_own_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """``warnings.showwarning`` when quiet: clip-zoo's own warnings as one line, the rest dropped."""
    if str(filename).startswith(tuple(str(_ROOT / p) for p in OWN_PACKAGES)):
        write_line(f"clip-zoo: warning: {_one_line(str(message))}")


@contextlib.contextmanager
def cli_session(verbose: bool = False) -> Iterator[None]:
    """Run one command: quiet frameworks unless ``verbose``; the previous state is restored after."""
    global _quiet
    if verbose:
        yield
        return
    set_env = TF_LOG_ENV not in os.environ
    if set_env:
        os.environ[TF_LOG_ENV] = "3"  # before TensorFlow (or jaxlib) is imported: C++ logs off
    previous_disable = logging.root.manager.disable
    logging.disable(logging.WARNING)  # tensorflow, absl, jax loggers: errors only
    _quiet = True
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _show_own_warning
            yield
    finally:
        _quiet = False
        logging.disable(previous_disable)
        if set_env:
            os.environ.pop(TF_LOG_ENV, None)


def _min_cpp_level() -> int:
    """The C++ log level the user asked for with ``TF_CPP_MIN_LOG_LEVEL`` (0 = everything)."""
    try:
        return int(os.environ.get(TF_LOG_ENV, "0"))
    except ValueError:
        return 0


def _keep(line: str, level: int) -> bool:
    """False for a C++ log line below ``level``, and for absl's preamble when ``level`` drops anything.

    Only lines with the log prefix go: anything else (the program's own output) is always kept."""
    if line.rstrip("\r\n") == _ABSL_PREAMBLE:
        return level == 0
    match = _CPP_LOG.match(line)
    return match is None or _SEVERITY.index(match.group(1)) >= level


def _drop_cpp_logs(text: str, level: int) -> str:
    """``text`` minus the C++ log lines below ``level``."""
    return "".join(line for line in text.splitlines(keepends=True) if _keep(line, level))


@contextlib.contextmanager
def _filtered_fd2(level: int) -> Iterator[None]:
    """Send file descriptor 2 to a temp file for the block, then replay it minus C++ log noise."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            kept = _drop_cpp_logs(tmp.read().decode("utf-8", "replace"), level)
            if kept:
                sys.stderr.write(kept)
                sys.stderr.flush()


def import_framework(module: str) -> ModuleType:
    """``importlib.import_module(module)``; when quiet, minus the C++ log lines printed while loading."""
    if not _quiet or module in sys.modules:
        return importlib.import_module(module)
    try:
        sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # no real stderr (embedded, some test runners)
        return importlib.import_module(module)
    with _filtered_fd2(_min_cpp_level()):
        return importlib.import_module(module)


def close_bars() -> None:
    """Close every open tqdm bar so the next line starts at column 0 (a no-op without tqdm)."""
    tqdm_module = sys.modules.get("tqdm")
    if tqdm_module is None:
        return
    for bar in list(getattr(tqdm_module.tqdm, "_instances", ())):
        with contextlib.suppress(Exception):
            bar.close()


def write_line(text: str) -> None:
    """Print ``text`` on stderr on a line of its own, above any progress bar."""
    tqdm_module = sys.modules.get("tqdm")
    if tqdm_module is not None and getattr(tqdm_module.tqdm, "_instances", None):
        tqdm_module.tqdm.write(text, file=sys.stderr)
    else:
        print(text, file=sys.stderr)


def _one_line(text: str) -> str:
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


def _without_class_names(text: str) -> str:
    """``"x.json: not valid JSON (JSONDecodeError: Expecting ...)"`` → ``"... (Expecting ...)"``."""
    return _CLASS_PREFIX.sub("", text)


def _is_bad_checkpoint(err: BaseException) -> bool:
    """A checkpoint that could not be read (the modules are loaded whenever one was raised)."""
    kinds = [getattr(sys.modules.get(m), n, None) for m, n in (("conversion.errors", "ConversionError"),
                                                                 ("clip_core.schema", "WeightMismatchError"))]
    return any(k is not None and isinstance(err, k) for k in kinds)


def _join(what: str, todo: str) -> str:
    """``what, todo``; ``what`` alone when it already gives advice ("... - pass the path of ...")."""
    if _ADVICE.search(what):
        return what
    return f"{what.rstrip('.;: ')}, {todo}"


def _missing_module(err: ImportError) -> Optional[str]:
    top = (err.name or "").split(".")[0]
    if not top:
        return None
    extra = _EXTRAS.get(top)
    if extra in ("torch", "tf", "flax"):
        return f"the {extra} framework is not installed, install it with: pip install 'clip-zoo[{extra}]'"
    if extra:
        return f"the {top} package is not installed, install it with: pip install 'clip-zoo[{extra}]'"
    return f"the {top} package is not installed, install it with: pip install {_PIP_NAMES.get(top, top)}"


def _os_error(err: OSError, text: str) -> str:
    if err.filename is None or not err.strerror:  # a message written by hand: keep it
        todo = "check the path" if isinstance(err, FileNotFoundError) else "check the path and its permissions"
        return _join(text or "a file operation failed", todo)
    what = f"{err.filename}: {err.strerror[0].lower()}{err.strerror[1:]}"
    if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return _join(what, "check its permissions")
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        return _join(what, "free some disk space")
    return _join(what, "check the path")


def describe(err: BaseException) -> str:
    """``<what>, <what to do>`` for ``err``, on one line and without the exception's class name."""
    from .errors import CLIZooError

    text = _without_class_names(_one_line(str(err)))
    missing_dependency = getattr(sys.modules.get("conversion.errors"), "MissingDependencyError", ())
    if isinstance(err, (CLIZooError, missing_dependency)):
        return text  # written for the user: already says what to do
    if isinstance(err, ImportError) and _missing_module(err):
        return _missing_module(err)
    if isinstance(err, OSError):
        return _os_error(err, text)
    if isinstance(err, MemoryError):
        return "out of memory, try a smaller --batch-size"
    if _is_bad_checkpoint(err):
        return _join(text, "check that it is a complete CLIP checkpoint in a supported format")
    if isinstance(err, ValueError):  # bad input data: a file, a value
        return _join(text or "invalid input", f"check the input (set {DEBUG_ENV}=1 to see the traceback)")
    return _join(text or "an unexpected error occurred", f"set {DEBUG_ENV}=1 to see the traceback and report it")


def print_error(err: BaseException) -> None:
    """``clip-zoo: error: <what>, <what to do>`` on stderr, on a line of its own."""
    close_bars()
    sys.stdout.flush()
    print(f"clip-zoo: error: {describe(err)}", file=sys.stderr)
