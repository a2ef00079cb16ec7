"""The standard views: spec tables, exact inverses (hypothesis), serialisation, colour maps, their spread
(problem augmentation and the swap: tests/training/test_problem_augment.py)."""
import json

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from pipeline.core.augment import DIHEDRAL, Augmentation, inference_augmentations, random_color_map
from pipeline.core.tasks import is_valid_grid

grids = st.integers(1, 30).flatmap(lambda h: st.integers(1, 30).flatmap(
    lambda w: st.lists(st.lists(st.integers(0, 9), min_size=w, max_size=w), min_size=h, max_size=h)))

SPEC_DIHEDRAL = {  # spec §4.1 on [[1,2,3],[4,5,6]]
    (False, 0): [[1, 2, 3], [4, 5, 6]], (False, 1): [[3, 6], [2, 5], [1, 4]],
    (False, 2): [[6, 5, 4], [3, 2, 1]], (False, 3): [[4, 1], [5, 2], [6, 3]],
    (True, 0): [[3, 2, 1], [6, 5, 4]], (True, 1): [[1, 4], [2, 5], [3, 6]],
    (True, 2): [[4, 5, 6], [1, 2, 3]], (True, 3): [[6, 3], [5, 2], [4, 1]],
}


@pytest.mark.parametrize("hflip,k", DIHEDRAL)
def test_dihedral_matches_the_spec_table(hflip, k):
    assert Augmentation(hflip, k).apply_grid([[1, 2, 3], [4, 5, 6]]) == SPEC_DIHEDRAL[(hflip, k)]


@settings(max_examples=80, deadline=None)
@given(grid=grids, seed=st.integers(0, 2**32 - 1), element=st.sampled_from(DIHEDRAL))
def test_view_inverse_is_exact_and_serialisable(grid, seed, element):
    rng = np.random.default_rng(seed)
    aug = Augmentation(*element, color_map=random_color_map(rng, 0.5), train_order=(1, 0, 2))
    restored = Augmentation.from_dict(json.loads(json.dumps(aug.to_dict())))
    assert restored == aug
    out = aug.apply_grid(grid)
    assert is_valid_grid(out)
    assert restored.invert_grid(out) == grid


def test_colour_map_keeps_background_with_the_given_probability():
    rng = np.random.default_rng(0)
    maps = [random_color_map(rng, 0.9) for _ in range(2000)]
    assert all(sorted(m) == list(range(10)) for m in maps)
    kept = np.mean([m[0] == 0 for m in maps])
    assert 0.9 <= kept <= 0.95  # 0.9 by rule + 0.1 × 1/10 by chance
    assert all(m[0] == 0 for m in (random_color_map(rng, 1.0) for _ in range(100)))


def test_apply_task_transforms_every_grid_and_reorders_train(training_tasks):
    task = training_tasks["007bbfb7"]
    aug = Augmentation(True, 1, color_map=(0, 2, 1, 3, 4, 5, 6, 7, 8, 9), train_order=(4, 3, 2, 1, 0))
    out = aug.apply_task(task)
    assert out["train"][0]["input"] == aug.apply_grid(task["train"][4]["input"])
    assert out["test"][0]["output"] == aug.apply_grid(task["test"][0]["output"])
    assert [aug.invert_grid(p["output"]) for p in out["train"]] == [p["output"] for p in task["train"]][::-1]


def test_inference_augmentations_spread_over_dihedral_for_any_n():
    for n in (1, 3, 8, 10, 96):
        augs = inference_augmentations(n, np.random.default_rng(1), n_train=3)
        assert len(augs) == n
        counts = np.bincount([DIHEDRAL.index((a.hflip, a.n_rot90)) for a in augs], minlength=8)
        assert counts.max() - counts.min() <= 1
    assert inference_augmentations(12, np.random.default_rng(3), 3) == inference_augmentations(12, np.random.default_rng(3), 3)
    with pytest.raises(ValueError):
        inference_augmentations(0, np.random.default_rng(0), 3)
