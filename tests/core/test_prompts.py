"""Prompt versions: the exact v1 text of spec §3.4, the (prompt, completion) split, inference prefix."""
import pytest

from pipeline.core.encoders import DEFAULT_ENCODER, create_grid_encoder
from pipeline.core.prompts import (PROMPT_VERSIONS, build_inference_prompt, build_train_sample,
                              get_prompt_version, parse_response)

TASK = {"train": [{"input": [[1, 0], [0, 1]], "output": [[2, 0], [0, 2]]}, {"input": [[0, 1]], "output": [[0, 2]]}],
        "test": [{"input": [[1, 1, 0]], "output": [[2, 2, 0]]}]}

SPEC_3_4 = """<|im_start|>system
You are a helpful assistant.<|im_end|>
<|im_start|>user
Let's see if you can solve this simple Abstraction and Reasoning Challenge (ARC) task.
Below there are some input-output grid examples that define the task.
Your job is to understand the transformation between the input and the output and apply it to the test input grid.
The transformations are always based on the following priors: objectness, goal-directed, numbers & counting, and basic geometry & topology.

## Example 1

### Input

```grid shape: 2x2
1 10
2 01
```

### Output

```grid shape: 2x2
1 20
2 02
```

## Example 2

### Input

```grid shape: 1x2
1 01
```

### Output

```grid shape: 1x2
1 02
```

## Test case

### Input

```grid shape: 1x3
1 110
```<|im_end|>
<|im_start|>assistant
### Output

```grid shape: 1x3
1 220
```<|im_end|>
"""

ENCODER = create_grid_encoder(DEFAULT_ENCODER)


def test_v1_training_text_is_byte_exact(tokenizer):
    sample = build_train_sample(TASK, ENCODER, tokenizer, "output-from-examples-v1")
    # the original's training text ends with "<|im_end|>\n"; the newline after the end-of-turn
    # token is never generated, so it is left out of the completion (and the loss)
    assert sample.prompt + sample.completion + "\n" == SPEC_3_4
    assert sample.prompt.endswith("<|im_start|>assistant\n### Output\n\n```grid")
    assert sample.completion == " shape: 1x3\n1 220\n```<|im_end|>"


def test_inference_prompt_is_the_training_prompt_without_the_answer(tokenizer):
    hidden = {"train": TASK["train"], "test": [{"input": TASK["test"][0]["input"]}]}
    prompt = build_inference_prompt(hidden, ENCODER, tokenizer, "output-from-examples-v1")
    assert prompt == build_train_sample(TASK, ENCODER, tokenizer, "output-from-examples-v1").prompt
    assert prompt.endswith("### Output\n\n```grid")


@pytest.mark.parametrize("version", list(PROMPT_VERSIONS))
def test_every_version_round_trips_its_target_through_the_parser(tokenizer, version):
    sample = build_train_sample(TASK, ENCODER, tokenizer, version)
    eot = "<|im_end|>"
    target = TASK["test"][0][get_prompt_version(version).target]
    assert sample.completion.endswith(eot)
    assert parse_response(sample.completion[:-len(eot)], ENCODER, strict=True) == target


def test_input_from_inputs_lists_the_inputs_and_ends_the_user_turn_with_a_fence(tokenizer):
    sample = build_train_sample(TASK, ENCODER, tokenizer, "input-from-inputs-v0")
    assert "## Grid example 2\n\n```grid shape: 1x2\n1 01\n```\n<|im_end|>" in sample.prompt
    assert "### Output" not in sample.prompt and "1 02" not in sample.prompt  # no outputs shown
    assert sample.prompt.endswith("<|im_start|>assistant\n## New grid\n\n```grid")
    assert sample.completion == " shape: 1x3\n1 110\n```<|im_end|>"


def test_output_from_outputs_keeps_the_original_wording_but_shows_outputs(tokenizer):
    sample = build_train_sample(TASK, ENCODER, tokenizer, "output-from-outputs-v0")
    assert "same distribution as the input grids" in sample.prompt
    assert "1 02" in sample.prompt and "1 01\n" not in sample.prompt


def test_v0_uses_the_long_system_prompt_with_its_trailing_spaces(tokenizer):
    sample = build_train_sample(TASK, ENCODER, tokenizer, "output-from-examples-v0")
    assert "(ARC). \nThe user will present you" in sample.prompt
    assert "should be based on these priors.\n<|im_end|>" in sample.prompt
    assert "Let's see if you can solve this simple ARC task. These are some" in sample.prompt


def test_unknown_version_lists_the_known_ones():
    with pytest.raises(ValueError, match="unknown prompt version 'predict-output-v2'; known: output-from-examples-v0, "):
        get_prompt_version("predict-output-v2")


def test_separate_tokenization_matches_what_inference_conditions_on(tokenizer):
    sample = build_train_sample(TASK, ENCODER, tokenizer, "output-from-examples-v1")
    prompt_ids = tokenizer(sample.prompt, add_special_tokens=False)["input_ids"]
    completion_ids = tokenizer(sample.completion, add_special_tokens=False)["input_ids"]
    assert completion_ids[-1] == tokenizer.convert_tokens_to_ids("<|im_end|>") == tokenizer.eos_token_id
    assert tokenizer.decode(prompt_ids + completion_ids) == sample.prompt + sample.completion
