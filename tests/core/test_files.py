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


# ----------------------------------------------------------------------------- outputs and JSON lines

from pipeline.core.files import (FileFormatError, OutputError, check_output, read_json, read_jsonl,  # noqa: E402
                                 repair_jsonl_tail)


def test_an_output_that_is_an_input_under_another_name_is_refused(tmp_path):
    data = tmp_path / "p.jsonl"
    data.write_text("{}\n")
    os.link(data, tmp_path / "hard.jsonl")
    (tmp_path / "soft.jsonl").symlink_to(data)
    for output in (data, tmp_path / "hard.jsonl", tmp_path / "soft.jsonl", tmp_path / "." / "p.jsonl"):
        with pytest.raises(OutputError, match=r"is the same file as --predictions .*refusing to overwrite an input"):
            check_output(output, {"--predictions": [tmp_path / "other.jsonl", data], "--dataset": None})
    assert check_output(tmp_path / "new.json", {"--predictions": data}) == tmp_path / "new.json"
    with pytest.raises(OutputError, match="is a folder, not a file"):
        check_output(tmp_path, {})


def test_a_folder_output_never_replaces_a_foreign_folder_or_a_file(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    own = ("config.json",)
    assert check_output(model, {}, folder=True, own=own) == model  # its own kind: replaced
    assert check_output(tmp_path / "new", {}, folder=True, own=own)
    (tmp_path / "empty").mkdir()
    assert check_output(tmp_path / "empty", {}, folder=True, own=own)
    notes = tmp_path / "mine"
    notes.mkdir()
    (notes / "notes.txt").write_text("keep me")
    with pytest.raises(OutputError, match=r"did not make \(it holds notes.txt; no config.json\)"):
        check_output(notes, {}, folder=True, own=own)
    tasks = tmp_path / "tasks.json"
    tasks.write_text("{}")
    with pytest.raises(OutputError, match="is a file, not a folder"):
        check_output(tasks, {}, folder=True, own=own)
    (model / "tasks.json").write_text("{}")
    with pytest.raises(OutputError, match="holds --tasks"):
        check_output(model, {"--tasks": [model / "tasks.json"]}, folder=True, own=own)


def test_a_last_line_without_newline_is_a_record_if_it_parses_else_torn(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text('{"a": 1}\n{"a": 2}')
    assert list(read_jsonl(path)) == [{"a": 1}, {"a": 2}]
    assert repair_jsonl_tail(path) == ("completed", 1) and path.read_text() == '{"a": 1}\n{"a": 2}\n'
    path.write_text('{"a": 1}\n{"a": 2')
    assert list(read_jsonl(path)) == [{"a": 1}]
    assert repair_jsonl_tail(path) == ("cut", 7) and path.read_text() == '{"a": 1}\n'
    assert repair_jsonl_tail(path) == ("", 0)
    path.write_text('{"a": 1}\ngarbage\n{"a": 3}\n')
    with pytest.raises(FileFormatError, match=rf"{path}:2: not a JSON line"):
        list(read_jsonl(path))


def test_a_json_error_names_the_file_line_and_column(tmp_path):
    path = tmp_path / "cfg.json"
    path.write_text('{"model_path": "x",\n "format": ')  # truncated
    with pytest.raises(FileFormatError, match=rf"{path}: not valid JSON \(Expecting value at line 2 column 12\)"):
        read_json(path)
    path.write_text('{"a": NaN}')
    assert read_json(path) != {}  # the plain reader keeps Python's extensions (timing values)
    with pytest.raises(FileFormatError, match="NaN is not JSON"):
        read_json(path, strict=True)
