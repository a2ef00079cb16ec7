"""The convert-model command (pipeline/core/convert_model.py): help, and the cached embedded model."""
from __future__ import annotations

import pytest

from pipeline.core import convert_model


def test_cli_help_and_cached_convert(capsys, embedded_model_dir):
    with pytest.raises(SystemExit) as exit_info:
        convert_model.main(["--help"])
    assert exit_info.value.code == 0 and "python -m pipeline convert-model" in capsys.readouterr().out
    assert convert_model.main([]) == 0
    assert capsys.readouterr().out.strip() == str(embedded_model_dir)


def test_a_gguf_flag_that_is_not_a_gguf_is_a_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        convert_model.main(["--gguf", str(tmp_path / "model.bin")])
    assert exit_info.value.code == 2 and "is not a .gguf file" in capsys.readouterr().err
