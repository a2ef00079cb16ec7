"""The competitions table and the one rule for a config's machine (planner, kernel metadata, preflight)."""
from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.core.competitions import COMPETITIONS, DEFAULT_GPU, competition, config_hardware, size_proxy
from pipeline.core.hardware import hardware_of
from pipeline.core.settings import load_config

REPO = Path(__file__).resolve().parents[2]


def test_the_rule_for_a_configs_machine():
    assert config_hardware("H100", "arc-prize-2024", ["cuda:0"]) == "H100"            # the config's key wins
    assert config_hardware(None, "arc-prize-2024", ["cuda:0"]) == "T4"                 # then the competition's
    assert config_hardware(None, "arc-prize-2026-arc-agi-2", []) == "L4"
    assert config_hardware(None, None, ["cpu"]) == "cpu"                               # then a CPU-only run
    assert config_hardware(None, "someone-elses-contest", ["cuda:0"]) == DEFAULT_GPU    # then Kaggle's default


def test_every_competition_a_config_names_is_known_with_a_real_machine_and_a_size_proxy():
    for path in sorted((REPO / "kaggle" / "configs").glob("*.yaml")):
        config = load_config(path)
        name = getattr(config, "kaggle_competition", None)
        if name is None:
            continue
        entry = competition(name)
        assert hardware_of(entry.hardware) is not None and entry.tasks > 0 and entry.gpus > 0, path.name
        assert size_proxy(entry, REPO).exists(), path.name
        assert config_hardware(config.hardware, name, config.devices) == (config.hardware or entry.hardware)
    assert COMPETITIONS["arc-prize-2026-arc-agi-2"].tasks == 240


def test_an_unknown_competition_and_a_missing_size_proxy_are_named(tmp_path):
    with pytest.raises(ValueError, match="unknown competition 'arc-prize-2031'.*arc-prize-2026-arc-agi-2"):
        competition("arc-prize-2031")
    assert competition(None) is None
    with pytest.raises(ValueError, match="arc-prize-2025: none of its size-proxy task files exists.*--dataset"):
        size_proxy(COMPETITIONS["arc-prize-2025"], tmp_path)
    # the evaluation set is preferred where it is vendored, else the training set stands in
    (tmp_path / "data" / "arc-agi-2").mkdir(parents=True)
    (tmp_path / "data" / "arc-agi-2" / "arc-agi_training_challenges.json").write_text("{}")
    assert size_proxy(COMPETITIONS["arc-prize-2025"], tmp_path).name == "arc-agi_training_challenges.json"
    (tmp_path / "data" / "arc-agi-2" / "arc-agi_evaluation_challenges.json").write_text("{}")
    assert size_proxy(COMPETITIONS["arc-prize-2025"], tmp_path).name == "arc-agi_evaluation_challenges.json"
