"""Atomic writes: normal permissions, no temp file left by a killed writer survives the next write."""
from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import textwrap

import pytest

from pipeline.core.files import atomic_file, write_json_atomic, write_text_atomic

from conftest import REPO


def test_atomic_writes_get_the_users_normal_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        text = write_text_atomic(tmp_path / "a.txt", "x")
        data = write_json_atomic(tmp_path / "b.json", {"a": 1})
        with atomic_file(tmp_path / "c.png", "wb") as f:
            f.write(b"\x89PNG")
    finally:
        os.umask(old)
    for path in (text, data, tmp_path / "c.png"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path


def test_a_killed_writers_temp_is_removed_by_the_next_write(tmp_path):
    target = tmp_path / "submission.json"
    # a writer killed between creating its temp and the rename (it stops itself there)
    script = textwrap.dedent(f"""
        import os, signal, sys
        sys.path.insert(0, {str(REPO)!r})
        from pipeline.core.files import atomic_file
        with atomic_file({str(target)!r}) as f:
            f.write("half")
            os.kill(os.getpid(), signal.SIGKILL)
    """)
    proc = subprocess.run([sys.executable, "-c", script])
    assert proc.returncode == -signal.SIGKILL
    [stale] = list(tmp_path.glob(".submission.json.*.tmp"))
    # a live writer's temp (this process's pid) must survive
    live = tmp_path / f".submission.json.{os.getpid()}.abcd.tmp"
    live.write_text("in progress")

    write_json_atomic(target, {"t": 1})

    assert not stale.exists()
    assert live.exists()
    assert target.read_text() == '{"t": 1}\n'


def test_a_failed_write_leaves_nothing(tmp_path):
    target = tmp_path / "x.json"
    with pytest.raises(RuntimeError):
        with atomic_file(target) as f:
            f.write("part")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
