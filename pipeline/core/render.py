"""Draw ARC grids and tasks to PNG (matplotlib, Agg canvas, standard ARC palette).

* `render_grids(rows_of_grids, path, titles=..., marks=...)`: a generic table of grids, one row per
  list; `None` leaves a cell blank; a mark True/False frames the grid green/red.  Other stages
  (e.g. pictures of generated inputs) reuse it.
* `render_task(task, path, title=None, attempts=None)`: one row per train pair (input, output) and
  one per test input (input, output when known, then the attempts, marked correct/wrong when the
  output is known).

Figures are built on a bare `matplotlib.figure.Figure` with an Agg canvas (no pyplot state, so
nothing accumulates across thousands of pictures) and written atomically (temp file + rename).

CLI: `python -m pipeline render --dataset TASKS.json [--ids ID ...] [--first_n N]
[--submission S] --output_dir DIR` writes `<task_id>.png` per task and prints the paths.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import BoundaryNorm, ListedColormap
from matplotlib.figure import Figure

from pipeline.core.files import atomic_file, check_output
from pipeline.core.submission import read_submission, submission_problems, summarize_problems
from pipeline.core.tasks import is_valid_grid, load_tasks, select_tasks

PALETTE = ("#000000", "#0074D9", "#FF4136", "#2ECC40", "#FFDC00",
           "#AAAAAA", "#F012BE", "#FF851B", "#7FDBFF", "#870C25")
CMAP = ListedColormap(PALETTE, name="arc")
NORM = BoundaryNorm(np.arange(-0.5, 10.5, 1.0), CMAP.N)
GRID_LINE = "#555555"
MARK_COLOURS = {True: "#2ECC40", False: "#FF4136"}


def _as_array(grid):
    if grid is None:
        return None
    if isinstance(grid, np.ndarray):
        grid = grid.tolist()
    return np.asarray(grid, dtype=np.int64) if is_valid_grid(grid) else None


def _draw(ax, grid, title=None, mark=None):
    array = _as_array(grid)
    ax.set_xticks([])
    ax.set_yticks([])
    if array is None:
        for spine in ax.spines.values():
            spine.set_visible(False)
        if grid is not None:  # something was there, but it is not a grid
            ax.text(0.5, 0.5, "no valid grid", ha="center", va="center", fontsize=8, transform=ax.transAxes)
    else:
        h, w = array.shape
        ax.imshow(array, cmap=CMAP, norm=NORM, interpolation="nearest")
        lw = 0.6 if max(h, w) <= 15 else 0.3
        ax.hlines(np.arange(0.5, h - 0.5), -0.5, w - 0.5, colors=GRID_LINE, linewidths=lw)
        ax.vlines(np.arange(0.5, w - 0.5), -0.5, h - 0.5, colors=GRID_LINE, linewidths=lw)
        ax.set_xlim(-0.5, w - 0.5)
        ax.set_ylim(h - 0.5, -0.5)
        for spine in ax.spines.values():
            spine.set_color(MARK_COLOURS.get(mark, GRID_LINE))
            spine.set_linewidth(3 if mark in MARK_COLOURS else 0.8)
    if title or mark is not None:
        suffix = {True: " (correct)", False: " (wrong)"}.get(mark, "")
        ax.set_title(f"{title or ''}{suffix}", fontsize=8, color=MARK_COLOURS.get(mark, "black"))


def save_figure_atomic(fig: Figure, path, dpi: int = 72) -> Path:
    """Render `fig` to PNG at `path` via a temp file in the same folder and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    try:
        with atomic_file(path, "wb") as f:
            fig.savefig(f, format="png", dpi=dpi)
    finally:
        fig.clear()
    return path


def render_grids(rows_of_grids: Sequence[Sequence], path, titles: Sequence[Sequence] | None = None,
                 marks: Sequence[Sequence] | None = None, suptitle: str | None = None,
                 cell_inches: float = 1.8, dpi: int = 72) -> Path:
    """Draw a table of grids (rows may differ in length; None = blank cell) to a PNG at `path`.

    `titles` and `marks` follow the shape of `rows_of_grids` (rows may be shorter or None); a mark
    True/False frames the grid green/red and appends "(correct)"/"(wrong)" to its title."""
    rows = [list(row) for row in rows_of_grids]
    n_rows, n_cols = max(len(rows), 1), max([len(r) for r in rows] + [1])
    fig = Figure(figsize=(n_cols * cell_inches, n_rows * cell_inches + (0.4 if suptitle else 0.0)))
    axes = fig.subplots(n_rows, n_cols, squeeze=False)

    def at(table, r, c):
        if table is None or r >= len(table) or table[r] is None or c >= len(table[r]):
            return None
        return table[r][c]

    for r in range(n_rows):
        for c in range(n_cols):
            grid = rows[r][c] if r < len(rows) and c < len(rows[r]) else None
            _draw(axes[r][c], grid, at(titles, r, c), at(marks, r, c))
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    fig.tight_layout()
    return save_figure_atomic(fig, path, dpi)


def _attempt_grids(entry) -> list:
    """Attempts of one test input: a submission entry `{attempt_k: grid}` (by k) or a list of grids."""
    if isinstance(entry, Mapping):
        names = sorted((k for k in entry if str(k).startswith("attempt_") and str(k)[8:].isdigit()),
                       key=lambda k: int(str(k)[8:]))
        return [entry[k] for k in names]
    return list(entry or [])


def render_task(task: Mapping, path, title: str | None = None, attempts: Sequence | None = None) -> Path:
    """Train pairs (input, output), then per test input: input, output (when known) and the
    attempts (`attempts[i]`: a submission entry or a list of grids), each marked correct/wrong
    when the output is known (the title then says how many test outputs were solved)."""
    rows, titles, marks = [], [], []
    for i, pair in enumerate(task["train"]):
        rows.append([pair["input"], pair["output"]])
        titles.append([f"train {i} input", f"train {i} output"])
        marks.append([None, None])
    n_right = n_known = 0
    for i, pair in enumerate(task["test"]):
        row, row_titles, row_marks = [pair["input"]], [f"test {i} input"], [None]
        output = pair.get("output")
        if output is not None:
            row.append(output)
            row_titles.append(f"test {i} output")
            row_marks.append(None)
        if attempts is not None:
            grids = _attempt_grids(attempts[i] if i < len(attempts) else None)
            hit = False
            for k, grid in enumerate(grids, 1):
                row.append(grid if isinstance(grid, list) and grid else None)
                ok = None if output is None else (is_valid_grid(grid) and grid == output)
                hit |= bool(ok)
                row_titles.append(f"attempt_{k}" + ("" if is_valid_grid(grid) else " (empty)"))
                row_marks.append(ok)
            if output is not None:
                n_known += 1
                n_right += hit
        rows.append(row)
        titles.append(row_titles)
        marks.append(row_marks)
    if attempts is not None and n_known:
        solved = f"{n_right}/{n_known} test output(s) solved"
        title = f"{title}: {solved}" if title else solved
    return render_grids(rows, path, titles=titles, marks=marks, suptitle=title)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline render",
        description="Draw tasks to PNG, one <task_id>.png per task: train pairs, test inputs, test "
                    "outputs when known and, with --submission, the attempts marked correct/wrong.")
    parser.add_argument("--dataset", required=True,
                        help="tasks file or directory (a *_challenges.json picks up its *_solutions.json)")
    parser.add_argument("--ids", nargs="+", metavar="ID", help="only these task ids (in this order)")
    parser.add_argument("--first_n", type=int, metavar="N", help="only the first N tasks (after --ids); N >= 0")
    parser.add_argument("--submission", help="submission.json whose attempts are drawn beside each test input")
    parser.add_argument("--output_dir", required=True, help="folder for the PNGs")
    args = parser.parse_args(argv)
    try:
        check_output(args.output_dir, {"--dataset": args.dataset, "--submission": args.submission},
                     folder=True, what="--output_dir")
        tasks = select_tasks(load_tasks(args.dataset), args.ids, args.first_n)
        submission = read_submission(args.submission) if args.submission else None
        if submission is not None:
            problems = submission_problems(submission, tasks)
            if problems:
                print(f"render: warning: {args.submission} does not match the tasks drawn, "
                      f"{summarize_problems(problems)}", file=sys.stderr)
        for task_id, task in tasks.items():
            attempts = None
            if submission is not None:
                attempts = submission.get(task_id)
                attempts = attempts if isinstance(attempts, list) else []
            print(render_task(task, Path(args.output_dir) / f"{task_id}.png", title=task_id, attempts=attempts))
    except (OSError, ValueError) as e:
        print(f"render: {e}", file=sys.stderr)
        return 1
    return 0
