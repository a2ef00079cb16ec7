"""The one largest-first rule: who gets which work."""
from __future__ import annotations

from pipeline.core.scheduling import largest_first, makespan


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
