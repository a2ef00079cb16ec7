"""Where the run's files are on this machine: `resolve_paths(config, env, cwd)` -> `Paths`.

Kaggle mounts every attached input under one root (`input_root`, /kaggle/input), in layouts
that have changed over the years and differ by kind of input:

    <root>/<slug>/                                               competitions and datasets (until 2025)
    <root>/competitions/<slug>/                                  competitions (2026)
    <root>/datasets/<owner>/<slug>/                              datasets (2026)
    <root>/models/<owner>/<model>/<framework>/<variation>/<version>/   Kaggle Models (2026)
    <root>/<model>/<framework>/<variation>/<version>/            Kaggle Models (earlier)

A config names one path per input (`input_dir`, `wheels_dir`, `model`, `adapter`). `locate`
finds the input whichever layout this machine uses, by the file that identifies it (`INPUTS`:
the test challenges file, the wheels' requirements.txt beside its wheels, a model's
config.json, an adapter's adapter_config.json):

  1. the configured path, when it holds that file (or is a file itself, e.g. a .gguf model);
  2. else the same mount (slug and the path inside it) in every layout above;
  3. else the one folder under the input root that holds that file.

Two matches in step 2 or 3 are an error naming both (`Located.problem`): the run refuses to
guess between two models. Nothing found is an error too, naming what was looked for; the
configured path is kept.
Paths outside the input root (local runs, tests) are taken as they are. The run prints
`Located.describe()` for each input, so the log says which path it used and why.

Pure functions of the config, the environment and the files under the input root; standard
library only (the notebook resolves paths before the offline install).
"""
from __future__ import annotations

import glob
import os
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from pipeline.core.settings import SubmissionConfig

SUBMISSION_NAME = "submission.json"
WHEELS_REQUIREMENTS = "requirements.txt"   # written by the wheels notebook beside the wheels
# the mount of an input named <slug>, in every layout Kaggle has used (module docstring)
LAYOUTS = ("{slug}", "competitions/{slug}", "datasets/*/{slug}", "models/*/{slug}/*/*/*", "{slug}/*/*/*")
AMBIGUOUS = "ambiguous"  # Located.how when two or more folders match
SEARCH_DEPTH = 10  # folders below the input root searched for a marker (a model mount is 6 deep)


@dataclass(frozen=True)
class Input:
    """A kind of input and the file (relative to its folder) that identifies it."""
    what: str
    marker: str
    with_wheels: bool = False   # the folder must also hold *.whl files (a requirements.txt alone is no wheels folder)

    def holds(self, folder: Path) -> bool:
        return (folder / self.marker).is_file() and (not self.with_wheels or any(folder.glob("*.whl")))


MODEL = Input("model", "config.json")
ADAPTER = Input("adapter", "adapter_config.json")
WHEELS = Input("wheels", WHEELS_REQUIREMENTS, with_wheels=True)


def competition_input(test_challenges: str) -> Input:
    return Input("competition data", test_challenges)


@dataclass(frozen=True)
class Located:
    """Where one input was found: `path`, and `how` (as configured, by layout, by search, not found).
    `problem` is set when two folders match, or none under the input root: a one-line error."""
    what: str
    configured: Path
    path: Path
    how: str
    problem: str = ""

    def describe(self) -> str:
        if self.problem:
            return f"error: {self.problem}"
        if self.path == self.configured:
            return f"{self.what}: {self.path} ({self.how})"
        return f"{self.what}: {self.path} ({self.how}; configured {self.configured})"


def mount_of(relative: Path) -> tuple[str, tuple[str, ...]]:
    """(slug, path inside the mount) of a path relative to the input root, in any layout."""
    parts = relative.parts
    if parts[0] == "competitions" and len(parts) >= 2:
        return parts[1], parts[2:]
    if parts[0] == "datasets" and len(parts) >= 3:
        return parts[2], parts[3:]
    if parts[0] == "models" and len(parts) >= 6:
        return parts[2], parts[6:]
    return parts[0], parts[1:]


def layout_candidates(configured: Path, root: Path) -> list[Path]:
    """Existing folders that hold the configured path's mount in any layout (LAYOUTS), the
    configured path itself left out."""
    slug, inner = mount_of(configured.relative_to(root))
    found = []
    for layout in LAYOUTS:
        pattern = "/".join([layout.format(slug=glob.escape(slug)), *map(glob.escape, inner)])
        found += [p for p in sorted(root.glob(pattern)) if p != configured and p not in found]
    return found


def search_marker(root: Path, item: Input, depth: int = SEARCH_DEPTH) -> list[Path]:
    """Every folder under `root` (at most `depth` levels down) that holds `item`'s marker."""
    marker = Path(item.marker)
    found = []
    for folder, dirs, files in os.walk(root):
        level = len(Path(folder).relative_to(root).parts)
        if level >= depth:
            dirs.clear()
        dirs.sort()
        if marker.name in files:
            candidate = Path(folder).parents[len(marker.parts) - 2] if len(marker.parts) > 1 else Path(folder)
            if item.holds(candidate) and candidate not in found:
                found.append(candidate)
    return found


def locate(configured: Path, root: Path, item: Input) -> Located:
    """Where `item`, configured at `configured`, is on this machine (module docstring: steps 1-3)."""
    if configured.is_file() or item.holds(configured):
        return Located(item.what, configured, configured, "as configured")
    try:
        configured.relative_to(root)
    except ValueError:  # not a Kaggle input: taken as it is
        return Located(item.what, configured, configured, "as configured" if configured.exists() else "not found")
    if configured == root:
        candidates, how = [], ""
    else:
        candidates = [c for c in layout_candidates(configured, root) if item.holds(c)]
        how = "found in another input layout"
    if not candidates:
        candidates, how = search_marker(root, item), f"found by its {item.marker} under {root}"
    if len(candidates) > 1:
        return Located(item.what, configured, configured, AMBIGUOUS,
                       f"{len(candidates)} folders hold {item.marker} ({how}): "
                       f"{', '.join(map(str, candidates))}; name one in the config")
    if candidates:
        return Located(item.what, configured, candidates[0], how)
    return Located(item.what, configured, configured, "not found",
                   f"{item.what} not found: no {item.marker} in {configured}, in its other input layouts or under {root}")


@dataclass(frozen=True)
class Paths:
    input_root: Path
    input_dir: Path
    test_challenges: Path
    working_dir: Path
    submission: Path
    run_dir: Path
    scratch_dir: Path
    wheels_dir: Path
    model: str          # a resolved directory, or an alias such as `embedded`
    adapter: str | None
    located: tuple[Located, ...] = ()   # how each Kaggle input was found (printed by the run)

    def problem(self, *what: str, ambiguous_only: bool = False) -> str:
        """The first location error among the inputs named `what` ("" when none); with
        `ambiguous_only`, only two or more matches count (not "not found")."""
        return next((l.problem for l in self.located if l.what in what and l.problem
                     and (l.how == AMBIGUOUS or not ambiguous_only)), "")


def expand_vars(value: str, env: Mapping[str, str]) -> str:
    return string.Template(value).safe_substitute(env)


def resolve_paths(config: SubmissionConfig, env: Mapping[str, str] | None = None,
                  cwd: str | os.PathLike | None = None) -> Paths:
    """Absolute paths for this machine. Kaggle configs hold absolute `/kaggle/...` paths; the
    local config holds paths relative to the notebook's working directory `cwd` (its kernel cwd),
    which is what keeps build-machine paths out of the notebook. `~` and `$VARS` (from `env`)
    are expanded, so a config can also say `$HOME/...`. The competition folder, the wheels, the
    model and the adapter are looked for under `input_root` (`locate`)."""
    env = os.environ if env is None else env
    cwd = Path(cwd or os.getcwd())

    def path(value: str, base: Path = cwd) -> Path:
        expanded = os.path.expanduser(expand_vars(value, env))
        return (base / expanded).resolve() if not os.path.isabs(expanded) else Path(expanded)

    root = path(config.input_root)
    located = []

    def find(value: str, item: Input) -> Path:
        where = locate(path(value), root, item)
        located.append(where)
        return where.path

    def model_ref(value: str | None, item: Input) -> str | None:
        if value is None or "/" not in value and not Path(cwd / value).exists():
            return value  # an alias (`embedded`) or a hub-style name the stage resolves
        return str(find(value, item))

    input_dir = path(config.input_dir)
    if not os.path.isabs(config.test_challenges):
        input_dir = find(config.input_dir, competition_input(config.test_challenges))
    working_dir = path(config.working_dir)
    return Paths(input_root=root, input_dir=input_dir, test_challenges=path(config.test_challenges, input_dir),
                 working_dir=working_dir, submission=working_dir / SUBMISSION_NAME,
                 run_dir=path(config.run_dir, working_dir), scratch_dir=path(config.scratch_dir),
                 wheels_dir=find(config.wheels_dir, WHEELS), model=model_ref(config.model, MODEL),
                 adapter=model_ref(config.adapter, ADAPTER), located=tuple(located))
