"""The transformers engine, the portable fallback: `generate` on left-padded batches, per-adapter
sub-batches through peft (each adapter merged into the weights while it serves, the base weights
restored bit for bit afterwards; at most `max_loaded_adapters` kept loaded, the least recently
used evicted first), the same outputs and log-probs as the vLLM engine (the contract of
`pipeline.sampling.generation`), and the exact depth-first search of `pipeline.sampling.search`,
batched over views by `pipeline.sampling.batched_search`.

torch, transformers and peft are imported where they are used: importing this module (the
sampling stage does, to choose an engine) loads none of them.
"""
from __future__ import annotations

import contextlib
import gc
import os
import time
import warnings
import zlib
from pathlib import Path
from typing import Sequence

from pipeline.core.models import load_model_and_tokenizer, quiet, resolve_dtype
from pipeline.core.settings import lora_targets_embeddings
from pipeline.sampling.generation import Completion, Request, cuda_available, decode_completion
from pipeline.core.settings import SAMPLE
from pipeline.sampling.batched_search import View, search_views
from pipeline.sampling.search import stop_at_strings


class _LogprobRecorder:
    """A logits processor that records the raw log-prob of every generated token with O(batch ×
    vocab) memory: at step t it still holds step t-1's log-softmax and reads off the token that
    was chosen (now the last input id).  It runs last in the processor list: with temperature
    sampling (no top-k/top-p) the only processor before it divides by the temperature, which is
    undone here so the log-probs are the raw ones, as vLLM reports them."""

    def __init__(self, temperature: float):
        self.scale = temperature if temperature > 0 else 1.0
        self.previous = None
        self.steps: list = []  # per step: (batch,) log-prob of the chosen token

    def __call__(self, input_ids, scores):
        import torch

        if self.previous is not None:
            self.steps.append(self.previous.gather(1, input_ids[:, -1:]).squeeze(1))
        self.previous = torch.log_softmax(scores.float() * self.scale, dim=-1)
        return scores

    def finish(self, last_tokens):
        if self.previous is not None:
            self.steps.append(self.previous.gather(1, last_tokens[:, None]).squeeze(1))
            self.previous = None
        return self.steps


def _stop_on_strings(engine: "TransformersEngine", stop: tuple[str, ...], prompt_width: int):
    """A transformers StoppingCriteria: a row is done once the text it generated (the prompt
    excluded, as in vLLM; transformers' own `stop_strings` also matches across the prompt)
    contains a stop string.  Only rows whose last token holds a stop string's last character
    decode a short tail."""
    import torch
    from transformers import StoppingCriteria

    last_chars = {s[-1] for s in stop}
    tail = max(len(s) for s in stop) + 2  # tokens: each decodes to >= 1 character

    class StopOnStrings(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
            start = max(prompt_width, input_ids.shape[1] - tail)
            for row, tokens in enumerate(input_ids[:, start:].tolist()):
                if tokens and any(ch in engine._piece(tokens[-1]) for ch in last_chars):
                    text = engine.tokenizer.decode(tokens)
                    done[row] = any(s in text for s in stop)
            return done

    return StopOnStrings()


class TransformersEngine:
    """transformers `generate`: left-padded batches, per-adapter sub-batches through peft.

    `batch_size` caps the rows of one padded batch (a call with more requests runs several)."""

    name = "transformers"

    def __init__(self, model_dir: str | os.PathLike | None, tokenizer=None, *, dtype: str | None = "float32",
                 device: str | None = None, batch_size: int = 8, max_loaded_adapters: int = 4, merge_adapters: bool = True, seed: int = 0, model=None):
        """`model_dir` is loaded with `models.load_model_and_tokenizer`; or pass an already built
        `model` (and its `tokenizer`) with `model_dir=None` (benchmarks on random weights).
        `dtype`: a precision name resolved on the device (`models.resolve_dtype`: None is the
        stage default, `auto` bf16 where native)."""
        self.device = device or ("cuda" if cuda_available() else "cpu")
        if model is None:
            model, loaded_tokenizer = load_model_and_tokenizer(model_dir, dtype=resolve_dtype(dtype, self.device),
                                                               device=self.device)
            tokenizer = tokenizer or loaded_tokenizer
        elif tokenizer is None:
            raise ValueError("an already built model needs its tokenizer")
        self.model, self.tokenizer = model.eval(), tokenizer
        self.eos_id, self.pad_id = self.tokenizer.eos_token_id, self.tokenizer.pad_token_id
        # A clean generation config: a checkpoint's sampling defaults (top_p, temperature, ...)
        # would otherwise be merged into every call and change what "greedy" means.
        from transformers import GenerationConfig
        self.model.generation_config = GenerationConfig(eos_token_id=self.eos_id, pad_token_id=self.pad_id,
                                                        bos_token_id=self.tokenizer.bos_token_id)
        self.batch_size = max(1, int(batch_size))
        self.max_loaded_adapters = max(1, int(max_loaded_adapters))
        self.merge_adapters = merge_adapters
        self.seed = seed
        self.peft_model = None
        self._adapters: dict[str, str] = {}  # resolved path -> peft adapter name, least recently used first
        self._pieces: dict[int, str] = {}    # token id -> its text, for stop strings

    # --- adapters
    def _load(self, adapter: str) -> str:
        """The peft name of `adapter`, loading it (and wrapping the model) the first time."""
        from peft import PeftModel

        key = str(Path(adapter).resolve())
        name = self._adapters.pop(key, None)  # put back last: the dict runs least recently used first
        if name is None:
            name = f"a{zlib.crc32(key.encode()) % 10**8}_{len(self._adapters)}"  # not hash(): salted per process
            with quiet(), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                if self.peft_model is None:
                    self.peft_model = PeftModel.from_pretrained(self.model, key, adapter_name=name, is_trainable=False)
                else:
                    self.peft_model.load_adapter(key, adapter_name=name, is_trainable=False)
            self.peft_model.eval()
        self._adapters[key] = name
        self._evict(keep=name)
        return name

    @contextlib.contextmanager
    def _serving(self, adapter: str | None):
        """The module that serves `adapter` (None: the base model, adapters disabled).

        With `merge_adapters` the adapter is merged into the base weights for the duration (an
        unmerged LoRA costs 15-30 % per token on CPU, cpu-recipes.md, and more when the cores
        are shared), then unmerged and the base weights restored bit for bit from a copy."""
        if adapter is None:
            if self.peft_model is None:
                yield self.model
            else:
                with self.peft_model.disable_adapter():
                    yield self.peft_model
            return
        name = self._load(adapter)
        self.peft_model.set_adapter(name)
        # a LoRA on the embedding or the head is served unmerged: where the model ties the two
        # weights, merging one delta would change the other layer too
        if not self.merge_adapters or lora_targets_embeddings(self.peft_model.peft_config[name].target_modules):
            yield self.peft_model
            return
        import torch
        from peft.tuners.lora import LoraLayer

        layers = [m for m in self.peft_model.modules() if isinstance(m, LoraLayer) and name in m.lora_A]
        saved = [m.get_base_layer().weight.detach().clone() for m in layers]
        self.peft_model.merge_adapter([name])
        try:
            yield self.peft_model
        finally:
            self.peft_model.unmerge_adapter()
            with torch.no_grad():
                for m, weight in zip(layers, saved):
                    m.get_base_layer().weight.copy_(weight)

    serving = _serving  # public name: the module serving an adapter (rescore scores with it)

    def _evict(self, keep: str) -> None:
        while len(self._adapters) > self.max_loaded_adapters:
            key, name = next((k, n) for k, n in self._adapters.items() if n != keep)
            self.peft_model.delete_adapter(name)
            del self._adapters[key]

    # --- generation
    def generate(self, requests: Sequence[Request], temperature: float = 0.0) -> list[Completion]:
        results: list[Completion | None] = [None] * len(requests)
        groups: dict[tuple, list[int]] = {}
        for i, r in enumerate(requests):
            groups.setdefault((r.adapter, tuple(r.stop)), []).append(i)
        for (adapter, stop), indices in groups.items():
            # longest first within a group: similar lengths share a batch, less padding
            indices = sorted(indices, key=lambda i: -len(requests[i].prompt_ids))
            with self._serving(adapter) as model:
                for start in range(0, len(indices), self.batch_size):
                    batch = indices[start:start + self.batch_size]
                    for i, c in zip(batch, self._generate_batch(model, [requests[i] for i in batch], stop, temperature)):
                        results[i] = c
        return results

    def search(self, requests: Sequence[Request], min_prob: float, max_candidates: int | None = None,
               deadline: float | None = None, *, batch_views: int = SAMPLE.dfs_batch_views,
               batch_seconds: float | None = None, task_seconds: float | None = None, groups=None,
               spent: dict | None = None, on_done=None, clock=time.monotonic, propose=None
               ) -> list[list[Completion] | None]:
        """Exact DFS (`pipeline.sampling.batched_search.search_views`): every completion of each
        request with probability >= `min_prob`, best first, `batch_views` requests of one adapter
        searched together (1: one at a time, the batch-1 search).  `deadline`: a `clock()` value.
        `groups[i]` (the task of request i), `spent`, `batch_seconds`, `task_seconds`: the caps;
        `on_done(i, completions, stopped, stats)` is called as each request finishes (stats:
        `nodes`, the one-token forwards its search took).  `propose(i)`: speculative DFS, the
        answers to verify for request i (`pipeline.sampling.speculation`; None: a first view).
        Returns per request its completions, or None for one the deadline left unfinished."""
        results: list[list[Completion] | None] = [None] * len(requests)
        by_adapter: dict[tuple, list[int]] = {}
        for i, r in enumerate(requests):
            by_adapter.setdefault((r.adapter, tuple(r.stop)), []).append(i)
        spent = {} if spent is None else spent
        for (adapter, stop), indices in by_adapter.items():
            check = stop_at_strings(self.tokenizer, stop)

            def done(k, found, stopped, stats, indices=indices):
                i = indices[k]
                results[i] = [Completion(list(f.token_ids), decode_completion(self.tokenizer, list(f.token_ids), self.eos_id),
                                         f.logprob, f.finish_reason) for f in found]
                if on_done is not None:
                    on_done(i, results[i], stopped, stats)

            with self._serving(adapter) as model:
                search_views(model, [View(tuple(requests[i].prompt_ids), requests[i].max_tokens) for i in indices],
                             min_prob, self.eos_id, check, max_candidates, batch_views=batch_views,
                             batch_seconds=batch_seconds, task_seconds=task_seconds,
                             groups=None if groups is None else [groups[i] for i in indices], spent=spent,
                             deadline=deadline, clock=clock, on_done=done,
                             propose=None if propose is None else (lambda k, indices=indices: propose(indices[k])))
        return results

    def _piece(self, token: int) -> str:
        piece = self._pieces.get(token)
        if piece is None:
            piece = self._pieces[token] = self.tokenizer.decode([token])
        return piece

    def _stop_cut(self, tokens: list[int], stop: tuple[str, ...]) -> int | None:
        """Length of the shortest prefix of `tokens` whose text contains a stop string (as vLLM
        checks it, on the decoded text), or None.  Only prefixes ending in a token that holds the
        last character of a stop string are decoded."""
        if not stop:
            return None
        last_chars = {s[-1] for s in stop}
        for i, token in enumerate(tokens):
            if any(ch in self._piece(token) for ch in last_chars):
                text = self.tokenizer.decode(tokens[:i + 1])
                if any(s in text for s in stop):
                    return i + 1
        return None

    def _generate_batch(self, model, requests: Sequence[Request], stop: tuple[str, ...],
                        temperature: float) -> list[Completion]:
        import torch
        from transformers import GenerationConfig, LogitsProcessorList, StoppingCriteriaList

        width = max(len(r.prompt_ids) for r in requests)
        ids = torch.full((len(requests), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(requests), width), dtype=torch.long)
        for row, r in enumerate(requests):
            ids[row, width - len(r.prompt_ids):] = torch.tensor(r.prompt_ids, dtype=torch.long)
            mask[row, width - len(r.prompt_ids):] = 1
        max_new = max(r.max_tokens for r in requests)
        sampling = temperature > 0
        config = GenerationConfig(max_new_tokens=max_new, do_sample=sampling,
                                  temperature=temperature if sampling else 1.0, top_k=0 if sampling else None,
                                  top_p=1.0, eos_token_id=self.eos_id, pad_token_id=self.pad_id,
                                  return_dict_in_generate=True)
        recorder = _LogprobRecorder(temperature)
        seed = requests[0].seed if requests[0].seed is not None else self.seed
        with torch.inference_mode(), torch.random.fork_rng(devices=[]), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.manual_seed(seed)
            out = model.generate(input_ids=ids.to(self.model.device), attention_mask=mask.to(self.model.device),
                                 generation_config=config, logits_processor=LogitsProcessorList([recorder]),
                                 stopping_criteria=StoppingCriteriaList([_stop_on_strings(self, stop, width)] if stop else []))
        new = out.sequences[:, width:].cpu()
        steps = recorder.finish(new[:, -1].to(recorder.previous.device) if recorder.previous is not None else None)
        logprobs = torch.stack(steps, dim=1).cpu() if steps else torch.zeros((len(requests), 0))
        completions = []
        for row, r in enumerate(requests):
            tokens = new[row].tolist()[:r.max_tokens]
            cut = tokens.index(self.eos_id) + 1 if self.eos_id in tokens else None
            stop_cut = self._stop_cut(tokens[:cut], stop)
            cut = stop_cut or cut
            finish = "stop" if cut is not None else "length"
            tokens = tokens[:cut] if cut is not None else tokens
            logprob = float(logprobs[row, :len(tokens)].sum()) if tokens else 0.0
            completions.append(Completion(tokens, decode_completion(self.tokenizer, tokens, self.eos_id), logprob, finish))
        return completions

    def close(self) -> None:
        self.model = self.peft_model = None
        self._adapters.clear()
        gc.collect()
        if cuda_available():
            import torch
            torch.cuda.empty_cache()
