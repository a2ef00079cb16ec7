"""Rendering: PNGs are written atomically, sized plausibly, with the ARC palette; CLI."""
from __future__ import annotations

import json
import struct

import matplotlib
import pytest

from pipeline.__main__ import main as pipeline_main
from pipeline.render import CMAP, NORM, PALETTE, render_grids, render_task

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
    assert pipeline_main(["render", "--dataset", str(tmp_path / "tasks.json"), "--ids", "zz", "--output_dir", str(out)]) == 1
    assert "unknown task id" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        pipeline_main(["render", "--help"])
    assert "--first_n" in capsys.readouterr().out
