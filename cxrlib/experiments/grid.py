"""A sweep's grid file, read and checked, and expanded into its members (experiments/sweep.py runs them).

    name: seed-ablation            # the sweep folder runs/<name>/ (default: the file's name)
    base: params/seed-pos.yaml     # the preset every member starts from
    set: {epochs: 3}               # overrides for every member
    vary: {pos_weight: [false, true]}           # the product of these values ...
    members: [{name: big, image_size: 512}]     # ... and/or an explicit list of overrides
    seeds: [0, 1, 2]               # each combination once per seed (default: the base's seed)
    notebooks: [01, 02, 03]        # default: all five
    launcher: local                # local | slurm
    parallel: 1                    # local: members at once, each on its own GPU(s)
    slurm: {partition: gpu, time_min: 720, cpus_per_task: 8, mem_gb: 64, array_parallelism: 8}
    baseline: pos_weight-false_seed-0   # make compare's reference (default: the first member)
    ensemble: true                 # also runs/<sweep>/ensemble/, the members' mean probability

Members are named from what they change, e.g. pos_weight-true_seed-1.
"""
from __future__ import annotations

import itertools
import re
from pathlib import Path

from ..errors import UserError
from ..params import PRESETS, read_yaml

GRIDS = PRESETS / "grids"   # the shipped grids, relative to the project root


class GridError(UserError):
    pass


def shipped_grids() -> str:
    """The grid files in params/grids/, listed for a message."""
    return ", ".join(sorted(str(p) for p in GRIDS.glob("*.yaml"))) or f"none in {GRIDS}/"


GRID_KEYS = ("name", "base", "set", "vary", "members", "seeds", "notebooks", "launcher", "parallel", "slurm",
             "baseline", "ensemble")
SLURM_KEYS = ("partition", "time_min", "cpus_per_task", "mem_gb", "account", "array_parallelism", "qos",
              "constraint", "signal_delay_s")


def read_grid(path) -> dict:
    path = Path(path)
    grid = read_yaml(path, missing=f"no such grid file. Grids: {shipped_grids()}", error=GridError,
                                expected="a mapping with base:, vary:, seeds: ... (see cxrlib/experiments/grid.py)")
    unknown = sorted(set(grid) - set(GRID_KEYS))
    if unknown:
        raise GridError(f"{path}: unknown key(s) {unknown}; a grid file has {', '.join(GRID_KEYS)}. Parameters "
                        "go under set:, vary: or members:")
    grid = {"name": path.stem, "set": {}, "vary": {}, "members": [], "seeds": [], "notebooks": [],
            "launcher": "local", "parallel": 1, "slurm": {}, "baseline": "", "ensemble": False, **grid}
    if not grid.get("base"):
        raise GridError(f"{path}: base: names the preset every member starts from, e.g. base: params/demo.yaml")
    checks = [
        ("set", isinstance(grid["set"], dict), "a mapping of parameter: value"),
        ("vary", isinstance(grid["vary"], dict) and all(isinstance(v, list) and v for v in grid["vary"].values()),
         "a mapping of parameter: [values ...], each list non-empty"),
        ("members", isinstance(grid["members"], list) and all(isinstance(m, dict) for m in grid["members"]),
         "a list of mappings of parameter: value (name: optional)"),
        ("seeds", isinstance(grid["seeds"], list) and all(isinstance(s, int) and not isinstance(s, bool)
                                                          for s in grid["seeds"]), "a list of integers"),
        ("launcher", grid["launcher"] in ("local", "slurm"), "local or slurm"),
        ("parallel", isinstance(grid["parallel"], int) and grid["parallel"] >= 1, "a number of members at once, >= 1"),
        ("slurm", isinstance(grid["slurm"], dict) and set(grid["slurm"]) <= set(SLURM_KEYS),
         f"a mapping with keys among {', '.join(SLURM_KEYS)}"),
        ("name", bool(re.fullmatch(r"[A-Za-z0-9._-]+", str(grid["name"]))), "a plain folder name"),
    ]
    for key, ok, want in checks:
        if not ok:
            raise GridError(f"{path}: {key}: {grid[key]!r} should be {want}")
    for key in ("seed", "name", "runs_dir"):
        if key in grid["vary"] or key in grid["set"]:
            raise GridError(f"{path}: {key} cannot be set or varied; "
                            + ("list them under seeds:" if key == "seed" else "the sweep names its members"))
    grid["notebooks"] = [str(n) for n in grid["notebooks"]]
    grid["path"] = str(path)
    return grid


def value_text(value) -> str:
    """A parameter value as it appears in a member's name: true, 0.001, AP+PA."""
    if isinstance(value, bool):
        text = str(value).lower()
    elif isinstance(value, float):
        text = f"{value:g}"
    elif isinstance(value, list):
        text = "+".join(value_text(v) for v in value)
    elif isinstance(value, dict):
        text = "+".join(f"{k}.{value_text(v)}" for k, v in value.items())
    else:
        text = str(value)
    return re.sub(r"[^A-Za-z0-9.+-]", "", text.replace(" ", "-")) or "x"


def expand(grid: dict) -> list[tuple[str, dict]]:
    """[(member name, overrides)] in a stable order: the product of vary:, then members:, each per seed."""
    keys = list(grid["vary"])
    combos = [(None, dict(zip(keys, values))) for values in itertools.product(*grid["vary"].values())] if keys else []
    combos += [(m.get("name"), {k: v for k, v in m.items() if k != "name"}) for m in grid["members"]]
    if not combos:
        combos = [("base", {})]
    members = []
    for explicit, overrides in combos:
        stem = explicit or "_".join(f"{k}-{value_text(v)}" for k, v in overrides.items()) or "base"
        for seed in grid["seeds"] or [None]:
            name = stem if seed is None else f"{stem}_seed-{seed}"
            members.append((name, {**overrides, **({} if seed is None else {"seed": seed})}))
    names = [n for n, _ in members]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise GridError(f"{grid['path']}: members {repeated} come out twice; give explicit members a name:")
    return members
