"""The public checkpoints' prompt formats, byte for byte, and every evaluation grid through them."""
from __future__ import annotations

import pytest

from pipeline.core.formats import FORMATS, FormatParseError, get_format
from pipeline.core.tasks import load_tasks

from conftest import DATA

TASK = {"train": [{"input": [[1, 0], [0, 1]], "output": [[2]]},
                  {"input": [[3]], "output": [[4, 4]]}],
        "test": [{"input": [[5, 6, 7]]}, {"input": [[8], [9]]}]}


def test_architects_text_is_byte_exact():
    f = get_format("architects")
    assert f.prompt(TASK, 1, eos="</s>") == (
        "ABCDEFGHJKLMNPQRSTUVWXYZabcdefghjklmnpqrstuvwxyz"
        "I10\n01\n+/-=O2\n</s>"
        "I3\n+/-=O44\n</s>"
        "I8\n9\n+/-=O")
    assert f.reply([[1, 2], [3, 4]], eos="</s>") == "12\n34\n</s>"


def test_nvarc_text_is_byte_exact():
    f = get_format("nvarc")
    assert f.prompt(TASK, 0, eos="unused") == (
        "<|im_start|>user\n10\n01<|im_end|><|im_start|>assistant\n2<|im_end|>"
        "<|im_start|>user\n3<|im_end|><|im_start|>assistant\n44<|im_end|>"
        "<|im_start|>user\n567<|im_end|><|im_start|>assistant\n")
    assert f.reply([[1, 2], [3, 4]], eos="unused") == "12\n34<|im_end|>"


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_every_evaluation_grid_round_trips(name):
    f = get_format(name)
    tasks = load_tasks(DATA / "arc-agi-1" / "arc-agi_evaluation_challenges.json",
                       DATA / "arc-agi-1" / "arc-agi_evaluation_solutions.json")
    grids = [g for t in tasks.values() for split in ("train", "test") for p in t[split] for g in p.values()]
    assert len(grids) > 2500
    for grid in grids:
        assert f.parse_grid(f.grid_text(grid)) == grid
        assert f.parse_reply(f.reply(grid, eos="<eos>") + "trailing ramble", eos="<eos>") == grid


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_replies_that_are_not_grids_are_refused(name):
    f = get_format(name)
    for text in ("", "12\n3", "1a\n22", "12\n\n34", "1" * 31):
        with pytest.raises(FormatParseError):
            f.parse_grid(text)
    with pytest.raises(ValueError, match="unknown format 'mit'"):
        get_format("mit")


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_the_planner_counts_a_formats_own_texts(name, tokenizer, eval_tasks):
    """`plan --format NAME` counts what TTFT and sampling will feed the model in that format."""
    from pipeline.core.model_cfg import resolve_prompting
    from pipeline.planning.token_counts import task_tokens

    prompting = resolve_prompting({}, name)
    task_id = sorted(eval_tasks)[0]
    counts = task_tokens({task_id: eval_tasks[task_id]}, tokenizer, 8192, prompting.grid_encoder,
                         prompting.prompt_version)[task_id]
    text = get_format(name).prompt(eval_tasks[task_id], 0, tokenizer.eos_token)
    assert counts.prompt_tokens[0] == len(tokenizer(text, add_special_tokens=False)["input_ids"])
