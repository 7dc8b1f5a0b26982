"""Writing files and folders so that an interrupted run leaves either the old version or the new one, never a part.

Every file or folder that a later run reads back to decide what is already done goes through these two functions.
`output_lock` keeps two runs from writing one output folder at the same time.
"""

import contextlib
import glob
import json
import logging
import math
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path


def _remove(paths) -> None:
    for stale in paths:
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)


def _clear_stale(target: Path) -> None:
    """Remove what a crashed earlier write of `target` left beside it (`.<name>.*.tmp`). Only for targets with one
    writer at a time: another process's write in progress would go too."""
    _remove(target.parent.glob(f".{glob.escape(target.name)}.*.tmp"))


def clear_leftovers(folder: Path) -> None:
    """Remove every leftover of a crashed write (`.<name>.*.tmp`) in `folder`. Only while nothing else writes there
    (the generator calls it before any process starts on its batches)."""
    _remove(Path(folder).glob(".*.tmp"))


def strict_json(value):
    """`value` with every float that JSON cannot hold (NaN, infinities) replaced by `None` (null): Python writes them
    as `NaN` and `Infinity`, which other JSON readers reject.

    >>> strict_json({"loss": float("nan"), "rates": [1.0, float("inf")]})
    {'loss': None, 'rates': [1.0, None]}
    """
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: strict_json(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(item) for item in value]
    return value


def write_json_atomic(path: str | Path, payload, indent: int | None = None) -> None:
    """Write `payload` as strict JSON (`strict_json`) to `path` through a temporary file beside it, flushed to disk,
    then renamed. (One writer per path: leftovers of a crashed earlier write are removed first.)"""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _clear_stale(path)
    handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            json.dump(strict_json(payload), file, ensure_ascii=False, indent=indent, allow_nan=False)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


@contextlib.contextmanager
def removed_on_failure(folder: str | Path):
    """Files that the block writes directly in `folder` (new ones, and rewritten ones) are removed when it fails, so
    that a save stopped half-way (a full disk) leaves no half-written artifact behind; subfolders are left alone."""
    folder = Path(folder)

    def files():
        return {p.name: p.stat().st_mtime_ns for p in folder.iterdir() if p.is_file()} if folder.is_dir() else {}

    before = files()
    try:
        yield
    except BaseException:
        _remove([folder / name for name, mtime in files().items() if before.get(name) != mtime])
        raise


def save_folder_atomic(target: str | Path, save: Callable[[Path], None], *, replace: bool = True) -> None:
    """Call `save(folder)` on a new temporary folder beside `target`, then move it to `target`.

    `target` is complete or absent at every moment. With `replace=True` (one writer) the staging folders of a crashed
    earlier save are removed first. With `replace=False` (several processes may save the same thing) an existing
    `target` is kept and the new copy is discarded.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    if replace:
        _clear_stale(target)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        save(staging)
        if target.exists():
            if not replace:
                return
            shutil.rmtree(target)
        try:
            os.replace(staging, target)
        except OSError:  # another process put a complete `target` in place meanwhile
            if replace or not target.exists():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


LOCK_FILE = ".trl-sso.lock"


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: it runs
        return True
    return True


@contextlib.contextmanager
def output_lock(folder: str | Path, command: str):
    """Hold `folder` for one run of `command`: a lock file with this process's id, refused (a `ValueError` naming the
    running process) while another live process holds it, taken over (with a warning) from a process that died
    without releasing it, and removed when the run ends."""
    folder = Path(folder)
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_FILE
    while True:
        try:
            handle = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                holder = int(path.read_text().split()[0])
            except (OSError, ValueError, IndexError):
                holder = None  # written half-way by a process that died at that moment
            if holder is not None and holder != os.getpid() and _running(holder):
                raise ValueError(
                    f"{folder} is in use by another trl-sso run (process {holder}, lock file {path}). Wait for it to "
                    "end, or choose another `--output_dir`."
                ) from None
            logging.getLogger(__name__).warning(
                f"Took over {path} from process {holder}, which is no longer running (it was stopped before it "
                f"released the folder); `{command}` continues from what it finished."
            )
            path.unlink(missing_ok=True)
            continue
        with os.fdopen(handle, "w") as f:
            f.write(f"{os.getpid()} {command}\n")
        break
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            if path.read_text().split()[0] == str(os.getpid()):
                path.unlink()
            if created and not any(folder.iterdir()):  # a run that wrote nothing leaves no folder behind
                folder.rmdir()
