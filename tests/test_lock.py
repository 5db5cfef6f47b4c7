"""uv.lock is the environment: it records pyproject.toml's requirements, and this Python holds exactly its packages.

Offline and fast: the lock is read as TOML and compared with pyproject.toml and with the installed distributions;
``uv lock --check --offline`` (uv's own check) runs too when a ``uv`` executable is found.
"""

from __future__ import annotations

import importlib.metadata
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from packaging.markers import Marker, default_environment
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

if sys.version_info >= (3, 11):
    import tomllib
else:  # pytest needs tomli on Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
FIX = "run `uv lock` (or `make lock`) and commit uv.lock, then `make setup` (or `uv sync --locked --extra test`)"
SYNC = "run `make setup` (or `uv sync --locked --extra test`) to install exactly uv.lock"
# uv sync keeps the pip of a venv made by `python -m venv` (as earlier set-ups did); the project never imports it
INSTALLER = "pip"


def load(name: str) -> dict:
    """A TOML file of the repository root, parsed."""
    return tomllib.loads((ROOT / name).read_text(encoding="utf-8"))


def declared(pyproject: dict) -> set[tuple[str, str, str, str]]:
    """pyproject.toml's requirements as (name, extras, specifier, extra of this project that asks for it or '')."""
    project = pyproject["project"]
    groups = {"": project["dependencies"], **project.get("optional-dependencies", {})}
    out = set()
    for extra, items in groups.items():
        for item in items:
            req = Requirement(item)
            out.add((canonicalize_name(req.name), ",".join(sorted(req.extras)), str(req.specifier), extra))
    return out


def recorded(lock: dict) -> set[tuple[str, str, str, str]]:
    """The same tuples as ``declared``, from the requirements uv.lock recorded for this project."""
    out = set()
    for dep in root_package(lock)["metadata"].get("requires-dist", []):
        extra = re.search(r"extra == '([^']+)'", dep.get("marker", ""))
        out.add(
            (
                canonicalize_name(dep["name"]),
                ",".join(sorted(dep.get("extras", []))),
                str(SpecifierSet(dep.get("specifier", ""))),
                extra.group(1) if extra else "",
            )
        )
    return out


def root_package(lock: dict) -> dict:
    """This project's own entry in uv.lock."""
    return next(p for p in lock["package"] if p.get("source", {}).get("editable") == ".")


def locked_packages(lock: dict, extras: set[str]) -> dict[str, str]:
    """What uv.lock installs on this platform and Python for this project with ``extras``: name -> version."""
    env = default_environment()
    versions: dict[str, list[dict]] = {}
    for package in lock["package"]:
        versions.setdefault(package["name"], []).append(package)
    root = root_package(lock)
    chosen: dict[str, str] = {root["name"]: root["version"]}
    seen: set[tuple[str, str, str]] = set()
    todo = [(root, extras)]
    while todo:
        package, package_extras = todo.pop()
        deps = list(package.get("dependencies", []))
        for extra in sorted(package_extras):
            deps += package.get("optional-dependencies", {}).get(extra, [])
        for dep in deps:
            if "marker" in dep and not Marker(dep["marker"]).evaluate(env):
                continue
            target = next(p for p in versions[dep["name"]] if dep.get("version", p["version"]) == p["version"])
            chosen[target["name"]] = target["version"]
            for extra in [""] + dep.get("extra", []):  # "" = the package itself, then each extra asked for
                if (target["name"], target["version"], extra) not in seen:
                    seen.add((target["name"], target["version"], extra))
                    todo.append((target, {extra} - {""}))
    return chosen


def installed_packages() -> dict[str, str]:
    """The distributions installed in this Python's own site-packages: name -> version."""
    paths = sorted({sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]})
    return {canonicalize_name(d.metadata["Name"]): d.version for d in importlib.metadata.distributions(path=paths)}


def show(requirement: tuple[str, str, str, str]) -> str:
    """One tuple of ``declared`` as pyproject.toml would write it, e.g. ``pytest>=8  (extra test)``."""
    name, extras, specifier, extra = requirement
    return f"{name}{f'[{extras}]' if extras else ''}{specifier}{f'  (extra {extra})' if extra else ''}"


def test_lock_records_pyproject_requirements():
    pyproject, lock = load("pyproject.toml"), load("uv.lock")
    want, have = declared(pyproject), recorded(lock)
    assert want == have, (
        f"pyproject.toml and uv.lock disagree: {FIX}.\n"
        + "".join(f"  only in pyproject.toml: {show(r)}\n" for r in sorted(want - have))
        + "".join(f"  only in uv.lock:        {show(r)}\n" for r in sorted(have - want))
    )
    assert SpecifierSet(lock["requires-python"]) == SpecifierSet(pyproject["project"]["requires-python"]), FIX
    constraints = {
        (canonicalize_name(c["name"]), str(SpecifierSet(c.get("specifier", ""))))
        for c in lock.get("manifest", {}).get("constraints", [])
    }
    declared_constraints = [Requirement(c) for c in pyproject["tool"]["uv"].get("constraint-dependencies", [])]
    assert constraints == {(canonicalize_name(r.name), str(r.specifier)) for r in declared_constraints}, FIX
    assert set(root_package(lock)["metadata"].get("provides-extras", [])) == set(
        pyproject["project"]["optional-dependencies"]
    ), FIX


def test_uv_lock_check():
    uv = shutil.which("uv", path=str(ROOT / ".tools" / "bin")) or shutil.which("uv")
    if uv is None:
        pytest.skip("no uv executable (.tools/bin/uv or on PATH); test_lock_records_pyproject_requirements still ran")
    run = subprocess.run([uv, "lock", "--check", "--offline"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, f"`uv lock --check --offline` failed: {FIX}.\n{run.stdout}{run.stderr}"


def test_installed_packages_match_lock():
    lock = load("uv.lock")
    need = locked_packages(lock, {"test"})  # what `uv sync --locked --extra test` installs
    allowed = locked_packages(lock, set(root_package(lock).get("optional-dependencies", {})))  # all extras
    have = installed_packages()
    problems = [
        f"  {name}: uv.lock has {version}, not installed" for name, version in sorted(need.items()) if name not in have
    ]
    problems += [
        f"  {name}: installed {version}, uv.lock has {allowed[name]}"
        for name, version in sorted(have.items())
        if name in allowed and Version(version) != Version(allowed[name])
    ]
    problems += [
        f"  {name}: installed {version}, not in uv.lock"
        for name, version in sorted(have.items())
        if name not in allowed and name != INSTALLER
    ]
    assert not problems, f"{sys.prefix} differs from uv.lock: {SYNC}.\n" + "\n".join(problems)


def test_locked_packages_follow_markers_and_extras():
    lock = {
        "package": [
            {
                "name": "app",
                "version": "1",
                "source": {"editable": "."},
                "dependencies": [{"name": "a"}, {"name": "win", "marker": "sys_platform == 'no-such-platform'"}],
                "optional-dependencies": {
                    "test": [
                        {"name": "b", "version": "2", "marker": "python_full_version >= '3'"},
                        {"name": "b", "version": "1", "marker": "python_full_version < '3'"},
                    ]
                },
            },
            {"name": "a", "version": "1", "dependencies": [{"name": "c", "extra": ["fast"]}]},
            {"name": "b", "version": "1"},
            {"name": "b", "version": "2"},
            {"name": "win", "version": "1"},
            {"name": "c", "version": "1", "optional-dependencies": {"fast": [{"name": "d"}]}},
            {"name": "d", "version": "1"},
        ]
    }
    assert locked_packages(lock, set()) == {"app": "1", "a": "1", "c": "1", "d": "1"}
    assert locked_packages(lock, {"test"}) == {"app": "1", "a": "1", "c": "1", "d": "1", "b": "2"}
