"""TTFT's process pool: one spawned worker per device (`worker.worker_process`), each with its own
CUDA_VISIBLE_DEVICES, pulling units from one queue; the main process only relays their reports
and collects why a worker failed.
"""
from __future__ import annotations

import os
import queue
from typing import Sequence

import torch

from pipeline.ttft.worker import worker_process


def visible_devices(devices: Sequence[str]) -> list[str | None]:
    """CUDA_VISIBLE_DEVICES for each worker: the parent's visible list, indexed by cuda:N."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    visible = [v.strip() for v in env.split(",")] if env else None
    out = []
    for d in devices:
        if d == "cpu":
            out.append(None)
        else:
            i = int(d.split(":")[1])
            out.append(visible[i] if visible else str(i))
    return out


def run_processes(config, devices, tasks, profiles, units, unit_tokens, deadline_at, report) -> list[str]:
    """One spawned worker per device; the main process only relays their reports."""
    ctx = torch.multiprocessing.get_context("spawn")
    unit_queue, results = ctx.Queue(), ctx.Queue()
    for unit in units:
        unit_queue.put(unit)
    for _ in devices:
        unit_queue.put(None)
    needed = {t for u in units for t in u.task_ids}
    work = {t: tasks[t] for t in needed}
    procs = []
    for rank, (device, visible) in enumerate(zip(devices, visible_devices(devices))):
        p = ctx.Process(target=worker_process, name=f"ttft-worker{rank}",
                        args=(rank, device, visible, config, work, {t: profiles[t] for t in needed}, unit_tokens,
                              unit_queue, results, deadline_at, len(devices), os.getpid()))
        p.start()
        procs.append(p)
    errors = []

    def handle(message):
        if message[0] == "task":
            report(*message[1:])
        else:
            errors.append(message[2])

    try:
        while True:
            try:
                handle(results.get(timeout=0.5))
            except queue.Empty:
                if not any(p.is_alive() for p in procs):
                    break
        while not results.empty():  # anything sent just before the last worker exited
            handle(results.get())
    finally:
        for p in procs:
            p.join(timeout=5)
            if p.is_alive():
                p.kill()
    for rank, p in enumerate(procs):
        if p.exitcode:
            errors.append(f"worker {rank} ({devices[rank]}) exited with code {p.exitcode}")
    return errors
