"""Stages as watched subprocesses: how `kaggle_run` runs `python -m pipeline STAGE` (and pip).

`run_parallel` starts commands at once, each in its own process group with its output pumped
into a log file (`_Worker`), and ends a group (SIGTERM, then SIGKILL after a grace) at the
deadline or when it has printed nothing for `watchdog_s` (a hang); `run_stage` runs one command.
Each command ends as a `StageResult` (ok | failed | timeout, seconds, return code, reason, log
file): a stage's crash, hang or timeout is never an exception. `log_body` reads a stage's log
without the `$ command` line written first.

Standard library only: the notebook runs it before the offline install.
"""
from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence


@dataclass
class StageResult:
    stage: str
    status: str                  # ok | failed | timeout | skipped
    seconds: float = 0.0
    returncode: int | None = None
    reason: str = ""
    log: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"


class _Worker:
    """One subprocess in its own process group, its output pumped into a log file."""

    def __init__(self, cmd: Sequence[str], log: Path, env: Mapping[str, str] | None, cwd):
        log.parent.mkdir(parents=True, exist_ok=True)
        self.log_path, self.log = log, open(log, "ab")
        self.log.write(("$ " + " ".join(map(str, cmd)) + "\n").encode())
        self.log.flush()
        self.started = self.last_output = time.monotonic()
        self.killed_because = ""
        self.proc = subprocess.Popen([str(c) for c in cmd], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, env=dict(env) if env is not None else None,
                                     cwd=cwd, start_new_session=True)
        self.pump = threading.Thread(target=self._pump, daemon=True)
        self.pump.start()

    def _pump(self) -> None:
        fd = self.proc.stdout.fileno()
        while chunk := os.read(fd, 65536):
            self.log.write(chunk)
            self.log.flush()
            self.last_output = time.monotonic()

    def signal_group(self, sig: int) -> None:
        try:
            os.killpg(self.proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def terminate(self, because: str) -> None:
        """SIGTERM the whole group; `run_parallel` sends SIGKILL if it is still there after a grace."""
        self.killed_because, self.terminated_at = because, time.monotonic()
        self.signal_group(signal.SIGTERM)

    def finish(self, stage: str) -> StageResult:
        rc = self.proc.wait()
        self.signal_group(signal.SIGKILL)  # children the stage left behind (GPU memory, open pipes)
        self.pump.join(timeout=5)
        self.proc.stdout.close()
        self.log.close()
        seconds = round(time.monotonic() - self.started, 3)
        if self.killed_because:
            return StageResult(stage, "timeout", seconds, rc, self.killed_because, str(self.log_path))
        if rc != 0:
            return StageResult(stage, "failed", seconds, rc, f"exit code {rc}: {_last_line(self.log_path)}",
                               str(self.log_path))
        return StageResult(stage, "ok", seconds, rc, "", str(self.log_path))


def log_body(path) -> str:
    """A stage log without the `$ command` line `run_parallel` writes first."""
    return Path(path).read_text(encoding="utf-8", errors="replace").split("\n", 1)[-1]


def _last_line(path: Path, limit: int = 300) -> str:
    with open(path, "rb") as f:
        f.seek(max(0, f.seek(0, 2) - 4096))
        lines = [l for l in f.read().decode("utf-8", "replace").splitlines() if l.strip()]
    return lines[-1].strip()[:limit] if lines else ""


def run_parallel(cmds: Sequence[Sequence[str]], deadline_at: float, logs: Sequence[str | os.PathLike],
                 watchdog_s: float, envs: Sequence[Mapping[str, str] | None] | None = None,
                 cwd=None, stage: str = "stage", poll_s: float = 0.2, kill_grace_s: float = 5.0) -> list[StageResult]:
    """Run commands at once and wait for all; kill each one's process group at `deadline_at`
    (epoch seconds) or after `watchdog_s` without output (SIGTERM, then SIGKILL `kill_grace_s`
    later). Never raises for a stage failure."""
    envs = list(envs) if envs is not None else [None] * len(cmds)
    workers: list[_Worker | StageResult] = []
    for cmd, log, env in zip(cmds, logs, envs):
        try:
            workers.append(_Worker(cmd, Path(log), env, cwd))
        except OSError as e:
            workers.append(StageResult(stage, "failed", 0.0, None, f"could not start: {e}", str(log)))
    running = [w for w in workers if isinstance(w, _Worker)]
    while running:
        now, mono = time.time(), time.monotonic()
        for w in list(running):
            if w.proc.poll() is not None:
                running.remove(w)
            elif w.killed_because:
                if mono - w.terminated_at > kill_grace_s:
                    w.signal_group(signal.SIGKILL)
            elif now >= deadline_at:
                w.terminate(f"deadline: killed after {mono - w.started:.0f} s")
            elif mono - w.last_output > watchdog_s:
                w.terminate(f"watchdog: no output for {watchdog_s:.0f} s (hung)")
        time.sleep(poll_s if running else 0)
    return [w.finish(stage) if isinstance(w, _Worker) else w for w in workers]


def run_stage(cmd: Sequence[str], deadline_at: float, log: str | os.PathLike, watchdog_s: float,
              env: Mapping[str, str] | None = None, cwd=None, stage: str = "stage") -> StageResult:
    """Run one command as a stage (see `run_parallel`): a StageResult, never an exception."""
    return run_parallel([cmd], deadline_at, [log], watchdog_s, [env], cwd, stage)[0]
