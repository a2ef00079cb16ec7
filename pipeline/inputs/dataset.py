"""generate-inputs' outputs: the expanded dataset, the Markdown summary and the pictures.

* `build_expanded_dataset`: the accepted generations as a combined-format task file the
  fine-tuning stage trains on (`<id>_gen_inputs`, `<id>_gen_pairs` when labelled,
  `<id>_gen_outputs`; layouts in docs/generate-inputs.md).
* `summary_markdown`: a table per task of samples, accepted, rejected and the count of every rule;
  `rule_counts`, `model_trained_for` (whether a run config lists the prompt version).
* `render_pictures`: one PNG per task: known grids, accepted generations (and labels), rejects.

Pure functions of the generations (`generated_grids.Generation`).  Imports no stage module.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

from pipeline.inputs.grids import LABEL_RULE, MODES, NOT_GENERATED, RULE_HELP, RULES, Generation, pool_of
from pipeline.core.tasks import has_test_outputs, tasks_problems


def _placeholder(grid) -> dict:
    return {"input": grid, "output": grid}


def build_expanded_dataset(tasks: Mapping[str, dict], generations: Mapping[str, list], mode: str = "inputs",
                           labelled: bool = False) -> dict:
    """The combined-format task file the fine-tuning stage trains on (every pair has an output,
    as its train/test swap needs).  One task per source task with at least one accepted (and, when
    labelling, labelled) generation:

    * `--mode inputs` with labels -> `<id>_gen_pairs`: train = the original train pairs + the
      (new input, voted output) pairs; test = the original test pairs when their outputs are
      known, else the last new pair.  Good for every prompt version.
    * `--mode inputs` without labels -> `<id>_gen_inputs`: an *inputs pool*: every known input
      (train, then generated, in train; the test inputs in test) as a pair whose output is a copy
      of its input.  Only for `input-from-inputs-v0` (it reads inputs only); the copies keep the
      file valid and never contradict a real output.
    * `--mode outputs` -> `<id>_gen_outputs`: the same pool for outputs (known train outputs +
      generated ones; known test outputs in test, else the last generated one), input = copy of
      the output.  Only for `output-from-outputs-v0`."""
    out = {}
    for task_id, gens in generations.items():
        task = tasks[task_id]
        if mode == "inputs" and labelled:
            new = [{"input": g.verdict.grid, "output": g.label["grid"]} for g in gens if g.accepted and g.label]
            if not new:
                continue
            known_test = has_test_outputs(task)
            train = [dict(p) for p in task["train"]] + (new if known_test else new[:-1])
            test = [dict(p) for p in task["test"]] if known_test else new[-1:]
            out[f"{task_id}_gen_pairs"] = {"train": train, "test": test}
            continue
        new = [g.verdict.grid for g in gens if g.accepted]
        if not new:
            continue
        pool = pool_of(task, mode)
        known_train, known_test = list(pool.grids[:pool.n_train]), list(pool.grids[pool.n_train:])
        train = known_train + (new if known_test else new[:-1])
        test = known_test or new[-1:]
        suffix = "inputs" if mode == "inputs" else "outputs"
        out[f"{task_id}_gen_{suffix}"] = {"train": [_placeholder(g) for g in train],
                                           "test": [_placeholder(g) for g in test]}
    problems = tasks_problems(out)
    if problems:  # a bug here, never the model's fault: every grid passed the rules
        raise ValueError("the expanded dataset is invalid:\n" + "\n".join(problems[:10]))
    return out


# ----------------------------------------------------------------------------- reports

def rule_counts(gens: Sequence[Generation]) -> dict:
    counts = {rule: 0 for rule in RULES + (LABEL_RULE, NOT_GENERATED)}
    for g in gens:
        for rule in g.verdict.rules:
            counts[rule] += 1
    return counts


def model_trained_for(cfg: Mapping, version: str) -> bool | None:
    """Whether a run config lists `version` among its training prompt versions (None: no config)."""
    if not cfg:
        return None
    versions = set((cfg.get("prompt_versions") or {}).get("train") or [])
    versions.add(cfg.get("prompt_version"))
    for spec in cfg.get("train_datasets") or []:
        if isinstance(spec, Mapping):
            versions.add(spec.get("prompt_version"))
        elif isinstance(spec, (list, tuple)) and len(spec) > 1:
            versions.add(spec[1])
    return version in versions


def summary_markdown(generations: Mapping[str, list], settings: Mapping, seconds: float,
                     trained: bool | None, labelled: bool) -> str:
    version = MODES[settings["mode"]][0]
    grid_kind = "input" if settings["mode"] == "inputs" else "output"
    columns = list(RULES) + ([LABEL_RULE] if labelled else [])
    if any(NOT_GENERATED in g.verdict.rules for gens in generations.values() for g in gens):
        columns.append(NOT_GENERATED)
    header = ["task", "samples", "accepted", "rejected"]
    header += ["duplicates" if r == "not_duplicate" else r for r in columns]
    if labelled:
        header.insert(3, "labelled")
    adapter = f", adapter `{settings['adapter_path']}`" if settings.get("adapter_path") else ""
    lines = [f"# generate-inputs: new {grid_kind} grids", "",
             f"- model: `{settings['model']}`{adapter}",
             f"- dataset: `{settings['dataset']}`, {len(generations)} task(s), mode `{settings['mode']}` "
             f"(`{version}`), {settings['n_per_task']} sample(s) per task at temperature {settings['temperature']}, "
             f"seed {settings['seed']}, augmentation {settings['augmentation']}, encoder `{settings['grid_encoder']}`, "
             f"engine {settings['engine']}",
             f"- wall time: {seconds:.0f} s", ""]
    if settings.get("pending"):
        why = {"deadline": "the deadline passed", "hung": "the watchdog caught a hung generate"}.get(
            settings.get("status"), "the run stopped")
        lines.insert(-1, f"- **unfinished**: {settings['pending']} of {settings['planned']} samples not generated "
                         f"yet ({why}); a rerun with the same `--output` generates only those "
                         f"(`{settings.get('generations')}`) and rewrites these files")
    if labelled:
        label_adapter = f" + `{settings['label_adapter']}`" if settings.get("label_adapter") else ""
        lines.insert(-1, f"- labels: `{settings['label_with']}`{label_adapter}, {settings['label_predictions']} "
                         f"prediction(s) per new input, voting v2, kept when the top grid has >= "
                         f"{settings['min_votes']} votes and beats the runner-up by >= {settings['min_vote_margin']}")
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    totals = [0] * (len(header) - 1)
    for task_id, gens in generations.items():
        counts = rule_counts(gens)
        row = [len(gens), sum(g.validated for g in gens)]
        if labelled:
            row.append(sum(g.accepted for g in gens))
        row.append(sum(not g.accepted for g in gens))
        row += [counts[r] for r in columns]
        totals = [a + b for a, b in zip(totals, row)]
        lines.append(f"| {task_id} | " + " | ".join(map(str, row)) + " |")
    lines.append("| **total** | " + " | ".join(f"**{v}**" for v in totals) + " |")
    n_samples, n_accepted = totals[0], (totals[2] if labelled else totals[1])
    lines += ["", "A rejected sample counts once in `rejected` and once under every rule it failed "
              "(parseable, rectangular and size_1_30 stop at the first failure; the others are all checked). "
              "`duplicates` = `not_duplicate`; `not_known` = copies of a known grid."
              + (" `accepted` counts inputs that passed every validation rule; `labelled` those whose label vote "
                 "was clear (the others fail `label_vote` and count as rejected)." if labelled else ""),
              "", "Rules: " + "; ".join(f"`{r}`: {RULE_HELP[r]}" for r in RULES) + "."]
    notes = []
    if trained is None:
        notes.append(f"The model has no run config (cfg.json), e.g. the base embedded model: nothing shows it was "
                     f"ever trained on `{version}`, so few accepted generations are expected and say nothing "
                     f"about the method.")
    elif not trained:
        notes.append(f"The model's run config does not list `{version}` among its training prompt versions: "
                     f"few accepted generations are expected.")
    rate = n_accepted / n_samples if n_samples else 0.0
    if rate < 0.25:
        notes.append(f"Only {n_accepted} of {n_samples} samples ({rate:.0%}) were accepted: this dataset is small; "
                     f"look at the rejects' reasons (`{settings['rejects']}`) and the pictures before using it.")
    if notes:
        lines += ["", "**Note.** " + " ".join(notes)]
    return "\n".join(lines) + "\n"


def render_pictures(tasks: Mapping[str, dict], generations: Mapping[str, list], pictures_dir, mode: str,
                    max_columns: int = 10, labelled: bool = False) -> list[Path]:
    """One PNG per task: row 1 the known grids, row 2 the accepted generations, (row 3 their
    voted labels when labelling), last row the rejects framed red, titled by failed rule."""
    from pipeline.core.render import render_grids  # matplotlib (~0.25 s) only when pictures are drawn

    paths = []
    key = MODES[mode][1]
    for task_id, gens in generations.items():
        task = tasks[task_id]
        pool = pool_of(task, mode)
        known = list(pool.grids)[:max_columns]
        known_titles = [f"train {i} {key}" if i < pool.n_train else f"test {i - pool.n_train} {key}"
                        for i in range(len(known))]
        valid = [g for g in gens if g.validated]
        rejects = [g for g in gens if not g.validated]
        shown = valid[:max_columns]
        rows = [known, [g.verdict.grid for g in shown]]
        titles = [known_titles, [f"new (sample {g.sample_index})" + ("" if g.accepted else ": no clear label")
                                 for g in shown]]
        marks = [None, None]
        if labelled:
            rows.append([g.label["grid"] if g.label else None for g in shown])
            titles.append([f"label {g.label['votes']}-{g.label['runner_up']} votes" if g.label else "" for g in shown])
            marks.append(None)
        shown_rejects = rejects[:max_columns]
        rows.append([g.verdict.grid if g.verdict.grid is not None else [] for g in shown_rejects])
        titles.append([f"sample {g.sample_index}:\n" + "\n".join(r for r in g.verdict.rules if r != LABEL_RULE)
                       for g in shown_rejects])
        marks.append([False] * len(shown_rejects))
        more_valid = f" (first {max_columns} shown)" if len(valid) > max_columns else ""
        more_rejects = f", first {max_columns}" if len(rejects) > max_columns else ""
        suptitle = (f"{task_id}: known {key}s (row 1), {sum(g.accepted for g in gens)} accepted / {len(gens)} "
                    f"samples{more_valid}, {len(rejects)} rejected (last row, red{more_rejects})")
        paths.append(render_grids(rows, Path(pictures_dir) / f"{task_id}.png", titles=titles, marks=marks,
                                  suptitle=suptitle))
    return paths
