"""The validate command (pipeline/core/validate.py): one line per problem, exit codes."""
import json

import pytest

from pipeline.__main__ import main as cli
from pipeline.core.tasks import TaskError, load_tasks
from tests.conftest import DATA


def test_validate_cli_one_line_per_problem_and_exit_codes(tmp_path, capsys):
    bad = {
        "a": {"train": [{"input": [[1, 2], [3]], "output": [[11]]}], "test": [{"input": [[0] * 31] * 31}]},
    }
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(bad))
    assert cli(["validate", str(path)]) == 1
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines == [
        f"{path}: task 'a' train[0].input: row 1 has 1 cells but row 0 has 2 (not rectangular)",
        f"{path}: task 'a' train[0].output: row 0 col 0: colour 11 outside 0-9",
        f"{path}: task 'a' test[0].input: has 31 rows (max 30)",
        f"{path}: task 'a' test[0].input: has 31 columns (max 30)",
    ]
    shipped = [str(p) for p in sorted(DATA.rglob("*.json")) if "solutions" not in p.name and p.name not in ("sample_submission.json", "manifest.json")]
    assert cli(["validate", *shipped]) == 0
    (tmp_path / "broken.json").write_text("{not json")
    assert cli(["validate", str(tmp_path / "broken.json"), str(path)]) == 1
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith(f"{tmp_path / 'broken.json'}: not valid JSON (") and "line 1 column 2" in lines[0]
    assert len(lines) == 5 and lines[1].startswith(f"{path}: task 'a' ")  # the next file is still checked


def test_a_task_id_given_twice_is_a_problem_not_a_silent_replacement(tmp_path, capsys):
    """JSON keeps the last of two equal keys: `validate` passed such a file and every stage used
    only the second task."""
    task = '{"train": [{"input": [[1]], "output": [[2]]}], "test": [{"input": [[1]]}]}'
    path = tmp_path / "twice.json"
    path.write_text(f'{{"aa": {task}, "bb": {task}, "aa": {task}}}')
    assert cli(["validate", str(path)]) == 1
    assert capsys.readouterr().out == f"{path}: key 'aa' appears twice in one object (JSON keeps only the last)\n"
    with pytest.raises(TaskError, match="'aa' appears twice"):
        load_tasks(path)
