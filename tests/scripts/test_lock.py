"""requirements-dev.lock pins every package the dev extra asks for, at a version it allows."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]


def _pins() -> dict[str, Version]:
    pins: dict[str, Version] = {}
    for line in (ROOT / "requirements-dev.lock").read_text().splitlines():
        match = re.match(r"([A-Za-z0-9._-]+)==(\S+)", line)
        if match:
            name = canonicalize_name(match[1])
            assert name not in pins, f"{name} pinned twice"
            pins[name] = Version(match[2])
    return pins


def _dev_requirements() -> list[Requirement]:
    """The dev extra's requirements, its references to rag-llm's own extras expanded."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras: dict[str, list[str]] = project["optional-dependencies"]
    found = [Requirement(r) for r in project["dependencies"]]
    todo, seen = ["dev"], set()
    while todo:
        extra = todo.pop()
        if extra in seen:
            continue
        seen.add(extra)
        for text in extras[extra]:
            requirement = Requirement(text)
            if canonicalize_name(requirement.name) == "rag-llm":
                todo.extend(requirement.extras)
            else:
                found.append(requirement)
    return found


def test_the_lock_pins_every_dev_requirement_within_its_range() -> None:
    pins = _pins()
    requirements = _dev_requirements()
    assert len(requirements) > 30
    for requirement in requirements:
        name = canonicalize_name(requirement.name)
        if name == "torch":  # installed first, pinned in the test command
            assert name not in pins
            continue
        assert name in pins, f"{name} is not in requirements-dev.lock: run scripts/lock.sh"
        assert requirement.specifier.contains(pins[name], prereleases=True), (
            f"requirements-dev.lock pins {name}=={pins[name]}, outside {requirement}: "
            "run scripts/lock.sh")
