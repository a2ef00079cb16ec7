"""Several rehearsal cases at once (notebook_builder/rehearse.py): one worker process per group of
cores, each case's notebook and stages pinned to its worker's cores.

A case is mostly one-thread work (process starts, imports, vLLM's start and exit, tokenizing, the
kernel) with a little compute on a 135M model, so on two cores two cases side by side, each on a
core of its own, finish sooner than one after the other on both. Each worker pins itself to its
cores (`os.sched_setaffinity`, inherited by the kernel and every stage) and says so in the
environment vLLM and torch read for their thread count (`OMP_NUM_THREADS`,
`VLLM_CPU_OMP_THREADS_BIND`): two cases that both bound their threads to every core would fight
over them, as a loaded machine does. The cores a stage runs on are a device, which the rehearsal
substitutes anyway; every case still runs its whole notebook under its own layout.

Each case keeps its own tree (WORKDIR per case); what cases share is read-only (the prepared
notebook and model) or safe to share between processes (torch's compile cache: inductor locks
each kernel while it compiles it; core/compile_cache.py leaves locked kernels alone).
"""
from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Mapping, Sequence

CASE_MEMORY_GB = 4.0  # one case's peak: a vLLM stage ~2.8 GB (its profile's peak host), the kernel, the rest


def usable_cores() -> list[int]:
    return sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))


def available_memory_gb(meminfo: str | None = None) -> float | None:
    """MemAvailable of /proc/meminfo in GB (None where there is none)."""
    try:
        text = meminfo if meminfo is not None else Path("/proc/meminfo").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 1024 ** 2
    return None


def default_jobs(cores: int, memory_gb: float | None, cases: int) -> int:
    """Cases at once: one per core, as many as memory holds (CASE_MEMORY_GB each), at most `cases`."""
    fit = cores if memory_gb is None else int(memory_gb // CASE_MEMORY_GB)
    return max(1, min(cores, fit, cases))


def core_groups(cores: Sequence[int], jobs: int) -> list[list[int]]:
    """`jobs` disjoint groups of `cores`, as even as they go (contiguous: neighbours share caches)."""
    jobs = max(1, min(jobs, len(cores)))
    size, extra = divmod(len(cores), jobs)
    groups, at = [], 0
    for i in range(jobs):
        n = size + (i < extra)
        groups.append(list(cores[at:at + n]))
        at += n
    return groups


def pinned_env(group: Sequence[int]) -> dict[str, str]:
    """What a worker on `group` tells the processes it starts: its cores, as many threads."""
    return {"OMP_NUM_THREADS": str(len(group)), "VLLM_CPU_OMP_THREADS_BIND": ",".join(map(str, group))}


def _pin(groups) -> None:
    """Pool initializer: take a free group of cores, pin this worker (and all it starts) to it."""
    group = groups.get()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, group)
    os.environ.update(pinned_env(group))


def _case(prepared, layout: str, workdir: str, timeout: int) -> dict:
    from notebook_builder.rehearse import rehearse_layout
    return rehearse_layout(prepared, layout, workdir, timeout)


def rehearse_cases(cases: Sequence[tuple[object, str, Path]], jobs: int | None = None, timeout: int = 3600
                   ) -> list[dict]:
    """Run `cases` ((prepared, layout, workdir) each; rehearse.prepare, rehearse.rehearse_layout)
    `jobs` at a time (default `default_jobs`), in the given order (put the longest first); returns
    rehearse_layout's results in the same order. One job: in this process, one case after another."""
    if not cases:
        return []
    cores = usable_cores()
    jobs = jobs or default_jobs(len(cores), available_memory_gb(), len(cases))
    if jobs <= 1:
        return [_case(prepared, layout, str(workdir), timeout) for prepared, layout, workdir in cases]
    with pinned_pool(cores, jobs) as pool:
        futures = [pool.submit(_case, prepared, layout, str(workdir), timeout) for prepared, layout, workdir in cases]
        return [f.result() for f in futures]


def pinned_pool(cores: Sequence[int], jobs: int) -> ProcessPoolExecutor:
    """`jobs` worker processes, each pinned to its own group of `cores` (`core_groups`, `_pin`)."""
    context = multiprocessing.get_context("spawn")  # no fork of a process holding threads (vLLM, torch)
    groups = core_groups(cores, jobs)
    free = context.Queue()
    for group in groups:
        free.put(group)
    return ProcessPoolExecutor(max_workers=len(groups), mp_context=context, initializer=_pin, initargs=(free,))


def jobs_from_env(env: Mapping[str, str], name: str = "REHEARSAL_JOBS") -> int | None:
    """`REHEARSAL_JOBS=N` (N cases at once; 1: one after another); None: `default_jobs`."""
    value = env.get(name, "").strip()
    if not value:
        return None
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"{name}={value!r}: expected a whole number of cases at once, 1 or more")
    return int(value)
