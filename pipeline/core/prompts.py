"""Prompt versions: the original system's exact texts, applied through the tokenizer's chat template.

A training sample is a `PromptSample(prompt, completion)`: `prompt` is exactly the inference prompt
(chat text up to and including the assistant prefix, e.g. "### Output\\n\\n```grid"), and
`completion` is the rest of the assistant turn up to and including the end-of-turn token.  The
two are tokenized separately and concatenated, so the loss mask (completion only) is exact by
construction and training sees the very token ids that inference conditions on.

The template texts are Jinja2 templates with default settings, as in the original: a single
trailing newline of a template is dropped, block tags keep their newlines.  Do not edit them:
trained checkpoints depend on every byte.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from jinja2 import Template

from pipeline.core.encoders import GridEncoder
from pipeline.core.formats import FORMATS, TextFormat
from pipeline.core.models import end_of_turn_token

SYSTEM_PROMPT_V0 = """You are a helpful AI assistant. Your job is to solve tasks from the Abstraction and Reasoning Challenge (ARC). 
The user will present you with sample input and output grids for each task. 
Your job will be to understand the transformation between the input and the output and apply it to the last input grid given by the user. 
The puzzle-like inputs and outputs present a grid where each square can be one of ten colors. A grid can be any height or width between 1x1 and 30x30.
The background of the grid is typically colored with 0.
The tasks from ARC are based on the following priors:

- Objectness: Objects persist and cannot appear or disappear without reason. Objects can interact or not depending on the circumstances.
- Goal-directed: Objects can be animate or inanimate. Some objects are "agents" - they have intentions and they pursue goals.
- Numbers & counting: Objects can be counted or sorted by their shape, appearance, or movement using basic mathematics like addition, subtraction, and comparison.
- Basic geometry & topology: Objects can be shapes like rectangles, triangles, and circles which can be mirrored, rotated, translated, deformed, combined, repeated, etc. Differences in distances can be detected.

The transformations between input and output should be based on these priors.
"""

SYSTEM_PROMPT_V1 = "You are a helpful assistant."

_EXAMPLES_BODY = """{% for sample in train_samples %}
## Example {{ loop.index }}

### Input

{{ sample.input }}

### Output

{{ sample.output }}
{% endfor %}
## Test case

### Input

{{ test_input }}
"""

PROMPT_TEMPLATE_V0 = """Let's see if you can solve this simple ARC task. These are some input-output grid examples that define the task.
""" + _EXAMPLES_BODY

PROMPT_TEMPLATE_V1 = """Let's see if you can solve this simple Abstraction and Reasoning Challenge (ARC) task.
Below there are some input-output grid examples that define the task.
Your job is to understand the transformation between the input and the output and apply it to the test input grid.
The transformations are always based on the following priors: objectness, goal-directed, numbers & counting, and basic geometry & topology.
""" + _EXAMPLES_BODY

PROMPT_TEMPLATE_INPUT_FROM_INPUTS_V0 = """Your task is to create a new grid that follows the same distribution as the input grids from the Abstraction and Reasoning Challenge (ARC).
Below there are some grid examples, please create a new and different grid that follows the same distribution.
{% for sample in train_samples %}
## Grid example {{ loop.index }}

{{ sample.input }}
{% endfor %}
"""

# The original's text says "input grids" here too (a copy-paste slip kept for checkpoint compatibility).
PROMPT_TEMPLATE_OUTPUT_FROM_OUTPUTS_V0 = PROMPT_TEMPLATE_INPUT_FROM_INPUTS_V0.replace("{{ sample.input }}", "{{ sample.output }}")

ANSWER_TEMPLATE_V0 = "### Output\n\n{{ output }}"
ANSWER_TEMPLATE_INPUT_FROM_INPUTS_V0 = "## New grid\n\n{{ output }}"

GRID_FENCE = "```grid"


@dataclass(frozen=True)
class PromptVersion:
    name: str
    system: str
    user_template: str
    answer_template: str
    target: str  # which grid of the test pair the assistant writes: "output" or "input"

    @property
    def user(self) -> Template:
        return _template(self.user_template)

    @property
    def answer(self) -> Template:
        return _template(self.answer_template)


@lru_cache(maxsize=None)
def _template(text: str) -> Template:
    return Template(text)


PROMPT_VERSIONS = {v.name: v for v in (
    PromptVersion("output-from-examples-v0", SYSTEM_PROMPT_V0, PROMPT_TEMPLATE_V0, ANSWER_TEMPLATE_V0, "output"),
    PromptVersion("output-from-examples-v1", SYSTEM_PROMPT_V1, PROMPT_TEMPLATE_V1, ANSWER_TEMPLATE_V0, "output"),
    PromptVersion("input-from-inputs-v0", SYSTEM_PROMPT_V1, PROMPT_TEMPLATE_INPUT_FROM_INPUTS_V0,
                  ANSWER_TEMPLATE_INPUT_FROM_INPUTS_V0, "input"),
    PromptVersion("output-from-outputs-v0", SYSTEM_PROMPT_V1, PROMPT_TEMPLATE_OUTPUT_FROM_OUTPUTS_V0,
                  ANSWER_TEMPLATE_INPUT_FROM_INPUTS_V0, "output"),
)}


@dataclass(frozen=True)
class TextPromptVersion:
    """The prompt of a public checkpoint's format (core/formats.py): a plain text, no chat template.
    Its name is the format's; it answers with the test output."""
    format: TextFormat
    target: str = "output"

    @property
    def name(self) -> str:
        return self.format.name


# Not in PROMPT_VERSIONS (the arc24 versions, which `--prompt_version` chooses from): a text
# format's prompt is chosen by the `format` setting (model_cfg.resolve_prompting).
TEXT_PROMPT_VERSIONS = {name: TextPromptVersion(f) for name, f in FORMATS.items()}


def get_prompt_version(name: str) -> PromptVersion | TextPromptVersion:
    if name in TEXT_PROMPT_VERSIONS:
        return TEXT_PROMPT_VERSIONS[name]
    if name not in PROMPT_VERSIONS:
        raise ValueError(f"unknown prompt version {name!r}; known: {', '.join(PROMPT_VERSIONS)}")
    return PROMPT_VERSIONS[name]


def _version(version) -> PromptVersion | TextPromptVersion:
    return version if isinstance(version, (PromptVersion, TextPromptVersion)) else get_prompt_version(version)


@dataclass(frozen=True)
class PromptSample:
    prompt: str      # chat text up to and including the assistant prefix
    completion: str  # the rest of the assistant turn, ending with the end-of-turn token


def grid_prefix(encoder: GridEncoder) -> str:
    """The part of an encoded grid that the inference prompt already contains ("```grid" for
    fenced encoders, nothing otherwise); parsing puts it back in front of the response."""
    return GRID_FENCE if encoder.to_text([[0]]).startswith(GRID_FENCE) else ""


def answer_stop(encoder: GridEncoder) -> tuple[str, ...]:
    """Stop strings of a generated grid.  A fenced answer is complete at its closing fence: stop
    there rather than at the end-of-turn token, which an undertrained model may never emit (spec
    §6.7: a base Qwen2.5 repeating its answer took 2.7x longer).  Parsing reads up to the fence."""
    return ("```",) if grid_prefix(encoder) else ()


def render_turns(task: dict, encoder: GridEncoder, version: str | PromptVersion,
                 test_index: int = 0) -> tuple[str, str, str]:
    """(system, user, answer) texts for one test pair; the answer needs the target grid."""
    v = _version(version)
    train = [{k: encoder.to_text(g) for k, g in pair.items()} for pair in task["train"]]
    test_pair = task["test"][test_index]
    user = v.user.render(train_samples=train, test_input=encoder.to_text(test_pair["input"]))
    target = test_pair.get(v.target)
    answer = v.answer.render(output=encoder.to_text(target)) if target is not None else None
    return v.system, user, answer


def _chat_text(tokenizer, system: str, user: str, assistant: str) -> str:
    messages = [{"role": "system", "content": system}, {"role": "user", "content": user},
                {"role": "assistant", "content": assistant}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)


def _end_of_turn(tokenizer) -> str:
    return end_of_turn_token(tokenizer)


def _text_prompt(v: TextPromptVersion, task: dict, tokenizer, test_index: int) -> str:
    """A text format's prompt as its owners' tokenizer saw it: the tokenizer's sequence start
    (bos, SentencePiece's dummy-prefix space; nothing for Qwen or SmolLM2), then the format's text."""
    from pipeline.core.models import sequence_start  # lazy: keeps this module free of torch
    return sequence_start(tokenizer) + v.format.prompt(task, test_index, _end_of_turn(tokenizer))


def assistant_prefix(version: PromptVersion, encoder: GridEncoder) -> str:
    return version.answer.render(output="") + grid_prefix(encoder)


def build_train_sample(task: dict, encoder: GridEncoder, tokenizer, version: str | PromptVersion,
                       test_index: int = 0) -> PromptSample:
    """The (prompt, completion) pair for the target grid of `task["test"][test_index]`."""
    v = _version(version)
    if isinstance(v, TextPromptVersion):
        target = task["test"][test_index].get(v.target)
        if target is None:
            raise ValueError(f"test pair {test_index} has no '{v.target}' grid to train on")
        return PromptSample(prompt=_text_prompt(v, task, tokenizer, test_index),
                            completion=v.format.reply(target, _end_of_turn(tokenizer)))
    system, user, answer = render_turns(task, encoder, v, test_index)
    if answer is None:
        raise ValueError(f"test pair {test_index} has no '{v.target}' grid to train on")
    text = _chat_text(tokenizer, system, user, answer)
    eot = _end_of_turn(tokenizer)
    start = text.rfind(answer + eot)
    if start < 0:
        raise ValueError(f"the chat template does not end the assistant turn with {eot!r} right after the answer")
    prefix = assistant_prefix(v, encoder)
    cut = start + len(prefix)
    return PromptSample(prompt=text[:cut], completion=text[cut:start + len(answer)] + eot)


def build_inference_prompt(task: dict, encoder: GridEncoder, tokenizer, version: str | PromptVersion,
                           test_index: int = 0) -> str:
    """Chat text ending exactly at the assistant prefix; the test target may be absent.
    (A text format's prompt: the sequence start and its own text, ending at its reply marker.)"""
    v = _version(version)
    if isinstance(v, TextPromptVersion):
        return _text_prompt(v, task, tokenizer, test_index)
    system, user, _ = render_turns(task, encoder, v, test_index)
    prefix = assistant_prefix(v, encoder)
    marker = "\x00ANSWER\x00"  # rendered in place of the answer, then cut: ends exactly at the prefix
    text = _chat_text(tokenizer, system, user, prefix + marker)
    return text[:text.rindex(marker)]


def parse_response(text: str, encoder: GridEncoder, strict: bool = False) -> list[list[int]]:
    """Decode the generated continuation of an inference prompt into a grid (GridParseError if not)."""
    return encoder.to_grid(grid_prefix(encoder) + text, strict=strict)
