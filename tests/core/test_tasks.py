"""Task loading (three layouts), validation messages, selection."""
import json

import pytest

from pipeline.core.tasks import (TaskError, load_tasks, select_tasks, solutions_of, task_problems,
                            task_size, without_test_outputs)
from tests.conftest import DATA

ARC1 = DATA / "arc-agi-1"


def test_kaggle_challenges_merge_the_solutions_file_beside_them():
    tasks = load_tasks(ARC1 / "arc-agi_evaluation_challenges.json")
    assert len(tasks) == 400 and sum(len(t["test"]) for t in tasks.values()) == 419
    solutions = json.loads((ARC1 / "arc-agi_evaluation_solutions.json").read_text())
    assert solutions_of(tasks) == solutions
    bare = load_tasks(ARC1 / "arc-agi_evaluation_challenges.json", solutions=None)
    assert solutions_of(bare) == {}


def test_combined_file_directory_and_several_datasets(tmp_path):
    val = load_tasks(ARC1 / "partitions" / "val_rs7.json")
    assert len(val) == 100 and len(solutions_of(val)) == 100
    for task_id in list(val)[:3]:
        (tmp_path / f"{task_id}.json").write_text(json.dumps(val[task_id]))
    assert load_tasks(tmp_path) == {k: val[k] for k in list(val)[:3]}
    both = load_tasks([DATA / "external" / "MINI-ARC.json", DATA / "external" / "ConceptARC.json"])
    assert len(both) == 149 + 528
    with pytest.raises(TaskError, match="is in both"):
        load_tasks([ARC1 / "partitions" / "val_rs7.json", tmp_path])


def test_every_problem_is_named_with_task_pair_and_row():
    bad = {
        "ragged": {"train": [{"input": [[1, 2], [3]], "output": [[1]]}], "test": [{"input": [[0]]}]},
        "colour": {"train": [{"input": [[11]], "output": [[1]]}], "test": [{"input": [[0]]}]},
        "big": {"train": [{"input": [[0] * 31] * 31, "output": [[1]]}], "test": [{"input": [[0]]}]},
        "float": {"train": [{"input": [[1.0]], "output": [[1]]}], "test": [{"input": [[0]]}]},
        "empty": {"train": [], "test": [{"input": [[]]}]},
        "notest": {"train": [{"input": [[1]], "output": [[1]]}]},
        "noout": {"train": [{"input": [[1]]}], "test": [{"input": [[1]]}]},
    }
    problems = [p for tid, t in bad.items() for p in task_problems(tid, t)]
    expected = [
        "task 'ragged' train[0].input: row 1 has 1 cells but row 0 has 2 (not rectangular)",
        "task 'colour' train[0].input: row 0 col 0: colour 11 outside 0-9",
        "task 'big' train[0].input: has 31 rows (max 30)",
        "task 'big' train[0].input: has 31 columns (max 30)",
        "task 'float' train[0].input: row 0 col 0: 1.0 is not an int",
        "task 'empty': 'train' is empty",
        "task 'empty' test[0].input: row 0 has 0 cells",
        "task 'notest': missing 'test'",
        "task 'noout' train[0]: missing 'output'",
    ]
    assert problems == expected


def test_solution_count_mismatch_is_reported(tmp_path):
    challenges = {"t1": {"train": [{"input": [[1]], "output": [[2]]}], "test": [{"input": [[1]]}, {"input": [[3]]}]}}
    (tmp_path / "x_challenges.json").write_text(json.dumps(challenges))
    (tmp_path / "x_solutions.json").write_text(json.dumps({"t1": [[[2]]]}))
    with pytest.raises(TaskError, match="task 't1': solutions .* have 1 output\\(s\\) but the task has 2 test input"):
        load_tasks(tmp_path / "x_challenges.json")


def test_selection_by_ids_first_n_and_size(eval_tasks):
    ids = ["00576224", "009d5c81"]
    assert list(select_tasks(eval_tasks, ids=ids)) == ids
    assert len(select_tasks(eval_tasks, first_n=5)) == 5
    smallest = select_tasks(eval_tasks, sort_by_size=True, first_n=10)
    sizes = [task_size(t) for t in smallest.values()]
    assert sizes == sorted(sizes) and sizes[-1] <= min(task_size(t) for k, t in eval_tasks.items() if k not in smallest)
    with pytest.raises(TaskError, match="unknown task id"):
        select_tasks(eval_tasks, ids=["nope"])


def test_hidden_view_drops_test_outputs(eval_tasks):
    hidden = without_test_outputs(eval_tasks)
    assert all("output" not in p for t in hidden.values() for p in t["test"])
    assert solutions_of(hidden) == {}


def test_the_fast_grid_key_and_the_problem_list_are_one_rule():
    """`valid_grid_key` (voting, scoring, submissions) and `grid_problems` (validation messages)
    accept exactly the same grids."""
    import numpy as np

    from pipeline.core.tasks import grid_problems, is_valid_grid, valid_grid_key

    grids = [[[0]], [[9] * 30] * 30, [[1, 2], [3, 4]], np.array([[1, 2]]), None, [], [[]], "[[1]]", [[1, 2], [3]],
             [[10]], [[-1]], [[True]], [[1.0]], [["1"]], [[None]], [[1]] * 31, [[1] * 31], [(1, 2)], ([1],),
             [[np.int64(3)]], [[256]], [[1, 2], 3]]
    for grid in grids:
        assert (valid_grid_key(grid) is not None) == (not grid_problems(grid)) == is_valid_grid(grid), grid
    assert valid_grid_key([[1, 2]]) == valid_grid_key(np.array([[1, 2]])) != valid_grid_key([[1], [2]])
