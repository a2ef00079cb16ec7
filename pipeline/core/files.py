"""Small file helpers shared by every stage: atomic writes (files and directories) and append-only JSONL.

Nothing here knows about ARC. A stage never leaves a half-written file behind: whole files are
written to a temporary sibling and renamed; JSONL records are appended one line at a time and a
reader ignores a torn last line (what a killed process can leave).
"""
from __future__ import annotations

import contextlib
import errno
import glob
import json
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any, Iterable, Iterator


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists (one we may not signal counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temps(path: Path) -> list[Path]:
    """Remove the temp siblings `.NAME.PID.*.tmp` that a killed writer of `path` left behind
    (their PID is gone); the temps of a live writer are kept.  Returns what was removed."""
    removed = []
    for tmp in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        pid = tmp.name[len(path.name) + 2:].split(".", 1)[0]
        if pid.isdigit() and not pid_alive(int(pid)):
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, mode: str = "w") -> Iterator[Any]:
    """Yield a temp file beside `path` (mode "w" or "wb"); on success it is synced and renamed
    onto `path`, on an error removed.  The file gets the user's normal permissions (mkstemp's
    are private), and the temps a killed earlier writer left beside it are removed first."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write `text` to `path` atomically (`atomic_file`)."""
    with atomic_file(path) as f:
        f.write(text)
    return Path(path)


def write_json_atomic(path: str | os.PathLike, obj: Any, indent: int | None = None) -> Path:
    return write_text_atomic(path, json.dumps(obj, indent=indent) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def append_jsonl(path: str | os.PathLike, records: Iterable[dict]) -> None:
    """Append records, one JSON object per line, flushed so a kill loses at most a torn line."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_jsonl(path: str | os.PathLike) -> Iterator[dict]:
    """Yield the records of a JSONL file; a torn (unterminated) last line is skipped."""
    path = Path(path)
    if not path.exists():
        return
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.endswith("\n"):
                break  # torn write from a killed run
            if line.strip():
                yield json.loads(line)


def publish_dir(tmp: Path, final: Path, overwrite: bool = True) -> Path:
    """Rename the finished ``tmp`` to ``final``.

    An absent or empty ``final`` is replaced atomically. A non-empty one is replaced (moved aside,
    then deleted) when ``overwrite``; otherwise it is kept and ``tmp`` is discarded (another
    process finished the same job first).
    """
    try:
        os.replace(tmp, final)
        return final
    except OSError as error:
        if error.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.EISDIR, errno.ENOTDIR):
            raise
    if not overwrite:
        shutil.rmtree(tmp, ignore_errors=True)
        return final
    trash = final.with_name(f".{final.name}.old-{uuid.uuid4().hex[:8]}")
    if final.is_dir():
        os.rename(final, trash)
    else:
        final.unlink()
    os.replace(tmp, final)
    shutil.rmtree(trash, ignore_errors=True)
    return final


@contextlib.contextmanager
def atomic_dir(output_dir: str | os.PathLike, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temp sibling of ``output_dir`` to fill; renamed into place only on success."""
    final = Path(output_dir).expanduser().absolute()
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    umask = _umask()
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; the published dir should not be
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for path in tmp.rglob("*"):  # some writers create private (0600) files
        if path.is_file():
            os.chmod(path, path.stat().st_mode | (0o444 & ~umask))
    publish_dir(tmp, final, overwrite=overwrite)
