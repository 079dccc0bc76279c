"""The hosts' venv (tfds_env role) and the wheelhouse/test venv (requirements/host-cpu.txt) pin the same things."""

from __future__ import annotations

from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def _requirements(path: Path) -> set[str]:
    lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
    return {line.lower() for line in lines if line and not line.startswith("-")}


def test_role_defaults_pin_what_host_requirements_pin() -> None:
    defaults = yaml.safe_load((REPO / "roles/tfds_env/defaults/main.yml").read_text())
    role = {p.lower() for p in defaults["tfds_env_packages"]}
    role.add(f"tensorflow-cpu=={defaults['tfds_env_tensorflow_version']}")
    assert role == _requirements(REPO / "requirements/host-cpu.txt")


def test_every_role_has_argument_specs_for_each_default() -> None:
    for role in sorted((REPO / "roles").iterdir()):
        specs = yaml.safe_load((role / "meta/argument_specs.yml").read_text())
        options = set(specs["argument_specs"]["main"]["options"])
        defaults = set(yaml.safe_load((role / "defaults/main.yml").read_text()) or {})
        assert defaults <= options, f"{role.name}: defaults without an argument spec: {sorted(defaults - options)}"
        assert all(name.startswith(role.name + "_") for name in options), f"{role.name}: unprefixed variable"
