"""generate-inputs: the validation rules one by one, the generation context, the expanded dataset
layouts, labelling by vote margin, the stage end to end with a scripted engine, and (slow) a tiny
model trained here on a fixed input family whose generations become a dataset `finetune` trains on."""
from __future__ import annotations

import ast
import dataclasses
import inspect
import json
import threading
import time

import numpy as np
import pytest

from conftest import DeadlineClock
from pipeline.core.augment import Augmentation
from pipeline.core.encoders import DEFAULT_ENCODER, create_grid_encoder
from pipeline.sampling.generation import Completion
from pipeline.core.settings import settings_from
from pipeline.inputs.dataset import build_expanded_dataset, model_trained_for
from pipeline.inputs.generate_inputs import GENERATE, GenerateSettings, build_parser, generate_inputs, main
from pipeline.inputs.generation_plan import build_generation_plan, validate_plan
from pipeline.inputs.labels import label_prompt_version_for, vote_margin_decision
from pipeline.inputs.grids import (LABEL_RULE, RULES, Generation, Verdict, check_generation, check_not_duplicate,
                                      check_not_known, check_palette, check_parseable, check_rectangular,
                                      check_shape_header, check_size_1_30, check_size_range, generation_view, pool_of,
                                      validate_generation)
from pipeline.core.files import read_jsonl
from pipeline.core.prompts import build_inference_prompt, grid_prefix
from pipeline.core.tasks import has_test_outputs, load_tasks, tasks_problems
from pipeline.sampling.plan import model_max_len

ENC = create_grid_encoder(DEFAULT_ENCODER)


def cell(colour: int, row: int, col: int, h: int = 3, w: int = 3) -> list:
    g = [[0] * w for _ in range(h)]
    g[row][col] = colour
    return g


# Inputs: 3x3 grids, background 0 and one red (2) cell; the second test... one test input.
TASK = {"train": [{"input": cell(2, 0, 0), "output": cell(3, 0, 0)},
                  {"input": cell(2, 0, 1), "output": cell(3, 0, 1)}],
        "test": [{"input": cell(2, 1, 1), "output": cell(3, 1, 1)}]}


def response(grid, encoder=ENC) -> str:
    """What a model writes after the prompt's "```grid" prefix."""
    return encoder.to_text(grid)[len(grid_prefix(encoder)):]


# ----------------------------------------------------------------------------- rules, one by one

def test_rule_parseable():
    assert check_parseable(response(cell(2, 2, 2)), ENC) is None
    assert check_parseable(ENC.to_text(cell(2, 2, 2)), ENC) is None          # a full encoded grid too
    assert "no ```grid shape: header" in check_parseable(" level\n3x3\n1 050\n```", ENC)
    assert "not a row of digits" in check_parseable(" shape: 2x2\n1 0a\n2 00\n```", ENC)
    assert "no row number" in check_parseable(" shape: 2x2\n1 00\n\nprose\n```", ENC)
    # a ragged body still parses: `rectangular` reports it
    assert check_parseable(" shape: 2x2\n1 00\n2 0\n```", ENC) is None
    # a grid given directly: ints 0-9 only
    assert check_parseable([[0, 1], [2, 3]]) is None
    assert check_parseable([[0, 10]]) is not None
    assert check_parseable([[0, True]]) is not None
    assert check_parseable("x", ENC) is not None


def test_rule_rectangular():
    assert check_rectangular(response([[1, 2], [3, 4]]), ENC) is None
    assert "row 2 has 1 cells but row 1 has 2" in check_rectangular(" shape: 2x2\n1 00\n2 0\n```", ENC)
    assert check_rectangular([[1, 2], [3, 4]]) is None
    assert check_rectangular([[1, 2], [3]]) == "row 2 has 1 cells but row 1 has 2"


def test_rule_size_1_30():
    assert check_size_1_30([[0]]) is None
    assert check_size_1_30([[0] * 30] * 30) is None
    assert "31x1" in check_size_1_30([[0]] * 31)
    assert "1x31" in check_size_1_30([[0] * 31])
    assert check_size_1_30([]) is not None


def test_rule_shape_header_on_the_raw_text():
    assert check_shape_header(response(cell(2, 0, 2)), ENC) is None
    assert "header says 1x3 but the body is 3x3" in check_shape_header(" shape: 1x3\n1 200\n2 000\n3 209\n```", ENC)
    assert "row number '1', expected 2" in check_shape_header(" shape: 2x1\n1 7\n1 6\n```", ENC)
    assert "not closed" in check_shape_header(" shape: 2x1\n1 7\n2 6", ENC)   # cut by max_tokens
    assert "malformed shape header" in check_shape_header(" shape: 3x3 + 14\n1 7\n2 6\n```", ENC)


def test_rule_palette():
    assert check_palette(cell(2, 1, 2), {0, 2}) is None
    assert check_palette([[0, 0]], {0, 2}) is None                        # a subset is enough
    assert check_palette(cell(5, 1, 2), {0, 2}) == "colour(s) [5] not in the task's palette [0, 2]"


def test_rule_size_range():
    assert check_size_range([[0] * 3] * 2, (2, 4), (3, 3)) is None
    assert check_size_range([[0] * 3] * 4, (2, 4), (3, 3)) is None
    assert "5x3 is outside" in check_size_range([[0] * 3] * 5, (2, 4), (3, 3))
    assert "2x4 is outside" in check_size_range([[0] * 4] * 2, (2, 4), (3, 3))   # widths are checked separately


def test_rule_not_known():
    known = [cell(2, 0, 0), cell(2, 0, 1)]
    assert check_not_known(cell(2, 2, 2), known) is None
    assert check_not_known(cell(2, 0, 1), known) == "equals known grid 2"
    assert check_not_known(cell(2, 0, 1, h=4), known) is None               # same cells, other shape


def test_rule_not_duplicate():
    assert check_not_duplicate(cell(2, 2, 2), []) is None
    assert check_not_duplicate(cell(2, 2, 2), [cell(2, 2, 1), cell(2, 2, 2)]) == "equals accepted generation 2"


# ----------------------------------------------------------------------------- the rules together

def test_validate_generation_accepts_a_new_grid():
    grid, failures = validate_generation(response(cell(2, 2, 2)), TASK, [], ENC)
    assert grid == cell(2, 2, 2) and failures == []
    grid, failures = validate_generation(cell(2, 2, 2), TASK)                # a grid needs no encoder
    assert grid == cell(2, 2, 2) and failures == []


def test_structural_rules_stop_at_the_first_failure():
    _, failures = validate_generation(" level\n1 000\n```", TASK, [], ENC)
    assert [r for r, _ in failures] == ["parseable"]
    _, failures = validate_generation(" shape: 2x2\n1 00\n2 0\n```", TASK, [], ENC)
    assert [r for r, _ in failures] == ["rectangular"]
    verdict = check_generation(" shape: 31x1\n" + "".join(f"{i + 1} 0\n" for i in range(31)) + "```", TASK, [], ENC)
    assert verdict.rules == ["size_1_30"] and not verdict.accepted


def test_semantic_rules_are_all_reported():
    # header lies, colour 5 is new, and 1x2 is outside the 3x3 range: three failures at once
    verdict = check_generation(" shape: 1x3\n1 50\n```", TASK, [], ENC)
    assert verdict.rules == ["shape_header", "palette", "size_range"]
    assert verdict.grid == [[5, 0]] and not verdict.accepted
    assert validate_generation(" shape: 1x3\n1 50\n```", TASK, [], ENC)[0] is None
    # a copy of a known input and of an accepted generation
    assert check_generation(cell(2, 1, 1), TASK).rules == ["not_known"]
    assert check_generation(cell(2, 2, 2), TASK, [cell(2, 2, 2)]).rules == ["not_duplicate"]


def test_inverse_augmentation_runs_before_the_task_frame_rules():
    # the model answers in the augmented frame: a rotation + colour map applied to the task
    aug = Augmentation(hflip=True, n_rot90=1, color_map=(0, 1, 7, 3, 4, 5, 6, 2, 8, 9))
    new = cell(2, 2, 1)
    seen = aug.apply_grid(new)
    assert 7 in sum(seen, []) and seen != new
    verdict = check_generation(response(seen), TASK, [], ENC, augmentation=aug)
    assert verdict.accepted and verdict.grid == new
    # without the inverse, the augmented colour 7 is not in the task's palette
    assert check_generation(response(seen), TASK, [], ENC).rules == ["palette"]
    # a known input seen through the augmentation is still a copy
    assert check_generation(response(aug.apply_grid(cell(2, 0, 1))), TASK, [], ENC, aug).rules == ["not_known"]


def test_size_range_is_per_axis_in_the_task_frame():
    task = {"train": [{"input": [[0] * 5] * 2, "output": [[1]]}], "test": [{"input": [[0] * 4] * 3}]}
    pool = pool_of(task)
    assert (pool.heights, pool.widths) == ((2, 3), (4, 5))
    rot = Augmentation(n_rot90=1)
    seen = rot.apply_grid([[0] * 4] * 2)          # 4x2 in the augmented frame, 2x4 in the task's
    assert check_generation(response(seen), pool, [], ENC, rot).accepted
    assert check_generation(response(seen), pool, [], ENC).rules == ["size_range"]


# ----------------------------------------------------------------------------- context and plan

def test_generation_view_shows_every_known_input(tokenizer):
    view = generation_view(TASK)
    assert [p["input"] for p in view["train"]] == [cell(2, 0, 0), cell(2, 0, 1), cell(2, 1, 1)]
    assert all(set(p) == {"input"} for p in view["train"])
    prompt = build_inference_prompt(view, ENC, tokenizer, "input-from-inputs-v0")
    assert prompt.count("## Grid example") == 3
    assert ENC.to_text(cell(2, 1, 1)) in prompt                        # the test input is in the context
    assert prompt.endswith("## New grid\n\n```grid")


def test_generation_view_for_outputs_uses_known_outputs_only(tokenizer):
    task = {"train": TASK["train"], "test": [{"input": cell(2, 2, 2)}]}  # test output unknown
    view = generation_view(task, "outputs")
    assert [p["output"] for p in view["train"]] == [cell(3, 0, 0), cell(3, 0, 1)]
    prompt = build_inference_prompt(view, ENC, tokenizer, "output-from-outputs-v0")
    assert prompt.count("## Grid example") == 2 and ENC.to_text(cell(2, 2, 2)) not in prompt
    assert pool_of(TASK, "outputs").palette == {0, 3}


def test_plan_spreads_samples_over_dihedral_transforms(tokenizer):
    plan = build_generation_plan({"t": TASK}, tokenizer, ENC, "inputs", 8, seed=3)
    assert [(i.augmentation.hflip, i.augmentation.n_rot90) for i in plan] == \
        [(h, k) for h in (False, True) for k in range(4)]
    assert len({i.seed for i in plan}) == 8 and all(i.n_context == 3 and i.error is None for i in plan)
    assert len({i.augmentation.color_map for i in plan}) > 1
    # the budget covers the largest plausible answer (3x3 + 2): a 5x5 grid's answer tokens, EOS included
    answer = tokenizer(response([[8] * 5] * 5) + "<|im_end|>", add_special_tokens=False)["input_ids"]
    assert plan[0].max_tokens >= len(answer)
    # the same seed gives the same plan whatever other tasks are selected
    again = build_generation_plan({"other": TASK, "t": TASK}, tokenizer, ENC, "inputs", 8, seed=3)
    assert [i.prompt_ids for i in again if i.task_id == "t"] == [i.prompt_ids for i in plan]
    # a context too long for max_model_len drops known grids (at least one stays)
    short = build_generation_plan({"t": TASK}, tokenizer, ENC, "inputs", 2, max_model_len=len(plan[0].prompt_ids) - 5)
    assert all(0 < i.n_context < 3 and i.error is None for i in short)
    # ... and one that never fits is reported, not generated
    none = build_generation_plan({"t": TASK}, tokenizer, ENC, "inputs", 2, max_model_len=40)
    assert all(i.error and not i.prompt_ids for i in none)
    gens = validate_plan({"t": TASK}, none, [None, None], ENC, "inputs")["t"]
    assert [g.verdict.rules for g in gens] == [["not_generated"]] * 2


# ----------------------------------------------------------------------------- labelling and dataset

def test_vote_margin_decision():
    a, b = [[1]], [[2]]
    assert vote_margin_decision([{"grid": a, "count": 5}, {"grid": b, "count": 3}], 2, 2) == (a, {"votes": 5, "runner_up": 3})
    grid, detail = vote_margin_decision([{"grid": a, "count": 4}, {"grid": b, "count": 3}], 2, 2)
    assert grid is None and "margin 4-3=1 < min_vote_margin 2" in detail["reason"]
    assert vote_margin_decision([{"grid": a, "count": 2}], 2, 2)[0] == a       # no runner-up counts as 0
    grid, detail = vote_margin_decision([{"grid": a, "count": 1}], 2, 1)
    assert grid is None and "min_votes" in detail["reason"]
    assert vote_margin_decision([], 1, 1)[0] is None


def _gen(grid, accepted=True, label=None, index=0):
    failures = [] if accepted else [("palette", "x")]
    return Generation("t", index, {}, "", "stop", 1, 0.0, Verdict(grid, failures), 3, label)


def test_expanded_dataset_layouts():
    tasks = {"t": TASK}
    gens = {"t": [_gen(cell(2, 2, 2)), _gen(cell(9, 0, 0), accepted=False), _gen(cell(2, 2, 0), index=2)]}
    pool = build_expanded_dataset(tasks, gens, "inputs")
    assert list(pool) == ["t_gen_inputs"]
    t = pool["t_gen_inputs"]
    assert [p["input"] for p in t["train"]] == [cell(2, 0, 0), cell(2, 0, 1), cell(2, 2, 2), cell(2, 2, 0)]
    assert [p["input"] for p in t["test"]] == [cell(2, 1, 1)]
    assert all(p["output"] == p["input"] for p in t["train"] + t["test"])   # placeholder outputs
    # labelled: real pairs; an accepted input without a clear label is left out
    gens["t"][0].label = {"grid": cell(3, 2, 2), "votes": 8, "runner_up": 0}
    gens["t"][2].verdict.failures.append((LABEL_RULE, "margin"))
    pairs = build_expanded_dataset(tasks, gens, "inputs", labelled=True)["t_gen_pairs"]
    assert pairs["train"] == TASK["train"] + [{"input": cell(2, 2, 2), "output": cell(3, 2, 2)}]
    assert pairs["test"] == TASK["test"]
    # test outputs unknown: the last new pair becomes the test pair
    hidden = {"t": {"train": TASK["train"], "test": [{"input": cell(2, 1, 1)}]}}
    pairs = build_expanded_dataset(hidden, gens, "inputs", labelled=True)["t_gen_pairs"]
    assert pairs == {"train": TASK["train"], "test": [{"input": cell(2, 2, 2), "output": cell(3, 2, 2)}]}
    # outputs mode: the output pool (known test outputs in test)
    out = build_expanded_dataset(tasks, {"t": [_gen(cell(3, 2, 2))]}, "outputs")["t_gen_outputs"]
    assert [p["output"] for p in out["train"]] == [cell(3, 0, 0), cell(3, 0, 1), cell(3, 2, 2)]
    assert [p["output"] for p in out["test"]] == [cell(3, 1, 1)]
    # nothing accepted, no task
    assert build_expanded_dataset(tasks, {"t": [_gen(cell(2, 2, 2), accepted=False)]}) == {}
    for dataset in (pool, {"x": pairs}, {"y": out}):
        assert not tasks_problems(dataset) and all(has_test_outputs(t) for t in dataset.values())


def test_run_config_helpers():
    assert model_trained_for({}, "input-from-inputs-v0") is None
    assert model_trained_for({"prompt_versions": {"train": ["input-from-inputs-v0"]}}, "input-from-inputs-v0")
    assert model_trained_for({"train_datasets": [["a.json", "input-from-inputs-v0"]]}, "input-from-inputs-v0")
    assert model_trained_for({"prompt_version": "output-from-examples-v1"}, "input-from-inputs-v0") is False
    assert label_prompt_version_for({"prompt_version": "input-from-inputs-v0",
                                     "prompt_versions": {"train": ["input-from-inputs-v0", "output-from-examples-v0"]}}) \
        == "output-from-examples-v0"
    assert label_prompt_version_for({}) == "output-from-examples-v1"


# ----------------------------------------------------------------------------- the stage, scripted engine

class ScriptedEngine:
    """A stand-in engine: `respond(grids in the prompt, request index)` -> the grid it "writes"
    (in the prompt's augmented frame), encoded like a model's response.  Like the real engines it
    ends a text after the first stop string of its request (kept, no end-of-turn token)."""
    name = "scripted"

    def __init__(self, tokenizer, respond):
        self.tokenizer, self.respond, self.calls, self.stops = tokenizer, respond, 0, []
        self.batches = 0  # generate calls (`calls` counts requests)

    def generate(self, requests, temperature=0.0):
        self.batches += 1
        out = []
        for r in requests:
            prompt = self.tokenizer.decode(r.prompt_ids)
            blocks = prompt.split("```grid shape:")[1:]
            grids = [ENC.to_grid("```grid shape:" + b.split("\n```")[0] + "\n```") for b in blocks]
            text = self.respond(grids, self.calls)
            self.calls += 1
            self.stops.append(r.stop)
            text = text if isinstance(text, str) else response(text)
            ends = [text.find(s) + len(s) for s in r.stop if s in text]
            text = text[:min(ends)] if ends else text
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"] + ([] if ends else [self.tokenizer.eos_token_id])
            out.append(Completion(ids, text, -0.1 * len(ids), "stop"))
        return out

    def close(self):
        pass


def rot180(grid):
    return np.rot90(np.asarray(grid), 2).tolist()


def test_stage_end_to_end_with_a_scripted_engine(tmp_path, tokenizer, embedded_model_dir):
    """rot180 commutes with every augmentation, so "rot180 of the first context grid" maps back
    to rot180 of a known input: new for the corner cells, a copy for the centre, duplicates when
    two samples pick the same grid.  Labels: the identity (unanimous) -> (new, new) pairs."""
    gen = ScriptedEngine(tokenizer, lambda grids, i: rot180(grids[0]) if i != 5 else " shape: 9x9\n1 0\n```")
    label = ScriptedEngine(tokenizer, lambda grids, i: grids[-1])
    output = tmp_path / "new.json"
    result = generate_inputs(str(embedded_model_dir), {"t": TASK}, output,
                             GenerateSettings(n_per_task=8, label_predictions=4), engine_instance=gen,
                             label_with=str(embedded_model_dir), label_engine_instance=label,
                             progress=False, log=lambda *a: None)
    gens = result.generations["t"]
    new_grids = {json.dumps(rot180(cell(2, 0, 0))), json.dumps(rot180(cell(2, 0, 1)))}
    accepted = [g.verdict.grid for g in gens if g.accepted]
    assert 1 <= len(accepted) <= 2 and {json.dumps(g) for g in accepted} <= new_grids
    rules = {r for g in gens for r in g.verdict.rules}
    assert "shape_header" in rules and rules <= {"shape_header", "size_range", "not_known", "not_duplicate"}
    assert gens[5].verdict.rules == ["shape_header", "size_range"]
    assert all(g.label == {"grid": g.verdict.grid, "votes": 4, "runner_up": 0, "n": 4} for g in gens if g.accepted)
    # files: the dataset loads and has the new pairs, the rejects carry their reasons
    data = load_tasks(output)
    assert list(data) == ["t_gen_pairs"] and data["t_gen_pairs"]["train"][:2] == TASK["train"]
    assert [p["input"] for p in data["t_gen_pairs"]["train"][2:]] == accepted
    rejects = json.loads((tmp_path / "new.rejects.json").read_text())
    assert len(rejects["tasks"]["t"]) == 8 - len(accepted)
    assert all(r["rules"] and len(r["reasons"]) >= len(r["rules"]) for r in rejects["tasks"]["t"])
    assert set(rejects["rules"]) == set(RULES)
    summary = (tmp_path / "new.summary.md").read_text()
    assert "| t | 8 |" in summary and "label_vote" in summary
    assert (tmp_path / "new.pictures" / "t.png").stat().st_size > 1000
    assert (tmp_path / "new.labels.jsonl").exists()


def test_generation_stops_at_the_closing_fence(tmp_path, tokenizer, embedded_model_dir):
    # an untrained model writes no grid, closes the fence, then rambles on into a grid block of its
    # own: the stage stops it at the first fence and judges what came before
    ramble = " format: rows of digits\n```\n\nFor example:\n```grid shape: 1x2\n1 12\n```\nand so on"
    gen = ScriptedEngine(tokenizer, lambda grids, i: ramble)
    result = generate_inputs(str(embedded_model_dir), {"t": TASK}, tmp_path / "new.json",
                             GenerateSettings(n_per_task=2), engine_instance=gen, progress=False, log=lambda *a: None)
    assert gen.stops == [("```",), ("```",)]
    for g in result.generations["t"]:
        assert g.text == " format: rows of digits\n```" and g.verdict.rules == ["parseable"]


def test_unclear_labels_are_dropped(tmp_path, tokenizer, embedded_model_dir):
    gen = ScriptedEngine(tokenizer, lambda grids, i: rot180(grids[0]))
    # half the label samples answer the identity, half its rot180: a 2-2 vote, no clear margin
    label = ScriptedEngine(tokenizer, lambda grids, i: grids[-1] if i % 2 else rot180(grids[-1]))
    result = generate_inputs(str(embedded_model_dir), {"t": TASK}, tmp_path / "n.json",
                             GenerateSettings(n_per_task=4, label_predictions=4, min_vote_margin=1),
                             engine_instance=gen, label_with=str(embedded_model_dir), label_engine_instance=label,
                             pictures=False, progress=False, log=lambda *a: None)
    validated = [g for g in result.generations["t"] if g.validated]
    assert validated and all(g.verdict.rules == [LABEL_RULE] and not g.accepted for g in validated)
    assert result.dataset == {} and json.loads((tmp_path / "n.json").read_text()) == {}
    assert "vote margin 2-2=0" in json.dumps(json.loads((tmp_path / "n.rejects.json").read_text()))


def test_outputs_mode_with_a_scripted_engine(tmp_path, tokenizer, embedded_model_dir):
    gen = ScriptedEngine(tokenizer, lambda grids, i: rot180(grids[0]))
    result = generate_inputs(str(embedded_model_dir), {"t": TASK}, tmp_path / "o.json",
                             GenerateSettings(mode="outputs", n_per_task=4), engine_instance=gen, pictures=False,
                             progress=False, log=lambda *a: None)
    accepted = [x.verdict.grid for gens in result.generations.values() for x in gens if x.accepted]
    assert accepted and all(3 in sum(g, []) for g in accepted)  # some accepted, each with the planted colour
    assert list(result.dataset) == ["t_gen_outputs"]


def test_cli_rejects_bad_combinations(capsys):
    with pytest.raises(SystemExit):
        main(["--model", "embedded", "--dataset", "x.json", "--output", "o.json", "--mode", "outputs",
              "--label_with", "embedded"])
    assert "--mode inputs only" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--model", "embedded", "--dataset", "x.json", "--output", "o.json", "--n_per_task", "0"])
    assert "--n_per_task must be >= 1" in capsys.readouterr().err


def test_cli_defaults_are_the_settings_dataclass():
    """One default per setting: the CLI is generated from GenerateSettings, and generate_inputs()
    is called with one (GENERATE when none is given)."""
    parser = build_parser()
    args = parser.parse_args(["--model", "m", "--dataset", "d", "--output", "o"])
    assert settings_from(GenerateSettings, args) == GenerateSettings() == GENERATE
    flags = {action.dest for action in parser._actions}
    params = inspect.signature(generate_inputs).parameters
    assert params["settings"].default is GENERATE
    for f in dataclasses.fields(GenerateSettings):
        assert f.name in flags, f.name
        assert f.name not in params, f.name  # no second default for a setting
    args = parser.parse_args(["--model", "m", "--dataset", "d", "--output", "o", "--max_tokens", "64",
                              "--label_max_tokens", "max", "--temperature", "0.5", "--mode", "outputs",
                              "--watchdog", "0"])
    assert settings_from(GenerateSettings, args) == dataclasses.replace(
        GENERATE, max_tokens=64, label_max_tokens="max", temperature=0.5, mode="outputs", watchdog=0.0)
    # ... and the module writes none of those flags itself (a second default would hide there)
    import pipeline.inputs.generate_inputs as module
    hand_written = {a.value for node in ast.walk(ast.parse(inspect.getsource(module)))
                    if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "add_argument"
                    for a in node.args if isinstance(a, ast.Constant)}
    assert not hand_written & {f"--{f.name}" for f in dataclasses.fields(GenerateSettings)}


def _outcome(result) -> list:
    return [(g.sample_index, g.verdict.rules, g.verdict.grid, g.text, g.label)
            for gens in result.generations.values() for g in gens]


def test_deadline_stops_generation_cleanly_and_a_rerun_resumes_without_regenerating(
        tmp_path, tokenizer, embedded_model_dir, monkeypatch):
    import pipeline.inputs.generate_inputs
    import pipeline.sampling.run_loop

    clock = DeadlineClock()
    monkeypatch.setattr(pipeline.sampling.run_loop, "time", clock)
    monkeypatch.setattr(pipeline.inputs.generate_inputs, "time", clock)

    def respond(grids, i):  # a function of the prompt only: any run gives the same sample
        return rot180(grids[0])

    def label_respond(grids, i):
        return grids[-1]

    class DeadlinePassesDuringTheFirstCall(ScriptedEngine):
        def generate(self, requests, temperature=0.0):
            clock.passed = True  # the 10-minute deadline passes while the first chunk is generated
            return super().generate(requests, temperature)

    def run(out, engine, label, temperature=GENERATE.temperature, **kw):
        settings = GenerateSettings(n_per_task=4, batch_size=2, label_predictions=2, min_vote_margin=1,
                                    temperature=temperature)
        return generate_inputs(str(embedded_model_dir), {"t": TASK}, out, settings, engine_instance=engine,
                               label_with=str(embedded_model_dir), label_engine_instance=label, pictures=False,
                               progress=False, log=lambda *a: None, **kw)

    out = tmp_path / "new.json"
    generations = tmp_path / "new.generations.jsonl"
    # 0. the deadline is already spent: no engine call, every file written, every sample pending
    engine, label = ScriptedEngine(tokenizer, respond), ScriptedEngine(tokenizer, label_respond)
    result = run(out, engine, label, deadline=600.0, started_at=time.time() - 601.0)
    assert (result.status, result.pending, result.written, engine.batches, label.batches) == ("deadline", 4, 0, 0, 0)
    assert json.loads(out.read_text()) == {} and not list(read_jsonl(generations))
    assert "**unfinished**: 4 of 4 samples" in (tmp_path / "new.summary.md").read_text()
    # 1. the deadline passes during the first chunk: under a deadline it is one sample, the shortest
    #    (the anytime rule, sampling/anytime.py); it is kept and judged, nothing after it runs, the
    #    labelling (past the deadline) makes no prediction and says why
    engine, label = DeadlinePassesDuringTheFirstCall(tokenizer, respond), ScriptedEngine(tokenizer, label_respond)
    result = run(out, engine, label, deadline=600.0)
    assert (result.status, result.pending, result.written, engine.batches, label.batches) == ("deadline", 3, 1, 1, 0)
    plan = build_generation_plan({"t": TASK}, tokenizer, ENC, "inputs", 4, GENERATE.seed, GENERATE.max_tokens,
                                 model_max_len(embedded_model_dir, GENERATE.max_model_len))
    shortest = min(plan, key=lambda i: (len(i.prompt_ids) + i.max_tokens, i.sample_index)).sample_index
    assert [r["sample_index"] for r in read_jsonl(generations)] == [shortest]
    gens = result.generations["t"]
    assert [g.sample_index for g in gens] == [shortest] and all(g.validated for g in gens)  # a new grid
    assert all(g.verdict.rules == [LABEL_RULE] and "not labelled: the deadline passed" in g.verdict.failures[0][1]
               for g in gens if g.validated)
    rejects = json.loads((tmp_path / "new.rejects.json").read_text())
    assert rejects["settings"]["pending"] == 3 and len(rejects["tasks"]["t"]) == 1
    assert "not generated (deadline" in result.summary_line
    # 2. a rerun without a deadline generates only the three missing samples (chunks of 2), and labels
    clock.passed = False
    engine, label = ScriptedEngine(tokenizer, respond), ScriptedEngine(tokenizer, label_respond)
    result = run(out, engine, label)
    assert (result.status, result.pending, result.written, engine.batches, engine.calls) == ("complete", 0, 3, 2, 3)
    assert sorted(r["sample_index"] for r in read_jsonl(generations)) == [0, 1, 2, 3]  # each written once
    assert label.batches > 0 and "unfinished" not in (tmp_path / "new.summary.md").read_text()
    # ... the same outcome as one uninterrupted run
    fresh = run(tmp_path / "fresh" / "new.json", ScriptedEngine(tokenizer, respond),
                ScriptedEngine(tokenizer, label_respond))
    assert _outcome(result) == _outcome(fresh) and result.dataset == fresh.dataset
    assert any(g.accepted and g.label for g in result.generations["t"])
    # 3. nothing left to do: no engine call, the same files
    engine, label = ScriptedEngine(tokenizer, respond), ScriptedEngine(tokenizer, label_respond)
    again = run(out, engine, label)
    assert (again.written, engine.batches, label.batches) == (0, 0, 0) and _outcome(again) == _outcome(fresh)
    # another setting in the same output is refused, not mixed in
    with pytest.raises(ValueError, match="made with other settings .*temperature"):
        run(out, engine, label, temperature=0.5)


class HangsAfterTheFirstCall(ScriptedEngine):
    """Answers its first generate call, then hangs: waits for `release` (set by the test), at most
    a minute, far beyond the watchdog."""

    def __init__(self, tokenizer, respond):
        super().__init__(tokenizer, respond)
        self.release = threading.Event()

    def generate(self, requests, temperature=0.0):
        if self.batches >= 1:
            self.batches += 1
            self.release.wait(60.0)
            return []  # too late: the stage gave up on this call
        return super().generate(requests, temperature)


def test_the_watchdog_stops_a_hung_generate_and_what_was_generated_is_written(tmp_path, tokenizer,
                                                                              embedded_model_dir):
    engine = HangsAfterTheFirstCall(tokenizer, lambda grids, i: rot180(grids[0]))
    label = ScriptedEngine(tokenizer, lambda grids, i: grids[-1])
    start = time.perf_counter()
    try:  # 3 s: far more than a scripted call takes, even on a loaded machine; far less than the hang
        result = generate_inputs(str(embedded_model_dir), {"t": TASK}, tmp_path / "new.json",
                                 GenerateSettings(n_per_task=4, batch_size=2, watchdog=3.0), engine_instance=engine,
                                 label_with=str(embedded_model_dir), label_engine_instance=label, pictures=False,
                                 progress=False, log=lambda *a: None)
        assert time.perf_counter() - start < 40  # the watchdog, not the hang's end, stopped it
    finally:
        engine.release.set()
    assert (result.status, result.abandoned, result.written, result.pending) == ("hung", True, 2, 2)
    assert [g.sample_index for g in result.generations["t"]] == [0, 1]
    assert all(g.validated for g in result.generations["t"])  # two new grids, judged
    assert label.batches == 0  # the hung engine is not used again; accepted inputs wait for a rerun's labels
    assert all(g.verdict.rules == [LABEL_RULE] and "watchdog" in g.verdict.failures[0][1]
               for g in result.generations["t"] if g.validated)
    assert json.loads((tmp_path / "new.rejects.json").read_text())["settings"]["status"] == "hung"
    assert len(list(read_jsonl(tmp_path / "new.generations.jsonl"))) == 2


# ----------------------------------------------------------------------------- a tiny model, trained here

def family_tasks(n_tasks: int = 24, seed: int = 0) -> dict:
    """A fixed input family: 3x3 black grids with one red cell; 2-4 train pairs + 1 test pair."""
    rng = np.random.default_rng(seed)
    tasks = {}
    for t in range(n_tasks):
        n_train = int(rng.integers(2, 5))
        cells = [cell(2, int(p) // 3, int(p) % 3) for p in rng.permutation(9)[:n_train + 1]]
        pairs = [{"input": g, "output": g} for g in cells]
        tasks[f"fam{t:02d}"] = {"train": pairs[:n_train], "test": pairs[n_train:]}
    return tasks


@pytest.fixture
def one_thread():
    """One torch thread: on a shared 2-core machine, two threads were 5-8x slower to train."""
    import torch
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.slow
def test_tiny_model_generations_become_a_dataset_finetune_trains_on(tmp_path, tiny_model_dir, one_thread):
    from pipeline.__main__ import main as pipeline_main
    from pipeline.core.files import write_json_atomic
    from pipeline.training.finetune import FinetuneConfig, run_finetune

    family = tmp_path / "family.json"
    write_json_atomic(family, family_tasks())
    # 1. teach the random tiny model the family with input-from-inputs-v0 (full fine-tuning; the
    #    family has one colour, so no colour augmentation in training and none in generation)
    model_dir = tmp_path / "family-model"
    summary = run_finetune(FinetuneConfig(
        model_path=str(tiny_model_dir), use_lora=False, train_datasets=[[str(family), "input-from-inputs-v0"]],
        output_dir=str(model_dir), max_steps=60, batch_size=4, learning_rate=2e-3, warmup_ratio=0.05,
        lr_scheduler_type="constant_with_warmup", augment=False, logging_steps=20, eval_steps=0,
        save_steps=10_000, verbose=False))
    assert summary["train_loss"] < 0.5
    # 2. generate -> validate -> expanded dataset, through the CLI
    new = tmp_path / "out" / "new.json"
    assert pipeline_main(["generate-inputs", "--model", str(model_dir), "--dataset", str(family), "--first_n", "4",
                          "--n_per_task", "8", "--augmentation", "dihedral", "--engine", "transformers",
                          "--output", str(new), "--quiet"]) == 0
    data = load_tasks(new)
    source = family_tasks()
    generated = {tid: t["train"][len(source[tid.removesuffix("_gen_inputs")]["train"]):] for tid, t in data.items()}
    new_grids = [p["input"] for pairs in generated.values() for p in pairs]
    assert new_grids, "no generation passed validation"
    # the model learned the family: some accepted grids are 3x3 with exactly one red cell, at a new place
    members = [g for g in new_grids if sorted(sum(g, [])) == [0] * 8 + [2]]
    assert members
    for tid, pairs in generated.items():
        known = [p["input"] for split in ("train", "test") for p in source[tid.removesuffix("_gen_inputs")][split]]
        assert all(p["input"] not in known for p in pairs)
    rejects = json.loads(new.with_name("new.rejects.json").read_text())["tasks"]
    assert sum(map(len, rejects.values())) + len(new_grids) == 32
    assert new.with_name("new.summary.md").exists() and len(list((tmp_path / "out" / "new.pictures").glob("*.png"))) == 4
    # 3. the fine-tuning stage trains on the expanded dataset
    assert pipeline_main(["finetune", "--model_path", str(model_dir), "--train_datasets", str(new),
                          "input-from-inputs-v0", "--output_dir", str(tmp_path / "ft2"), "--max_steps", "2",
                          "--batch_size", "1", "--eval_steps", "0", "--no-verbose", "--logging_steps", "1"]) == 0
    assert json.loads((tmp_path / "ft2" / "train_summary.json").read_text())["steps"] == 2
