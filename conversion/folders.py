"""All-or-nothing checkpoint folders: build the new folder beside the destination, then swap it in.

``into_directory(target, fill)`` has ``fill`` write a complete checkpoint into a fresh temp folder
next to ``target`` (``.NAME.new.<pid>.<rand>.tmp``) and then puts it in place: a new destination by
one rename, an existing folder by an atomic exchange (Linux ``renameat2(RENAME_EXCHANGE)``) or, where
the system has no exchange, two renames with the old folder kept as ``.NAME.old.<pid>.<rand>.tmp``
until the new one is in place. A ``kill -9`` at any moment leaves the old complete checkpoint or the
new complete one. ``clean_beside(target)`` removes what killed writes of ``target`` left behind (and
restores a ``.old`` folder whose swap was interrupted). Folders keep the user's umask.
"""
from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Callable, Optional, Union

from .errors import ConversionError

__all__ = ["STALE_SECONDS", "clean_beside", "into_directory"]

PathLike = Union[str, os.PathLike]

#: A temp entry beside a destination untouched for this long is stale even if its owner pid lives.
STALE_SECONDS = 3600
#: Empty file inside a folder being built: "this is a new checkpoint, not the one being replaced".
_INCOMING = ".clip-zoo-incoming"
#: ``mkstemp`` / ``mkdtemp`` names (``.NAME.XXXXXXXX.tmp``): temp files of atomic writes, never carried over.
_ATOMIC_TEMP = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp$")


def _temp_names(name: str) -> "re.Pattern[str]":
    """Temp entries beside destination ``name``: ``.NAME.new.<pid>.<rand>.tmp`` (a folder being
    built), ``.NAME.old.<pid>.<rand>.tmp`` (the folder it replaces), ``.NAME.<rand>.tmp`` (atomic
    single-file writes, which no process holding it open means stale, and older clip-zoo versions'
    folders: no pid)."""
    return re.compile(r"^\.%s\.(?:(?P<role>new|old)\.(?P<pid>\d+)\.[a-z0-9_]{8}|[a-z0-9_]{8})\.tmp$" % re.escape(name))


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    except (OverflowError, ValueError, OSError):
        return False
    try:  # a killed process its parent has not reaped yet is a zombie: dead
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return fh.read().rsplit(b")", 1)[-1].split()[0] != b"Z"
    except (OSError, IndexError):
        return True


def _last_touched(path: Path) -> float:
    """The newest mtime of ``path`` and, for a folder, of its entries (a big file being written in it)."""
    try:
        newest = path.lstat().st_mtime
        if path.is_dir() and not path.is_symlink():
            for entry in os.scandir(path):
                with contextlib.suppress(OSError):
                    newest = max(newest, entry.stat(follow_symlinks=False).st_mtime)
    except OSError:
        return time.time()
    return newest


def _open_by_anyone(path: Path) -> bool:
    """Whether a process of this user holds ``path`` open (Linux ``/proc``); True when unsure."""
    try:
        st = path.lstat()
        if st.st_uid != os.getuid() and os.getuid() != 0:
            return True  # its writer's descriptors cannot be read
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            with contextlib.suppress(OSError):
                for fd in os.listdir(f"/proc/{pid}/fd"):
                    with contextlib.suppress(OSError):
                        fst = os.stat(f"/proc/{pid}/fd/{fd}")
                        if (fst.st_dev, fst.st_ino) == (st.st_dev, st.st_ino):
                            return True
    except (OSError, AttributeError):
        return True
    return False


def _is_stale(path: Path, pid: Optional[int]) -> bool:
    """Left by a dead process (``pid``; a temp file without one: open by no process), or untouched
    for :data:`STALE_SECONDS`."""
    if time.time() - _last_touched(path) > STALE_SECONDS:
        return True
    if pid is not None:
        return not _pid_alive(pid)
    return path.is_file() and not path.is_symlink() and not _open_by_anyone(path)


def _shadowed_by(new: Path) -> set[str]:
    """Weights files a reader would take instead of the ones in ``new`` (``detect.WEIGHT_FILES`` order)."""
    from .detect import WEIGHT_FILES

    ranks = [WEIGHT_FILES.index(n) for n in os.listdir(new) if n in WEIGHT_FILES]
    return set(WEIGHT_FILES[:min(ranks)]) if ranks else set()


def _carry_over(old: Path, new: Path, link_only: bool) -> bool:
    """Give ``new`` the entries of ``old`` it does not have (a user's README, ``.git``, other formats).

    Not carried: names ``new`` has, temp files, and weights files a reader would prefer over the new
    ones (they would shadow the new checkpoint). ``link_only`` (before the swap, ``old`` must stay
    complete): files are hard-linked and symlinks copied; the rest waits. Afterwards entries are
    moved. Returns False when something could not be carried (``old`` must then be kept)."""
    taken, skip = set(os.listdir(new)), _shadowed_by(new) | {_INCOMING}
    complete = True
    for entry in os.scandir(old):
        name = entry.name
        if name in taken or name in skip or _ATOMIC_TEMP.match(name):
            continue
        try:
            if not link_only:
                os.rename(entry.path, new / name)
            elif entry.is_symlink():
                os.symlink(os.readlink(entry.path), new / name)
            elif entry.is_file(follow_symlinks=False):
                os.link(entry.path, new / name)
        except OSError:
            complete = complete and link_only  # a file that cannot be hard-linked is moved after the swap
    return complete


def _sync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _sync_tree(path: Path) -> None:
    """fsync the files of a folder built by other writers (sub-folders included), then the folder (before
    it is published)."""
    for root, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                fd = os.open(os.path.join(root, name), os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
        if root != str(path):
            _sync_dir(Path(root))
    _sync_dir(path)


sync_tree, sync_dir = _sync_tree, _sync_dir  # for the application's own atomic folders (finetune checkpoints)


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap the folders ``a`` and ``b`` (Linux ``renameat2(RENAME_EXCHANGE)``); False when
    the system or the file system cannot."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EPERM):
        return False
    raise OSError(err, os.strerror(err), str(b))


def _temp_beside(target: Path, role: str) -> Path:
    """A new hidden folder ``.NAME.<role>.<pid>.<rand>.tmp`` beside ``target`` (umask permissions)."""
    from clip_core.io import dir_mode

    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.{role}.{os.getpid()}.", suffix=".tmp", dir=target.parent))
    os.chmod(tmp, dir_mode())  # mkdtemp makes 0o700; the result should look like any new directory
    return tmp


def clean_beside(target: PathLike) -> None:
    """Finish or undo what killed writes of ``target`` left beside it (see :func:`into_directory`).

    A stale (owner dead, or untouched for an hour) ``.NAME.old.*`` folder is put back when ``NAME``
    is missing, else its entries the new folder lacks are carried over and it is removed; a stale
    folder being built is removed (one without the "incoming" mark is an old folder caught right
    after the swap: treated as ``.old``); stale temp files are removed. Live writers are left alone."""
    target = Path(os.path.abspath(target))
    pattern = _temp_names(target.name)
    try:
        found = sorted((m.group("role") != "old", e.name, m) for e in os.scandir(target.parent)
                       if (m := pattern.match(e.name)))
    except OSError:
        return
    for _, name, match in found:
        path = target.parent / name
        pid = int(match.group("pid")) if match.group("pid") else None
        if not _is_stale(path, pid):
            continue
        try:
            if path.is_dir() and not path.is_symlink():
                if match.group("role") is not None and not (path / _INCOMING).exists():  # a replaced folder
                    if not os.path.lexists(target):
                        if match.group("role") == "old":
                            os.rename(path, target)  # killed between the two renames: put it back
                            continue
                    elif target.is_dir() and not _carry_over(path, target, link_only=False):
                        continue  # keep what could not be moved
                shutil.rmtree(path, ignore_errors=True)
            else:
                os.unlink(path)
        except OSError:
            continue
    if target.is_dir():  # the mark comes along with a swapped-in folder until its writer removes it
        with contextlib.suppress(OSError):
            os.unlink(target / _INCOMING)


def _replaceable(target: Path) -> Optional[str]:
    """Why ``target`` (an existing folder) cannot be swapped for a new one, or None."""
    if os.path.ismount(target):
        return "it is a mount point"
    cwd = Path(os.getcwd())
    if cwd == target or target in cwd.parents:
        return "it holds the current folder"
    if not os.access(target.parent, os.W_OK | os.X_OK):
        return f"its parent {target.parent} is not writable"
    return None


def into_directory(target: Path, fill: Callable[[Path], None]) -> None:
    """Write a checkpoint folder all-or-nothing: ``fill`` a new hidden folder beside ``target``, then
    put it in place with one rename (a new ``target``) or an atomic swap (an existing one).

    An existing folder is swapped with ``renameat2(RENAME_EXCHANGE)`` where the system allows it,
    else renamed to ``.NAME.old.<pid>.<rand>.tmp`` and the new one renamed in; the entries of the old
    folder the new one lacks (other files, sub-folders) are carried over, except weights files a
    reader would take instead of the new ones; then the old folder is removed. A ``kill -9`` at any
    point leaves the old complete checkpoint or the new complete one (between the two renames of the
    fallback, only ``.NAME.old.*``: the next write of ``target`` puts it back); the next write also
    removes what killed runs left (:func:`clean_beside`). Folders that cannot be swapped (a mount
    point, the current folder, an unwritable parent) are written file by file, with a warning."""
    target = Path(os.path.abspath(target))
    if target.is_symlink():
        target = target.resolve()
    if target.exists() and not target.is_dir():
        raise ConversionError(f"{target} exists and is not a directory")
    target.parent.mkdir(parents=True, exist_ok=True)
    clean_beside(target)
    existing = target.is_dir()
    why_not = _replaceable(target) if existing else None
    if why_not:
        warnings.warn(f"writing into {target} file by file ({why_not}): an interruption can leave a mix of old "
                      "and new files", stacklevel=3)
        fill(target)
        return
    tmp = _temp_beside(target, "new")
    swapped = False
    try:
        (tmp / _INCOMING).touch()
        fill(tmp)
        if not existing:
            os.unlink(tmp / _INCOMING)
            _sync_tree(tmp)
            os.replace(tmp, target)
            swapped = True
        else:
            import stat

            os.chmod(tmp, stat.S_IMODE(target.stat().st_mode))  # the replaced folder's permissions
            _carry_over(target, tmp, link_only=True)
            _sync_tree(tmp)
            old = tmp.parent / f".{target.name}.old.{os.getpid()}.{os.urandom(4).hex()}.tmp"
            if _exchange(tmp, target):
                swapped = True
                os.rename(tmp, old)
            else:
                os.rename(target, old)
                try:
                    os.rename(tmp, target)
                except BaseException:
                    os.rename(old, target)
                    raise
                swapped = True
            with contextlib.suppress(FileNotFoundError):
                os.unlink(target / _INCOMING)
            if _carry_over(old, target, link_only=False):
                shutil.rmtree(old, ignore_errors=True)
            else:
                warnings.warn(f"kept the previous contents of {target} that could not be moved into the new "
                              f"folder in {old}", stacklevel=3)
        _sync_dir(target.parent)
    except BaseException:
        if not swapped:
            shutil.rmtree(tmp, ignore_errors=True)
        raise


