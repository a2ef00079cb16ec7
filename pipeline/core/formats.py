"""Prompt formats of the public ARC checkpoints, as data: the texts their models were trained on.

A `TextFormat` writes a task as one plain text, no chat template applied by a tokenizer: a prefix,
then every train pair as `query_begin + input + reply_begin + output + reply_end`, then the test
input as `query_begin + input + reply_begin`; the model's reply is `output + reply_end`.  A grid
is its rows of digits (one character per cell) joined by `row_separator`.  `{eos}` in a marker
is the model's own end-of-sequence token text (it differs between the checkpoints' tokenizers).

The formats (facts from the owners' public code; the code here is ours):
* `architects`: the ARChitects, ARC Prize 2024 (da-fr/arc-prize-2024,
  training_code/run_evaluation_*.py `fmt_opts` with training_code/arc_loader.py `fmt_train`/
  `fmt_input`/`fmt_output`; checkpoints da-fr/Mistral-NeMo-Minitron-8B-ARChitects-*,
  da-fr/Llama-3.2-3B-ARChitects-ReArc-bnb-4bit): a pre-prompt of 48 letters, query marker `I`,
  reply marker `\n+/-=O`, reply end `\n` + eos, rows joined by `\n`.  (Their tokenizer adds its
  bos before the text: prompts.py puts the tokenizer's own sequence start in front of every text
  format's prompt, `models.sequence_start`.)
* `nvarc`: NVARC, ARC Prize 2025 (the Kaggle notebook's arc_loader.py `QwenFormatter`; Kaggle
  models sorokin/qwen3_4b_grids15_sft139, sorokin/qwen3_2b_grids15_sft141): Qwen turns without a
  system prompt, `<|im_start|>user\n` + rows + `<|im_end|>` then `<|im_start|>assistant\n` + rows +
  `<|im_end|>`, rows joined by `\n` with no trailing newline.

The project's own format (`arc24`: core/encoders.py and core/prompts.py, in the tokenizer's chat template)
is not a `TextFormat`: it stays where it is, unchanged.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Collection, Mapping, Sequence

from pipeline.core.tasks import is_valid_grid


class FormatParseError(ValueError):
    """A reply that is not a grid in the format."""


@dataclass(frozen=True)
class TextFormat:
    name: str
    prefix: str
    query_begin: str
    reply_begin: str
    reply_end: str              # may hold "{eos}"
    row_separator: str = "\n"
    source: str = ""

    def grid_text(self, grid: Sequence[Sequence[int]]) -> str:
        return self.row_separator.join("".join(str(int(cell)) for cell in row) for row in grid)

    def parse_grid(self, text: str) -> list[list[int]]:
        """The grid a reply's text (without `reply_end`) spells; FormatParseError if it is none."""
        rows = text.split(self.row_separator)
        if not all(row and row.isdigit() and row.isascii() for row in rows):
            raise FormatParseError(f"{self.name}: not rows of digits: {text[:40]!r}")
        grid = [[int(c) for c in row] for row in rows]
        if not is_valid_grid(grid):
            raise FormatParseError(f"{self.name}: rows of different lengths or a side over 30: {text[:40]!r}")
        return grid

    def _end(self, eos: str) -> str:
        return self.reply_end.replace("{eos}", eos)

    def example(self, pair: Mapping, eos: str) -> str:
        return (self.query_begin + self.grid_text(pair["input"]) + self.reply_begin
                + self.grid_text(pair["output"]) + self._end(eos))

    def prompt(self, task: Mapping, test_index: int, eos: str) -> str:
        """Everything before the model's reply to test input `test_index`."""
        examples = "".join(self.example(pair, eos) for pair in task["train"])
        query = task["test"][test_index]["input"]
        return self.prefix + examples + self.query_begin + self.grid_text(query) + self.reply_begin

    def reply(self, grid: Sequence[Sequence[int]], eos: str) -> str:
        """The reply that answers with `grid`, its end marker included (the training target)."""
        return self.grid_text(grid) + self._end(eos)

    def parse_reply(self, text: str, eos: str) -> list[list[int]]:
        """The grid of a generated reply: up to the end marker (or the end of the text)."""
        end = self._end(eos)
        cut = text.find(end) if end else -1
        return self.parse_grid(text[:cut] if cut >= 0 else text.rstrip(self.row_separator))


ARCHITECTS_PREPROMPT = "ABCDEFGHJKLMNPQRSTUVWXYZabcdefghjklmnpqrstuvwxyz"  # 48 letters: no I, O, i, o

FORMATS = {
    "architects": TextFormat("architects", prefix=ARCHITECTS_PREPROMPT, query_begin="I", reply_begin="\n+/-=O",
                             reply_end="\n{eos}", source="da-fr/arc-prize-2024 training_code (fmt_opts, arc_loader)"),
    "nvarc": TextFormat("nvarc", prefix="", query_begin="<|im_start|>user\n",
                        reply_begin="<|im_end|><|im_start|>assistant\n", reply_end="<|im_end|>",
                        source="NVARC Kaggle notebook arc_loader.QwenFormatter"),
}


# The `format` setting of every stage and cfg.json: `arc24` is the project's own (core/encoders.py +
# core/prompts.py, in the chat template); the others are the TextFormats above, whose grids are rows of
# digits (the MinimalGridEncoder's text) and whose prompt is the format itself.
ARC24 = "arc24"
# The format fine-tuning trains in unless told.  Weights are never read in a default format: a
# stage finds theirs in cfg.json or the tokenizer (model_cfg.choose_format).
DEFAULT_FORMAT = ARC24
FORMAT_NAMES = (ARC24, *FORMATS)
TEXT_FORMAT_ENCODER = "MinimalGridEncoder()"


def get_format(name: str) -> TextFormat:
    if name not in FORMATS:
        raise ValueError(f"unknown format {name!r}; known: {', '.join(FORMATS)}")
    return FORMATS[name]


# Recognising the format from a tokenizer, for weights with no cfg.json naming one (a public
# checkpoint as published).  The base models' tokenizers differ in ways that survive the owners'
# vocabulary reductions: NVARC's Qwen3 has `<think>` tokens (Qwen2.5 and SmolLM2 have not) and its
# 16-token vocabulary keeps the ChatML turn markers; arc24's SmolLM2 / Qwen2.5 carry a ChatML chat
# template; the ARChitects' Mistral-NeMo / Llama 3.2 text has no chat at all, and their reduced
# vocabulary has no ChatML markers.
QWEN3_TOKENS = ("<think>", "</think>")
CHATML_TOKENS = ("<|im_start|>", "<|im_end|>")
REDUCED_VOCAB = 1000  # fewer tokens: a vocabulary cut down to one format's texts


def recognise_format(chat_template: str, tokens: Collection[str], vocab_size: int) -> tuple[str, str] | None:
    """(format, why) for a tokenizer with this chat template (\"\" if none), these added / special
    tokens and this many tokens; None when it does not tell (e.g. a Llama 3 or Phi-3 chat
    template, which any format could have been trained on)."""
    template = chat_template or ""
    qwen3 = [t for t in QWEN3_TOKENS if t in tokens or t in template]
    chatml = all(t in tokens for t in CHATML_TOKENS)
    if qwen3:
        return "nvarc", f"Qwen3 tokens ({', '.join(qwen3)}), NVARC's base model"
    if chatml and not template:
        return "nvarc", "ChatML turn tokens and no chat template, as NVARC's reduced Qwen3 vocabulary"
    if chatml and CHATML_TOKENS[0] in template:
        return ARC24, "a ChatML chat template without Qwen3's tokens, as arc24's SmolLM2 / Qwen2.5"
    if not chatml and not template:
        return "architects", "no chat template and no ChatML tokens: a plain-text model, as the ARChitects' Mistral / Llama"
    if not chatml and vocab_size < REDUCED_VOCAB:
        return "architects", f"a reduced vocabulary ({vocab_size} tokens) without ChatML tokens, as the ARChitects'"
    return None
