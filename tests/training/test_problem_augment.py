"""Problem augmentation and the train/test swap: spec examples, exact inverses (hypothesis), size
limits, weights, serialisation."""
import json

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from pipeline.core.tasks import is_valid_grid
from pipeline.training.problem_augment import (GridTooBigToAugment, Mirror, Padding, ProblemAugmentation, Upscale,
                                               random_augment_task, random_grid_transform, random_problem_augmentation,
                                               swap_train_and_test, transform_from_dict, transform_to_dict)

grids = st.integers(1, 30).flatmap(lambda h: st.integers(1, 30).flatmap(
    lambda w: st.lists(st.lists(st.integers(0, 9), min_size=w, max_size=w), min_size=h, max_size=h)))


def test_problem_transforms_match_the_spec_examples():
    g = np.array([[1, 2], [3, 4]])
    assert Padding(0, 1, 2).apply(g).tolist() == [[0] * 6, [0, 0, 1, 2, 0, 0], [0, 0, 3, 4, 0, 0], [0] * 6]
    assert Upscale(2, 1).apply(g).tolist() == [[1, 2], [1, 2], [3, 4], [3, 4]]
    assert Mirror(1, 1).apply(g).tolist() == [[1, 2, 2, 1], [3, 4, 4, 3]]
    assert Mirror(0, 0).apply(g).tolist() == [[3, 4], [1, 2], [1, 2], [3, 4]]


@settings(max_examples=80, deadline=None)
@given(grid=grids, seed=st.integers(0, 2**32 - 1), kind=st.sampled_from(["dihedral", "padding", "upscale", "mirror"]))
def test_problem_transform_inverse_is_exact_and_never_exceeds_30(grid, seed, kind):
    rng = np.random.default_rng(seed)
    try:
        t = random_grid_transform(kind, (len(grid), len(grid[0])), rng)
    except GridTooBigToAugment:
        assert kind != "dihedral"
        return
    out = t.apply(np.array(grid))
    assert out.shape[0] <= 30 and out.shape[1] <= 30
    assert transform_from_dict(json.loads(json.dumps(transform_to_dict(t)))) == t
    assert t.invert(out).tolist() == grid


def test_fixed_swap_lets_every_pair_become_the_target(training_tasks):
    task = training_tasks["007bbfb7"]  # 5 train + 1 test
    rng = np.random.default_rng(0)
    targets = {json.dumps(swap_train_and_test(task, rng)["test"][0]["input"]) for _ in range(300)}
    every_pair = {json.dumps(p["input"]) for p in task["train"] + task["test"]}
    assert targets == every_pair
    swapped = swap_train_and_test(task, rng)
    assert len(swapped["train"]) == 5 and len(swapped["test"]) == 1


def test_random_augment_task_is_deterministic_for_a_seed(training_tasks):
    task = training_tasks["007bbfb7"]
    a = random_augment_task(task, np.random.default_rng(7))
    b = random_augment_task(task, np.random.default_rng(7))
    assert a == b


def test_problem_augmentation_changes_one_side_only_and_respects_weights(training_tasks):
    task = training_tasks["007bbfb7"]
    rng = np.random.default_rng(0)
    kinds = set()
    for _ in range(200):
        new, aug = random_problem_augmentation(task, rng, weights=[0, 1, 0, 1])
        if aug is None:
            continue
        kinds.add(aug.transform.kind)
        other = "output" if aug.target == "input" else "input"
        assert [p[other] for p in new["train"]] == [p[other] for p in task["train"]]
        assert [aug.invert_grid(p[aug.target]) for p in new["train"]] == [p[aug.target] for p in task["train"]]
        assert ProblemAugmentation.from_dict(json.loads(json.dumps(aug.to_dict()))) == aug
        assert all(is_valid_grid(p[k]) for p in new["train"] + new["test"] for k in p)
    assert kinds == {"padding", "mirror"}
    with pytest.raises(ValueError, match="4 non-negative"):
        random_problem_augmentation(task, rng, weights=[1, 1])


def test_too_big_grids_leave_the_task_unchanged():
    task = {"train": [{"input": [[1] * 30] * 30, "output": [[1] * 30] * 30}], "test": [{"input": [[1]], "output": [[1]]}]}
    rng = np.random.default_rng(0)
    for _ in range(20):
        new, aug = random_problem_augmentation(task, rng, weights=[0, 1, 1, 1])
        assert aug is None and new is task
