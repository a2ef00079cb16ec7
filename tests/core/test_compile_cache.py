"""Torch's compile cache kept loadable (pipeline/core/compile_cache.py): the rule that finds a kernel
a killed compile left broken, on a cache folder laid out as inductor lays it out, with real shared
libraries loaded by the real loader. The whole path through a run's stage with torch inductor:
tests/kaggle/test_broken_kernels.py."""
from __future__ import annotations

import ctypes
import shutil
import tempfile
from pathlib import Path

import pytest
from filelock import FileLock  # the lock inductor takes while it compiles (torch.utils._filelock)

from pipeline.core.compile_cache import (elf_problem, inductor_cache_dir, kernel_locks, kernel_problem,
                                         remove_broken_kernels)

def real_library() -> Path:
    """A real shared library of this interpreter: what a compiled kernel is to the loader."""
    import _ctypes
    return Path(_ctypes.__file__)


def kernel(cache: Path, key: str, data: bytes, name: str = "{key}.main.so", lock: bool = True) -> Path:
    """A kernel file where inductor puts one (<cache>/<2 chars>/<key>...), with its lock file."""
    path = cache / key[1:3] / name.format(key=key)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    if lock:
        (cache / "locks").mkdir(exist_ok=True)
        (cache / "locks" / f"{key}.lock").touch()
    return path


def loads(path: Path) -> str:
    """"" when the dynamic loader takes the library, else its error (what a later stage would hit)."""
    try:
        ctypes.CDLL(str(path))
        return ""
    except OSError as e:
        return str(e)


def test_the_loader_refuses_what_the_rule_calls_broken_and_takes_what_it_keeps(tmp_path):
    whole = real_library().read_bytes()
    cases = {"whole": whole, "empty": b"", "cut": whole[: len(whole) // 2], "header only": whole[:64],
             "not elf": b"#include <x.h>\n" * 10}
    for name, data in cases.items():
        path = tmp_path / f"c{name.replace(' ', '')}.main.so"
        path.write_bytes(data)
        problem, error = kernel_problem(path), loads(path)
        assert bool(problem) == (name != "whole"), (name, problem)
        # the loader maps a library cut after its loadable segments' headers (its pages past the end
        # would fault when touched): only the rule sees that one
        assert bool(error) == (name not in ("whole", "cut")), (name, error)
    assert kernel_problem(tmp_path / "cempty.main.so") == "empty"
    assert "file too short" in loads(tmp_path / "cempty.main.so")  # the error the rehearsal found
    assert kernel_problem(tmp_path / "ccut.main.so").startswith("cut at ")
    assert elf_problem(whole[:64], len(whole)) == ""  # the header alone tells the whole length


def test_broken_kernels_are_removed_and_everything_else_is_kept(tmp_path):
    cache = tmp_path / "torchinductor_user"
    whole = real_library().read_bytes()
    good = kernel(cache, "cgoodkernel", whole)
    empty = kernel(cache, "cemptykernel", b"")                        # killed before g++ wrote a byte
    cut = kernel(cache, "ccutkernel", whole[:5000], name="{key}.so")  # killed while it wrote (a vec ISA probe's name)
    obj = kernel(cache, "cobjkernel", b"", name="{key}.optimized.o")   # an object the linker would choke on
    source = kernel(cache, "csrckernel", b"", name="{key}.main.cpp")   # sources are rewritten, not trusted: kept
    headers = cache / "precompiled_headers"
    headers.mkdir()
    (headers / "locks").mkdir()
    pch_empty, pch_good = headers / "chdrempty.h.gch", headers / "chdrgood.h.gch"
    pch_empty.write_bytes(b"")
    pch_good.write_bytes(b"gpch" + bytes(100))
    (headers / "locks" / "chdrempty.lock").touch()
    assert kernel_locks(pch_empty) == [headers / "locks" / "chdrempty.lock"]
    assert kernel_locks(empty) == [cache / "locks" / "cemptykernel.lock"]

    removed = remove_broken_kernels(cache)
    assert removed == sorted(removed) and len(removed) == 4
    assert {Path(line.split(" (")[0]) for line in removed} == {empty, cut, obj, pch_empty}
    assert f"{cut} (cut at 5000 of " in "\n".join(removed)
    assert good.is_file() and source.is_file() and pch_good.is_file() and loads(good) == ""
    assert all(lock.is_file() for lock in (cache / "locks").iterdir())  # zero-byte locks are not kernels
    assert remove_broken_kernels(cache) == []  # nothing left to remove
    assert remove_broken_kernels(tmp_path / "no-cache-yet") == []


def test_a_kernel_being_compiled_is_left_to_its_compiler(tmp_path):
    """An unfinished file under a held lock is a live compile (another stage, another run on the machine)."""
    cache = tmp_path / "cache"
    writing = kernel(cache, "cwritingkernel", b"")
    with FileLock(str(cache / "locks" / "cwritingkernel.lock")):  # as torch's compile worker holds it
        assert remove_broken_kernels(cache) == []
        assert writing.is_file()
    assert [Path(line.split(" (")[0]) for line in remove_broken_kernels(cache)] == [writing]  # the compiler died


def test_the_cache_folder_is_the_one_torch_itself_would_use(tmp_path, monkeypatch):
    from torch._inductor.runtime.cache_dir_utils import cache_dir, default_cache_dir

    assert inductor_cache_dir({"TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "c")}) == tmp_path / "c"
    for user in ("kaggle", "dom\\ain/user"):
        monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
        monkeypatch.setenv("LOGNAME", user)
        monkeypatch.setenv("TMPDIR", str(tmp_path))
        monkeypatch.setattr(tempfile, "tempdir", None)  # gettempdir() caches its answer
        expected = Path(default_cache_dir())
        assert inductor_cache_dir({"LOGNAME": user, "TMPDIR": str(tmp_path)}) == expected
        assert expected.parent == tmp_path and "/" not in expected.name
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "set"))
    assert inductor_cache_dir({"TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "set")}) == Path(cache_dir())


@pytest.mark.parametrize("data", [b"\x7fELF\x02\x01" + bytes(10), b"\x7fELF\x09\x01" + bytes(60)])
def test_a_header_too_short_or_of_an_unknown_class_is_broken(data):
    assert elf_problem(data, len(data))


def test_nothing_but_compiled_files_is_looked_at(tmp_path):
    (tmp_path / "fxgraph").mkdir()
    (tmp_path / "fxgraph" / "entry").write_bytes(b"")
    (tmp_path / "c.py").write_bytes(b"")
    shutil.copy(real_library(), tmp_path / "ckeep.so")
    assert remove_broken_kernels(tmp_path) == [] and len(list(tmp_path.rglob("*"))) == 4


def test_a_lock_this_process_cannot_open_leaves_the_kernel_and_raises_nothing(tmp_path, monkeypatch):
    """Another user's cache (a lock file not ours to open): the stage must still start."""
    import os
    cache = tmp_path / "cache"
    broken = kernel(cache, "cforeignkernel", b"")
    real_open = os.open

    def refusing_open(path, *args, **kwargs):
        if str(path).endswith(".lock"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)
    monkeypatch.setattr(os, "open", refusing_open)
    assert remove_broken_kernels(cache) == [] and broken.is_file()
