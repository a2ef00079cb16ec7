"""The Kaggle run's orchestration: config, fallback, placeholder detection, stages as subprocesses.

    python -m pytest tests/test_kaggle_run.py -q

Stage behaviour is driven by a stand-in script (`FAKE_STAGES` below) passed as the run's stage
command, so every failure mode (crash, hang, partial or invalid output, several GPUs) is exercised
for real, with real subprocesses and process groups, in a few seconds and without a model.
"""
from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path

import pytest

from pipeline.kaggle import run as kaggle_run
from pipeline.core.files import read_jsonl
from pipeline.core.settings import config_dict, load_config
from pipeline.kaggle.paths import resolve_paths
from pipeline.kaggle.preflight import GPU, Probes
from pipeline.kaggle.run import KaggleRun, shard_tasks
from pipeline.kaggle.submission_file import is_placeholder_test_set, replace_submission_atomically, write_fallback_submission
from pipeline.core.submission import submission_problems
from pipeline.kaggle.supervisor import run_parallel, run_stage
from pipeline.core.tasks import without_test_outputs

from conftest import KAGGLE_TASK_IDS as TASK_IDS  # the kaggle_tree fixture's tasks

REPO = Path(__file__).resolve().parents[2]
ARC1 = REPO / "data" / "arc-agi-1"

# A stand-in for `python -m pipeline`: FAKE=<json {stage: behaviour}> in the environment decides
# what each stage does; stages it does not name run the real `python -m pipeline STAGE`.
FAKE_STAGES = r'''
import json, os, sys, time
stage, argv = sys.argv[1], sys.argv[2:]
behaviour = json.loads(os.environ.get("FAKE", "{}")).get(stage)
if behaviour is None:
    os.execv(sys.executable, [sys.executable, "-m", "pipeline", stage, *argv])
args = {argv[i].lstrip("-"): argv[i + 1] for i in range(0, len(argv) - 1, 2) if argv[i].startswith("--")}
tasks = json.load(open(args.get("dataset"))) if "dataset" in args else {}
print(f"{stage} started: {sorted(tasks)} gpu={os.environ.get('CUDA_VISIBLE_DEVICES')}", flush=True)
if behaviour == "fail":
    sys.exit("RuntimeError: CUDA out of memory (stand-in)")
if stage == "ttft":
    for tid in tasks:  # an adapter (its weights a stand-in) and the task's record, as the stage leaves them
        folder = os.path.join(args["output_dir"], "adapters", tid)
        os.makedirs(folder, exist_ok=True)
        open(os.path.join(folder, "adapter_model.safetensors"), "wb").write(b"weights")
        json.dump({"task_id": tid, "status": "done", "steps": 2}, open(os.path.join(folder, "record.json"), "w"))
    json.dump({"counts": {"done": len(tasks)}}, open(os.path.join(args["output_dir"], "summary.json"), "w"))
elif stage == "sample":
    with open(args["output"], "a") as f:
        for n, (tid, task) in enumerate(sorted(tasks.items())):
            for i, pair in enumerate(task["test"]):
                for grid in ([[1]], [[1]], [[2]]):  # the sampling stage's record format (pipeline.selection.vote)
                    rec = {"task_id": tid, "test_index": i, "grid": grid, "cumulative_logprob": -1.0,
                           "n_tokens": 2, "gpu": os.environ.get("CUDA_VISIBLE_DEVICES")}
                    f.write(json.dumps(rec) + "\n")
            f.flush()
            if "timing_log" in args:  # the stage's per-task timing record, as pipeline.sampling.sample writes it
                with open(args["timing_log"], "a") as t:
                    t.write(json.dumps({"stage": args.get("timing_stage", "sample"), "event": "task", "task_id": tid,
                                        "seconds": 0.5, "predictions": len(task["test"])}) + "\n")
            if behaviour == "hang":  # one task done, then silent forever
                open("HUNG", "w").write(str(os.getpid()))  # in the run's working directory, for the test
                time.sleep(600)
elif stage == "vote":
    done = {r["task_id"] for r in map(json.loads, open(args["predictions"]))}
    grid = [[10]] if behaviour == "invalid" else [[1]]
    sub = {tid: [{"attempt_1": grid, "attempt_2": [[2]]} for _ in tasks[tid]["test"]] for tid in done}
    json.dump(sub, open(args["output"], "w"))
'''


def local_config(**overrides) -> dict:
    return {"input_dir": "../input/arc", "working_dir": ".", "scratch_dir": "../tmp", "wheels_dir": "../wheels",
            "model": "embedded", "devices": ["cpu"], "deadline_hours": 0.5, "safety_margin_minutes": 0,
            "vote_reserve_minutes": 0.2, "stage_grace_seconds": 2, "min_stage_seconds": 1,
            "watchdog_minutes": 1, "smoke_tasks": 3, "first_shot_predictions": 0, **overrides}


def fake_gpus(n: int, name: str = "NVIDIA L4") -> Probes:
    """Probes whose machine has `n` GPUs named `name` (nvidia-smi is not asked)."""
    return Probes(gpus=lambda: [GPU(i, name, 23034, "8.9") for i in range(n)])


def fake_run(tree: Path, fake: dict, probes: Probes | None = None, **overrides) -> KaggleRun:
    script = tree / "fake_stages.py"
    script.write_text(FAKE_STAGES)
    env = {**os.environ, "FAKE": json.dumps(fake)}
    return kaggle_run.run(local_config(**overrides), env=env, cwd=tree / "working",
                          stage_command=[sys.executable, str(script)], probes=probes)


def timing(tree: Path) -> list[dict]:
    return list(read_jsonl(tree / "working" / "run" / "timing.jsonl"))


def submission_of(tree: Path) -> dict:
    return json.loads((tree / "working" / "submission.json").read_text())


def hidden_set(tree: Path) -> dict:
    return json.loads((tree / "input" / "arc" / "arc-agi_test_challenges.json").read_text())


# ----------------------------------------------------------------------------- config and paths

def test_every_kaggle_config_loads():
    import yaml
    for path in sorted((REPO / "kaggle" / "configs").glob("*.yaml")):
        config = load_config(path)
        assert config.kind in ("submission", "wheels"), path
        raw = yaml.safe_load(path.read_text())
        raw.pop("extends", None)  # the file it builds on (pipeline.core.settings.read_config_file)
        assert set(raw) <= set(config_dict(config)), path
        assert path.read_text().startswith("#"), f"{path.name} must open with its header comment"


def test_unknown_key_is_rejected_with_the_known_keys_listed():
    with pytest.raises(ValueError) as e:
        load_config({"ttft_step": 10})
    assert "ttft_step" in str(e.value) and "ttft_steps" in str(e.value) and "known keys" in str(e.value)


def test_type_mismatch_is_rejected():
    with pytest.raises(ValueError, match="ttft_steps"):
        load_config({"ttft_steps": "many"})
    with pytest.raises(ValueError, match="local_tasks"):
        load_config({"local_tasks": ["66e6c45b", 576224]})  # what unquoted 00576224 becomes in YAML
    assert load_config({"deadline_hours": 1}).deadline_hours == 1  # an int is a fine float


def test_relative_paths_resolve_against_the_working_directory_and_kaggle_paths_stay(tmp_path):
    local = resolve_paths(load_config(local_config()), env={}, cwd=tmp_path / "working")
    assert local.input_dir == tmp_path / "input" / "arc"
    assert local.test_challenges == tmp_path / "input" / "arc" / "arc-agi_test_challenges.json"
    assert local.submission == tmp_path / "working" / "submission.json"
    assert local.run_dir == tmp_path / "working" / "run"
    assert local.model == "embedded"  # an alias passes through to the stages
    kaggle = resolve_paths(load_config(REPO / "kaggle" / "configs" / "arc-prize-2025.yaml"), env={}, cwd=tmp_path)
    assert kaggle.test_challenges == Path("/kaggle/input/arc-prize-2025/arc-agi_test_challenges.json")
    assert kaggle.submission == Path("/kaggle/working/submission.json")
    assert kaggle.model == "/kaggle/input/arc-ttft-model/model"


def test_competition_files_are_found_under_either_kaggle_input_layout(tmp_path):
    """2026 mounts /kaggle/input/competitions/<slug>/, earlier years /kaggle/input/<slug>/: a config
    naming either finds the test challenges where they are (tests/kaggle/test_paths.py: the
    other layouts and inputs)."""
    root = tmp_path / "kaggle" / "input"
    new_layout = root / "competitions" / "arc-prize-2026-arc-agi-2"
    old_layout = root / "arc-prize-2025"
    for folder in (new_layout, old_layout):
        folder.mkdir(parents=True)
        (folder / "arc-agi_test_challenges.json").write_text("{}")
    # each config names the other layout than the one its files are in
    for configured, actual in ((root / "arc-prize-2026-arc-agi-2", new_layout),
                               (root / "competitions" / "arc-prize-2025", old_layout)):
        paths = resolve_paths(load_config({"input_root": str(root), "input_dir": str(configured)}), env={}, cwd=tmp_path)
        assert paths.input_dir == actual and paths.test_challenges == actual / "arc-agi_test_challenges.json"
    # where both exist, the configured one wins; where none does, it stays as configured
    (root / "competitions" / "arc-prize-2025").mkdir()
    (root / "competitions" / "arc-prize-2025" / "arc-agi_test_challenges.json").write_text("{}")
    config = {"input_root": str(root), "input_dir": str(old_layout)}
    assert resolve_paths(load_config(config), env={}, cwd=tmp_path).input_dir == old_layout
    # a slug mounted nowhere: the one folder under the input root with the test file, else an error
    missing = root / "arc-prize-2099"
    for folder in (new_layout, root / "competitions" / "arc-prize-2025"):
        (folder / "arc-agi_test_challenges.json").unlink()
    assert resolve_paths(load_config({**config, "input_dir": str(missing)}), env={}, cwd=tmp_path).input_dir == old_layout
    (old_layout / "arc-agi_test_challenges.json").unlink()
    paths = resolve_paths(load_config({**config, "input_dir": str(missing)}), env={}, cwd=tmp_path)
    assert paths.input_dir == missing
    assert paths.problem("competition data").startswith("competition data not found: no arc-agi_test_challenges.json")
    shipped = load_config(REPO / "kaggle" / "configs" / "arc-prize-2026-arc-agi-2.yaml")
    assert shipped.input_dir == "/kaggle/input/competitions/arc-prize-2026-arc-agi-2"
    assert shipped.kaggle_competition == "arc-prize-2026-arc-agi-2"


# ----------------------------------------------------------------------------- placeholder and submission

def test_shipped_public_test_file_is_detected_as_placeholder_and_evaluation_tasks_are_not():
    test = json.loads((ARC1 / "arc-agi_test_challenges.json").read_text())
    training = json.loads((ARC1 / "arc-agi_training_challenges.json").read_text())
    evaluation = json.loads((ARC1 / "arc-agi_evaluation_challenges.json").read_text())
    assert is_placeholder_test_set(test, training)
    assert not is_placeholder_test_set(evaluation, training)
    one_cell_changed = json.loads(json.dumps(test))
    first = next(iter(one_cell_changed.values()))
    first["test"][0]["input"][0][0] = (first["test"][0]["input"][0][0] + 1) % 10
    assert not is_placeholder_test_set(one_cell_changed, training)
    assert not is_placeholder_test_set({}, training)


def test_fallback_submission_covers_every_task_and_test_input(tmp_path, eval_tasks):
    challenges = without_test_outputs(eval_tasks)
    submission = write_fallback_submission(challenges, tmp_path / "submission.json")
    assert json.loads((tmp_path / "submission.json").read_text()) == submission
    assert submission_problems(submission, challenges) == []
    for tid, task in challenges.items():
        assert len(submission[tid]) == len(task["test"])
        for entry, pair in zip(submission[tid], task["test"]):
            assert entry["attempt_1"] == pair["input"]


def test_replacement_takes_valid_entries_only_and_keeps_earlier_results(tmp_path, eval_tasks):
    challenges = without_test_outputs({t: eval_tasks[t] for t in TASK_IDS})
    path = tmp_path / "submission.json"
    write_fallback_submission(challenges, path)
    counts = replace_submission_atomically({"66e6c45b": [{"attempt_1": [[1]], "attempt_2": [[2]]}]}, challenges, path)
    assert counts == {"replaced": 1, "kept": 3, "invalid": 0}
    bad = {"66e6c45b": [{"attempt_1": [[11]], "attempt_2": [[2]]}],       # colour 11: invalid
           "6ea4a07e": [{"attempt_1": [[3]], "attempt_2": [[4]]}, "junk"]}  # second entry invalid
    counts = replace_submission_atomically(bad, challenges, path)
    assert counts == {"replaced": 1, "kept": 1, "invalid": 2}
    sub = json.loads(path.read_text())
    assert submission_problems(sub, challenges) == []
    assert sub["66e6c45b"][0] == {"attempt_1": [[1]], "attempt_2": [[2]]}  # the earlier result survived
    assert sub["6ea4a07e"][0] == {"attempt_1": [[3]], "attempt_2": [[4]]}
    assert sub["6ea4a07e"][1]["attempt_1"] == challenges["6ea4a07e"]["test"][1]["input"]  # still the fallback


# ----------------------------------------------------------------------------- run_stage

def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:  # a zombie waiting for its parent counts as dead
        return f.read().split(")")[-1].split()[0] != "Z"


class EventClock:
    """Stands in for the supervisor's `time` module, so that an event, not a number of seconds on
    a loaded machine, decides when a deadline passes or a stage has been silent too long.

    While `happened()` holds, the supervisor's own thread sees `time()` far past any deadline
    (with `deadline=True`) and `monotonic()` `silence_s` ahead: a silence that long is seen at
    once.  The threads that pump a stage's output keep the real clock, so the last output keeps
    its real time.  `sleep` is real: the supervisor still polls at its pace."""

    def __init__(self, happened, deadline: bool = False, silence_s: float = 0.0):
        self.happened, self.deadline, self.silence_s = happened, deadline, silence_s
        self.fired_at: float | None = None  # real time.time() when the event was first seen
        self.sleep = time.sleep

    def _happening(self) -> bool:
        if threading.current_thread() is not threading.main_thread() or not self.happened():
            return False
        if self.fired_at is None:
            self.fired_at = time.time()
        return True

    def time(self) -> float:
        return time.time() + (10 ** 6 if self.deadline and self._happening() else 0.0)

    def monotonic(self) -> float:
        return time.monotonic() + (self.silence_s if self._happening() else 0.0)


def log_has(path: Path, *starts: str):
    """A condition: the stage's output (its log below the `$ command` line) has a line starting
    with each of `starts`."""
    def holds() -> bool:
        lines = path.read_text(errors="replace").splitlines()[1:] if path.exists() else []
        return all(any(line.startswith(s) for line in lines) for s in starts)
    return holds


def wait_until(condition, timeout_s: float = 30.0) -> bool:
    """Poll `condition` until it holds (True) or `timeout_s` pass (False): generous, and as fast as it allows."""
    give_up = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > give_up:
            return False
        time.sleep(0.05)
    return True


@pytest.fixture
def clock(monkeypatch):
    """`clock(happened, ...)` installs an EventClock in the supervisor and returns it."""
    from pipeline.kaggle import supervisor

    def install(happened, **kw) -> EventClock:
        fake = EventClock(happened, **kw)
        monkeypatch.setattr(supervisor, "time", fake)
        return fake
    return install


def test_run_stage_kills_a_hanging_stage_and_its_children_at_the_deadline(tmp_path, clock):
    code = ("import subprocess, sys, time\n"
            "c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
            "print('child', c.pid, flush=True)\n"
            "for _ in range(240):\n    print('still working', flush=True); time.sleep(0.5)")  # 2 min at most
    log = tmp_path / "hang.log"
    # the deadline passes once the stage has started its child and is busy (however long that
    # takes on a loaded machine); its steady output keeps the watchdog quiet
    fake = clock(log_has(log, "child", "still working"), deadline=True)
    result = run_stage([sys.executable, "-c", code], time.time() + 3600, log, watchdog_s=600)
    assert result.status == "timeout" and result.reason.startswith("deadline"), result
    assert fake.fired_at is not None and time.time() - fake.fired_at < 30  # killed at the deadline
    child = int(next(l for l in log.read_text().splitlines() if l.startswith("child")).split()[1])
    assert wait_until(lambda: not _alive(child)), "the stage's child survived the kill"


def test_parallel_workers_are_killed_together_even_when_one_ignores_sigterm(tmp_path, clock):
    # each would stop by itself after 2 minutes (exit 0): a kill that never comes fails the test
    stubborn = ("import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
                "for _ in range(400):\n    print('busy', flush=True); time.sleep(0.3)")
    polite = "import time\nfor _ in range(400):\n    print('busy', flush=True); time.sleep(0.3)"
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    # the deadline passes once both print (the stubborn one has installed its handler by then)
    both_busy = lambda: log_has(logs[0], "busy")() and log_has(logs[1], "busy")()
    fake = clock(both_busy, deadline=True)
    results = run_parallel([[sys.executable, "-c", stubborn], [sys.executable, "-c", polite]], time.time() + 3600,
                           logs, watchdog_s=600, kill_grace_s=1)
    assert [r.status for r in results] == ["timeout", "timeout"]
    assert results[0].returncode == -9 and results[1].returncode == -15  # SIGKILL after the grace / SIGTERM
    assert time.time() - fake.fired_at < 30  # the grace (1 s), not the workers' will


def test_run_stage_watchdog_kills_a_silent_stage(tmp_path, clock):
    code = "import time; print('loading', flush=True); time.sleep(60)"
    log = tmp_path / "silent.log"
    # once the stage has printed (and gone quiet), the clock runs 601 s ahead: silence > watchdog
    fake = clock(log_has(log, "loading"), silence_s=601)
    result = run_stage([sys.executable, "-c", code], time.time() + 3600, log, watchdog_s=600)
    assert result.status == "timeout" and result.reason == "watchdog: no output for 600 s (hung)", result
    assert time.time() - fake.fired_at < 30


def test_run_stage_reports_exit_codes_and_unstartable_commands(tmp_path):
    ok = run_stage([sys.executable, "-c", "print('fine')"], time.time() + 30, tmp_path / "ok.log", 30)
    assert ok.status == "ok" and ok.returncode == 0 and "fine" in (tmp_path / "ok.log").read_text()
    failed = run_stage([sys.executable, "-c", "import sys; sys.exit('boom')"], time.time() + 30, tmp_path / "f.log", 30)
    assert failed.status == "failed" and failed.returncode == 1 and "boom" in failed.reason
    missing = run_stage([str(tmp_path / "no-such-program")], time.time() + 30, tmp_path / "m.log", 30)
    assert missing.status == "failed" and "could not start" in missing.reason


def test_shards_cover_every_task_once_and_balance_size(eval_tasks):
    shards = shard_tasks(eval_tasks, 4)
    assert sorted(t for s in shards for t in s) == sorted(eval_tasks)
    from pipeline.core.tasks import task_size
    loads = [sum(task_size(t) for t in s.values()) for s in shards]
    assert max(loads) < 1.05 * min(loads)


# ----------------------------------------------------------------------------- the whole run

def test_run_on_two_gpus_splits_sampling_and_replaces_the_fallback(kaggle_tree):
    # stand-in TTFT and sampling; the real `python -m pipeline vote` and `score`
    run = fake_run(kaggle_tree, {"ttft": "ok", "sample": "ok"}, fake_gpus(2), devices=["cuda:0", "cuda:1"])
    assert {s: r.status for s, r in run.results.items()} == {
        "start": "ok", "preflight": "ok", "install": "skipped", "first_shot": "skipped", "ttft": "ok", "sample": "ok",
        "rescore": "skipped", "vote": "ok", "score": "ok"}
    assert run.placeholder and run.score["n_outputs"] == 4  # known tasks: scored against their solutions
    working = kaggle_tree / "working"
    assert "--devices cuda:0,cuda:1" in (working / "run" / "logs" / "ttft.log").read_text()
    gpus = {r["gpu"] for r in read_jsonl(working / "run" / "predictions.jsonl")}
    assert gpus == {"0", "1"}  # one sampling worker per GPU, predictions concatenated
    sub = submission_of(kaggle_tree)
    assert submission_problems(sub, hidden_set(kaggle_tree)) == []
    assert all(e == {"attempt_1": [[1]], "attempt_2": [[2]]} for entries in sub.values() for e in entries)
    events = {(r["stage"], r["event"]) for r in timing(kaggle_tree)}
    assert {("ttft", "start"), ("ttft", "end"), ("sample", "end"), ("vote", "end")} <= events


def test_the_first_shot_answers_every_input_before_ttft_and_survives_a_failed_sampler(kaggle_tree):
    """Anytime: the first shot (the sampling stage without adapters) is voted into the submission
    before TTFT starts; when TTFT and sampling then fail, the submission keeps its answers."""
    run = fake_run(kaggle_tree, {"ttft": "fail", "sample": "ok"}, first_shot_predictions=1)
    assert run.results["first_shot"].status == "ok"
    working = kaggle_tree / "working"
    first = working / "run" / "first_shot.jsonl"
    assert {r["task_id"] for r in read_jsonl(first)} == set(TASK_IDS)
    log = (working / "run" / "logs" / "first_shot.log").read_text()
    assert "sample started" in log
    order = [(r["stage"], r["event"]) for r in timing(kaggle_tree) if "task_id" not in r]
    assert order.index(("vote", "end")) < order.index(("ttft", "start"))  # voted before TTFT began
    # the first shot's measured speed set TTFT's share of the time (not the fixed fraction)
    [share] = [r for r in timing(kaggle_tree) if r.get("event") == "share"]
    assert share["stage"] == "ttft" and share["sampling_need_s"] > 0 and share["share_s"] > 0
    sub = submission_of(kaggle_tree)
    assert all(e == {"attempt_1": [[1]], "attempt_2": [[2]]} for entries in sub.values() for e in entries)


def test_rescore_and_product_of_experts_selection_run_in_the_notebook_chain(kaggle_tree, tiny_model_dir):
    """selection: poe with rescore_views: stand-in TTFT and sampling, the real rescore stage on the
    tiny model and the real vote with --method poe; the submission takes poe's top candidates."""
    from pipeline.selection.rules import select
    from pipeline.selection.scored import read_scores

    # the real rescore stage imports torch and transformers first: on a loaded 2-core machine that
    # alone can be silent for a minute, so the watchdog here is generous (its own tests use fakes)
    run = fake_run(kaggle_tree, {"ttft": "ok", "sample": "ok"}, model=str(tiny_model_dir), rescore_views=2,
                   selection="poe", watchdog_minutes=10)
    assert run.results["rescore"].status == "ok" and run.results["vote"].status == "ok"
    working = kaggle_tree / "working"
    assert "vote (poe, 4 test inputs rescored)" in (working / "run" / "logs" / "vote.log").read_text()
    scores = read_scores(working / "run" / "scores.jsonl")
    assert len(scores) == 4  # every test input of the 3 tasks
    sub = submission_of(kaggle_tree)
    for (task_id, index), candidates in scores.items():
        assert {tuple(map(tuple, c.grid)) for c in candidates} == {((1,),), ((2,),)}
        best = select(candidates, "poe")
        assert sub[task_id][index]["attempt_1"] == best[0].grid and sub[task_id][index]["attempt_2"] == best[1].grid
    with pytest.raises(ValueError, match="set rescore_views"):
        load_config(local_config(selection="poe"))


def test_rescoring_runs_one_process_per_gpu_over_the_sampling_shards(kaggle_tree, tiny_model_dir):
    """Two (faked) GPUs: the real rescore stage runs twice, each process on its own shard of the
    tasks (dealt largest first, as sampling's), and the scores are concatenated for the real
    vote --method poe."""
    from pipeline.selection.scored import read_scores

    run = fake_run(kaggle_tree, {"ttft": "ok", "sample": "ok"}, fake_gpus(2), devices=["cuda:0", "cuda:1"],
                   model=str(tiny_model_dir), rescore_views=2, selection="poe", watchdog_minutes=10)
    assert run.results["rescore"].status == "ok" and run.results["vote"].status == "ok"
    working = kaggle_tree / "working" / "run"
    assert sorted(p.name for p in (working / "logs").glob("rescore*.log")) == ["rescore.gpu0.log", "rescore.gpu1.log"]
    for gpu in "01":
        shard = json.loads((kaggle_tree / "tmp" / "shards" / f"rescore.gpu{gpu}.json").read_text())
        assert shard and {t for t, _ in read_scores(working / f"scores.gpu{gpu}.jsonl")} == set(shard)
    assert {t for t, _ in read_scores(working / "scores.jsonl")} == set(TASK_IDS)
    assert len(read_scores(working / "scores.jsonl")) == 4                        # every test input once
    [end] = [r for r in timing(kaggle_tree) if r["stage"] == "rescore" and r["event"] == "end"]
    assert end["workers"] == ["ok", "ok"] and end["scored"] == 4
    assert "vote (poe, 4 test inputs rescored)" in (working / "logs" / "vote.log").read_text()


def test_a_failing_stage_leaves_the_previous_submission_in_place(kaggle_tree):
    run = fake_run(kaggle_tree, {"ttft": "fail", "sample": "ok", "vote": "fail"})
    assert run.results["ttft"].status == "failed" and "out of memory" in run.results["ttft"].reason
    assert run.results["sample"].status == "ok"  # a failed TTFT still samples (base model / adapter)
    assert run.results["vote"].status == "failed"
    challenges = hidden_set(kaggle_tree)
    sub = submission_of(kaggle_tree)
    assert submission_problems(sub, challenges) == []
    assert all(e["attempt_1"] == p["input"] for t in challenges for e, p in zip(sub[t], challenges[t]["test"]))
    assert {"failed"} == {r["event"] for r in timing(kaggle_tree) if r["stage"] == "vote"} - {"start"}


def test_invalid_vote_output_never_reaches_the_submission(kaggle_tree):
    run = fake_run(kaggle_tree, {"ttft": "ok", "sample": "ok", "vote": "invalid"})
    assert run.results["vote"].status == "ok"
    vote_end = next(r for r in timing(kaggle_tree) if r["stage"] == "vote" and r["event"] == "end")
    assert vote_end["invalid"] == 4 and vote_end["replaced"] == 0
    assert submission_problems(submission_of(kaggle_tree), hidden_set(kaggle_tree)) == []


def test_a_hung_sampler_is_killed_and_its_partial_predictions_are_still_voted(kaggle_tree, clock):
    # a 10-minute watchdog that no slow start-up reaches; while the sampler hangs, the clock runs
    # 601 s ahead, so its silence is seen at once
    hung = kaggle_tree / "working" / "HUNG"
    fake = clock(lambda: hung.exists() and hung.read_text().isdigit() and _alive(int(hung.read_text())),
                 silence_s=601)
    run = fake_run(kaggle_tree, {"ttft": "ok", "sample": "hang", "vote": "ok"}, watchdog_minutes=10)
    assert time.time() - fake.fired_at < 60
    assert run.results["sample"].status == "timeout"
    assert run.results["sample"].reason == "watchdog: no output for 600 s (hung)"
    assert run.results["vote"].status == "ok"
    sub = submission_of(kaggle_tree)
    assert submission_problems(sub, hidden_set(kaggle_tree)) == []
    voted = [t for t, entries in sub.items() if entries[0]["attempt_1"] == [[1]]]
    assert voted == ["00576224"]  # the one task sampled before the hang (tasks run in sorted order)
    summary = json.loads((kaggle_tree / "working" / "run" / "summary.json").read_text())
    assert summary["on_fallback"] == {"66e6c45b": [0], "6ea4a07e": [0, 1]}  # what the hang cost, said
    assert summary["task_outcomes"]["00576224"]["sample"] == 3 and summary["task_outcomes"]["66e6c45b"]["sample"] == 0


def test_a_deadline_too_short_skips_every_stage_and_keeps_a_complete_submission(kaggle_tree):
    # no vote reserve: a deadline within the margins is refused at load
    kaggle_run.run(local_config(deadline_hours=3 / 3600, vote_reserve_minutes=0, min_stage_seconds=30), env=dict(os.environ),
                   cwd=kaggle_tree / "working")
    assert submission_problems(submission_of(kaggle_tree), hidden_set(kaggle_tree)) == []
    skipped = {r["stage"]: r["reason"] for r in timing(kaggle_tree) if r["event"] == "skipped"}
    assert {"ttft", "sample", "vote"} <= set(skipped)
    assert all(skipped[s].startswith("deadline") for s in ("ttft", "sample", "vote"))
    assert (kaggle_tree / "working" / "run" / "summary.json").exists()


def test_ttft_share_follows_the_first_shots_measured_sampling_speed():
    """The first shot's task records give sampling's need (seconds per prediction per task cell);
    TTFT gets what it leaves, between the min and max fractions; without them, the fixed one."""
    from pipeline.core.settings import SubmissionConfig
    from pipeline.core.scheduling import ttft_share_s
    from pipeline.kaggle.run import sampling_need_s
    from pipeline.core.tasks import task_size

    small = {"train": [{"input": [[1]], "output": [[2]]}], "test": [{"input": [[3]]}]}
    big = {"train": [{"input": [[1] * 9] * 9, "output": [[2] * 9] * 9}], "test": [{"input": [[3] * 9] * 9}] * 2}
    work = {"s": small, "b": big}
    # the first shot answered only the small task: 1 prediction in 2 s
    records = [{"stage": "first_shot", "event": "task", "task_id": "s", "seconds": 2.0, "predictions": 1},
               {"stage": "first_shot", "event": "start", "seconds": 0.0}]
    per_cell = 2.0 / task_size(small)
    need = sampling_need_s(records, work, predictions_per_input=8)
    assert need == pytest.approx(per_cell * 8 * (task_size(small) * 1 + task_size(big) * 2))
    assert sampling_need_s(records, work, 8, workers=4) == pytest.approx(need / 4)
    assert sampling_need_s([], work, 8) is None
    config = SubmissionConfig()
    assert ttft_share_s(1000, 60, None, config)[0] == pytest.approx(1000 * config.ttft_budget_fraction)
    assert ttft_share_s(1000, 60, 100, config)[0] == pytest.approx(1000 * config.ttft_max_fraction)  # fast sampling
    assert ttft_share_s(1000, 60, 500, config)[0] == pytest.approx(1000 - 60 - 1.2 * 500)
    share, why = ttft_share_s(1000, 60, 5000, config)   # sampling cannot finish anyway: TTFT keeps its minimum
    assert share == pytest.approx(1000 * config.ttft_min_fraction) and why.startswith("measured")
