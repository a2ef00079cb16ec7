"""Two branches of the Kaggle run that only Kaggle takes: the offline install from the wheels
dataset, and the competition rerun on the hidden test set (no placeholder shortcut).

    python -m pytest tests/test_kaggle_steps.py -q

The install runs the real `pip install --no-index --find-links WHEELS` on a wheel built here
(into a `PIP_TARGET` folder, so the virtualenv is left alone); the rerun runs the real `start`
and stand-in stages that record what they were asked to do.
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
import sys
import time
import zipfile
from pathlib import Path

from pipeline.core.files import read_jsonl
from pipeline.kaggle.run import RERUN_ENV, KaggleRun

from conftest import KAGGLE_TASK_IDS as TASK_IDS
from test_kaggle_run import local_config

PROBE = "arc_ttft_probe_pkg"                      # a package no environment has


def config(**overrides) -> dict:
    return local_config(**{"deadline_hours": 1.0, "watchdog_minutes": 5, **overrides})


def timing(kaggle_tree: Path) -> list[dict]:
    return list(read_jsonl(kaggle_tree / "working" / "run" / "timing.jsonl"))


def ended(kaggle_tree: Path, stage: str) -> dict:
    [record] = [r for r in timing(kaggle_tree) if r["stage"] == stage and r["event"] != "start" and "task_id" not in r]
    return record


# ----------------------------------------------------------------------------- install

def build_wheel(folder: Path, name: str = PROBE, version: str = "1.0") -> Path:
    """A minimal pure-Python wheel (one module, `VALUE = 42`) with a correct RECORD."""
    folder.mkdir(parents=True, exist_ok=True)
    info = f"{name}-{version}.dist-info"
    files = {f"{name}.py": b"VALUE = 42\n",
             f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode(),
             f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    digest = lambda data: base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    record = "".join(f"{path},sha256={digest(data)},{len(data)}\n" for path, data in files.items()) + f"{info}/RECORD,,\n"
    path = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as z:
        for name_in_zip, data in {**files, f"{info}/RECORD": record.encode()}.items():
            z.writestr(name_in_zip, data)
    return path


def pip_env(kaggle_tree: Path) -> dict:
    """The environment of the run (so of pip): installs go to a folder of the test, not the venv."""
    return {**os.environ, "PIP_TARGET": str(kaggle_tree / "site"), "PIP_DISABLE_PIP_VERSION_CHECK": "1",
            "PIP_NO_CACHE_DIR": "1", "PIP_NO_INPUT": "1"}


def install(kaggle_tree: Path, env: dict | None = None, started_at: float | None = None, **overrides) -> KaggleRun:
    run = KaggleRun(config(install_packages=[PROBE], **overrides), env=env or pip_env(kaggle_tree), started_at=started_at,
                    cwd=kaggle_tree / "working")
    run.start()
    run.install()
    return run


def test_install_is_skipped_when_every_package_already_imports(kaggle_tree):
    run = KaggleRun(config(install_packages=["json", "zipfile"]), env=pip_env(kaggle_tree), cwd=kaggle_tree / "working")
    run.start()
    run.install()
    assert run.results["install"].status == "skipped"
    assert ended(kaggle_tree, "install")["reason"] == ("already importable: json, zipfile (versions not checked: no "
                                                       f"requirements.txt in {kaggle_tree / 'wheels'})")
    assert not (kaggle_tree / "working" / "run" / "logs" / "install.log").exists()


def test_install_from_the_wheels_folder_uses_its_requirements_offline(kaggle_tree):
    wheels = kaggle_tree / "wheels"
    build_wheel(wheels)
    (wheels / "requirements.txt").write_text(f"{PROBE}==1.0\n")
    run = install(kaggle_tree)
    assert run.results["install"].status == "ok", run.results["install"]
    assert (kaggle_tree / "site" / f"{PROBE}.py").read_text() == "VALUE = 42\n"
    command = (kaggle_tree / "working" / "run" / "logs" / "install.log").read_text().splitlines()[0]
    assert command == (f"$ {sys.executable} -m pip install --no-index --find-links {wheels} "
                       f"-r {wheels / 'requirements.txt'}")
    assert ended(kaggle_tree, "install")["event"] == "end"
    assert [r["packages"] for r in timing(kaggle_tree) if r["stage"] == "install" and r["event"] == "start"] == [[PROBE]]


def test_install_without_requirements_installs_the_missing_packages_by_name(kaggle_tree):
    build_wheel(kaggle_tree / "wheels")
    run = install(kaggle_tree)
    assert run.results["install"].status == "ok", run.results["install"]
    assert (kaggle_tree / "site" / f"{PROBE}.py").is_file()
    command = (kaggle_tree / "working" / "run" / "logs" / "install.log").read_text().splitlines()[0]
    assert command.endswith(f"--find-links {kaggle_tree / 'wheels'} {PROBE}") and "--no-index" in command


def test_install_without_a_wheels_folder_fails_naming_the_package_and_the_folder(kaggle_tree):
    run = install(kaggle_tree)
    result = run.results["install"]
    assert result.status == "failed"
    assert result.reason == f"{PROBE} missing and no wheels folder at {kaggle_tree / 'wheels'}"
    assert ended(kaggle_tree, "install")["event"] == "failed" and ended(kaggle_tree, "install")["reason"] == result.reason
    assert not (kaggle_tree / "site").exists()


def test_a_wheel_missing_from_the_folder_fails_with_pips_own_reason(kaggle_tree):
    (kaggle_tree / "wheels").mkdir()
    (kaggle_tree / "wheels" / "requirements.txt").write_text(f"{PROBE}==1.0\n")
    run = install(kaggle_tree)
    result = run.results["install"]
    assert result.status == "failed" and result.returncode != 0
    assert result.reason.startswith(f"exit code {result.returncode}: ")
    assert "No matching distribution found" in result.reason and PROBE in result.reason
    assert not (kaggle_tree / "site" / f"{PROBE}.py").exists()


def test_install_is_skipped_when_the_deadline_leaves_too_little_time(kaggle_tree):
    build_wheel(kaggle_tree / "wheels")
    # the run started 59 min 58 s ago: 2 s of its hour are left, less than min_stage_seconds
    run = install(kaggle_tree, started_at=time.time() - 3598, min_stage_seconds=30)
    assert run.results["install"].status == "skipped" and ended(kaggle_tree, "install")["reason"] == "deadline"
    assert not (kaggle_tree / "working" / "run" / "logs" / "install.log").exists() and not (kaggle_tree / "site").exists()


# ----------------------------------------------------------------------------- competition rerun

# A stand-in for `python -m pipeline`: each stage appends what it was asked (its argv and the
# task ids of its dataset) to calls.jsonl in the working directory, and does nothing else.
RECORDING_STAGES = r'''
import json, sys
stage, argv = sys.argv[1], sys.argv[2:]
args = {argv[i].lstrip("-"): argv[i + 1] for i in range(len(argv) - 1) if argv[i].startswith("--")}
tasks = sorted(json.load(open(args["dataset"]))) if "dataset" in args else None
with open("calls.jsonl", "a") as f:
    f.write(json.dumps({"stage": stage, "args": args, "tasks": tasks}) + "\n")
'''

SMOKE = {"smoke_tasks": 1, "ttft_steps": 64, "smoke_ttft_steps": 2, "predictions_per_task": 16,
         "smoke_predictions_per_task": 2}


def recorded_run(kaggle_tree: Path, env: dict) -> tuple[KaggleRun, dict]:
    script = kaggle_tree / "stages.py"
    script.write_text(RECORDING_STAGES)
    run = KaggleRun(config(**SMOKE), env=env, cwd=kaggle_tree / "working", stage_command=[sys.executable, str(script)])
    for step in ("start", "ttft", "sample", "finish"):
        getattr(run, step)()
    calls = {c["stage"]: c for c in read_jsonl(kaggle_tree / "working" / "calls.jsonl")}
    return run, calls


def test_the_placeholder_test_set_gets_the_smoke_run(kaggle_tree):
    """Without the rerun flag, a test file that copies known tasks is the public placeholder: the
    smallest `smoke_tasks` with the smoke settings, scored against the known solutions."""
    env = {k: v for k, v in os.environ.items() if k != RERUN_ENV}
    run, calls = recorded_run(kaggle_tree, env)
    assert run.placeholder and list(run.work) == ["66e6c45b"] and set(run.solutions) == {"66e6c45b"}
    assert calls["ttft"]["tasks"] == ["66e6c45b"] and calls["ttft"]["args"]["steps"] == "2"
    assert calls["sample"]["tasks"] == ["66e6c45b"] and calls["sample"]["args"]["predictions_per_task"] == "2"
    assert "score" in calls  # self-scored


def test_a_competition_rerun_takes_no_placeholder_shortcut(kaggle_tree):
    """KAGGLE_IS_COMPETITION_RERUN set: the same test file (it still copies known tasks) is run
    in full, every task with the full settings, and nothing is scored against known solutions,
    even where they exist."""
    run, calls = recorded_run(kaggle_tree, {**os.environ, RERUN_ENV: "True"})
    assert not run.placeholder and sorted(run.work) == sorted(TASK_IDS) and run.solutions == {}
    assert json.loads((kaggle_tree / "working" / "run" / "challenges.json").read_text()).keys() == set(TASK_IDS)
    start = ended(kaggle_tree, "start")
    assert start["placeholder"] is False and start["work_tasks"] == 3 and start["tasks"] == 3
    assert calls["ttft"]["tasks"] == sorted(TASK_IDS) and calls["ttft"]["args"]["steps"] == "64"
    assert calls["sample"]["tasks"] == sorted(TASK_IDS) and calls["sample"]["args"]["predictions_per_task"] == "16"
    assert "score" not in calls
    assert ended(kaggle_tree, "score") == {**ended(kaggle_tree, "score"), "event": "skipped",
                                    "reason": "hidden test set: no known solutions"}
    assert not (kaggle_tree / "working" / "run" / "solutions.json").exists()
    assert not (kaggle_tree / "working" / "run" / "scored_submission.json").exists()
