"""What fits in a context: the one rule for fitting a training sample into `max_seq_len`.

Fine-tuning, TTFT and the planner all build samples the same way (spec §3.6): the prompt with the
examples, then the target's answer; if prompt + answer is longer than `max_seq_len` tokens, the
*last* example is dropped, again and again, down to one example; a sample that does not fit even
then is not used.  A sample's length is its prompt's tokens plus its completion's, tokenized
separately (`training.encode_sample` concatenates exactly these).  Standard library and the
tokenizer only: the planner runs without torch.

TTFT trains on leave-one-out samples of a task's train pairs: every pair in turn is the target,
the others (in order) the examples.  A task is profiled in its own view and, if no sample fits
there, transposed (a transpose changes the row count and so the token count):
`leave_one_out_lengths` is the profile both TTFT and the planner use.
"""
from __future__ import annotations

from typing import Sequence

from pipeline.core.augment import Augmentation
from pipeline.core.prompts import PromptSample, build_train_sample


def sample_tokens(tokenizer, sample: PromptSample) -> int:
    """Tokens of prompt + completion as training encodes them (each tokenized on its own)."""
    return (len(tokenizer(sample.prompt, add_special_tokens=False)["input_ids"])
            + len(tokenizer(sample.completion, add_special_tokens=False)["input_ids"]))


def fit_examples(task: dict, encoder, tokenizer, version, max_seq_len: int, test_index: int = 0,
                 remove_examples: bool = True) -> tuple[PromptSample | None, int, int]:
    """(sample or None, its tokens, the untrimmed sample's tokens) for `task["test"][test_index]`:
    the last train pair is dropped until the sample has at most `max_seq_len` tokens, keeping at
    least one (only with `remove_examples`)."""
    train = list(task["train"])
    first = None
    while True:
        sample = build_train_sample({"train": train, "test": task["test"]}, encoder, tokenizer, version, test_index)
        n = sample_tokens(tokenizer, sample)
        first = n if first is None else first
        if n <= max_seq_len:
            return sample, n, first
        if not remove_examples or len(train) <= 1:
            return None, n, first
        train = train[:-1]


def leave_one_out(pairs: Sequence[dict], target: int) -> dict:
    """A task whose test pair is train pair `target` and whose examples are the others, in order."""
    return {"train": [p for i, p in enumerate(pairs) if i != target], "test": [pairs[target]]}


def leave_one_out_lengths(pairs: Sequence[dict], encoder, tokenizer, version, max_seq_len: int) -> tuple[list[int], bool]:
    """(tokens of every fitting leave-one-out sample, transposed?): the task's own view first,
    the transposed view if nothing fits there.  Fewer than 2 pairs: no sample ([], False)."""
    if len(pairs) < 2:
        return [], False
    for transposed, view in ((False, Augmentation()), (True, Augmentation(n_rot90=1))):
        viewed = view.apply_task({"train": list(pairs), "test": []})["train"]
        lengths = [n for j in range(len(viewed))
                   for sample, n, _ in [fit_examples(leave_one_out(viewed, j), encoder, tokenizer, version, max_seq_len)]
                   if sample is not None]
        if lengths:
            return lengths, transposed
    return [], False
