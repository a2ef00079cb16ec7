"""The offline install's decision: the installed versions against the wheels' pins, the image's
tags against the ones the wheels notebook recorded (pipeline/kaggle/install.py).

    python -m pytest tests/kaggle/test_install.py -q

Wheel folders are laid out in tmp_path (empty .whl files where pip is not run); versions and
image tags are injected. The end-to-end installs with the real pip are in test_kaggle_steps.py.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from pipeline.core.settings import load_config
from pipeline.kaggle.install import (IMAGE_FILE, download_wheels, image_tags, plan_install, read_pins, same_version,
                                     torch_cuda, wheel_python_mismatches)
from pipeline.kaggle.preflight import Probes
from pipeline.kaggle.run import KaggleRun

from test_kaggle_steps import PROBE, build_wheel, config, ended, pip_env

IMAGE = {"python": "cp311", "platform": "linux-x86_64", "cuda": "cu124"}
PINS = {"vllm": "0.6.3.post1", "transformers": "4.46.1", "peft": "0.13.2"}


def wheels_folder(folder: Path, pins: dict = PINS, image: dict | None = IMAGE, wheels=("vllm-0.6.3.post1-cp38-abi3-manylinux1_x86_64.whl",
                                                                                       "peft-0.13.2-py3-none-any.whl")) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "requirements.txt").write_text("".join(f"{n}=={v}\n" for n, v in pins.items()))
    if image is not None:
        (folder / IMAGE_FILE).write_text(json.dumps(image))
    for name in wheels:
        (folder / name).write_bytes(b"")
    return folder


def versions(**installed):
    return lambda name: installed.get(name)


def test_pins_and_versions_are_read_as_pip_reads_them(tmp_path):
    path = tmp_path / "requirements.txt"
    path.write_text("# pinned\nvllm==0.6.3.post1  # the engine\ntransformers[torch]==4.46.1\npeft>=0.13\n"
                    "accelerate==1.0.1 ; python_version >= '3.9'\n")
    assert read_pins(path) == {"vllm": "0.6.3.post1", "transformers": "4.46.1", "accelerate": "1.0.1"}
    assert same_version("2.5.1+cu124", "2.5.1") and same_version("4.46.1", "4.46.1")
    assert not same_version("2.5.1+cu124", "2.5.1+cu121") and not same_version(None, "1") and not same_version("4.47", "4.46.1")


def test_the_pinned_versions_installed_means_no_install(tmp_path):
    plan = plan_install(wheels_folder(tmp_path / "w"), ("vllm",), versions(**PINS), lambda: IMAGE)
    assert plan.action == "skip" and plan.reason.startswith("pinned versions installed: vllm==0.6.3.post1, ")


def test_other_versions_that_import_are_replaced_by_the_pins(tmp_path):
    """The old rule skipped the install because vllm, peft and transformers imported; the image's
    other versions would have run untested code."""
    folder = wheels_folder(tmp_path / "w")
    plan = plan_install(folder, ("vllm", "peft", "transformers"), versions(vllm="0.8.0", transformers="4.46.1", peft="0.13.2"),
                        lambda: IMAGE, find_spec=lambda name: object())  # every package imports
    assert plan.action == "install" and plan.pip_args == ("-r", str(folder / "requirements.txt"))
    assert plan.packages == ("vllm",) and plan.reason == "vllm 0.8.0 (pinned 0.6.3.post1)" and plan.warnings == ()


def test_another_python_or_platform_fails_before_pip_saying_what_differs(tmp_path):
    folder = wheels_folder(tmp_path / "w")
    plan = plan_install(folder, (), versions(), lambda: {**IMAGE, "python": "cp312"})
    assert plan.action == "fail"
    assert plan.reason.startswith("python: wheels built for cp311, this image has cp312: pip cannot install them (")
    assert "vllm missing (pinned 0.6.3.post1)" in plan.reason and "rebuild the wheels dataset" in plan.reason
    plan = plan_install(folder, (), versions(), lambda: {**IMAGE, "platform": "linux-aarch64"})
    assert plan.action == "fail" and "platform: wheels built for linux-x86_64, this image has linux-aarch64" in plan.reason


def test_another_cuda_build_is_a_warning_and_the_install_goes_on(tmp_path):
    plan = plan_install(wheels_folder(tmp_path / "w"), (), versions(), lambda: {**IMAGE, "cuda": "cu126"})
    assert plan.action == "install"
    [warning] = plan.warnings
    assert "cuda: wheels built for cu124, this image has cu126" in warning


def test_wheels_for_another_python_are_found_by_their_file_names(tmp_path):
    """A wheels folder from an older notebook (no image.json): the wheels' own tags still tell."""
    folder = wheels_folder(tmp_path / "w", image=None, wheels=("numpy-2.1.0-cp310-cp310-manylinux_2_17_x86_64.whl",
                                                               "peft-0.13.2-py3-none-any.whl",
                                                               "vllm-0.6.3-cp38-abi3-manylinux1_x86_64.whl"))
    assert wheel_python_mismatches(folder, "cp311") == ["numpy-2.1.0-cp310-cp310-manylinux_2_17_x86_64.whl"]
    assert wheel_python_mismatches(folder, "cp310") == []
    assert wheel_python_mismatches(folder, "cp37")[1] == "vllm-0.6.3-cp38-abi3-manylinux1_x86_64.whl"  # abi3: 3.8 on
    plan = plan_install(folder, (), versions(), lambda: IMAGE)
    assert plan.action == "fail" and "1 wheel(s) are for another Python than cp311 (e.g. numpy-2.1.0" in plan.reason
    assert any(f"no {IMAGE_FILE}" in w for w in plan.warnings)


def test_the_image_tags_name_this_python_and_the_cuda_of_its_torch(tmp_path):
    tags = image_tags()
    assert tags["python"] == f"cp{sys.version_info.major}{sys.version_info.minor}" and tags["platform"]
    version = tmp_path / "version.py"
    version.write_text("__version__ = '2.5.1+cu124'\ncuda: Optional[str] = '12.4'\n")
    assert torch_cuda(version) == "12.4"
    version.write_text("cuda: Optional[str] = None\n")
    assert torch_cuda(version) is None and torch_cuda(None) is None and torch_cuda(tmp_path / "missing.py") is None


def test_the_run_installs_when_an_injected_version_differs_and_skips_when_it_matches(kaggle_tree):
    """KaggleRun asks its probes: the real pip runs only for the version that differs."""
    wheels = kaggle_tree / "wheels"
    build_wheel(wheels)
    (wheels / "requirements.txt").write_text(f"{PROBE}==1.0\n")
    (wheels / IMAGE_FILE).write_text(json.dumps(image_tags()))
    same = Probes(versions=lambda name: "1.0")
    run = KaggleRun(config(), env=pip_env(kaggle_tree), cwd=kaggle_tree / "working", probes=same)
    run.start()
    run.install()
    assert run.results["install"].status == "skipped"
    assert ended(kaggle_tree, "install")["reason"] == f"pinned versions installed: {PROBE}==1.0"
    other = Probes(versions=lambda name: "0.9")  # installed, importable, not the pin
    run = KaggleRun(config(), env=pip_env(kaggle_tree), cwd=kaggle_tree / "working", probes=other)
    run.start()
    run.install()
    assert run.results["install"].status == "ok", run.results["install"]
    assert (kaggle_tree / "site" / f"{PROBE}.py").is_file()
    # the probe still says 0.9 after the install: the run says so rather than trusting pip
    assert any("still not the pinned versions after the install: " in w for w in run.warnings)


def test_the_wheels_notebook_records_the_requirements_and_the_image_tags(tmp_path, monkeypatch):
    """`download_wheels` with pip pointed at a local folder (no internet): the wheels, the pins and
    the image's tags land in the output folder, as the install reads them."""
    source = tmp_path / "index"
    build_wheel(source)
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(source))
    monkeypatch.setenv("PIP_DISABLE_PIP_VERSION_CHECK", "1")
    out = tmp_path / "working" / "wheels"
    result = download_wheels(load_config({"kind": "wheels", "wheels_output_dir": str(out),
                                          "requirements": [f"{PROBE}==1.0"]}))
    assert result.status == "ok", result
    assert (out / f"{PROBE}-1.0-py3-none-any.whl").is_file()
    assert read_pins(out / "requirements.txt") == {PROBE: "1.0"}
    assert json.loads((out / IMAGE_FILE).read_text()) == image_tags()
    assert plan_install(out, (), versions(), image_tags).action == "install"  # the run's view of it
