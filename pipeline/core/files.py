"""Small file helpers shared by every stage: atomic writes (files and directories), append-only
JSONL, and the guard every command runs on its outputs.

Nothing here knows about ARC. A stage never leaves a half-written file behind: whole files are
written to a temporary sibling and renamed; JSONL records are appended one line at a time. A last
line without its newline is a record when it parses (a file written by hand or by another tool)
and a torn write of a killed process when it does not: readers skip it, `repair_jsonl_tail` cuts
it before a resume appends (and gives a complete one its newline).  Every error from reading a
file names the file (and the line of a JSON-lines file).

`check_output` is the one rule for outputs: an output is never one of the command's inputs (the
same file by inode, whatever the spelling), a file output is not a folder, and a folder output
that gets replaced must be empty or the command's own kind of output (`own`): it is an error,
never a delete.
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
from typing import Any, Iterable, Iterator, Mapping, Sequence


class FileFormatError(ValueError):
    """A file that is not what it should be; the message names the file (and the line)."""


class OutputError(ValueError):
    """An output path that would overwrite an input or a folder that is not the command's own."""


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


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not JSON (a number must be finite)")


def _unique_keys(pairs: list) -> dict:
    seen = set()
    for key, _ in pairs:
        if key in seen:
            raise ValueError(f"key {key!r} appears twice in one object (JSON keeps only the last)")
        seen.add(key)
    return dict(pairs)


def strict_loads(text: str, constants: bool = False) -> Any:
    """`json.loads` as a strict JSON reader: NaN, Infinity and -Infinity (Python's extensions) and a key
    given twice in one object (which plain JSON silently resolves to the last) are ValueErrors.
    `constants`: NaN and the infinities parse (as floats), for a reader that checks every number
    itself and drops only the part of a record that holds one."""
    return json.loads(text, parse_constant=None if constants else _refuse_constant, object_pairs_hook=_unique_keys)


def json_problem(e: ValueError) -> str:
    """What a JSON error says, with its place: `not valid JSON (Expecting value at line 3 column 1)`."""
    if isinstance(e, json.JSONDecodeError):
        return f"not valid JSON ({e.msg} at line {e.lineno} column {e.colno})"
    return str(e)


def read_json(path: str | os.PathLike, strict: bool = False) -> Any:
    """The JSON of a file; a file that is not JSON is a FileFormatError naming it, the line and the
    column.  `strict`: `strict_loads` (no NaN/Infinity, no key twice in one object)."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    try:
        return strict_loads(text) if strict else json.loads(text)
    except ValueError as e:
        raise FileFormatError(f"{path}: {json_problem(e)}") from None


def append_jsonl(path: str | os.PathLike, records: Iterable[dict]) -> None:
    """Append records, one JSON object per line, flushed so a kill loses at most a torn line."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


def jsonl_lines(path: str | os.PathLike) -> Iterator[tuple[int, str, bool]]:
    """`(line number, text, terminated)` of every non-blank line; only the last can be unterminated."""
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if line.strip():
                yield number, line, line.endswith("\n")


def complete_line(text: str) -> bool:
    """Whether an unterminated last line is a whole record: it parses as a JSON object or array (a
    torn write cannot, as its closing bracket is what is missing; a bare number could be cut short)."""
    try:
        return isinstance(json.loads(text), (dict, list))
    except ValueError:
        return False


def read_jsonl(path: str | os.PathLike) -> Iterator[dict]:
    """Yield the records of a JSONL file (none if it does not exist).  An unterminated last line is
    a record if it parses, else a torn write (skipped); any other line that is not JSON is a
    FileFormatError naming the file and the line."""
    path = Path(path)
    if not path.exists():
        return
    for number, line, terminated in jsonl_lines(path):
        if not terminated and not complete_line(line):
            return  # torn write from a killed run
        try:
            yield json.loads(line)
        except json.JSONDecodeError as e:
            raise FileFormatError(f"{path}:{number}: not a JSON line ({e.msg} at column {e.colno})") from None


def repair_jsonl_tail(path: str | os.PathLike) -> tuple[str, int]:
    """Make `path` ready for appending: an unterminated last line that parses gets its newline
    (`("completed", 1)`), one that does not is cut (`("cut", bytes removed)`); `("", 0)` when the
    file ends cleanly (or does not exist)."""
    path = Path(path)
    if not path.exists() or path.stat().st_size == 0:
        return "", 0
    with open(path, "rb+") as f:
        size = f.seek(0, os.SEEK_END)
        block, pos, tail = 1 << 16, size, b""
        while pos > 0:
            start = max(0, pos - block)
            f.seek(start)
            tail = f.read(pos - start) + tail
            if pos == size and tail.endswith(b"\n"):
                return "", 0
            cut = tail.rfind(b"\n")
            if cut >= 0:
                keep, last = start + cut + 1, tail[cut + 1:]
                break
            pos = start
        else:
            keep, last = 0, tail
        if complete_line(last.decode("utf-8", errors="replace")):
            f.seek(0, os.SEEK_END)
            f.write(b"\n")
            return "completed", 1
        f.truncate(keep)
        return "cut", size - keep


def check_resume_meta(path: str | os.PathLike, meta: Mapping, done: int, what: str) -> None:
    """A resumable JSON-lines output keeps the settings its records depend on in
    `<path>.meta.json`: resuming `path` (holding `done` records) with other settings is a
    ValueError naming every setting that differs, instead of one file mixing two runs.  Then
    `meta` is recorded."""
    path, meta = Path(path), json.loads(json.dumps(dict(meta)))  # compared as JSON gives it back (lists)
    meta_path = path.with_name(path.name + ".meta.json")
    if done and meta_path.exists():
        old = read_json(meta_path)
        changed = {k: (old.get(k), v) for k, v in meta.items() if old.get(k) != v}
        if changed:
            detail = "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changed.items())
            raise ValueError(f"{path} holds {done} {what} made with other settings ({detail}); "
                             f"use another --output or delete it")
    write_json_atomic(meta_path, meta, indent=1)


# ----------------------------------------------------------------------------- outputs

Inputs = Mapping[str, "str | os.PathLike | Sequence[str | os.PathLike] | None"]


def _input_paths(inputs: Inputs) -> Iterator[tuple[str, Path]]:
    for flag, value in inputs.items():
        values = value if isinstance(value, (list, tuple)) else [value]
        for v in values:
            if v is not None and str(v) and Path(v).exists():
                yield flag, Path(v)


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
    except ValueError:
        return False
    return True


def check_output(output: str | os.PathLike, inputs: Inputs = {}, *, folder: bool = False,
                 own: Sequence[str] = (), what: str = "") -> Path:
    """`output` as a Path if writing it loses nothing, else OutputError naming it and why.

    `inputs`: `{flag: path or paths}` the command reads.  The output may not be one of them (same
    file by inode: `os.path.samefile`).  A file output (`folder` False) may not be an existing
    folder; a folder output (`folder` True) may not be an existing file.  A folder the command
    replaces or fills as its own (`own`: the entries its output always has, a model's
    `config.json`, a run's `cfg.json`) may not hold an input, nor be an existing non-empty folder
    without one of them: replacing it would delete what it holds.  A folder the command only adds
    files to (no `own`: render's pictures) may be any folder.  `what`: the output's flag, for
    the message (default `--output`)."""
    path = Path(output)
    name = what or "--output"
    for flag, source in _input_paths(inputs):
        if path.exists() and os.path.samefile(path, source):
            raise OutputError(f"{name} {path} is the same file as {flag} {source}: refusing to overwrite an input")
        if own and path.is_dir() and _inside(source, path):
            raise OutputError(f"{name} {path} holds {flag} {source}: refusing to replace a folder with an input in it")
    if not folder and path.is_dir():
        raise OutputError(f"{name} {path} is a folder, not a file")
    if folder and path.exists() and not path.is_dir():
        raise OutputError(f"{name} {path} is a file, not a folder: refusing to replace it")
    if own and path.is_dir():
        entries = sorted(p.name for p in path.iterdir())
        if entries and not any((path / o).exists() for o in own):
            shown = ", ".join(entries[:3]) + (", ..." if len(entries) > 3 else "")
            raise OutputError(f"{name} {path} is a folder this command did not make (it holds {shown}; no "
                              f"{' or '.join(own)}): refusing to replace it; choose a new or empty folder")
    return path


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
