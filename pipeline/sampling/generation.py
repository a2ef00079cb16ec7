"""What an engine takes and returns, and what both engines share (`pipeline.sampling.engines`
chooses and starts one):

* `Request`: prompt token ids, `max_tokens`, the adapter (None: the base model), a per-request
  seed and stop strings;
* `Completion`, the same from both engines for the same request (greedy decoding agrees token
  for token on the same weights; tests check it on a tiny model, with and without per-task LoRAs):
  `token_ids` (the end-of-turn token included when generation stopped on it), `text` (those
  tokens decoded, the final end-of-turn token left out: `decode_completion`),
  `cumulative_logprob` (the generated tokens' log-probabilities under the model's raw
  distribution, before temperature; vLLM's default `raw_logprobs`), `finish_reason` ("stop":
  end-of-turn, or a stop string completed, its token the last one kept; "length": `max_tokens`);
* `call_with_watchdog`: vLLM can hang without a log line (spec §9.4), so a call runs in a daemon
  thread and raises `GenerationTimeout` when it does not return in time; the caller then keeps
  what it wrote and exits (a hung CUDA call cannot be cancelled from Python);
* `cuda_available`, `process_dtype`: this process's device and the precision a stage asked for
  resolved on it (`models.resolve_dtype`: None and `auto` become a dtype).
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Callable, Protocol, Sequence

from pipeline.core import models


class GenerationTimeout(RuntimeError):
    """A generate call did not return within its watchdog timeout (a hang, or the deadline)."""


@dataclass(frozen=True)
class Request:
    prompt_ids: tuple[int, ...]
    max_tokens: int
    adapter: str | None = None   # peft adapter directory; None = the base model
    seed: int | None = None      # per-request sampling seed (temperature > 0)
    stop: tuple[str, ...] = ()   # stop after the token that completes one of these strings


@dataclass
class Completion:
    token_ids: list[int]
    text: str
    cumulative_logprob: float | None
    finish_reason: str           # "stop" | "length"

    @property
    def n_tokens(self) -> int:
        return len(self.token_ids)


class Engine(Protocol):
    name: str

    def generate(self, requests: Sequence[Request], temperature: float = 0.0) -> list[Completion]: ...

    def close(self) -> None: ...


# ----------------------------------------------------------------------------- shared

def cuda_available() -> bool:
    try:
        import torch
    except ImportError:  # pragma: no cover
        return False
    return torch.cuda.is_available()


def process_dtype(requested: str | None = None) -> str:
    """`models.resolve_dtype` on this process's device: None is the device's default (float32 on
    CPU, bf16 on CUDA cards that compute it natively, else float16), `auto` bf16 where native."""
    return models.resolve_dtype(requested, "cuda" if cuda_available() else "cpu")


def call_with_watchdog(fn: Callable, timeout_s: float | None, what: str = "generate"):
    """`fn()` in a daemon thread; its result, its exception, or GenerationTimeout after `timeout_s`.

    The thread of a timed-out call is abandoned (Python cannot cancel it): the caller must stop
    using the engine and, in a CLI, exit the process once its results are safely written."""
    if timeout_s is None:
        return fn()
    box: dict = {}

    def target():
        try:
            box["result"] = fn()
        except BaseException as e:  # re-raised in the caller's thread
            box["error"] = e

    thread = threading.Thread(target=target, name=f"watchdog-{what}", daemon=True)
    thread.start()
    thread.join(max(0.0, timeout_s))
    if thread.is_alive():
        raise GenerationTimeout(f"{what} did not return within {timeout_s:.0f} s")
    if "error" in box:
        raise box["error"]
    return box["result"]


def decode_completion(tokenizer, token_ids: Sequence[int], eos_id: int) -> str:
    """A completion's `text`: its tokens decoded, the final end-of-turn token left out (the same in
    both engines, so texts are byte-identical whenever the tokens are)."""
    ids = list(token_ids)
    if ids and ids[-1] == eos_id:
        ids = ids[:-1]
    return tokenizer.decode(ids, skip_special_tokens=False)
