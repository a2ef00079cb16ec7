"""Timing records: every stage appends what it spent, per task and per phase, to one JSONL file.

A record is a flat dict (`TimingRecord`; `TimingLog.record` writes the stages' records,
`orchestrator_record` the notebook run's own, which carry no `task_id` and count `t` from the
run's start):
  {"stage": "ttft"|"sample"|..., "event": "task"|"phase"|"stage"|"skipped"|"failed",
   "task_id": str|None, "phase": str|None ("startup", "load_model", "augment", "encode", "generate", ...),
   "seconds": float, "tokens_trained": int, "prompt_tokens": int, "generated_tokens": int,
   "steps": int, "predictions": int, "peak_host_mb": float, "peak_device_mb": float|None,
   "device": str, "pid": the writing process, "time": unix seconds at the end}
Missing counters are simply absent.  A process that ends normally (not killed) appends one
`{"event": "exit", "pid": ...}` record to each timing file it wrote; `profile` uses its absence
to leave out the records of processes that were killed and restarted.  `python -m pipeline profile RUN_DIR` reads every
`timing.jsonl` under RUN_DIR.
"""
from __future__ import annotations

import atexit
import os
import resource
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, TypedDict

from pipeline.core.files import append_jsonl

TIMING_FILE = "timing.jsonl"
# the orchestrator's end events of a stage (`orchestrator_record`) -> the stage's status
ORCHESTRATOR_END = {"end": "ok", "failed": "failed", "timeout": "timeout", "skipped": "skipped"}


def peak_host_mb() -> float:
    """Peak resident memory of this process (MiB)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024 * 1024) if sys.platform == "darwin" else rss / 1024


def _torch():
    return sys.modules.get("torch")  # only report device memory if the stage already uses torch


def peak_device_mb() -> float | None:
    torch = _torch()
    if torch is not None and torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return None


def device_name() -> str:
    torch = _torch()
    if torch is not None and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.cuda.current_device())
    return "cpu"


_startup_pending = False  # set by `python -m pipeline`: the next timing log records the process start-up


def mark_cli_process() -> None:
    """Called by `python -m pipeline` before it imports a stage: the stage's first timing log then
    records the interpreter start, imports and argument parsing as a `startup` phase (a stage run
    in-process, as tests do, has no start-up of its own and records none)."""
    global _startup_pending
    _startup_pending = True


def process_age() -> float:
    """Seconds since this process started."""
    import psutil
    return max(0.0, time.time() - psutil.Process().create_time())


_exit_noted: set = set()  # (file, pid) pairs that get an exit record when this process ends normally


def _note_exit(path: Path, stage: str) -> None:
    key = (str(path), os.getpid())  # a forked child is a process of its own
    if key not in _exit_noted:
        _exit_noted.add(key)
        atexit.register(_write_exit, path, stage, os.getpid())


def _write_exit(path: Path, stage: str, pid: int) -> None:
    if os.getpid() == pid:
        append_jsonl(path, [{"stage": stage, "event": "exit", "task_id": None, "seconds": 0.0, "pid": pid,
                             "time": round(time.time(), 3)}])


class TimingRecord(TypedDict, total=False):
    """One line of timing.jsonl (counters are present only when measured; an orchestrator record
    adds its stage's facts: reason, returncode, adapters, predictions, share_s, ...)."""
    stage: str
    event: str                 # task | phase | stage | skipped | failed | exit | (orchestrator) start, end, ...
    task_id: str | None        # absent in orchestrator records: that is how `profile` tells them apart
    phase: str
    seconds: float
    tokens_trained: int
    prompt_tokens: int
    generated_tokens: int
    steps: int
    predictions: int
    peak_host_mb: float
    peak_device_mb: float | None
    device: str
    pid: int
    time: float                # unix seconds at the end (stage records)
    t: float                   # seconds since the run began (orchestrator records)


def orchestrator_record(path: str | Path, stage: str, event: str, seconds: float, since: float,
                        **extra) -> TimingRecord:
    """The notebook run's own record of a stage (start, end, skip, share, ...): its clock is the
    run's (`t`, seconds since `since`), empty extras are left out."""
    rec: TimingRecord = {"stage": stage, "event": event, "seconds": round(seconds, 3),
                         "t": round(time.time() - since, 3)}
    rec.update({k: v for k, v in extra.items() if v not in (None, "")})  # type: ignore[typeddict-item]
    append_jsonl(path, [rec])
    return rec


class TimingLog:
    """Append-only timing records for one stage of a run (a `path` of None records nothing)."""

    def __init__(self, path: str | Path | None, stage: str):
        global _startup_pending
        self.path = Path(path) if path else None
        self.stage = stage
        if _startup_pending and self.path is not None:
            _startup_pending = False
            self.record("phase", process_age(), phase="startup")

    def record(self, event: str, seconds: float, task_id: str | None = None, **counters) -> TimingRecord:
        rec = {"stage": self.stage, "event": event, "task_id": task_id, "seconds": round(seconds, 4),
               **{k: v for k, v in counters.items() if v is not None},
               "peak_host_mb": round(peak_host_mb(), 1), "peak_device_mb": peak_device_mb(),
               "device": device_name(), "pid": os.getpid(), "time": round(time.time(), 3)}
        if self.path is not None:
            append_jsonl(self.path, [rec])
            _note_exit(self.path, self.stage)
        return rec

    @contextmanager
    def measure(self, event: str, task_id: str | None = None, **counters) -> Iterator[dict]:
        """Time a block; the caller may fill counters (tokens, steps, ...) into the yielded dict."""
        fields = dict(counters)
        start = time.perf_counter()
        try:
            yield fields
        finally:
            self.record(event, time.perf_counter() - start, task_id, **fields)
