"""A stage killed mid-compile cannot poison the stages after it (issue 22, found by the rehearsal):
the Kaggle run removes a kernel left broken in torch's compile cache before each model stage
(pipeline/core/compile_cache.py; its rule on a tmp folder: tests/core/test_compile_cache.py).

Real torch inductor and a real run: the model stage is a stand-in that compiles with
torch.compile (as vLLM does when it starts) into the cache folder of the run's environment.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from pipeline.kaggle import run as kaggle_run
from pipeline.kaggle.run import RERUN_ENV

from test_kaggle_run import FAKE_STAGES, local_config  # the run's stand-in stages

# a stage that compiles first (a tiny function, inductor's C++ backend), then does what the stand-in does
COMPILING_STAGES = r'''
import os, sys
if sys.argv[1] == "ttft":
    import torch
    double = torch.compile(lambda x: (x * 2 + 1).sum())
    assert float(double(torch.ones(8))) == 24.0
    print("compiled", flush=True)
exec(compile(open(os.environ["FAKE_STAGES_FILE"]).read(), "fake_stages", "exec"))
'''


@pytest.mark.slow
def test_a_kernel_left_empty_by_a_killed_compile_is_compiled_again_by_the_next_stage(kaggle_tree):
    cache = kaggle_tree / "inductor"
    (kaggle_tree / "fake_stages.py").write_text(FAKE_STAGES)
    script = kaggle_tree / "compiling_stages.py"
    script.write_text(COMPILING_STAGES)
    env = {**os.environ, "FAKE": json.dumps({"ttft": "ok", "sample": "ok", "vote": "ok"}), RERUN_ENV: "1",
           "FAKE_STAGES_FILE": str(kaggle_tree / "fake_stages.py"), "TORCHINDUCTOR_CACHE_DIR": str(cache),
           # one process, no precompiled header (155 MB): the kernel is what this test is about
           "TORCHINDUCTOR_COMPILE_THREADS": "1", "TORCHINDUCTOR_CPP_CACHE_PRECOMPILE_HEADERS": "0"}

    def run():
        return kaggle_run.run(local_config(), env=env, cwd=kaggle_tree / "working",
                              stage_command=[sys.executable, str(script)])

    first = run()  # compiles the kernel into the run's cache folder
    assert first.results["ttft"].ok and not first.warnings
    kernels = sorted(cache.rglob("*.main.so"))
    assert kernels
    for path in kernels:  # what a stage killed while g++ wrote them leaves
        path.write_bytes(b"")
    # without the run's cleaning, the next process that needs the kernel cannot load it
    direct = subprocess.run([sys.executable, str(script), "ttft"], env={**env, "FAKE": "{}"},
                            capture_output=True, text=True)
    assert direct.returncode != 0 and "file too short" in direct.stderr, direct.stderr[-2000:]

    second = run()
    assert second.results["ttft"].ok, second.results["ttft"]
    assert {s: r.status for s, r in second.results.items() if s in ("ttft", "sample", "vote")} == \
        {"ttft": "ok", "sample": "ok", "vote": "ok"}
    [warning] = second.warnings
    assert warning.startswith("ttft: compile cache: removed ") and str(kernels[0]) in warning and "(empty)" in warning
    assert all(path.stat().st_size > 0 for path in kernels)  # compiled again, whole
