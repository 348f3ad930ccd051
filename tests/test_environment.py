"""environment.yml (for conda users) lists exactly pyproject.toml's dependencies and dev extras, bounds included."""
from __future__ import annotations

from pathlib import Path

import tomllib
import yaml

PROJECT = Path(__file__).resolve().parent.parent


def test_environment_yml_mirrors_pyproject():
    project = tomllib.loads((PROJECT / "pyproject.toml").read_text())["project"]
    wanted = [d.split("#")[0].strip() for d in project["dependencies"] + project["optional-dependencies"]["dev"]]
    conda = yaml.safe_load((PROJECT / "environment.yml").read_text())["dependencies"]
    pip = next(d["pip"] for d in conda if isinstance(d, dict))
    assert [p for p in pip if p != "-e ."] == wanted and "-e ." in pip
    assert "python>=" + project["requires-python"].lstrip(">=") in conda
