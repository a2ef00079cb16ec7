"""The offline install: whether it is needed, whether it can work, and the wheels notebook that
makes its dataset.

The wheels dataset is written by `download_wheels` (the wheels notebook, run once in Kaggle's
image with internet): the wheels, `requirements.txt` (the pinned lines the install uses) and
`image.json`, the image's tags (`image_tags`: Python `cp311`, platform `linux-x86_64`, the CUDA
build of its torch `cu124`). The run decides with `plan_install`:

  1. the versions that import here (importlib.metadata) against the pins: all equal, no install
     (an image with other versions than the pins would run untested code, so "it imports" is
     not enough);
  2. this image's tags against the recorded ones, and the wheels' own Python tags (their file
     names) against this Python: a Python or platform difference means pip cannot install them,
     so the install fails at once saying what differs; a CUDA difference is a warning (vLLM's
     wheels bring their own torch, whose CUDA needs only a recent enough driver);
  3. `pip install --no-index --find-links WHEELS -r WHEELS/requirements.txt`.

Without a requirements.txt (no wheels folder, as in the local dry run, or an older one) the
`install_packages` are installed by name when one does not import, else nothing is installed.

Standard library only: it runs before the offline install. What it asks the machine
(`installed_version`, `image_tags`, `importlib.util.find_spec`) is passed in, so tests inject
versions and tags.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import re
import sys
import sysconfig
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

from pipeline.core.files import read_json, write_json_atomic, write_text_atomic
from pipeline.core.settings import load_config
from pipeline.kaggle.paths import WHEELS_REQUIREMENTS
from pipeline.kaggle.supervisor import StageResult, run_stage

IMAGE_FILE = "image.json"   # beside requirements.txt: the tags of the image the wheels were built in
BLOCKING_TAGS = ("python", "platform")  # pip cannot install wheels built for another of these
REBUILD = "rebuild the wheels dataset in this image (kaggle/configs/wheels.yaml)"


# ----------------------------------------------------------------------------- versions

def read_pins(path: str | Path) -> dict[str, str]:
    """{name: version} of the `name==version` lines of a requirements file (extras, markers and
    comments ignored; other specifiers are not pins)."""
    pins = {}
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].split(";", 1)[0].strip()
        if "==" in line:
            name, version = (s.strip() for s in line.split("==", 1))
            pins[name.split("[", 1)[0].strip()] = version
    return pins


def installed_version(name: str) -> str | None:
    """The version of the installed distribution `name` (None when none is installed)."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def same_version(have: str | None, want: str) -> bool:
    """`have` satisfies the pin `==want` (a local label such as +cu124 is ignored unless pinned, as pip does)."""
    return have is not None and (have == want or ("+" not in want and have.split("+", 1)[0] == want))


def version_differences(pins: Mapping[str, str], version_of: Callable[[str], str | None]) -> dict:
    """{name: (pinned, installed or None)} for every pin the installed version does not satisfy."""
    return {name: (want, have) for name, want in pins.items() if not same_version(have := version_of(name), want)}


# ----------------------------------------------------------------------------- image tags

def torch_cuda(version_file: Path | None) -> str | None:
    """The CUDA version torch was built for ("12.4"), read from its `torch/version.py` (not imported)."""
    try:
        text = version_file.read_text(encoding="utf-8") if version_file else ""
    except OSError:
        return None
    match = re.search(r"^cuda\b[^=\n]*=\s*['\"]([\d.]+)['\"]", text, re.M)
    return match.group(1) if match else None


def image_tags() -> dict:
    """This image's tags: Python (`cp311`), platform, and the CUDA build of its torch (`cu124`; None
    when torch is absent or built without CUDA)."""
    try:
        version_file = Path(importlib.metadata.distribution("torch").locate_file("torch/version.py"))
    except importlib.metadata.PackageNotFoundError:
        version_file = None
    cuda = torch_cuda(version_file)
    return {"python": f"cp{sys.version_info.major}{sys.version_info.minor}", "platform": sysconfig.get_platform(),
            "cuda": "cu" + cuda.replace(".", "") if cuda else None}


def tag_differences(recorded: Mapping, current: Mapping) -> dict:
    """{tag: (recorded, current)} for the tags of `image_tags` that differ."""
    return {k: (recorded.get(k), current.get(k)) for k in ("python", "platform", "cuda")
            if k in recorded and recorded.get(k) != current.get(k)}


def wheel_python_mismatches(wheels_dir: Path, python: str) -> list[str]:
    """Wheels in the folder that this Python (`cp311`) cannot install: every Python tag of the file
    name is another CPython and its ABI is not the stable abi3 of an older one."""
    current = int(python[2:]) if python.startswith("cp") and python[2:].isdigit() else None
    bad = []
    for wheel in sorted(wheels_dir.glob("*.whl")):
        parts = wheel.stem.split("-")
        if len(parts) < 5 or current is None:
            continue
        py_tags, abi = parts[-3].split("."), parts[-2]
        cpythons = [int(t[2:]) for t in py_tags if t.startswith("cp") and t[2:].isdigit()]
        if len(cpythons) != len(py_tags):  # py3, py2.py3, ...: any Python
            continue
        if current in cpythons or (abi == "abi3" and min(cpythons) <= current):
            continue
        bad.append(wheel.name)
    return bad


def image_problems(wheels_dir: Path, current: Mapping) -> tuple[list[str], list[str]]:
    """(blocking problems, warnings) of installing the wheels in `wheels_dir` on the image `current`."""
    blocking, warnings = [], []
    record = wheels_dir / IMAGE_FILE
    if record.is_file():
        differ = tag_differences(read_json(record), current)
        what = lambda keys: "; ".join(f"{k}: wheels built for {differ[k][0]}, this image has {differ[k][1]}"
                                      for k in keys)
        if any(k in differ for k in BLOCKING_TAGS):
            blocking.append(what([k for k in BLOCKING_TAGS if k in differ]))
        if "cuda" in differ:
            warnings.append(f"torch CUDA build differs ({what(['cuda'])}): vLLM's wheels bring their own torch; "
                            f"if CUDA fails, {REBUILD}")
    else:
        warnings.append(f"no {IMAGE_FILE} in {wheels_dir} (an older wheels notebook): the image's tags are not "
                        f"compared, only the wheels' Python tags")
    bad = wheel_python_mismatches(wheels_dir, current.get("python", ""))
    if bad:
        blocking.append(f"{len(bad)} wheel(s) are for another Python than {current.get('python')} "
                        f"(e.g. {bad[0]})")
    return blocking, warnings


# ----------------------------------------------------------------------------- the decision

@dataclass(frozen=True)
class InstallPlan:
    action: str                       # skip | fail | install
    reason: str = ""
    pip_args: tuple[str, ...] = ()    # what `pip install --no-index --find-links WHEELS` is given
    packages: tuple[str, ...] = ()    # what the install is for (names)
    warnings: tuple[str, ...] = ()
    pins: Mapping[str, str] = field(default_factory=dict)


def _describe(differ: Mapping) -> str:
    return ", ".join(f"{name} {have or 'missing'} (pinned {want})" for name, (want, have) in differ.items())


def plan_install(wheels_dir: Path, install_packages: Sequence[str],
                 version_of: Callable[[str], str | None] = installed_version,
                 image: Callable[[], Mapping] = image_tags,
                 find_spec: Callable = importlib.util.find_spec) -> InstallPlan:
    """Whether to install, and what (module docstring: steps 1-3)."""
    requirements = wheels_dir / WHEELS_REQUIREMENTS
    pins = read_pins(requirements) if requirements.is_file() else {}
    if pins:
        differ = version_differences(pins, version_of)
        if not differ:
            return InstallPlan("skip", "pinned versions installed: " + ", ".join(f"{n}=={v}" for n, v in pins.items()),
                               pins=pins)
        blocking, warnings = image_problems(wheels_dir, image())
        if blocking:
            return InstallPlan("fail", f"{'; '.join(blocking)}: pip cannot install them ({_describe(differ)}); "
                                       f"{REBUILD}", warnings=tuple(warnings), pins=pins)
        return InstallPlan("install", _describe(differ), ("-r", str(requirements)), tuple(differ), tuple(warnings),
                           pins)
    missing = [m for m in install_packages if find_spec(m) is None]
    if not missing:
        return InstallPlan("skip", f"already importable: {', '.join(install_packages)} (versions not checked: no "
                                   f"{WHEELS_REQUIREMENTS} in {wheels_dir})")
    if not wheels_dir.is_dir():
        return InstallPlan("fail", f"{', '.join(missing)} missing and no wheels folder at {wheels_dir}")
    return InstallPlan("install", f"{', '.join(missing)} missing", tuple(missing), tuple(missing))


# ----------------------------------------------------------------------------- wheels notebook

def download_wheels(config, started_at: float | None = None) -> StageResult:
    """Build every pinned requirement (and its dependencies) as wheels into `wheels_output_dir`,
    plus the `requirements.txt` that the offline install uses and `image.json` (this image's tags,
    which the run compares with its own). Needs internet (run on Kaggle)."""
    config = load_config(config)
    out = Path(config.wheels_output_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / WHEELS_REQUIREMENTS, "\n".join(config.requirements) + "\n")
    tags = image_tags()
    write_json_atomic(out / IMAGE_FILE, tags, indent=1)
    cmd = [sys.executable, "-m", "pip", "wheel", "--wheel-dir", str(out), "-r", str(out / WHEELS_REQUIREMENTS)]
    result = run_stage(cmd, (started_at or time.time()) + 11 * 3600, out.parent / "wheels.log", 3600, stage="wheels")
    n = len(list(out.glob("*.whl")))
    print(f"[wheels] {result.status} in {result.seconds:.0f} s: {n} wheels in {out} for {tags}"
          f"{' (' + result.reason + ')' if result.reason else ''}", flush=True)
    return result
