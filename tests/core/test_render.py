"""Rendering: PNGs are written atomically, sized plausibly, with the ARC palette; CLI."""
from __future__ import annotations

import json
import struct

import matplotlib
import numpy as np
import pytest

from pipeline.__main__ import main as pipeline_main
from pipeline.core.render import CMAP, NORM, PALETTE, render_grids, render_task

TASK = {"train": [{"input": [[1, 2], [3, 4]], "output": [[4, 3], [2, 1]]},
                  {"input": [[0] * 30] * 30, "output": [[9] * 3]}],
        "test": [{"input": [[5, 6]], "output": [[6, 5]]}, {"input": [[7]], "output": [[8]]}]}


def png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def test_palette_is_standard():
    assert PALETTE == ("#000000", "#0074D9", "#FF4136", "#2ECC40", "#FFDC00",
                       "#AAAAAA", "#F012BE", "#FF851B", "#7FDBFF", "#870C25")
    for colour in range(10):
        assert matplotlib.colors.to_hex(CMAP(NORM(colour))).upper() == PALETTE[colour]


def test_render_grids(tmp_path):
    path = render_grids([[[[1, 2], [3, 4]], None, [[0]]], [[[9] * 30] * 30], [[], "not a grid"]],
                        tmp_path / "sub" / "g.png", titles=[["a", "b", "c"], ["d"]], marks=[[True, None, False]],
                        suptitle="hello", dpi=50)
    assert path == tmp_path / "sub" / "g.png"
    width, height = png_size(path)
    assert width == round(3 * 1.8 * 50)
    assert height == round((3 * 1.8 + 0.4) * 50)
    assert 2_000 < path.stat().st_size < 500_000
    assert [p.name for p in path.parent.iterdir()] == ["g.png"]  # no temp file left


def test_render_task_with_attempts(tmp_path):
    attempts = [{"attempt_1": [[6, 5]], "attempt_2": []}, [[[1]], [[2]], [[3]]]]
    path = render_task(TASK, tmp_path / "t.png", title="task", attempts=attempts)
    width, height = png_size(path)
    # 4 rows (2 train, 2 test); widest row: input, output, 3 attempts
    assert width == round(5 * 1.8 * 72) and height == round((4 * 1.8 + 0.4) * 72)
    assert path.stat().st_size > 5_000
    plain = render_task({"train": TASK["train"], "test": [{"input": [[5, 6]]}]}, tmp_path / "p.png")
    assert png_size(plain)[0] == round(2 * 1.8 * 72)


def test_rendering_keeps_no_figures(tmp_path):
    import matplotlib.pyplot as plt
    before = len(plt.get_fignums())
    for i in range(5):
        render_task(TASK, tmp_path / f"{i}.png")
    assert len(plt.get_fignums()) == before


def test_render_cli(tmp_path, capsys):
    tasks = {"aa": TASK, "bb": {"train": TASK["train"][:1], "test": [{"input": [[1]]}]}, "cc": TASK}
    (tmp_path / "tasks.json").write_text(json.dumps(tasks))
    (tmp_path / "sub.json").write_text(json.dumps({"bb": [{"attempt_1": [[1]], "attempt_2": [[2]]}]}))
    out = tmp_path / "pngs"
    rc = pipeline_main(["render", "--dataset", str(tmp_path / "tasks.json"), "--first_n", "2",
                        "--submission", str(tmp_path / "sub.json"), "--output_dir", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out.split()
    assert printed == [str(out / "aa.png"), str(out / "bb.png")]
    assert all(png_size(out / name)[0] > 100 for name in ("aa.png", "bb.png"))
    assert pipeline_main(["render", "--dataset", str(tmp_path / "tasks.json"), "--ids", "cc", "--output_dir", str(out)]) == 0
    assert capsys.readouterr().out.split() == [str(out / "cc.png")]
    fresh = tmp_path / "fresh"
    assert pipeline_main(["render", "--dataset", str(tmp_path / "tasks.json"), "--ids", "aa", "zz",
                          "--output_dir", str(fresh)]) == 1
    captured = capsys.readouterr()
    assert captured.err == "render: unknown task id(s): zz\n" and captured.out == ""
    assert not fresh.exists()  # refused before drawing anything, even the known task
    # a negative count used to keep "all but the last" (one of two tasks drawn): refused
    assert pipeline_main(["render", "--dataset", str(tmp_path / "tasks.json"), "--first_n", "-1",
                          "--output_dir", str(fresh)]) == 1
    assert capsys.readouterr().err == "render: first_n must be >= 0, got -1\n" and not fresh.exists()
    with pytest.raises(SystemExit):
        pipeline_main(["render", "--help"])
    assert "--first_n" in capsys.readouterr().out


# ----------------------------------------------------------------------------- pixels

def hex_rgb(colour: str) -> tuple[int, int, int]:
    return tuple(int(colour[i:i + 2], 16) for i in (1, 3, 5))


def read_png(path) -> np.ndarray:
    """The saved PNG as an (H, W, 3) array of 0-255 ints."""
    from matplotlib.image import imread
    return np.rint(imread(path)[..., :3] * 255).astype(int)


@pytest.fixture()
def geometry(monkeypatch):
    """Spy on `save_figure_atomic`: before the real save, draw the figure at the save dpi and
    record, per axes (row-major, as `subplots` made them), its data -> pixel affine matrix and its
    box in pixels, so a test can find the pixel at the centre of any cell of the saved PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from pipeline.core import render
    recorded: list[list[dict]] = []
    real = render.save_figure_atomic

    def spy(fig, path, dpi=72):
        FigureCanvasAgg(fig)
        fig.set_dpi(dpi)
        fig.canvas.draw()  # applies the equal aspect: the boxes and transforms are the saved ones
        height = fig.bbox.height
        recorded.append([{"matrix": ax.transData.get_affine().get_matrix().copy(), "height": height,
                          "box": ax.get_window_extent().extents.copy(), "has_image": bool(ax.images)}
                         for ax in fig.axes])
        return real(fig, path, dpi)

    monkeypatch.setattr(render, "save_figure_atomic", spy)
    return recorded


def cell_pixel(axes: dict, row: int, col: int) -> tuple[int, int]:
    """(PNG row, PNG column) of the pixel holding the centre of grid cell (row, col)."""
    x, y, _ = axes["matrix"] @ np.array([col, row, 1.0])
    return int(axes["height"] - y), int(x)


def assert_cells_have_palette_colours(image, axes, grid):
    assert axes["has_image"]
    wrong = []
    for r, line in enumerate(grid):
        for c, value in enumerate(line):
            got = tuple(int(v) for v in image[cell_pixel(axes, r, c)])
            if got != hex_rgb(PALETTE[value]):
                wrong.append(((r, c), value, got))
    assert not wrong, wrong[:10]


def test_every_cell_is_drawn_in_its_palette_colour(tmp_path, geometry):
    """Read the PNG back: the pixel at the centre of every cell is exactly the ARC palette colour
    of that cell's value (catches a shifted norm, a wrong palette order, a transposed or flipped
    grid); a blank cell stays white."""
    all_ten = [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]           # not square: a transpose would not fit
    tall = [[9, 0], [8, 1], [7, 2]]
    rng = np.random.default_rng(0)
    big = rng.integers(0, 10, size=(30, 30)).tolist()     # cells of a few pixels each
    path = render_grids([[all_ten, None], [tall, big]], tmp_path / "cells.png", dpi=72)
    image = read_png(path)
    [axes] = geometry
    assert image.shape[:2] == (round(2 * 1.8 * 72), round(2 * 1.8 * 72))
    assert_cells_have_palette_colours(image, axes[0], all_ten)
    assert_cells_have_palette_colours(image, axes[2], tall)
    assert_cells_have_palette_colours(image, axes[3], big)
    x0, y0, x1, y1 = axes[1]["box"]  # the blank cell: nothing drawn in its box
    blank = image[int(axes[1]["height"] - y1) + 1:int(axes[1]["height"] - y0) - 1, int(x0) + 1:int(x1) - 1]
    assert blank.size and (blank == 255).all()


def test_a_task_picture_puts_each_grid_in_its_place_and_frames_attempts_right_or_wrong(tmp_path, geometry):
    """render_task: train input/output per row, then test input, known output and the attempts;
    a right attempt framed green, a wrong one red, every cell in its palette colour."""
    task = {"train": [{"input": [[1, 2], [3, 4]], "output": [[4, 3], [2, 1]]}],
            "test": [{"input": [[5, 6, 7]], "output": [[7, 6, 5]]}]}
    attempts = [{"attempt_1": [[7, 6, 5]], "attempt_2": [[9, 9], [8, 8]]}]   # right, then wrong
    path = render_task(task, tmp_path / "task.png", title="t", attempts=attempts)
    image = read_png(path)
    [axes] = geometry
    assert len(axes) == 2 * 4  # 2 rows x 4 columns (test: input, output, 2 attempts)
    expected = {0: [[1, 2], [3, 4]], 1: [[4, 3], [2, 1]],
                4: [[5, 6, 7]], 5: [[7, 6, 5]], 6: [[7, 6, 5]], 7: [[9, 9], [8, 8]]}
    for index, grid in expected.items():
        assert_cells_have_palette_colours(image, axes[index], grid)
    assert not axes[2]["has_image"] and not axes[3]["has_image"]  # the train row has 2 grids

    def left_edge(a):  # the pixel nearest the middle of the axes' left edge (inside a 3 px spine)
        x0, y0, _, y1 = a["box"]
        return tuple(int(v) for v in image[int(a["height"] - (y0 + y1) / 2), int(round(x0 - 0.5))])

    green, red = hex_rgb("#2ECC40"), hex_rgb("#FF4136")
    assert left_edge(axes[6]) == green and left_edge(axes[7]) == red
    assert left_edge(axes[5]) not in (green, red) and left_edge(axes[4]) not in (green, red)
