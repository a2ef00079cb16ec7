"""The scheduling rules: the one largest-first rule (who gets which work) and the run's workers."""
from __future__ import annotations

from pipeline.core.scheduling import largest_first, makespan, sample_gpus, sampling_workers, shard_ids


def test_largest_first_deals_the_heaviest_to_the_lightest_worker_deterministically():
    shards, loads = largest_first({"a": 5, "b": 4, "c": 3, "d": 3, "e": 1}, 2)
    # a -> 1st; b -> 2nd; c -> 2nd (4 < 5); d -> 1st (5 < 7); e -> 2nd (7 < 8)
    assert shards == [["a", "d"], ["b", "c", "e"]] and loads == [8, 8]
    # ties go by key, whatever the mapping's order; every worker pays its start once
    assert largest_first({"y": 2, "x": 2}, 1, start=10) == ([["x", "y"]], [14])
    assert largest_first({}, 3) == ([[], [], []], [0.0, 0.0, 0.0])


def test_makespan_of_anonymous_durations():
    assert makespan([3, 3, 2, 2, 2], 2) == (7, [7, 5])   # LPT: 3+2+2 | 3+2 (the optimum is 6: LPT is within 4/3)
    assert makespan([4.0], 3, start=1.0) == (5.0, [5.0, 1.0, 1.0])


def test_one_sampling_worker_per_cuda_device_else_one():
    assert sample_gpus(["cuda:0", "cuda:3"]) == ["0", "3"] and sampling_workers(["cuda:0", "cuda:3"]) == 2
    assert sample_gpus(["cpu"]) == [] and sampling_workers(["cpu"]) == 1


def test_shards_by_size_drop_the_empty_ones():
    assert shard_ids({"a": 9, "b": 7, "c": 5}, 2) == [["a"], ["b", "c"]]
    assert shard_ids({"a": 1}, 4) == [["a"]]  # more workers than tasks: no empty shards
